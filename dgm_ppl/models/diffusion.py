r"""Denoising diffusion probabilistic models (Sohl-Dickstein et al. 2015; Ho et al. 2020) as a Pyro model/guide pair.

The fixed forward (noising) process is the **guide**, the learned reverse chain is the **model**:

.. math::

    q(x_t \mid x_{t-1}) = N(\sqrt{\alpha_t}\, x_{t-1}, \beta_t I), \quad \alpha_t = 1 - \beta_t, \quad
    \bar\alpha_t = \textstyle\prod_{s \le t} \alpha_s, \qquad q(x_t \mid x_0) = N(\sqrt{\bar\alpha_t}\, x_0,
    (1 - \bar\alpha_t) I),

    p(x_T) = N(0, I), \qquad p_\theta(x_{t-1} \mid x_t) = N(\mu_\theta(x_t, t), \sigma_t^2 I), \qquad
    \mu_\theta(x_t, t) = \frac{1}{\sqrt{\alpha_t}} \Big(x_t - \frac{\beta_t}{\sqrt{1 - \bar\alpha_t}}\,
    \epsilon_\theta(x_t, t)\Big),

with a network :math:`\epsilon_\theta` predicting the noise, and fixed variances :math:`\sigma_t^2 = \beta_t` or the
posterior's :math:`\tilde\beta_t = \beta_t (1 - \bar\alpha_{t-1}) / (1 - \bar\alpha_t)`; the decoder
:math:`p_\theta(x_0 \mid x_1)` is Gaussian with variance :math:`\beta_1` (continuous data). The guide samples
:math:`q(x_{1:T} \mid x_0)` in the model's order, :math:`x_T \sim q(x_T \mid x_0)` then
:math:`x_{t-1} \sim q(x_{t-1} \mid x_t, x_0) = N(\tilde\mu_t(x_t, x_0), \tilde\beta_t I)`, so that any Pyro ELBO on
``(model, guide)`` estimates the variational bound; ``TraceMeanField_ELBO`` computes each site's KL in closed form and
gives Ho et al.'s low-variance form

.. math::

    -\log p_\theta(x_0) \le \mathrm{KL}(q(x_T \mid x_0) \,\|\, p(x_T))
    + \sum_{t=2}^T \mathrm{KL}(q(x_{t-1} \mid x_t, x_0) \,\|\, p_\theta(x_{t-1} \mid x_t))
    - \log p_\theta(x_0 \mid x_1).

Each term depends on :math:`x_t \sim q(x_t \mid x_0)` alone, so :meth:`DDPM.bound` evaluates all of them in one
vectorized pass, and :meth:`DDPM.bound_loss` is that bound as an SVI loss. Since
:math:`\mu_\theta - \tilde\mu_t \propto \epsilon_\theta - \epsilon`, the t-th KL is a weighted noise-prediction error;
dropping the weights gives Ho et al.'s :math:`L_\text{simple} = \mathbb E_{t, \epsilon}
\|\epsilon - \epsilon_\theta(\sqrt{\bar\alpha_t} x_0 + \sqrt{1 - \bar\alpha_t}\epsilon, t)\|^2`,
:meth:`DDPM.simple_loss`. Both losses are callables ``loss(model, guide, x, num_data=None)`` for
``pyro.infer.SVI(ddpm.model, ddpm.guide, optim, loss=ddpm.simple_loss)``; they evaluate the network directly (the
programs are not run), scale by N/B like a subsampled plate, and raise :class:`~dgm_ppl.infer.DivergenceError` on a
NaN or infinite loss before any gradient is computed::

    ddpm = DDPM(2, num_steps=100)
    svi = SVI(ddpm.model, ddpm.guide, Adam({"lr": 1e-3}), loss=ddpm.simple_loss)   # or TraceMeanField_ELBO()
    svi.step(x_batch, num_data=len(x))
    samples = ddpm.sample(1000)                                                   # ancestral sampling
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import kl_divergence

from .._data import as_data_tensor
from ..infer.errors import DivergenceError
from ._common import check_batch, data_plate
from .vae import mlp

__all__ = ["DDPM", "NoisePredictor", "LinearNoisePredictor", "variance_schedule"]

SCHEDULES = ("cosine", "linear")
VARIANCES = ("beta", "posterior")


def variance_schedule(num_steps: int, kind: str = "cosine", *, max_beta: float = 0.999) -> Tensor:
    r"""The noise variances :math:`\beta_1, \dots, \beta_T` (float64, shape ``(T,)``).

    ``"cosine"`` (Nichol & Dhariwal 2021): :math:`\bar\alpha_t = f(t) / f(0)`,
    :math:`f(t) = \cos^2\big(\frac{t/T + s}{1 + s} \frac{\pi}{2}\big)`, s = 0.008. ``"linear"`` (Ho et al. 2020):
    :math:`\beta_t` evenly from :math:`10^{-4}` to 0.02 at T = 1000, both ends scaled by 1000/T for other T. Both
    are clipped at ``max_beta``, so that :math:`\bar\alpha_T \approx 0` for any T.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not 0 < max_beta < 1:
        raise ValueError(f"max_beta must be in (0, 1), got {max_beta}")
    if kind == "cosine":
        s = 0.008
        f = torch.cos((torch.arange(num_steps + 1, dtype=torch.float64) / num_steps + s) / (1 + s) * math.pi / 2) ** 2
        betas = 1 - f[1:] / f[:-1]
    elif kind == "linear":
        scale = 1000 / num_steps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, num_steps, dtype=torch.float64)
        betas[-1] = scale * 0.02  # (linspace of one point gives the start)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    return betas.clamp(1e-8, max_beta)


class NoisePredictor(nn.Module):
    """:math:`\\epsilon_\\theta(x_t, t)`: an MLP of ``x_t`` and sinusoidal features of ``t / T`` (SiLU units)."""

    def __init__(self, x_dim: int, num_steps: int, hidden_dims: Sequence[int] = (128, 128, 128), num_freqs: int = 8):
        super().__init__()
        self.num_steps = num_steps
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(num_freqs, dtype=torch.get_default_dtype()))
        self.net = mlp([x_dim + 2 * num_freqs + 1, *hidden_dims, x_dim], nn.SiLU)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        s = (t.to(x.dtype) / self.num_steps).unsqueeze(-1)
        angles = s * self.freqs
        return self.net(torch.cat([x, s, angles.sin(), angles.cos()], dim=-1))


class LinearNoisePredictor(nn.Module):
    """:math:`\\epsilon_\\theta(x_t, t) = a_t \\odot x_t + b_t`, one elementwise affine map per step (starts at 0).

    For Gaussian data with a diagonal covariance the optimal predictor :math:`\\mathbb E[\\epsilon \\mid x_t]` is of
    this form, so the reverse model can reach the best fixed-variance bound (a test bed)."""

    def __init__(self, x_dim: int, num_steps: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_steps, x_dim))
        self.bias = nn.Parameter(torch.zeros(num_steps, x_dim))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.weight[t - 1] * x + self.bias[t - 1]


class DDPM(nn.Module):
    """A denoising diffusion model of ``x_dim``-dimensional continuous data with ``num_steps`` (T) noising steps.

    ``model(x, num_data=None)`` is the reverse chain (latent sites ``"x_T"``, ..., ``"x_1"`` written with the
    numbers, e.g. ``"x_100"``; the data at site ``"x"``) and ``guide(x, num_data=None)`` the forward process, both in
    plate ``"data"``. Data should be roughly standardized (the chain ends at N(0, I)).

    :param x_dim: the data size.
    :param num_steps: T.
    :param net: the noise predictor, ``net(x_t, t) -> epsilon`` with ``t`` an integer tensor of steps in 1..T
        shaped like ``x_t.shape[:-1]``; default :class:`NoisePredictor` with ``hidden_dims``.
    :param schedule: ``"cosine"`` or ``"linear"`` (:func:`variance_schedule`), unless ``betas`` are given.
    :param betas: explicit :math:`\\beta_1, \\dots, \\beta_T` in (0, 1).
    :param variance: the reverse variances: ``"beta"`` (:math:`\\beta_t`) or ``"posterior"``
        (:math:`\\tilde\\beta_t`, and :math:`\\beta_1` at t = 1).
    :param hidden_dims: hidden layers of the default network.
    :param name: the network's name in Pyro's param store.
    """

    def __init__(
        self,
        x_dim: int,
        num_steps: int = 100,
        net: nn.Module | None = None,
        *,
        schedule: str = "cosine",
        betas: Tensor | None = None,
        variance: str = "beta",
        hidden_dims: Sequence[int] = (128, 128, 128),
        name: str = "ddpm",
    ):
        super().__init__()
        if isinstance(x_dim, bool) or not isinstance(x_dim, int) or x_dim < 1:
            raise ValueError(f"x_dim must be a positive integer, got {x_dim!r}")
        if betas is None:
            betas = variance_schedule(num_steps, schedule)
        else:
            betas = as_data_tensor(betas, "betas", dtype=torch.float64).double()
            if betas.shape != (num_steps,) or not ((betas > 0) & (betas < 1)).all():
                raise ValueError(f"betas must be {num_steps} numbers in (0, 1), got shape {tuple(betas.shape)}")
        self.x_dim, self.num_steps, self.variance, self.name = x_dim, num_steps, variance, name
        alpha_bars = torch.cumprod(1 - betas, 0)
        prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
        posterior_var = betas * (1 - prev) / (1 - alpha_bars)
        dtype = torch.get_default_dtype()
        for key, value in dict(
            betas=betas, alpha_bars=alpha_bars, alpha_bars_prev=prev, posterior_var=posterior_var
        ).items():
            self.register_buffer(key, value.to(dtype))
        self.register_buffer("sigma2", self._variances(variance))
        self.net = net if net is not None else NoisePredictor(x_dim, num_steps, hidden_dims)

    def _variances(self, variance: str) -> Tensor:
        """σ_t² for t = 1..T: β_t, or β̃_t with β_1 at t = 1."""
        if variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")
        return self.betas.clone() if variance == "beta" else torch.cat([self.betas[:1], self.posterior_var[1:]])

    # -- the Gaussian pieces, with t an integer or an integer tensor of steps in 1..T --------------------------------
    def _coef(self, buffer: Tensor, t: int | Tensor, like: Tensor) -> Tensor:
        value = buffer[t - 1]
        return value.unsqueeze(-1).to(like) if isinstance(t, Tensor) else value.to(like)

    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor | None = None) -> Tensor:
        """A draw of :math:`x_t \\sim q(x_t \\mid x_0)`."""
        noise = torch.randn_like(x0) if noise is None else noise
        ab = self._coef(self.alpha_bars, t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of :math:`q(x_{t-1} \\mid x_t, x_0)`, t ≥ 2."""
        beta, ab, prev = (self._coef(b, t, xt) for b in (self.betas, self.alpha_bars, self.alpha_bars_prev))
        mean = (prev.sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - prev) * xt) / (1 - ab)
        return mean, self._coef(self.posterior_var, t, xt).expand_as(mean)

    def predict_noise(self, xt: Tensor, t: int | Tensor, site: str = "x_t") -> Tensor:
        """:math:`\\epsilon_\\theta(x_t, t)`, its shape checked (a ``ValueError`` names the ``site``)."""
        if not isinstance(t, Tensor):
            t = torch.full(xt.shape[:-1], t, dtype=torch.long, device=xt.device)
        eps = self.net(xt, t)
        if not isinstance(eps, Tensor) or eps.shape != xt.shape:
            got = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
            raise ValueError(f"site {site!r}: the noise predictor returned {got}, expected {tuple(xt.shape)}")
        return eps

    def reverse_mean(self, xt: Tensor, t: int | Tensor, site: str = "x_t") -> Tensor:
        """:math:`\\mu_\\theta(x_t, t)`."""
        beta, ab = self._coef(self.betas, t, xt), self._coef(self.alpha_bars, t, xt)
        return (xt - beta / (1 - ab).sqrt() * self.predict_noise(xt, t, site)) / (1 - beta).sqrt()

    def _reverse(self, xt: Tensor, t: int, site: str) -> dist.TorchDistribution:
        return dist.Normal(self.reverse_mean(xt, t, site), self.sigma2[t - 1].sqrt()).to_event(1)

    def _check_data(self, x: Tensor) -> None:
        check_batch("x", x, self.x_dim)
        if not torch.jit.is_tracing() and not torch.isfinite(x).all():
            raise ValueError("x contains NaN or inf")

    # -- the Pyro programs ---------------------------------------------------------------------------------------
    def model(self, x: Tensor, num_data: int | None = None) -> Tensor:
        """The reverse chain :math:`p(x_T) \\prod_t p_\\theta(x_{t-1} \\mid x_t)`, with :math:`x_0` observed at
        ``"x"``. ``num_data``: size of the data set the batch ``x`` (B, x_dim) is drawn from."""
        self._check_data(x)
        pyro.module(self.name, self)
        T = self.num_steps
        with data_plate(x, num_data):
            xt = pyro.sample(f"x_{T}", dist.Normal(torch.zeros_like(x), 1.0).to_event(1))
            for t in range(T, 1, -1):
                xt = pyro.sample(f"x_{t - 1}", self._reverse(xt, t, f"x_{t - 1}"))
            return pyro.sample("x", self._reverse(xt, 1, "x"), obs=x)

    def guide(self, x: Tensor, num_data: int | None = None) -> Tensor:
        """The forward process :math:`q(x_T \\mid x_0) \\prod_{t \\ge 2} q(x_{t-1} \\mid x_t, x_0)` (no parameters)."""
        self._check_data(x)
        T = self.num_steps
        with data_plate(x, num_data):
            ab = self.alpha_bars[-1]
            xt = pyro.sample(f"x_{T}", dist.Normal(ab.sqrt() * x, (1 - ab).sqrt()).to_event(1))
            for t in range(T, 1, -1):
                mean, var = self.q_posterior(x, xt, t)
                xt = pyro.sample(f"x_{t - 1}", dist.Normal(mean, var.sqrt()).to_event(1))
            return xt

    # -- objectives ----------------------------------------------------------------------------------------------
    def bound(self, x: Tensor) -> Tensor:
        """The variational bound on :math:`-\\log p_\\theta(x_0)` per datum, shape (B,), in nats: one draw of each
        :math:`x_t \\sim q(x_t \\mid x_0)`, KLs in closed form (memory O(T B x_dim))."""
        x = as_data_tensor(x, "x")
        self._check_data(x)
        T, B = self.num_steps, x.shape[0]
        t = torch.arange(1, T + 1, device=x.device)[:, None].expand(T, B)
        xt = self.q_sample(x.expand(T, B, self.x_dim), t)
        mu = self.reverse_mean(xt, t)
        sigma = self.sigma2.to(x).sqrt()[:, None, None]
        normal = partial(dist.Normal, validate_args=False)  # a NaN network output must reach the loss's check
        total = -normal(mu[0], sigma[0]).log_prob(x).sum(-1)  # the decoder
        if T > 1:
            mean, var = self.q_posterior(x, xt[1:], t[1:])
            total = total + kl_divergence(normal(mean, var.sqrt()), normal(mu[1:], sigma[1:])).sum((0, -1))
        ab = self.alpha_bars[-1].to(x)
        prior = kl_divergence(normal(ab.sqrt() * x, (1 - ab).sqrt()), normal(torch.zeros_like(x), 1.0))
        return total + prior.sum(-1)

    def _scaled(self, per_datum: Tensor, x: Tensor, num_data: int | None, what: str) -> Tensor:
        scale = 1.0 if num_data is None else num_data / x.shape[0]
        if num_data is not None and num_data < x.shape[0]:
            raise ValueError(f"num_data ({num_data}) is smaller than the batch ({x.shape[0]})")
        loss = scale * per_datum.sum()
        if not torch.isfinite(loss).item():
            raise DivergenceError(f"DDPM.{what}: the loss is {loss.item()}; no parameter was updated")
        return loss

    def bound_loss(self, model: Callable | None, guide: Callable | None, x: Tensor, num_data: int | None = None):
        """The negative bound :meth:`bound` summed over the batch (times N/B), as an SVI loss. ``model`` and
        ``guide`` are not run (they are SVI's arguments, ``self.model`` and ``self.guide``)."""
        pyro.module(self.name, self)
        return self._scaled(self.bound(x), x, num_data, "bound_loss")

    def simple_loss(self, model: Callable | None, guide: Callable | None, x: Tensor, num_data: int | None = None):
        """:math:`L_\\text{simple}` as an SVI loss: :math:`\\sum_i \\|\\epsilon_i - \\epsilon_\\theta(x_{t_i},
        t_i)\\|^2` (times N/B) at one uniform step :math:`t_i` per datum. ``model`` and ``guide`` are not run."""
        x = as_data_tensor(x, "x")
        self._check_data(x)
        pyro.module(self.name, self)
        t = torch.randint(1, self.num_steps + 1, x.shape[:1], device=x.device)
        noise = torch.randn_like(x)
        err = (noise - self.predict_noise(self.q_sample(x, t, noise), t)).pow(2).sum(-1)
        return self._scaled(err, x, num_data, "simple_loss")

    # -- sampling ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, num_samples: int, *, denoise: bool = True, variance: str | None = None) -> Tensor:
        """Ancestral samples ``(num_samples, x_dim)``: :math:`x_T \\sim N(0, I)`, then
        :math:`x_{t-1} \\sim p_\\theta(x_{t-1} \\mid x_t)`; with ``denoise`` the last step returns
        :math:`\\mu_\\theta(x_1, 1)` without noise (Ho et al.). ``variance`` (``"beta"`` or ``"posterior"``)
        overrides the model's reverse variances for this draw (the smaller :math:`\\tilde\\beta_t` give sharper
        samples)."""
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
        sigma2 = self.sigma2 if variance is None else self._variances(variance)
        xt = torch.randn(num_samples, self.x_dim, device=self.betas.device, dtype=self.betas.dtype)
        for t in range(self.num_steps, 0, -1):
            xt = self.reverse_mean(xt, t)
            if t > 1 or not denoise:
                xt = xt + sigma2[t - 1].sqrt() * torch.randn_like(xt)
        return xt
