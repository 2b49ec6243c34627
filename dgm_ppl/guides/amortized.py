r"""Amortized guides for local latents: an encoder network maps each datum to its own posterior approximation.

For a model with local latents :math:`z_i` in a plate over the data, the guide

.. math::

    q_\phi(z \mid x) = \prod_i q(z_i;\ \lambda_\phi(x_i)), \qquad h_i = \mathrm{encoder}(x_i)

shares one network over all data points (amortization, Kingma & Welling 2014; Rezende et al. 2014), so a new point
costs one forward pass instead of an optimization. ``AmortizedNormal`` is the diagonal Gaussian
:math:`N(\mu(h), \mathrm{diag}\,\sigma^2(h))`, ``AmortizedMultivariateNormal`` the full-rank
:math:`N(\mu(h), L(h) L(h)^\top)` with a Cholesky factor L whose diagonal is softplus-positive. Both are Pyro
autoguides (:class:`~pyro.infer.autoguide.AutoGuide`), callable with the model's signature, and they compose with other
autoguides for the global latents in an :class:`~pyro.infer.autoguide.AutoGuideList`. Discrete latents have
:class:`~dgm_ppl.guides.AmortizedCategorical`.

Semi-amortized inference (Kim et al. 2018; Krishnan et al. 2018): with ``refine_steps=K`` the encoder's output
:math:`\lambda_0 = \lambda_\phi(x)` (the local parameters: means and scales, or the Cholesky factor) is only the start;
K gradient steps on the ELBO of the batch refine it per datum before the guide samples,

.. math::

    \lambda_{k+1} = \lambda_k + \eta\, \mathrm{Adam}\big(\nabla_\lambda \mathrm{ELBO}(x_i; \lambda_k)\big),

with Adam's elementwise normalization (one step size η suits every datum and curvature). This closes part of the
amortization gap (the encoder's error on top of the family's). By default the update is
first-order: the encoder gets the gradient at :math:`\lambda_K` as if :math:`\lambda_K = \lambda_0 + \text{const}`;
``refine_backprop=True`` differentiates through the K steps (SA-VAE; second order, costlier).

**Conventions.** The data batch x is the model's first argument, with the data plate over its first dimension: a
sized plate ``pyro.plate("data", x.shape[0])``, a subsampled one ``pyro.plate("data", N, subsample=x)``, or Pyro's
unsized ``pyro.plate("data")`` (its size is the batch's; combine guides for such a model in an
:class:`AmortizedGuideList`, since Pyro's ``AutoGuideList`` cannot create unsized plates). The guide finds the plate,
the event shape and the support of each site from one run of the model; a continuous site whose support is not the
real line is reached through ``biject_to(support)``, as in Pyro's autoguides.

**What the encoder sees** (``encoder_args``). By default the model's first argument: ``encoder(x)``. An integer n
gives it the first n arguments (``encoder(x, y)`` for a conditional VAE ``model(x, y)``); a sequence lists them one
by one, each an argument position (int), an argument name (str, positional or keyword in the model's signature), or
the name of another **sample site** of the model. A site's value is the one sampled earlier in the same guide (the
parts of an :class:`AmortizedGuideList` run in order and see what the earlier parts sampled), or its observed value
when the model observes it in this call (for a name that is both a site and an argument, the argument's value stands
in for the observed one when it is not None). So the M2 guide
:math:`q(y \mid x)\, q(z \mid x, y)` of a semi-supervised VAE is::

    guide = AmortizedGuideList(model)
    guide.append(AmortizedCategorical(model, encoder_y, site="y", enumerate="parallel"))
    guide.append(AmortizedNormal(model, ConcatEncoder(net), site="z", encoder_args=("x", "y")))

*Shape contract.* Arguments reach the encoder as the model got them, batch first: ``(B, ...)``. A site's value
reaches it with its batch dimensions ending at the data dimension (the size-1 dims of plates to the right of the data
plate are squeezed out) followed by its event dims, so ``(*extra, B or 1, *event_shape)``, where ``extra`` are the
dims that enumeration (``TraceEnum_ELBO``) or vectorized particles put on the left: an enumerated one-hot y of
10 classes is ``(10, 1, 10)``. The encoder must broadcast its inputs and return features ``(*extra, B, F)``
(:class:`ConcatEncoder` does this for inputs with one feature dim); the guide's sites then get the batch shape
``(*extra, B)``, which is what the model's enumerated or vectorized sites expect.

**Missing inputs** (``fallback``). When an encoder input is missing from a call or ``None`` (Pyro's CVAE calls
``model(xs, ys=None)`` at test time), the guide cannot encode. With ``fallback="prior"`` (the default) it samples
each site from the model's own conditional prior :math:`p(z \mid \text{inputs})`, read by running the model (hidden
from the enclosing inference, conditioned on what the guide has sampled so far) up to that site; a module ``fallback``
is a second encoder of the inputs that are present (in order), whose features of the same size feed the same heads;
``fallback=None`` raises a ``ValueError``. The data batch x itself is never missing.

**The JIT fast path.** The guides (diagonal, full-rank, every flow, and :class:`~dgm_ppl.guides.AmortizedCategorical`
sampled by ``Trace_ELBO``) run under :class:`dgm_ppl.infer.JitTrace_ELBO` and its siblings, with the same loss as the
eager ELBO at the same seed. Their shape checks run on the untraced first call for each batch shape and are skipped
while tracing. Semi-amortized refinement cannot be traced: with ``refine_steps > 0`` a JIT ELBO raises a
``ValueError`` (use ``Trace_ELBO``).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoGuide, AutoGuideList
from pyro.poutine.runtime import NonlocalExit
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn
from torch.distributions import biject_to, constraints

__all__ = [
    "AmortizedGuide",
    "AmortizedGuideList",
    "AmortizedNormal",
    "AmortizedMultivariateNormal",
    "ConcatEncoder",
]


_BETAS = (0.9, 0.999)  # Adam's, for the refinement steps
_LOC_INITS = ("torch", "small")
_SCALE_TRANSFORMS = ("softplus", "exp")
_NO_JIT_REFINE = (
    "semi-amortized refinement (refine_steps > 0) cannot run under a JIT ELBO: its inner gradient steps call "
    "torch.autograd.grad on the batch's ELBO, which torch.jit.trace cannot record (it would freeze the refined "
    "parameters as constants); use Trace_ELBO"
)


def _inverse_softplus(y: float) -> float:
    return y + torch.log(-torch.expm1(torch.tensor(-y))).item()


@functools.lru_cache(maxsize=64)
def _tril_index(d: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Rows, columns and diagonal mask of the lower triangle of a d x d matrix (cached: built once per size)."""
    index = torch.tril_indices(d, d, device=device)
    return index[0], index[1], index[0] == index[1]


def _shape(value: Any) -> Any:
    return tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__


class ConcatEncoder(nn.Module):
    """An encoder of several inputs with one feature dim each: broadcasts their batch dims, concatenates their features
    and applies ``net``, e.g. ``(B, D)`` and an enumerated ``(C, 1, C)`` give ``net`` a ``(C, B, D + C)`` tensor.

    :param nn.Module net: the network applied to the concatenation (features last).
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, *inputs: Tensor) -> Tensor:
        batch = torch.broadcast_shapes(*(t.shape[:-1] for t in inputs))
        dtype = torch.result_type(*inputs) if all(t.is_floating_point() for t in inputs) else torch.get_default_dtype()
        return self.net(torch.cat([t.to(dtype).expand(batch + t.shape[-1:]) for t in inputs], dim=-1))


class AmortizedGuideList(AutoGuideList):
    """An :class:`~pyro.infer.autoguide.AutoGuideList` whose parts see what the earlier parts sampled.

    Pyro's ``AutoGuideList`` calls its parts one after the other with the model's arguments only; here each part's
    values (and the observed values the amortized parts find) are also kept for the rest of the call, so a later
    amortized part can encode them (``encoder_args=("x", "y")``). Unsized plates (``pyro.plate("data")``), which
    ``AutoGuideList`` cannot create, are created unsized, as in the model.

    :param callable model: the Pyro model.
    :param callable create_plates: as in :class:`~pyro.infer.autoguide.AutoGuide`.
    """

    def __init__(self, model, *, create_plates=None):
        super().__init__(model, create_plates=create_plates)
        self._values: dict[str, Tensor] | None = None

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        self._create_plates(*args, **kwargs)
        result: dict[str, Tensor] = {}
        self._values = {}
        try:
            for part in self:
                values = part(*args, **kwargs)
                result.update(values)
                self._values.update(values)
        finally:
            self._values = None
        return result

    def _create_plates(self, *args, **kwargs):
        frames = self._prototype_frames
        unsized = {n: f for n, f in frames.items() if f.size == -1}
        self._prototype_frames = {n: f for n, f in frames.items() if n not in unsized}
        try:
            plates = super()._create_plates(*args, **kwargs)
        finally:
            self._prototype_frames = frames
        for name, frame in unsized.items():
            plates.setdefault(name, pyro.plate(name, dim=frame.dim))
        return plates


def _normalize_inputs(encoder_args) -> tuple[int | str, ...]:
    if isinstance(encoder_args, str):
        encoder_args = (encoder_args,)
    if isinstance(encoder_args, int) and not isinstance(encoder_args, bool):
        if encoder_args < 1:
            raise ValueError(f"encoder_args must be a positive integer or a sequence, got {encoder_args!r}")
        return tuple(range(encoder_args))
    if isinstance(encoder_args, Sequence) and not isinstance(encoder_args, str) and encoder_args:
        entries = tuple(encoder_args)
        if all(isinstance(e, str) or (isinstance(e, int) and not isinstance(e, bool) and e >= 0) for e in entries):
            return entries
    raise ValueError(
        "encoder_args must be a positive integer (the model's first n arguments) or a non-empty sequence of argument "
        f"positions, argument names and site names, got {encoder_args!r}"
    )


class AmortizedGuide(AutoGuide):
    """Base class: finds the local sites' plate, shapes and supports, gathers the encoder's inputs, samples each site.

    Subclasses implement :meth:`_build` (create the heads, given the feature size), :meth:`local_parameters` (the
    per-datum parameters λ(h) of one site, a dict of tensors with leading dim B) and :meth:`distribution` or, for the
    continuous guides, :meth:`base_distribution` (the distribution of the site's unconstrained latent given h and λ,
    batch shape ``(B,)`` and one event dim). See the module's notes for ``encoder_args`` and ``fallback``.

    :param callable model: the Pyro model; its first argument is the data batch.
    :param nn.Module encoder: network from the encoder's inputs (``encoder_args``) to features of shape (B, F).
    :param site: the local latent site(s) to guide.
    :type site: str or Sequence[str]
    :param init_scale: the guide's initial standard deviation (continuous guides): the scale head starts with small
        weights and the bias that gives this scale; None keeps PyTorch's initialization of the head (what a
        hand-written ``nn.Linear`` head gets).
    :type init_scale: float or None
    :param str loc_init: the location heads' initialization: ``"torch"`` (default: PyTorch's ``nn.Linear``
        initialization, as in a hand-written guide) or ``"small"`` (weights shrunk to at most 1e-2 and a zero bias, so
        that q starts near N(0, init_scale²) for every x: the default of dgm_ppl 0.1.0, which learns markedly slower,
        about 11 nats per image behind on Pyro's VAE example; see ``benchmarks/vae_guide_gap.py``).
    :param encoder_args: what the encoder takes: the model's first n arguments, or a sequence of argument positions,
        argument names and site names.
    :type encoder_args: int or Sequence[int or str]
    :param fallback: what the guide does when an encoder input is missing or None: ``"prior"`` (sample the model's
        conditional prior of each site), a second encoder (``nn.Module``) of the inputs that are present, or None
        (raise).
    :param int refine_steps: K > 0 makes the guide semi-amortized (K gradient steps on λ per call; see the notes);
        eager ELBOs only.
    :param float refine_lr: the step size η of the refinement's Adam updates (per datum and coordinate).
    :param bool refine_backprop: differentiate through the refinement instead of the first-order update.
    :param callable create_plates: as in Pyro's autoguides, ``create_plates(*args, **kwargs)`` returns the data plate
        for this call: pass it when the subsampling changes between calls (without it the plate's full size is the
        one seen at the first call, and only the batch size follows the data).
    :raises ValueError: for bad options; at the first call, for a site that is not a local latent of a supported kind;
        under a JIT ELBO, for ``refine_steps > 0``.
    """

    _may_be_observed = False  # the discrete guide checks at each call whether the model observes its sites

    def __init__(
        self,
        model,
        encoder: nn.Module,
        site: str | Sequence[str] = "z",
        *,
        init_scale: float | None = 0.1,
        loc_init: str = "torch",
        encoder_args: int | Sequence[int | str] = 1,
        fallback: str | nn.Module | None = "prior",
        refine_steps: int = 0,
        refine_lr: float = 0.05,
        refine_backprop: bool = False,
        create_plates=None,
    ):
        super().__init__(model, create_plates=create_plates)
        if isinstance(refine_steps, bool) or not isinstance(refine_steps, int) or refine_steps < 0:
            raise ValueError(f"refine_steps must be a non-negative integer, got {refine_steps!r}")
        if not refine_lr > 0:
            raise ValueError(f"refine_lr must be positive, got {refine_lr}")
        self.refine_steps, self.refine_lr, self.refine_backprop = refine_steps, float(refine_lr), refine_backprop
        self._inputs = _normalize_inputs(encoder_args)
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module mapping the data batch to features, got {type(encoder)}")
        if not (fallback is None or fallback == "prior" or isinstance(fallback, nn.Module)):
            raise ValueError(f"fallback must be 'prior', an nn.Module or None, got {fallback!r}")
        if init_scale is not None and not init_scale > 0:
            raise ValueError(f"init_scale must be positive or None, got {init_scale}")
        if loc_init not in _LOC_INITS:
            raise ValueError(f"loc_init must be one of {_LOC_INITS}, got {loc_init!r}")
        self.encoder = encoder  # a PyroModule registers its children's parameters as Pyro params when used
        self.fallback = fallback
        self.sites = (site,) if isinstance(site, str) else tuple(site)
        if not self.sites:
            raise ValueError("site must name at least one latent site")
        self.init_scale, self.loc_init, self.encoder_args = init_scale, loc_init, encoder_args
        self._built = False

    # the prototype keeps observed sites too: a semi-supervised site may be observed at the first call
    _prototype_hide_fn = staticmethod(lambda msg: msg["type"] != "sample" or site_is_subsample(msg))

    # -- set-up from one run of the model ---------------------------------------------------------------------
    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        if not args or not isinstance(args[0], Tensor) or args[0].dim() == 0:
            raise ValueError("the model's first argument must be the data batch x of shape (B, ...)")
        batch = args[0].shape[0]
        trace = self.prototype_trace
        self._frame, self._shapes, self._supports, self._transforms = None, {}, {}, {}
        for name in self.sites:
            site = trace.nodes.get(name)
            latent = [n for n, _ in trace.iter_stochastic_nodes()]
            if site is None or site["type"] != "sample" or (site["is_observed"] and not self._may_be_observed):
                raise ValueError(
                    f"the model has no latent sample site {name!r} (observed sites are not guided); its latent sites "
                    f"are {latent}"
                )
            frame = self._data_frame(name, site, batch)
            if self._frame is not None and frame.name != self._frame.name:
                raise ValueError(f"sites {self.sites} are in different plates ({self._frame.name!r}, {frame.name!r})")
            self._frame = frame
            self._check_site(name, site)
        self._batch_ndim = -self._frame.dim
        self._site_inputs = self._classify_inputs()
        # the common case, decided once: the encoder sees positional arguments only and nothing needs the model run
        self._positional = (
            max(self._inputs) + 1 if all(isinstance(e, int) for e in self._inputs) and not self._may_be_observed else 0
        )
        if self.refine_steps:
            unguided = [n for n, _ in trace.iter_stochastic_nodes() if n not in self.sites]
            if unguided:
                raise ValueError(
                    f"refine_steps > 0 optimizes the ELBO of this guide alone, so it must guide every latent site; "
                    f"{unguided} are not guided (train global latents without refinement, or list them in site=)"
                )
            if self._site_inputs:
                raise ValueError("refine_steps > 0 needs an encoder of the model's arguments only (no site inputs)")

    def _data_frame(self, name: str, site: dict, batch: int):
        """The site's frame of the data plate: size B, or unsized with the value's dim there of size B."""
        value, fn = site["value"], site["fn"]
        batch_shape = value.shape[: value.dim() - fn.event_dim]
        frames = [
            f
            for f in site["cond_indep_stack"]
            if f.vectorized
            and (f.size == batch or (f.size == -1 and len(batch_shape) >= -f.dim and batch_shape[f.dim] == batch))
        ]
        if not frames:
            raise ValueError(
                f"site {name!r} is not in a plate over the data (size {batch}, the first dimension of the model's "
                "first argument): an amortized guide is for local latents; use an autoguide for global ones"
            )
        frame = frames[0]
        other = [s for i, s in enumerate(batch_shape) if i != len(batch_shape) + frame.dim and s != 1]
        if other:
            raise ValueError(
                f"site {name!r} has batch shape {tuple(batch_shape)}: besides the data plate, its batch dims must "
                "be 1 (move other dims to the event with .to_event(), or guide nested plates by hand)"
            )
        return frame

    def _check_site(self, name: str, site: dict) -> None:
        """A continuous latent: records its event shape and support."""
        fn = site["fn"]
        if fn.support.is_discrete:
            raise ValueError(
                f"site {name!r} is discrete (support {fn.support}): {type(self).__name__} is for continuous latents; "
                "guide it with AmortizedCategorical (before this guide, in an AmortizedGuideList)"
            )
        self._shapes[name] = tuple(fn.event_shape)
        self._supports[name] = fn.support
        # from the flat unconstrained vector to the site: built once (stateless transforms), reused at every call
        transforms = []
        if self._shapes[name] != (self._size(name),):
            transforms.append(dist.transforms.ReshapeTransform((self._size(name),), self._shapes[name]))
        support = fn.support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if support is not constraints.real:
            transforms.append(biject_to(fn.support))
        self._transforms[name] = transforms

    def _classify_inputs(self) -> dict[str, int]:
        """Checks the string entries of ``encoder_args``; returns the site entries with their event dims."""
        nodes = self.prototype_trace.nodes
        sites = {n: s for n, s in nodes.items() if s["type"] == "sample"}
        try:
            params = list(inspect.signature(self.model).parameters)
        except (TypeError, ValueError):
            params = []
        site_inputs, self._also_argument = {}, set()
        for entry in self._inputs:
            if not isinstance(entry, str):
                continue
            if entry in self.sites:
                raise ValueError(f"encoder_args names {entry!r}, a site of this guide: its encoder cannot see it")
            if entry in sites:  # a site; when also an argument, the argument's value is used if the guide has none
                site_inputs[entry] = sites[entry]["fn"].event_dim
                if entry in params:
                    self._also_argument.add(entry)
            elif entry not in params:
                raise ValueError(
                    f"encoder_args names {entry!r}, which is neither a sample site of the model ({sorted(sites)}) nor "
                    f"one of its arguments ({params})"
                )
        return site_inputs

    # -- the encoder's inputs ---------------------------------------------------------------------------------
    def _shared(self) -> dict[str, Tensor] | None:
        """The values sampled so far in this call of the enclosing :class:`AmortizedGuideList`, if any."""
        master = self.master() if self.master is not None else None
        return getattr(master, "_values", None)

    def _arguments(self, args: tuple, kwargs: dict) -> list[Tensor | None]:
        """The argument inputs of the encoder (None where missing; site entries are filled in later)."""
        bound = None
        values: list[Tensor | None] = []
        for entry in self._inputs:
            if isinstance(entry, int) and entry < len(args):
                values.append(args[entry])
                continue
            if isinstance(entry, str) and entry in self._site_inputs and entry not in self._also_argument:
                values.append(None)
                continue
            if bound is None:
                try:
                    bound = inspect.signature(self.model).bind_partial(*args, **kwargs)
                    bound.apply_defaults()
                    bound = dict(bound.arguments)
                except (TypeError, ValueError):
                    bound = dict(kwargs)
            if isinstance(entry, int):
                names = list(bound)
                values.append(bound[names[entry]] if entry < len(names) else None)
            else:
                values.append(bound.get(entry))
        return values

    def _run_model_to(self, names: Sequence[str], args: tuple, kwargs: dict, known: dict) -> dict[str, dict]:
        """Runs the model, hidden from the enclosing inference and conditioned on ``known``, until all of ``names``
        have been reached; returns their messages (distribution, observed or not, value)."""
        found: dict[str, dict] = {}
        wanted = set(names)

        def escape_fn(msg) -> bool:
            if msg["type"] == "sample" and msg["name"] in wanted:
                found[msg["name"]] = msg
            return wanted <= set(found)

        known = {k: v for k, v in known.items() if k not in wanted}
        model = poutine.condition(self.model, data=known) if known else self.model
        with poutine.block():
            try:
                poutine.escape(model, escape_fn=escape_fn)(*args, **kwargs)
            except NonlocalExit:
                pass
        missing = wanted - set(found)
        if missing:
            raise ValueError(f"the model did not reach site(s) {sorted(missing)} in this call")
        return found

    def _as_input(self, name: str, value: Tensor) -> Tensor:
        """A site value for the encoder: batch dims ending at the data dim, then the event dims."""
        event_dim = self._site_inputs[name]
        batch_shape = value.shape[: value.dim() - event_dim]
        right = self._batch_ndim - 1
        if right and len(batch_shape) >= self._batch_ndim:
            if not torch.jit.is_tracing() and any(s != 1 for s in batch_shape[len(batch_shape) - right :]):
                raise ValueError(
                    f"site {name!r} has a value of shape {tuple(value.shape)} with non-singleton dims "
                    "right of the data plate: it cannot be an encoder input"
                )
            value = value.reshape(batch_shape[: len(batch_shape) - right] + value.shape[value.dim() - event_dim :])
        return value

    def _check_features(self, h: Any, batch: int, extra: bool) -> Tensor:
        if torch.jit.is_tracing():  # checked on the untraced first call for this shape
            return h
        ok = isinstance(h, Tensor) and (h.dim() >= 2 if extra else h.dim() == 2) and h.shape[-2] == batch
        if not ok:
            raise ValueError(
                f"the encoder must map the data batch of {batch} to features of shape (B, F) with B = {batch}"
                + (" (or (..., B, F) when it sees enumerated or vectorized site values)" if extra else "")
                + f"; it returned {_shape(h)}"
            )
        return h

    # -- the guide's distributions ----------------------------------------------------------------------------
    def _size(self, name: str) -> int:
        return int(torch.Size(self._shapes[name]).numel())

    def _build(self, features: int) -> None:
        raise NotImplementedError

    def _ensure_built(self, h: Tensor) -> None:
        if not self._built:
            self._build(h.shape[-1])
            self.to(device=h.device, dtype=h.dtype)  # heads and flow steps where the encoder's output is
            self._built = True

    def _build_loc(self, features: int) -> None:
        """Affine heads for the means: PyTorch's initialization, or (``loc_init="small"``) started near 0."""
        self.loc = nn.ModuleDict({n: nn.Linear(features, self._size(n)) for n in self.sites})
        if self.loc_init == "small":
            with torch.no_grad():
                for n in self.sites:
                    self.loc[n].weight.mul_(0.1).clamp_(-1e-2, 1e-2)
                    self.loc[n].bias.zero_()

    def local_parameters(self, name: str, h: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def base_distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        raise NotImplementedError

    def distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        """q(z_i | x_i) of one site, batch shape (B,), on the site's support and event shape (λ = ``local`` if given,
        else the encoder's).

        :param str name: the site.
        :param Tensor h: the encoder's features, ``(..., B, F)``.
        :param dict local: the local parameters λ (default: the heads' output at h).
        :returns: the guide's distribution of the site.
        """
        q = self.base_distribution(name, h, local)
        transforms = self._transforms[name]
        if not transforms:
            return q
        if isinstance(q, dist.TransformedDistribution):  # one flat chain of transforms
            return dist.TransformedDistribution(q.base_dist, [*q.transforms, *transforms])
        return dist.TransformedDistribution(q, transforms)

    def _infer(self, name: str) -> dict:
        return {}

    def _prepare(
        self, args: tuple, kwargs: dict, check_observed: bool
    ) -> tuple[dict[str, dist.TorchDistribution], dict[str, Tensor]]:
        """The guide's distribution of each latent site in this call, and the observed values of its sites."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        batch = args[0].shape[0]
        if self._positional and self.master is None and len(args) >= self._positional:
            inputs = [args[i] for i in self._inputs]
            if all(v is not None for v in inputs):  # no site inputs, no fallback, nothing observed: encode
                return self._encoded(self._check_features(self.encoder(*inputs), batch, False), args, kwargs), {}
        shared = self._shared()
        inputs = self._arguments(args, kwargs)
        given = {e: v for e, v in zip(self._inputs, inputs) if isinstance(e, str) and e in self._site_inputs}
        for name in given:
            if shared is not None and name in shared:
                given[name] = shared[name]
        needed = [s for s, v in given.items() if v is None]
        missing = any(v is None for e, v in zip(self._inputs, inputs) if e not in self._site_inputs)
        probe = (
            list(self.sites)
            if (check_observed and self._may_be_observed) or (missing and self.fallback == "prior")
            else []
        )
        found = self._run_model_to(probe + needed, args, kwargs, shared or {}) if probe or needed else {}
        for s in needed:
            if not found[s]["is_observed"]:
                raise ValueError(
                    f"encoder_args names site {s!r}, which is latent in this call but was not sampled earlier in this "
                    "guide: guide it in an earlier part of an AmortizedGuideList (Pyro's AutoGuideList passes no "
                    "values between its parts)"
                )
        observed = {
            n: found[n]["value"] for n in self.sites if check_observed and n in found and found[n]["is_observed"]
        }
        if shared is not None:
            shared.update(observed)
        latent = [n for n in self.sites if n not in observed]
        if not latent:
            return {}, observed
        for i, entry in enumerate(self._inputs):
            if entry in self._site_inputs:
                value = given[entry] if given[entry] is not None else found[entry]["value"]
                inputs[i] = self._as_input(entry, value)
        if missing:
            if self.fallback is None:
                absent = [e for e, v in zip(self._inputs, inputs) if v is None]
                raise ValueError(f"the encoder's inputs {absent} are missing or None in this call (fallback=None)")
            if self.fallback == "prior":
                return {n: found[n]["fn"] for n in latent}, observed
            h = self._check_features(self.fallback(*(v for v in inputs if v is not None)), batch, bool(needed))
        else:
            h = self._check_features(self.encoder(*inputs), batch, bool(self._site_inputs))
        return self._encoded(h, args, kwargs, latent, refine=not missing), observed

    def _encoded(
        self, h: Tensor, args: tuple, kwargs: dict, latent: Sequence[str] | None = None, refine: bool = True
    ) -> dict[str, dist.TorchDistribution]:
        """The guide's distribution of each latent site given the encoder's features h."""
        self._ensure_built(h)
        if self._batch_ndim > 1:  # the latent's batch dims: B at the plate's dim, then 1s up to the rightmost
            h = h.reshape(h.shape[:-1] + (1,) * (self._batch_ndim - 1) + h.shape[-1:])
        latent = self.sites if latent is None else latent
        local = {name: self.local_parameters(name, h) for name in latent}
        if self.refine_steps and refine:
            local = self._refine(h, local, args, kwargs)
        return {name: self.distribution(name, h, local[name]) for name in latent}

    # -- the guide --------------------------------------------------------------------------------------------
    def _plate(self, batch: int, args, kwargs):
        frame = self._frame
        if self.master is not None:  # the master's plates
            return self._create_plates(*args, **kwargs)[frame.name]
        if self.create_plates is not None:  # the user's (called directly: AutoGuide's would also store them)
            plates = self.create_plates(*args, **kwargs)
            for plate in plates if isinstance(plates, (list, tuple)) else (plates,):
                if plate.name == frame.name:
                    return plate
        if frame.size == -1:  # Pyro's unsized plate: sized by the batch, as in the model
            return pyro.plate(frame.name, dim=frame.dim)
        if frame.full_size is not None and frame.full_size != frame.size:  # the model subsamples this plate
            return pyro.plate(frame.name, frame.full_size, subsample_size=batch, dim=frame.dim)
        return pyro.plate(frame.name, batch, dim=frame.dim)

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        dists, _ = self._prepare(args, kwargs, check_observed=True)
        values = {}
        if dists:
            with self._plate(args[0].shape[0], args, kwargs):
                for name, q in dists.items():
                    values[name] = pyro.sample(name, q, infer=self._infer(name))
        if self.master is not None:
            shared = self._shared()
            if shared is not None:
                shared.update(values)
        return values

    def posterior(self, *args, **kwargs) -> dict[str, dist.TorchDistribution]:
        """The guide's distribution of each of its sites given the model's arguments, whether or not the model
        observes the site in this call (e.g. the classifier q(y | x) of a semi-supervised VAE); batch shape (B,).
        Inside a Pyro program (an auxiliary loss) it registers the guide's parameters under the guide's names.

        :returns: a dict from site name to distribution.
        """
        with self._pyro_context:
            dists, _ = self._prepare(args, kwargs, check_observed=False)
        return dists

    def _refine(self, h: Tensor, local: dict, args, kwargs) -> dict:
        """K gradient steps on λ maximizing a one-sample ELBO of the batch, hidden from the enclosing inference."""
        if self.master is not None:
            raise ValueError("refine_steps > 0 is not supported inside an AutoGuideList (it must guide every latent)")
        if torch.jit.is_tracing():
            raise ValueError(_NO_JIT_REFINE)
        batch, frame = args[0].shape[0], self._frame
        scale = frame.full_size / batch if frame.full_size not in (None, -1) and frame.full_size != frame.size else 1.0
        backprop = self.refine_backprop and torch.is_grad_enabled()  # evaluation (no_grad) needs no second order
        h_inner = h if backprop else h.detach()
        start = (
            local if backprop else {n: {k: v.detach().requires_grad_() for k, v in d.items()} for n, d in local.items()}
        )
        current = start

        def refined_guide(*a, **k):
            with self._plate(batch, a, k):
                for name in self.sites:
                    pyro.sample(name, self.distribution(name, h_inner, current[name]))

        elbo, leaves = Trace_ELBO(), [(n, k) for n, d in current.items() for k in d]
        moments = {key: (0.0, 0.0) for key in leaves}
        with torch.enable_grad(), poutine.block():
            for t in range(1, self.refine_steps + 1):
                loss = elbo.differentiable_loss(self.model, refined_guide, *args, **kwargs) / scale
                if not torch.isfinite(loss):
                    raise ValueError(f"semi-amortized refinement: the ELBO became {-loss.item()}; lower refine_lr")
                grads = torch.autograd.grad(loss, [current[n][k] for n, k in leaves], create_graph=backprop)
                current = {n: dict(d) for n, d in current.items()}
                for (n, k), g in zip(leaves, grads):  # Adam, elementwise: per datum and coordinate
                    m, v = moments[n, k]
                    m, v = _BETAS[0] * m + (1 - _BETAS[0]) * g, _BETAS[1] * v + (1 - _BETAS[1]) * g * g
                    moments[n, k] = m, v
                    m_hat, v_hat = m / (1 - _BETAS[0] ** t), v / (1 - _BETAS[1] ** t)
                    current[n][k] = current[n][k] - self.refine_lr * m_hat / (v_hat.sqrt() + 1e-8)
        if backprop:
            return current
        # first order: λ_K = λ_0 + (λ_K - λ_0) with the increment treated as a constant
        return {n: {k: v + (current[n][k] - start[n][k]).detach() for k, v in d.items()} for n, d in local.items()}


class AmortizedNormal(AmortizedGuide):
    r"""Diagonal Gaussian :math:`q(z_i \mid x_i) = N(\mu(h_i), \mathrm{diag}\,\sigma^2(h_i))`, :math:`\sigma` =
    softplus (or exp) of an affine head (starting near ``init_scale``), on each listed local site.

    Example::

        guide = AmortizedNormal(model, encoder=nn.Sequential(nn.Linear(784, 200), nn.ReLU()), site="z")
        svi = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())

    :param str scale_transform: ``"softplus"`` (default) or ``"exp"`` (Pyro's VAE example) from the scale head's
        output to :math:`\sigma`.
    :param kwargs: the options of :class:`AmortizedGuide`.
    :raises ValueError: for an unknown ``scale_transform``, and as :class:`AmortizedGuide`.
    """

    def __init__(
        self, model, encoder: nn.Module, site: str | Sequence[str] = "z", *, scale_transform: str = "softplus", **kwargs
    ):
        if scale_transform not in _SCALE_TRANSFORMS:
            raise ValueError(f"scale_transform must be one of {_SCALE_TRANSFORMS}, got {scale_transform!r}")
        super().__init__(model, encoder, site, **kwargs)
        self.scale_transform = scale_transform

    def _build(self, features: int) -> None:
        self._build_loc(features)
        self.scale = nn.ModuleDict({n: nn.Linear(features, self._size(n)) for n in self.sites})
        if self.init_scale is not None:
            bias = (
                _inverse_softplus(self.init_scale) if self.scale_transform == "softplus" else math.log(self.init_scale)
            )
            with torch.no_grad():
                for n in self.sites:
                    self.scale[n].weight.mul_(0.01)
                    self.scale[n].bias.fill_(bias)

    def local_parameters(self, name: str, h: Tensor) -> dict[str, Tensor]:
        return {"loc": self.loc[name](h), "scale": self.scale[name](h)}  # the scale before its softplus (or exp)

    def base_distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        local = self.local_parameters(name, h) if local is None else local
        raw = local["scale"]
        return dist.Normal(local["loc"], F.softplus(raw) if self.scale_transform == "softplus" else raw.exp()).to_event(
            1
        )


class AmortizedMultivariateNormal(AmortizedGuide):
    r"""Full-rank Gaussian :math:`q(z_i \mid x_i) = N(\mu(h_i), L(h_i) L(h_i)^\top)` with a lower-triangular Cholesky
    factor from an affine head: softplus on the diagonal (starting near ``init_scale``), free below it."""

    def _build(self, features: int) -> None:
        self._build_loc(features)
        self.tril = nn.ModuleDict(
            {n: nn.Linear(features, self._size(n) * (self._size(n) + 1) // 2) for n in self.sites}
        )
        if self.init_scale is not None:
            with torch.no_grad():
                for n in self.sites:
                    rows, cols, _ = _tril_index(self._size(n), self.tril[n].bias.device)
                    self.tril[n].weight.mul_(0.01)
                    self.tril[n].bias.copy_(torch.where(rows == cols, _inverse_softplus(self.init_scale), 0.0))

    def local_parameters(self, name: str, h: Tensor) -> dict[str, Tensor]:
        return {"loc": self.loc[name](h), "tril": self.tril[name](h)}  # the factor's entries, diagonal before softplus

    def base_distribution(self, name: str, h: Tensor, local: dict[str, Tensor] | None = None) -> dist.TorchDistribution:
        local = self.local_parameters(name, h) if local is None else local
        d = self._size(name)
        raw = local["tril"]
        rows, cols, diagonal = _tril_index(d, raw.device)
        values = torch.where(diagonal, F.softplus(raw) + 1e-5, raw)
        tril = raw.new_zeros(raw.shape[:-1] + (d, d))
        tril[..., rows, cols] = values
        return dist.MultivariateNormal(local["loc"], scale_tril=tril)
