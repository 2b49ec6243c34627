r"""Objectives for deep latent-variable models, as thin layers over Pyro's ELBOs.

- :class:`AnnealedELBO` (β-VAE, KL annealing): the log-densities of the latent sites, in model and guide, are scaled by
  β, so that a Pyro ELBO estimates :math:`\mathbb E_q \log p(x \mid z) - \beta\, \mathrm{KL}(q(z \mid x) \| p(z))`
  (Higgins et al. 2017); a schedule β(step), e.g. :func:`linear_warmup`, anneals it from 0 to 1 (Bowman et al. 2016;
  Sønderby et al. 2016).
- :class:`FreeBitsELBO`: :math:`\mathbb E_q \log p(x \mid z) - \sum_j \max(\lambda, \mathbb E_x \mathrm{KL}_j)`, the
  per-dimension KL averaged over the minibatch and floored at λ nats (Kingma et al. 2016), so that the optimizer gains
  nothing by pushing a latent dimension onto the prior; KLs in closed form, for factorized latents.
- :class:`IWAE`: Burda et al.'s k-sample bound, which is Pyro's ``RenyiELBO(alpha=0)``.

Wake-sleep (``pyro.infer.ReweightedWakeSleep``) and REINFORCE with baselines (``TraceGraph_ELBO``) are Pyro's own and
need no layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pyro
import torch
from pyro import poutine
from pyro.distributions import Independent
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import kl_divergence

from .errors import DivergenceError

__all__ = ["AnnealedELBO", "FreeBitsELBO", "IWAE", "LatentScaleMessenger", "linear_warmup"]


class LatentScaleMessenger(Messenger):
    """Multiply the log-density of latent sample sites (all, or those named in ``sites``) by ``scale``."""

    def __init__(self, scale: float, sites: set[str] | None = None):
        super().__init__()
        self.scale, self.sites = scale, sites

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        if self.sites is None or msg["name"] in self.sites:
            msg["scale"] = self.scale * msg["scale"]


def _check_finite(loss: float, objective: str) -> float:
    """Raise :class:`DivergenceError` on a NaN or infinite loss, before any parameter moves (SVI steps after the loss;
    the gradients just accumulated are dropped so that nothing carries over)."""
    if math.isfinite(loss):
        return loss
    for param in pyro.get_param_store().values():
        param.grad = None
    raise DivergenceError(f"{objective}: the loss is {loss}; no parameter was updated")


def linear_warmup(steps: int, start: float = 0.0) -> Callable[[int], float]:
    """β(t) rising linearly from ``start`` to 1 over ``steps`` calls, then 1."""
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    return lambda t: min(1.0, start + (1.0 - start) * t / steps)


class AnnealedELBO(ELBO):
    """A Pyro ELBO with the latent sites' terms scaled by β (a number or a schedule of the step count).

    Args:
        elbo: the Pyro ELBO to wrap (default ``Trace_ELBO()``): ``TraceMeanField_ELBO``, ``RenyiELBO``, ... all work.
        beta: β ≥ 0, or a callable ``step -> β`` (``step`` counts ``loss_and_grads`` calls, i.e. SVI steps).
        sites: latent sites to scale (default: all latent sites).
    """

    def __init__(self, elbo: ELBO | None = None, beta: float | Callable[[int], float] = 1.0, sites=None):
        super().__init__()
        self.elbo = Trace_ELBO() if elbo is None else elbo
        if not callable(beta) and beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta, self.sites = beta, None if sites is None else set(sites)
        self.step = 0

    @property
    def current_beta(self) -> float:
        beta = self.beta(self.step) if callable(self.beta) else self.beta
        if beta < 0:
            raise ValueError(f"the beta schedule gave {beta} < 0 at step {self.step}")
        return float(beta)

    def _get_trace(self, model, guide, args, kwargs):
        return self.elbo._get_trace(self._scaled(model), self._scaled(guide), args, kwargs)

    def _scaled(self, fn):
        return LatentScaleMessenger(self.current_beta, self.sites)(fn)

    def loss(self, model, guide, *args, **kwargs) -> float:
        return self.elbo.loss(self._scaled(model), self._scaled(guide), *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        return self.elbo.differentiable_loss(self._scaled(model), self._scaled(guide), *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.elbo.loss_and_grads(self._scaled(model), self._scaled(guide), *args, **kwargs)
        _check_finite(loss, type(self).__name__)
        self.step += 1
        return loss

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def _traces(model, guide, args, kwargs):
    """A guide trace and the model replayed on it."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    return poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs), guide_trace


def _per_dimension_kl(guide_site: dict, model_site: dict) -> Tensor:
    """KL(q || p) per latent coordinate, batch dims kept: needs Independent(factorized) or factorized distributions."""
    q, p = guide_site["fn"], model_site["fn"]
    q, p = (q.base_dist if isinstance(q, Independent) else q), (p.base_dist if isinstance(p, Independent) else p)
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        raise ValueError(
            f"site {guide_site['name']!r}: no closed-form KL between {type(q).__name__} and {type(p).__name__}; free "
            "bits and KL per dimension need factorized latents such as AmortizedNormal's"
        ) from None


class FreeBitsELBO(ELBO):
    r"""ELBO with free bits: :math:`-\mathbb E_q \log p(x \mid z) + \sum_j \max(\lambda, \overline{\mathrm{KL}}_j)`.

    :math:`\overline{\mathrm{KL}}_j` is coordinate j's closed-form KL averaged over the data plate's entries in the
    minibatch, and the sum is scaled like the plate (N for a subsampled plate of size N). Single sample for the
    reconstruction term (``num_particles`` averages several). With ``free_bits=0`` it equals ``TraceMeanField_ELBO``.
    """

    def __init__(self, free_bits: float = 0.5, num_particles: int = 1, sites=None):
        if free_bits < 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}")
        super().__init__(num_particles=num_particles)
        self.free_bits, self.sites = float(free_bits), None if sites is None else set(sites)

    def _terms(self, model, guide, args, kwargs) -> Tensor:
        model_trace, guide_trace = _traces(model, guide, args, kwargs)
        loss = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                log_prob = site["fn"].log_prob(site["value"])
                loss = loss - scale_and_mask(log_prob, site["scale"], site["mask"]).sum()
                continue
            if self.sites is not None and name not in self.sites:
                raise ValueError(f"FreeBitsELBO(sites={sorted(self.sites)}) cannot handle latent site {name!r}")
            if name not in guide_trace.nodes:
                raise ValueError(f"the guide does not sample the model's latent site {name!r}")
            kl = _per_dimension_kl(guide_trace.nodes[name], site)  # (..., B, D) or (..., B)
            event = guide_trace.nodes[name]["fn"].event_dim
            batch = kl.shape[: kl.dim() - event] if event else kl.shape
            entries = batch.numel()
            mean_kl = kl.reshape(entries, -1).mean(0)  # per coordinate, averaged over the minibatch
            scale = site["scale"]  # N / B for a subsampled plate of B entries
            loss = loss + scale * entries * mean_kl.clamp(min=self.free_bits).sum()
        return loss

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError("FreeBitsELBO computes its terms from its own traces")

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        return sum(self._terms(model, guide, args, kwargs) for _ in range(self.num_particles)) / self.num_particles

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        _check_finite(loss.item(), type(self).__name__)
        loss.backward()  # SVI's param capture collects the parameters and steps them
        return loss.item()


class _PlateScaleMessenger(Messenger):
    """Record the scale of every sample site (a subsampled plate's N/B) and reset it to 1."""

    def __init__(self):
        super().__init__()
        self.scales: set[float] = set()

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        scale = msg["scale"]
        if isinstance(scale, Tensor):
            if scale.numel() != 1:
                raise ValueError(f"IWAE: site {msg['name']!r} has a tensor scale; only one scalar scale is supported")
            scale = scale.item()
        self.scales.add(float(scale))
        msg["scale"] = 1.0


class IWAE(RenyiELBO):
    r"""The importance-weighted bound (Burda et al. 2016), per datum and scaled like a subsampled plate,

    .. math::

        \mathcal L_k = \frac{N}{B} \sum_{i \in \text{batch}} \mathbb E \log \frac1k \sum_{s=1}^k
        \frac{p(x_i, z_{is})}{q(z_{is} \mid x_i)},

    which increases with k towards log p(x). It is Pyro's ``RenyiELBO(alpha=0, num_particles=k)`` run with the plate
    scale taken out of the log-weights and put back on the result: Pyro's ``RenyiELBO`` applies N/B to each
    log-weight *inside* the logsumexp over particles, which for N/B > 1 drifts towards N/B times the best particle's
    log-weight (a different objective). All sample sites must share one scale (local latents in the data plate; with
    global latents the weights do not factor over data points). Raises :class:`DivergenceError` on a NaN or infinite
    loss.
    """

    def __init__(self, k: int, vectorize_particles: bool = True, max_plate_nesting: float = float("inf")):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        super().__init__(
            alpha=0.0, num_particles=k, vectorize_particles=vectorize_particles, max_plate_nesting=max_plate_nesting
        )
        self.k = k

    @staticmethod
    def _scale(messenger: _PlateScaleMessenger) -> float:
        if len(messenger.scales) > 1:
            raise ValueError(
                f"IWAE: the sample sites have different scales {sorted(messenger.scales)}; a subsampled IWAE needs "
                "every site in the data plate (guide global latents with Trace_ELBO, or do not subsample)"
            )
        return next(iter(messenger.scales), 1.0)

    def loss(self, model, guide, *args, **kwargs) -> float:
        messenger = _PlateScaleMessenger()
        loss = super().loss(messenger(model), messenger(guide), *args, **kwargs)
        return self._scale(messenger) * loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        messenger = _PlateScaleMessenger()
        with poutine.trace(param_only=True) as params:
            loss = super().loss_and_grads(messenger(model), messenger(guide), *args, **kwargs)
        scale = self._scale(messenger)
        if (
            scale != 1.0
        ):  # the gradient of the unscaled bound, times N/B (expects zero grads on entry, as SVI leaves them)
            for site in params.trace.nodes.values():
                grad = site["value"].unconstrained().grad
                if grad is not None:
                    grad.mul_(scale)
        return _check_finite(scale * loss, f"IWAE(k={self.k})")
