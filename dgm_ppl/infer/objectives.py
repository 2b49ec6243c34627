r"""Objectives for deep latent-variable models, as thin layers over Pyro's ELBOs.

- :class:`AnnealedELBO` (β-VAE, KL annealing): the log-densities of the latent sites, in model and guide, are scaled by
  β, so that a Pyro ELBO estimates :math:`\mathbb E_q \log p(x \mid z) - \beta\, \mathrm{KL}(q(z \mid x) \| p(z))`
  (Higgins et al. 2017); a schedule β(step), e.g. :func:`linear_warmup`, anneals it from 0 to 1 (Bowman et al. 2016;
  Sønderby et al. 2016).
- :class:`FreeBitsELBO`: :math:`\mathbb E_q \log p(x \mid z) - \sum_j \max(\lambda, \mathbb E_x \mathrm{KL}_j)`, the
  per-dimension KL averaged over the minibatch and floored at λ nats (Kingma et al. 2016), so that the optimizer gains
  nothing by pushing a latent dimension onto the prior; KLs in closed form, for factorized latents.
- :class:`IWAE`: Burda et al.'s k-sample bound, which is Pyro's ``RenyiELBO(alpha=0)``.

JIT (the fast path for directed models): :class:`JitTrace_ELBO`, :class:`JitTraceMeanField_ELBO` and
:class:`JitTraceGraph_ELBO` are Pyro's JIT ELBOs that also take non-tensor positional arguments, so that
``svi.step(x, num_data)`` compiles (Pyro's own raise ``Type 'Tuple[Tensor, int]' cannot be traced``: they trace every
positional argument and need the rest passed by keyword). :class:`AnnealedELBO` over a JIT ELBO passes β as a traced
tensor (no recompilation when β changes), and ``FreeBitsELBO(jit=True)`` and ``IWAE(k, jit=True)`` compile their own
loss. :func:`jit_trace` compiles any such loss function of ``(model, guide, args, kwargs)``.

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
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import kl_divergence

from .errors import DivergenceError

__all__ = [
    "AnnealedELBO",
    "FreeBitsELBO",
    "IWAE",
    "JitTrace_ELBO",
    "JitTraceGraph_ELBO",
    "JitTraceMeanField_ELBO",
    "LatentScaleMessenger",
    "jit_trace",
    "linear_warmup",
]


class LatentScaleMessenger(Messenger):
    """Multiply the log-density of latent sample sites (all, or those named in ``sites``) by ``scale``."""

    def __init__(self, scale: float | Tensor, sites: set[str] | None = None):
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


# -- JIT: non-tensor arguments as static keys ---------------------------------------------------------------------
_STATIC = "_dgm_static"  # reserved keyword: the non-tensor positional arguments, the tensor keywords, the shapes


def _split_args(args: tuple, kwargs: dict) -> tuple[tuple[Tensor, ...], dict]:
    """The tensors to trace (positional ones, then keyword ones by name) and the keywords to compile on.

    The compile key holds the non-tensor positional arguments with their positions (``num_data``), the names of the
    tensor keywords, and every tensor's shape, dtype and device, so that a new batch size compiles anew instead of
    replaying a trace made for another shape.
    """
    if _STATIC in kwargs:
        raise ValueError(f"{_STATIC!r} is a keyword reserved by dgm_ppl's JIT objectives")
    tensors, static = [a for a in args if isinstance(a, Tensor)], []
    for i, a in enumerate(args):
        if not isinstance(a, Tensor):
            try:
                hash(a)
            except TypeError:
                raise ValueError(
                    f"JIT: positional argument {i} ({type(a).__name__}) is neither a tensor (traced) nor hashable (a "
                    "compile key): pass a tensor, or a hashable value such as an int, a tuple or None"
                ) from None
            static.append((i, a))
    names = tuple(sorted(k for k, v in kwargs.items() if isinstance(v, Tensor)))
    tensors += [kwargs[k] for k in names]
    shapes = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
    rest = {k: v for k, v in kwargs.items() if k not in names}
    return tuple(tensors), {**rest, _STATIC: (tuple(static), names, shapes)}


class _Rebound:
    """``fn`` called the way the user called it: the inverse of :func:`_split_args`."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *tensors, **kwargs):
        static, names, _ = kwargs.pop(_STATIC)
        args = list(tensors[: len(tensors) - len(names)])
        for i, a in static:
            args.insert(i, a)
        kwargs.update(zip(names, tensors[len(tensors) - len(names) :]))
        return self.fn(*args, **kwargs)


class _Programs:
    """The rebound (model, guide) of one JIT objective. Pyro's JIT ELBOs keep the programs of their first call in the
    compiled closure, so a second pair is refused rather than silently replaced by the first."""

    def __init__(self, owner: str):
        self.owner, self.pair, self.rebound = owner, None, None

    def __call__(self, model: Callable, guide: Callable) -> tuple[_Rebound, _Rebound]:
        if self.pair is None:
            self.pair, self.rebound = (model, guide), (_Rebound(model), _Rebound(guide))
        elif self.pair != (model, guide):
            raise ValueError(
                f"{self.owner} compiles one (model, guide) pair, and it was first called with {self.pair}: use one "
                "JIT objective per model and guide"
            )
        return self.rebound


class _StaticArgsJit:
    """Mixin for Pyro's JIT ELBOs: non-tensor positional arguments (``num_data``) are compile keys, tensor keywords
    are traced. Each distinct key compiles once; everything else is Pyro's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._programs = _Programs(type(self).__name__)

    def _rebind(self, model, guide, args, kwargs) -> tuple:
        if _STATIC in kwargs and isinstance(model, _Rebound):  # one method of ours calling another
            return model, guide, args, kwargs
        tensors, kwargs = _split_args(args, kwargs)
        return (*self._programs(model, guide), tensors, kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        model, guide, args, kwargs = self._rebind(model, guide, args, kwargs)
        return super().loss(model, guide, *args, **kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        model, guide, args, kwargs = self._rebind(model, guide, args, kwargs)
        return super().differentiable_loss(model, guide, *args, **kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        model, guide, args, kwargs = self._rebind(model, guide, args, kwargs)
        return super().loss_and_grads(model, guide, *args, **kwargs)


class JitTrace_ELBO(_StaticArgsJit, pyro.infer.JitTrace_ELBO):
    """Pyro's :class:`~pyro.infer.JitTrace_ELBO`, also for non-tensor positional arguments (``svi.step(x, N)``).

    Tensors (positional or keyword) are traced; other arguments and every tensor's shape are compile keys (one
    compilation each: a last, smaller batch compiles once more). The program must have a static structure for a given
    key, and Python values computed from tensors (``.item()``, ``if x.sum() > 0``) are frozen into the trace.

    :raises ValueError: for a positional argument that is neither a tensor nor hashable, or a second (model, guide)
        pair.
    """


class JitTraceMeanField_ELBO(_StaticArgsJit, pyro.infer.JitTraceMeanField_ELBO):
    """Pyro's :class:`~pyro.infer.JitTraceMeanField_ELBO` (analytic KLs where available), with the argument handling of
    :class:`JitTrace_ELBO`."""


class JitTraceGraph_ELBO(_StaticArgsJit, pyro.infer.JitTraceGraph_ELBO):
    """Pyro's :class:`~pyro.infer.JitTraceGraph_ELBO` (REINFORCE with baselines, e.g. for
    :class:`~dgm_ppl.models.SigmoidBeliefNet`), with the argument handling of :class:`JitTrace_ELBO`."""


_JIT_ELBOS = (pyro.infer.JitTrace_ELBO, pyro.infer.JitTraceMeanField_ELBO, pyro.infer.JitTraceGraph_ELBO)


class _JitLoss:
    """``fn(model, guide, args, kwargs)`` compiled by :func:`pyro.ops.jit.trace` with :func:`_split_args`' keys."""

    def __init__(self, fn: Callable, owner: str, ignore_warnings: bool = False, jit_options: dict | None = None):
        self.fn, self.ignore_warnings, self.jit_options = fn, ignore_warnings, jit_options
        self._programs, self._compiled = _Programs(owner), None

    def __call__(self, model: Callable, guide: Callable, args: tuple, kwargs: dict):
        model, guide = self._programs(model, guide)
        tensors, kwargs = _split_args(args, kwargs)
        if self._compiled is None:
            fn = self.fn

            def traced(*tensors, **kwargs):
                return fn(model, guide, tensors, kwargs)

            self._compiled = pyro.ops.jit.trace(
                traced, ignore_warnings=self.ignore_warnings, jit_options=self.jit_options
            )
        return self._compiled(*tensors, **kwargs)


def jit_trace(fn: Callable, *, ignore_warnings: bool = False, jit_options: dict | None = None) -> Callable:
    """Compile a loss ``fn(model, guide, args, kwargs) -> Tensor or tuple of Tensors`` with
    :func:`pyro.ops.jit.trace`, as :class:`JitTrace_ELBO` does: tensors in ``args`` and ``kwargs`` are traced, other
    arguments and the tensors' shapes are compile keys, and parameters come from Pyro's param store.

    :param fn: the function to compile; its programs are called as ``model(*args, **kwargs)``.
    :param ignore_warnings: silence torch's tracer warnings.
    :param jit_options: passed to :func:`torch.jit.trace`.
    :returns: a function of ``(model, guide, args, kwargs)`` for one (model, guide) pair.
    """
    return _JitLoss(fn, getattr(fn, "__qualname__", "jit_trace"), ignore_warnings, jit_options)


class AnnealedELBO(ELBO):
    """A Pyro ELBO with the latent sites' terms scaled by β (a number or a schedule of the step count).

    Over a JIT ELBO (:class:`JitTrace_ELBO`, or Pyro's own with ``num_data`` passed by keyword) β is passed to the
    compiled program as a tensor, so a schedule changes it at every step without recompiling.

    :param elbo: the Pyro ELBO to wrap (default ``Trace_ELBO()``): ``TraceMeanField_ELBO``, ``RenyiELBO``, the JIT
        ELBOs, ... all work.
    :param beta: β ≥ 0, or a callable ``step -> β`` (``step`` counts ``loss_and_grads`` calls, i.e. SVI steps).
    :param sites: latent sites to scale (default: all latent sites).
    """

    def __init__(self, elbo: ELBO | None = None, beta: float | Callable[[int], float] = 1.0, sites=None):
        super().__init__()
        self.elbo = Trace_ELBO() if elbo is None else elbo
        if not callable(beta) and beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.beta, self.sites = beta, None if sites is None else set(sites)
        self.step = 0
        self._jit = isinstance(self.elbo, _JIT_ELBOS)
        self._scaled_programs: dict = {}

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

    def _call(self, method: str, model, guide, args, kwargs):
        if not self._jit:
            return getattr(self.elbo, method)(self._scaled(model), self._scaled(guide), *args, **kwargs)
        # the same two programs at every call, with β as their first (traced) argument
        programs = self._scaled_programs.get((model, guide))
        if programs is None:
            sites = self.sites

            def scaled(fn):
                return lambda beta, *a, **k: LatentScaleMessenger(beta, sites)(fn)(*a, **k)

            programs = self._scaled_programs[model, guide] = (scaled(model), scaled(guide))
        like = next((a for a in (*args, *kwargs.values()) if isinstance(a, Tensor) and a.is_floating_point()), None)
        beta = torch.tensor(
            self.current_beta,
            dtype=torch.get_default_dtype() if like is None else like.dtype,
            device=None if like is None else like.device,
        )
        return getattr(self.elbo, method)(*programs, beta, *args, **kwargs)

    def loss(self, model, guide, *args, **kwargs) -> float:
        return self._call("loss", model, guide, args, kwargs)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        return self._call("differentiable_loss", model, guide, args, kwargs)

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self._call("loss_and_grads", model, guide, args, kwargs)
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

    :param free_bits: λ ≥ 0, in nats per latent coordinate.
    :param num_particles: samples averaged per step.
    :param sites: the latent sites (default: all; any other latent site raises ``ValueError``).
    :param jit: compile the loss with :func:`jit_trace` (non-tensor arguments such as ``num_data`` are compile keys).
    :param ignore_jit_warnings: silence torch's tracer warnings.
    :param jit_options: passed to :func:`torch.jit.trace`.
    """

    def __init__(
        self,
        free_bits: float = 0.5,
        num_particles: int = 1,
        sites=None,
        *,
        jit: bool = False,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
    ):
        if free_bits < 0:
            raise ValueError(f"free_bits must be >= 0, got {free_bits}")
        super().__init__(num_particles=num_particles, ignore_jit_warnings=ignore_jit_warnings, jit_options=jit_options)
        self.free_bits, self.sites = float(free_bits), None if sites is None else set(sites)
        options = {"ignore_warnings": ignore_jit_warnings, "jit_options": jit_options}
        self._jit = jit_trace(self._loss, **options) if jit else None

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

    def _loss(self, model, guide, args, kwargs) -> Tensor:
        return sum(self._terms(model, guide, args, kwargs) for _ in range(self.num_particles)) / self.num_particles

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The loss as a tensor (compiled with ``jit=True``)."""
        return (self._loss if self._jit is None else self._jit)(model, guide, args, kwargs)

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

    :param k: particles per datum.
    :param vectorize_particles: draw the k particles in one vectorized pass.
    :param max_plate_nesting: as in Pyro's ELBOs (give it with ``vectorize_particles`` to skip a guessing run).
    :param jit: compile the bound with :func:`jit_trace` (non-tensor arguments such as ``num_data`` are compile
        keys). Score-function (non-reparametrized) latents get no gradient at α = 0, with or without it.
    :param ignore_jit_warnings: silence torch's tracer warnings.
    :param jit_options: passed to :func:`torch.jit.trace`.
    """

    def __init__(
        self,
        k: int,
        vectorize_particles: bool = True,
        max_plate_nesting: float = float("inf"),
        *,
        jit: bool = False,
        ignore_jit_warnings: bool = False,
        jit_options: dict | None = None,
    ):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        super().__init__(
            alpha=0.0,
            num_particles=k,
            vectorize_particles=vectorize_particles,
            max_plate_nesting=max_plate_nesting,
        )
        self.k = k
        self._jit = (
            jit_trace(self._bound, ignore_warnings=ignore_jit_warnings, jit_options=jit_options) if jit else None
        )

    @staticmethod
    def _scale(messenger: _PlateScaleMessenger) -> float:
        if len(messenger.scales) > 1:
            raise ValueError(
                f"IWAE: the sample sites have different scales {sorted(messenger.scales)}; a subsampled IWAE needs "
                "every site in the data plate (guide global latents with Trace_ELBO, or do not subsample)"
            )
        return next(iter(messenger.scales), 1.0)

    def _bound(self, model, guide, args, kwargs) -> tuple[Tensor, Tensor]:
        """(loss, surrogate loss): the negative bound, and a tensor whose gradient is the bound's (for the JIT path;
        the arithmetic of ``RenyiELBO.loss_and_grads`` at α = 0, without its host syncs). The plate scale is a
        constant of the trace: it depends on the batch size and ``num_data``, both compile keys."""
        messenger = _PlateScaleMessenger()
        log_w, surrogate = [], []
        for model_trace, guide_trace in self._get_traces(messenger(model), messenger(guide), args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            w = s = 0.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] != "sample":
                        continue
                    log_prob = torch_sum(site["log_prob"], sum_dims)
                    w = w + sign * log_prob.detach()
                    if sign > 0 or not is_identically_zero(site["score_parts"].entropy_term):
                        s = s + sign * log_prob  # reparametrized sites; α = 0 drops the score-function term
            log_w.append(w)
            surrogate.append(s)
        vectorized = self.vectorize_particles and self.k > 1
        log_w, surrogate = (log_w[0], surrogate[0]) if vectorized else (torch.stack(log_w), torch.stack(surrogate))
        log_mean = torch.logsumexp(log_w, 0, keepdim=True) - math.log(self.k)
        weights = (log_w - log_mean).exp()
        scale = self._scale(messenger)
        return -scale * log_mean.sum(), -scale * (weights * surrogate).sum() / self.k

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """The negative bound as a tensor with the bound's gradient (what :meth:`loss_and_grads` accumulates), for
        a caller that runs the backward pass itself, such as :class:`~dgm_ppl.infer.AutocastLoss`."""
        loss, surrogate = (self._jit or self._bound)(model, guide, args, kwargs)
        _check_finite(loss.item(), f"IWAE(k={self.k})")
        return loss.detach() + (surrogate - surrogate.detach())

    def loss(self, model, guide, *args, **kwargs) -> float:
        if self._jit is not None:
            with torch.no_grad():
                return self._jit(model, guide, args, kwargs)[0].item()
        messenger = _PlateScaleMessenger()
        loss = super().loss(messenger(model), messenger(guide), *args, **kwargs)
        return self._scale(messenger) * loss

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        if self._jit is not None:
            loss, surrogate = self._jit(model, guide, args, kwargs)
            surrogate.backward()
            return _check_finite(loss.item(), f"IWAE(k={self.k})")
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
