r"""Noise-contrastive estimation of an unnormalized model as an SVI loss (Gutmann & Hyvärinen 2010;
DL book §18.6).

The model's observed site has an unnormalized density :math:`\tilde p_\theta(u)`; its normalizer is learned as
a free parameter :math:`c \approx \log Z_\theta`, so that :math:`\log p_m(u) = \log \tilde p_\theta(u) - c`.
With a fixed noise distribution :math:`q` (which can be sampled and evaluated) and :math:`\nu` noise samples
per datum, a logistic classifier separates the data :math:`x_n` from the noise :math:`y_{n,k} \sim q` by

.. math::

    G(u) = \log \tilde p_\theta(u) - c - \log \nu - \log q(u),

and the loss is its negative log-likelihood (:math:`\sigma` the logistic function, :math:`\zeta` softplus)

.. math::

    \mathcal L(\theta, c)
        = -\sum_n \Big[\log \sigma(G(x_n)) + \sum_{k=1}^{\nu} \log\big(1 - \sigma(G(y_{n,k}))\big)\Big]
        = \sum_n \Big[\zeta(-G(x_n)) + \sum_{k=1}^{\nu} \zeta(G(y_{n,k}))\Big].

Its minimizer over :math:`(\theta, c)` is consistent: as the data grow, :math:`p_m \to p_{data}` and
:math:`c \to \log Z_\theta` (the model learns its own normalization), with an efficiency that approaches maximum
likelihood as :math:`\nu` grows and :math:`q` approaches the data. Each datum's term is weighted by the site's
scale and mask, so under ``pyro.plate(..., subsample_size=B)`` the loss estimates the full sum over the
:math:`N` data, as an ELBO does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Distribution

from .comparison import ComparisonLoss, check_finite, observed_site

__all__ = ["NCELoss", "unnormalized_log_prob"]


def unnormalized_log_prob(fn: Distribution, value: Tensor) -> Tensor:
    r"""The unnormalized log-density of a site's distribution, differentiable in the model's parameters.

    For an :class:`~dgm_ppl.energy.EnergyBasedDistribution` of a model whose hidden units sum out in closed form
    (a :class:`~dgm_ppl.energy.FreeEnergyModel`, e.g. an RBM) this is :math:`-F(v)`, by the model's
    ``unnormalized_log_prob`` with the parameters the distribution was made with (plain autograd). Its
    ``log_prob`` would not do: it subtracts the cached ``model.log_z``, carries the SML surrogate gradient
    instead of :math:`\nabla(-F)`, and advances the chains. Any other distribution's ``log_prob`` is used as it
    is, normalized or not.

    :raises ValueError: for an energy model without a tractable free energy (a DBM, whose
        ``unnormalized_log_prob`` is only a lower bound).
    """
    from ..energy.distribution import EnergyBasedDistribution
    from ..energy.protocol import FreeEnergyModel

    if isinstance(fn, EnergyBasedDistribution):
        model = fn.model
        if not isinstance(model, FreeEnergyModel):
            raise ValueError(
                f"NCELoss: the unnormalized density of a {type(model).__name__} (its free energy) is intractable; "
                "pass log_prob=... to NCELoss"
            )
        return model.unnormalized_log_prob(value, params=fn.params)
    return fn.log_prob(value)


class NCELoss(ComparisonLoss):
    r"""Noise-contrastive estimation for :class:`pyro.infer.SVI` (see the module's notes for the math).

    The model is run once per step (its global latents replayed from the guide, if any) and the observed site's
    distribution gives :math:`\log\tilde p_\theta` (:func:`unnormalized_log_prob`, or ``log_prob``) at the data
    and at :math:`\nu B` noise samples. The normalizer :math:`c` is the Pyro parameter ``log_z_param``, created
    and read inside the loss, so SVI's optimizer updates it with the model's parameters; :attr:`log_z` reads it.

    :param noise: the noise distribution :math:`q`, with ``sample`` and ``log_prob`` and the observed site's
        event shape (e.g. ``dist.Bernoulli(base_rates).to_event(1)``); its batch shape must broadcast to the
        plate's. It is not trained.
    :param num_noise: :math:`\nu`, noise samples per datum.
    :param log_z_param: name of the Pyro parameter holding :math:`c`.
    :param log_z_init: its initial value.
    :param site: the observed site to fit (needed only when the model has several).
    :param log_prob: ``log_prob(fn, value)`` giving :math:`\log\tilde p_\theta(value)` of the site's
        distribution ``fn``, with the shape ``value.shape[:-event_dim]``; default :func:`unnormalized_log_prob`.

    ``history`` records ``loss`` and ``log_z`` at each step.
    """

    def __init__(
        self,
        noise: Distribution,
        *,
        num_noise: int = 1,
        log_z_param: str = "nce_log_z",
        log_z_init: float = 0.0,
        site: str | None = None,
        log_prob: Callable[[Distribution, Tensor], Tensor] | None = None,
    ):
        if not (callable(getattr(noise, "sample", None)) and callable(getattr(noise, "log_prob", None))):
            raise TypeError(f"noise must be a distribution with sample and log_prob, got {type(noise).__name__}")
        if not (isinstance(num_noise, int) and num_noise >= 1):
            raise ValueError(f"num_noise must be a positive integer, got {num_noise!r}")
        if not math.isfinite(log_z_init):
            raise ValueError(f"log_z_init must be finite, got {log_z_init}")
        self.noise = noise
        self.num_noise = num_noise
        self.log_z_param = log_z_param
        self.log_z_init = float(log_z_init)
        self.site = site
        self.log_prob = log_prob if log_prob is not None else unnormalized_log_prob
        self.history: dict[str, list[float]] = {"loss": [], "log_z": []}

    @property
    def log_z(self) -> Tensor:
        """:math:`c`, the learned :math:`\\log Z` (the Pyro parameter ``log_z_param``)."""
        return pyro.param(self.log_z_param, lambda: torch.tensor(self.log_z_init))

    def _noise_for(self, name: str, batch: torch.Size, event: torch.Size) -> Distribution:
        noise = self.noise
        if tuple(noise.event_shape) != tuple(event):
            raise ValueError(
                f"NCELoss: the noise has event shape {tuple(noise.event_shape)} but site {name!r} has event shape "
                f"{tuple(event)} (make the dimensions of one datum an event, e.g. with .to_event(1))"
            )
        if noise.batch_shape != batch:
            try:
                torch.broadcast_shapes(noise.batch_shape, batch)
                noise = noise.expand(batch)
            except (RuntimeError, ValueError, NotImplementedError) as e:
                raise ValueError(
                    f"NCELoss: the noise's batch shape {tuple(noise.batch_shape)} does not broadcast to the batch "
                    f"shape {tuple(batch)} of site {name!r}"
                ) from e
        return noise

    def _lp(self, fn: Distribution, value: Tensor, shape: torch.Size, what: str) -> Tensor:
        out = self.log_prob(fn, value)
        if not isinstance(out, Tensor) or out.shape != shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"NCELoss: the model's log-density of the {what} has shape {got}, expected {tuple(shape)}")
        return out

    def __call__(self, model: Callable, guide: Callable | None, *args, **kwargs) -> Tensor:
        """Returns the differentiable NCE loss (in the model's parameters and :attr:`log_z`)."""
        if guide is not None:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model = poutine.replay(model, trace=guide_trace)
        site = observed_site(poutine.trace(model).get_trace(*args, **kwargs), self.site, "NCELoss")
        name, fn, x = site["name"], site["fn"], site["value"]
        if not isinstance(x, Tensor):
            x = torch.as_tensor(x, dtype=torch.get_default_dtype())
        event_dim = getattr(fn, "event_dim", len(getattr(fn, "event_shape", ())))
        batch, event = x.shape[: x.dim() - event_dim], x.shape[x.dim() - event_dim :]
        if not torch.isfinite(x).all():
            raise ValueError(f"NCELoss: the data at observed site {name!r} contain NaN or inf")
        noise = self._noise_for(name, batch, event)
        nu = self.num_noise
        with torch.no_grad():
            y = noise.sample((nu,)).to(x)
            log_q_x, log_q_y = noise.log_prob(x), noise.log_prob(y)
        log_z = self.log_z.to(x)
        shift = log_z + math.log(nu)
        g_x = self._lp(fn, x, batch, "data") - shift - log_q_x
        g_y = self._lp(fn, y, (nu,) + batch, "noise samples") - shift - log_q_y
        terms = F.softplus(-g_x) + F.softplus(g_y).sum(0)
        mask = site["mask"]
        if mask is not None and mask is not True:
            terms = torch.where(torch.as_tensor(mask, device=terms.device).expand(batch), terms, terms.new_zeros(()))
        loss = (site["scale"] * terms).sum()
        check_finite("NCELoss", "loss", loss)
        if torch.is_grad_enabled():
            self.history["loss"].append(loss.item())
            self.history["log_z"].append(log_z.item())
        return loss
