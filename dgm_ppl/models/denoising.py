r"""Sampling from denoising autoencoders (Bengio et al. 2013) and a one-layer generative stochastic network (GSN;
Bengio et al. 2014), as Pyro programs; see also Goodfellow et al., *Deep Learning*, §20.11–20.12.

A denoising autoencoder (DAE) learns a reconstruction distribution :math:`p_\theta(x \mid \tilde x)` from pairs of a
datum and its corruption :math:`\tilde x \sim C(\tilde x \mid x)`, by maximum likelihood,

.. math::

    \max_\theta\; \mathbb E_{x \sim \mathcal D}\, \mathbb E_{\tilde x \sim C(\tilde x \mid x)}
    \log p_\theta(x \mid \tilde x).

The Markov chain that alternates :math:`\tilde x_t \sim C(\tilde x \mid x_t)` and
:math:`x_{t+1} \sim p_\theta(x \mid \tilde x_t)` then has (when it is ergodic and :math:`p_\theta` is consistent)
a stationary distribution that estimates the data distribution (Bengio et al. 2013, Theorem 1). For Gaussian data
:math:`N(\mu, s^2)` and Gaussian corruption :math:`N(x, \sigma^2)` the optimal reconstruction is
:math:`p(x \mid \tilde x) = N(\mu + a(\tilde x - \mu), a\sigma^2)` with :math:`a = s^2 / (s^2 + \sigma^2)`, and the
chain :math:`x' = a(x + \sigma\epsilon) + (1 - a)\mu + \sqrt{a}\,\sigma\eta` is stationary exactly at
:math:`N(\mu, s^2)`. Large corruption makes the chain mix faster but :math:`p(x \mid \tilde x)` multimodal: use a
mixture reconstruction (``num_components > 1``).

*Walkback* (Bengio et al. 2013, §4) trains on the chain's own excursions: from each datum, ``walkback = k``
corruptions :math:`\tilde x_j \sim C(\cdot \mid x^*_{j-1})`, :math:`x^*_0 = x`, :math:`x^*_j \sim
p_\theta(\cdot \mid \tilde x_j)`, all reconstructed to the datum, :math:`\sum_{j=1}^k \log p_\theta(x \mid
\tilde x_j)`.

The :class:`GSN` adds a latent state, :math:`h_t = \tanh(W \tilde x_{t-1} + U h_{t-1} + b) + \sigma_h \xi_t`,
:math:`\tilde x_{t-1} \sim C(\cdot \mid x_{t-1})`, :math:`x_t \sim p_\theta(x \mid h_t)`, trained like walkback
with the datum reconstructed from every :math:`h_t` (back-propagating through the h-chain).

In both ``model(x, num_data=None)`` observes the datum at the reconstruction sites ``"x_1"``, ..., ``"x_k"``; the
corruptions are recorded as observed sites ``"x_tilde_1"``, ... under ``poutine.mask(False)`` (C has no
parameters, so they add nothing), and ``guide`` is empty, so ``Trace_ELBO`` is exactly the negative reconstruction
log-likelihood (times N/B under subsampling)::

    dae = DenoisingAutoencoder(2, noise=0.5, num_components=4, walkback=2)
    svi = SVI(dae.model, dae.guide, Adam({"lr": 1e-3}), Trace_ELBO())
    svi.step(x_batch, num_data=len(x))
    samples = dae.sample(1000, burn_in=200)           # the DAE Markov chain
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from torch import Tensor, nn

from .._data import as_data_tensor, check_binary, check_finite
from ..distributions import Bernoulli
from ._common import data_plate
from .vae import mlp

__all__ = ["DenoisingAutoencoder", "GSN"]

LIKELIHOODS = ("normal", "bernoulli")
CORRUPTIONS = ("gaussian", "flip")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


class _Reconstruction(PyroModule):
    """Shared parts: the corruption C, the reconstruction head (net output → distribution), input checks."""

    def __init__(
        self,
        x_dim: int,
        *,
        likelihood: str,
        num_components: int,
        scale: float | None,
        corruption: str | None,
        noise: float,
        walkback: int,
        name: str,
    ):
        super().__init__(name)
        self.x_dim = _positive_int("x_dim", x_dim)
        self.num_components = _positive_int("num_components", num_components)
        self.walkback = _positive_int("walkback", walkback)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        corruption = corruption or ("gaussian" if likelihood == "normal" else "flip")
        if corruption not in CORRUPTIONS:
            raise ValueError(f"corruption must be one of {CORRUPTIONS}, got {corruption!r}")
        if corruption == "flip" and likelihood != "bernoulli":
            raise ValueError("corruption='flip' is for binary data (likelihood='bernoulli')")
        if not noise > 0 or (corruption == "flip" and not noise < 1):
            raise ValueError(f"noise must be positive (and below 1 for 'flip'), got {noise}")
        if likelihood == "bernoulli" and num_components > 1:
            raise ValueError("num_components > 1 is for likelihood='normal'")
        if scale is not None and not scale > 0:
            raise ValueError(f"scale must be positive or None (learned), got {scale}")
        self.likelihood, self.corruption, self.noise = likelihood, corruption, float(noise)
        self.fixed_scale = None if scale is None else float(scale)
        if likelihood == "normal" and num_components == 1 and scale is None:
            self.log_scale = nn.Parameter(torch.zeros(x_dim))

    @property
    def output_dim(self) -> int:
        """The size of the network output the reconstruction head reads: ``x_dim`` (a mean or logits), or
        ``M + 2 M x_dim`` for a mixture of M diagonal Gaussians (logits, means, raw scales)."""
        m = self.num_components
        return self.x_dim if m == 1 else m + 2 * m * self.x_dim

    def _like(self) -> Tensor:
        return next(self.parameters())

    def _check_x(self, x, name: str = "x") -> Tensor:
        like = self._like()
        x = as_data_tensor(x, name, dtype=like.dtype, device=like.device)
        if x.dim() != 2 or x.shape[1] != self.x_dim:
            raise ValueError(f"{name} must be a batch of shape (B, {self.x_dim}), got {tuple(x.shape)}")
        if self.likelihood == "bernoulli":
            if not check_binary(x):
                raise ValueError(f"{name} must be binary (0 or 1) and finite")
        elif not check_finite(x):
            raise ValueError(f"{name} contains NaN or inf")
        return x

    def corrupt_distribution(self, x: Tensor) -> dist.TorchDistribution:
        """:math:`C(\\tilde x \\mid x)`: ``N(x, noise²)``, or each bit flipped with probability ``noise``."""
        if self.corruption == "gaussian":
            return dist.Normal(x, self.noise).to_event(1)
        return dist.Bernoulli(probs=x + (1 - 2 * x) * self.noise).to_event(1)

    def _corrupt(self, site: str, x: Tensor) -> Tensor:
        c = self.corrupt_distribution(x.detach())
        with poutine.mask(mask=False):  # C has no parameters: recorded, but not part of the objective
            return pyro.sample(site, c, obs=c.sample())

    def _head(self, out: Tensor) -> dist.TorchDistribution:
        """The reconstruction distribution from the network output, batch ``out.shape[:-1]``, event ``(x_dim,)``."""
        if not isinstance(out, Tensor) or out.shape[-1] != self.output_dim:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"the network returned {got}, expected last dimension {self.output_dim}")
        if self.likelihood == "bernoulli":
            return Bernoulli(logits=out).to_event(1)
        m, d = self.num_components, self.x_dim
        if m == 1:
            scale = self.log_scale.exp() if self.fixed_scale is None else self.fixed_scale
            return dist.Normal(out, scale).to_event(1)
        logits, loc, raw = out[..., :m], out[..., m : m + m * d], out[..., m + m * d :]
        loc, raw = loc.reshape(*out.shape[:-1], m, d), raw.reshape(*out.shape[:-1], m, d)
        scale = F.softplus(raw) + 1e-4 if self.fixed_scale is None else torch.full_like(loc, self.fixed_scale)
        components = dist.Normal(loc, scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), components)

    def guide(self, x, num_data: int | None = None) -> None:
        """The empty guide: every random choice of the model is observed."""

    def _chains(self, num_samples: int, burn_in: int, thin: int, x0, num_chains: int | None) -> Tensor:
        _positive_int("num_samples", num_samples)
        _positive_int("thin", thin)
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
            raise ValueError(f"burn_in must be a non-negative integer, got {burn_in!r}")
        like = self._like()
        if x0 is None:
            chains = _positive_int("num_chains", num_chains) if num_chains is not None else num_samples
            if self.likelihood == "bernoulli":
                x0 = torch.bernoulli(torch.full((chains, self.x_dim), 0.5, dtype=like.dtype, device=like.device))
            else:
                x0 = torch.randn(chains, self.x_dim, dtype=like.dtype, device=like.device)
        x = self._check_x(x0, "x0")
        runs = -(-num_samples // len(x))
        steps = burn_in + thin * (runs - 1)
        states = self.markov_chain(x, steps, return_all=True)
        return states[burn_in::thin].reshape(-1, self.x_dim)[:num_samples]

    @torch.no_grad()
    def sample(
        self, num_samples: int, burn_in: int = 100, *, thin: int = 1, x0=None, num_chains: int | None = None
    ) -> Tensor:
        """``num_samples`` states of the chain after ``burn_in`` steps, ``(num_samples, x_dim)``: ``num_chains``
        (default ``num_samples``) chains from ``x0`` (default: N(0, I), or fair coins for binary data; data
        points burn in faster), then every ``thin``-th state of all chains until there are enough."""
        return self._chains(num_samples, burn_in, thin, x0, num_chains)


class DenoisingAutoencoder(_Reconstruction):
    """A denoising autoencoder of ``(B, x_dim)`` data whose reconstruction distribution is a Pyro distribution.

    :param x_dim: the data size.
    :param net: a module ``x_tilde (B, x_dim) -> (B, output_dim)`` (see :attr:`output_dim`); default an MLP with
        ``hidden_dims`` and ``activation`` (an encoder and decoder in one).
    :param likelihood: ``"normal"`` (real data) or ``"bernoulli"`` (binary data).
    :param num_components: M > 1: :math:`p(x \\mid \\tilde x)` is a mixture of M diagonal Gaussians with
        conditional weights, means and scales.
    :param scale: a fixed standard deviation of the Normal reconstruction (None: learned, per feature; or, for a
        mixture, output by the network).
    :param corruption: ``"gaussian"`` (default for real data) or ``"flip"`` (default for binary data).
    :param noise: σ of the Gaussian corruption, or the flip probability.
    :param walkback: the number k of corruptions per datum along the walkback chain (1: ordinary DAE training).
    :param name: the prefix of the parameters in Pyro's param store.
    """

    def __init__(
        self,
        x_dim: int,
        net: nn.Module | None = None,
        *,
        hidden_dims: Sequence[int] = (64, 64),
        activation: type[nn.Module] = nn.Tanh,
        likelihood: str = "normal",
        num_components: int = 1,
        scale: float | None = None,
        corruption: str | None = None,
        noise: float = 0.5,
        walkback: int = 1,
        name: str = "dae",
    ):
        super().__init__(
            x_dim,
            likelihood=likelihood,
            num_components=num_components,
            scale=scale,
            corruption=corruption,
            noise=noise,
            walkback=walkback,
            name=name,
        )
        self.net = net if net is not None else mlp([x_dim, *hidden_dims, self.output_dim], activation)

    def reconstruction(self, x_tilde: Tensor) -> dist.TorchDistribution:
        """:math:`p_\\theta(x \\mid \\tilde x)`, batch ``(B,)``, event ``(x_dim,)``."""
        return self._head(self.net(x_tilde))

    @pyro_method
    def model(self, x, num_data: int | None = None) -> Tensor:
        """The walkback chain from each datum, reconstructing it from every corruption. ``num_data``: the size of
        the data set the batch ``x`` (B, x_dim) is drawn from."""
        x = self._check_x(x)
        with data_plate(x, num_data):
            state = x
            for j in range(1, self.walkback + 1):
                p = self.reconstruction(self._corrupt(f"x_tilde_{j}", state))
                pyro.sample(f"x_{j}", p, obs=x)
                if j < self.walkback:
                    state = p.sample().detach()
        return x

    @torch.no_grad()
    def markov_chain(self, x0, steps: int, *, return_all: bool = False) -> Tensor:
        """Run the DAE chain :math:`\\tilde x_t \\sim C(\\cdot \\mid x_t)`, :math:`x_{t+1} \\sim p_\\theta(\\cdot
        \\mid \\tilde x_t)` for ``steps`` steps from ``x0`` (B, x_dim): the last state, or all ``steps + 1``
        states ``(steps + 1, B, x_dim)``."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        x = self._check_x(x0, "x0")
        states = [x]
        for _ in range(steps):
            x = self.reconstruction(self.corrupt_distribution(x).sample()).sample()
            states.append(x)
        return torch.stack(states) if return_all else x


class GSN(_Reconstruction):
    """A generative stochastic network with one latent layer of ``h_dim`` units (a simple case of Bengio et al.
    2014): :math:`h_t = \\tanh(W \\tilde x_{t-1} + U h_{t-1} + b) + \\sigma_h \\xi_t`, :math:`x_t \\sim
    p_\\theta(x \\mid h_t)` with an MLP decoder; ``walkback`` is the number of steps unrolled in training
    (default 3), and the same options as :class:`DenoisingAutoencoder` set the corruption and the reconstruction.

    :param hidden_noise: :math:`\\sigma_h`, the noise added to the latent state.
    """

    def __init__(
        self,
        x_dim: int,
        h_dim: int = 64,
        *,
        hidden_dims: Sequence[int] = (64,),
        activation: type[nn.Module] = nn.Tanh,
        likelihood: str = "normal",
        num_components: int = 1,
        scale: float | None = None,
        corruption: str | None = None,
        noise: float = 0.5,
        hidden_noise: float = 0.1,
        walkback: int = 3,
        name: str = "gsn",
    ):
        super().__init__(
            x_dim,
            likelihood=likelihood,
            num_components=num_components,
            scale=scale,
            corruption=corruption,
            noise=noise,
            walkback=walkback,
            name=name,
        )
        if not hidden_noise >= 0:
            raise ValueError(f"hidden_noise must be non-negative, got {hidden_noise}")
        self.h_dim, self.hidden_noise = _positive_int("h_dim", h_dim), float(hidden_noise)
        self.input = nn.Linear(x_dim, h_dim)
        self.recurrent = nn.Linear(h_dim, h_dim, bias=False)
        self.decoder = mlp([h_dim, *hidden_dims, self.output_dim], activation)

    def step(self, h: Tensor, x_tilde: Tensor) -> Tensor:
        """The next latent state given the previous one and a corrupted visible state."""
        h = torch.tanh(self.input(x_tilde) + self.recurrent(h))
        return h + self.hidden_noise * torch.randn_like(h) if self.hidden_noise > 0 else h

    def reconstruction(self, h: Tensor) -> dist.TorchDistribution:
        """:math:`p_\\theta(x \\mid h)`."""
        return self._head(self.decoder(h))

    @pyro_method
    def model(self, x, num_data: int | None = None) -> Tensor:
        """The chain unrolled ``walkback`` steps from each datum (h starts at 0), reconstructing the datum from
        every latent state."""
        x = self._check_x(x)
        with data_plate(x, num_data):
            state, h = x, x.new_zeros(x.shape[0], self.h_dim)
            for j in range(1, self.walkback + 1):
                h = self.step(h, self._corrupt(f"x_tilde_{j}", state))
                p = self.reconstruction(h)
                pyro.sample(f"x_{j}", p, obs=x)
                state = p.sample().detach()
        return x

    @torch.no_grad()
    def markov_chain(self, x0, steps: int, *, return_all: bool = False) -> Tensor:
        """Run the GSN chain for ``steps`` steps from ``x0`` (B, x_dim), with h starting at 0: the last visible
        state, or all ``steps + 1`` visible states."""
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
        x = self._check_x(x0, "x0")
        h = x.new_zeros(x.shape[0], self.h_dim)
        states = [x]
        for _ in range(steps):
            h = self.step(h, self.corrupt_distribution(x).sample())
            x = self.reconstruction(h).sample()
            states.append(x)
        return torch.stack(states) if return_all else x
