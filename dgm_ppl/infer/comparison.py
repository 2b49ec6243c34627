"""Shared machinery of the sample-comparison losses (:class:`GANLoss`, :class:`MMDLoss`).

Following :class:`pyro.infer.EnergyDistance`, one run of the model under :func:`pyro.poutine.uncondition`
(replaying the guide's global latents) gives, at every observed site, both the data (kept in
``site["infer"]["obs"]``) and a fresh draw from the model (``site["value"]``) that depends differentiably
on the generator's parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn

from .._data import check_finite as _all_finite
from ..handlers import is_deterministic, uncondition_data
from .errors import DivergenceError

__all__ = [
    "ComparisonLoss",
    "Comparison",
    "draw_real_and_fake",
    "pack",
    "frozen",
    "check_finite",
    "make_optimizer",
    "adversary_step",
    "adversary_gradient_hook",
    "critic_scores",
    "discriminator_loss",
    "generator_loss",
    "generator_loss_terms",
]


@dataclass
class Comparison:
    """Real and generated samples at the observed sites, each ``(B, *event_shape)`` (``(B, 1)`` for scalar
    sites) with the plates' batch dimensions flattened and masked-out entries dropped; ``context`` holds the
    extra per-sample inputs; ``kl`` is the guide's ``log q(θ) − log p(θ)`` (0 without a guide); ``trace`` is
    the unconditioned model's trace, ``sample_shape`` the observed sites' batch shape and ``keep`` the flattened
    mask of the entries kept (None when all are)."""

    names: list[str]
    real: list[Tensor]
    fake: list[Tensor]
    context: list[Tensor]
    kl: Tensor | float
    trace: poutine.Trace | None = None
    sample_shape: torch.Size | None = None
    keep: Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.real[0].shape[0]

    def flat(self) -> tuple[Tensor, Tensor]:
        """All sites and the context concatenated into ``(B, D)`` matrices (real, fake)."""
        ctx = [c.reshape(len(c), -1).to(self.real[0]) for c in self.context]
        real = torch.cat([r.reshape(len(r), -1) for r in self.real] + ctx, -1)
        fake = torch.cat([f.reshape(len(f), -1) for f in self.fake] + ctx, -1)
        return real, fake


def _as_context(value, batch: int, keep: Tensor | None) -> list[Tensor]:
    if value is None:
        return []
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    out = []
    for c in items:
        if not isinstance(c, Tensor) or c.dim() == 0 or c.shape[0] != batch:
            shape = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
            raise ValueError(f"context must be tensors with the batch size {batch} first, got {shape}")
        out.append(c if keep is None else c[keep])
    return out


def draw_real_and_fake(
    loss_name: str,
    model: Callable,
    guide: Callable | None,
    args: tuple,
    kwargs: dict,
    *,
    context: Callable | None = None,
    with_kl: bool = False,
    require_rsample: bool = True,
) -> Comparison:
    """Run ``guide`` then ``model`` (unconditioned, guide replayed) and collect the observed sites.
    ``require_rsample=False`` admits observed sites whose distributions cannot be reparametrized (discrete ones,
    for score-function gradients)."""
    guide_trace = None
    if guide is not None:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replayed = poutine.replay(model, trace=guide_trace)
    else:
        replayed = model
    # Subsample sites are neither observed nor deterministic, so the loop below skips them; the trace is pruned
    # (a copy) only for the KL term below, which needs it.
    model_trace = poutine.trace(uncondition_data(replayed)).get_trace(*args, **kwargs)

    names, real, fake, batch, keep, recorded = [], [], [], None, None, []
    for name, site in model_trace.nodes.items():
        if site["type"] == "sample" and is_deterministic(site):
            recorded.append(name)
        if site["type"] != "sample" or not site["infer"].get("was_observed", False):
            continue
        obs, value, fn = site["infer"]["obs"], site["value"], site["fn"]
        if not isinstance(obs, Tensor):
            obs = torch.as_tensor(obs, dtype=value.dtype, device=value.device)
        if obs.shape != value.shape:
            unsized = [f.name for f in site["cond_indep_stack"] if f.size in (-1, 1, None) and f.dim is not None]
            hint = (
                f" (plate {unsized[0]!r} has no size, so the model draws one value: give it the data's size, "
                f"pyro.plate({unsized[0]!r}, len(x)))"
                if unsized and value.dim() < obs.dim()
                else ""
            )
            raise ValueError(
                f"{loss_name}: the data at observed site {name!r} have shape {tuple(obs.shape)} but the model "
                f"draws {tuple(value.shape)} there{hint}"
            )
        if not torch.isfinite(obs).all():
            raise ValueError(f"{loss_name}: the data at observed site {name!r} contain NaN or inf")
        if require_rsample and not getattr(fn, "has_rsample", False):
            raise ValueError(
                f"{loss_name}: observed site {name!r} has a non-reparametrized distribution "
                f"({type(fn).__name__}); use dist.Delta(G(z), event_dim=...) or another rsample-able one"
            )
        event_dim = getattr(fn, "event_dim", 0)
        site_batch = value.shape[: value.dim() - event_dim]
        if len(site_batch) == 0:
            raise ValueError(
                f"{loss_name}: observed site {name!r} has no batch dimension; put it inside pyro.plate so that "
                "each datum is one sample"
            )
        if batch is None:
            batch = site_batch
        elif site_batch != batch:
            raise ValueError(
                f"{loss_name}: observed sites have different batch shapes ({tuple(batch)} at {names[0]!r}, "
                f"{tuple(site_batch)} at {name!r})"
            )
        n = site_batch.numel()
        event = value.shape[value.dim() - event_dim :]
        mask = site["mask"]
        if isinstance(mask, Tensor) and mask.dim() > 0:
            site_keep = mask.expand(site_batch).reshape(n)
            keep = site_keep if keep is None else keep & site_keep
        elif mask is False:
            keep = torch.zeros(n, dtype=torch.bool, device=value.device)
        if not _all_finite(value):  # one sum, elementwise only when it is not finite
            raise DivergenceError(f"{loss_name}: the model's draws at site {name!r} contain NaN or inf")
        event = event if len(event) else (1,)  # scalar sites become (B, 1) columns
        names.append(name)
        real.append(obs.reshape(n, *event))
        fake.append(value.reshape(n, *event))
    if not names:
        hint = (
            f"; {recorded} are pyro.deterministic sites, which record a computed value and are not data: observe the "
            "data with pyro.sample(name, dist.Delta(G(z), event_dim=...), obs=x)"
            if recorded
            else ""
        )
        raise ValueError(f"{loss_name}: the model has no observed site (a pyro.sample with obs=...) to compare{hint}")
    if keep is not None:
        real = [r[keep] for r in real]
        fake = [f[keep] for f in fake]
    n = real[0].shape[0]
    ctx = _as_context(context(*args, **kwargs), batch.numel(), keep) if context is not None else []

    kl = 0.0
    if with_kl and guide_trace is not None:
        guide_trace = prune_subsample_sites(guide_trace)
        pruned = prune_subsample_sites(model_trace)
        latent = [k for k, s in guide_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]]
        for name in latent:
            if not getattr(guide_trace.nodes[name]["fn"], "has_rsample", False):
                raise ValueError(f"{loss_name}: guide site {name!r} is not reparametrized")
            if name not in pruned.nodes:
                raise ValueError(f"{loss_name}: guide site {name!r} is not in the model")
        if latent:
            kl = guide_trace.log_prob_sum(lambda k, s: k in latent) - pruned.log_prob_sum(lambda k, s: k in latent)
    if n == 0:
        raise ValueError(f"{loss_name}: every observed value is masked out")
    return Comparison(names, real, fake, ctx, kl, model_trace, batch, keep)


def pack(tensors: list[Tensor], m: int) -> list[Tensor]:
    """PacGAN packing: ``(B, C, ...)`` → ``(B // m, m·C, ...)``, concatenating ``m`` consecutive samples along
    the first event dimension (features, or channels of an image); a remainder of ``B mod m`` is dropped."""
    if m == 1:
        return tensors
    out = []
    for t in tensors:
        b = t.shape[0] // m
        if b == 0:
            raise ValueError(f"packing {m} samples needs a batch of at least {m}, got {t.shape[0]}")
        t = t[: b * m]
        if t.dim() == 1:
            out.append(t.reshape(b, m))
        else:
            out.append(t.reshape(b, m * t.shape[1], *t.shape[2:]))
    return out


@contextmanager
def frozen(module: nn.Module):
    """Turn off ``requires_grad`` on the module's parameters for the duration (no gradients are computed
    for them, while gradients still flow through the module to its inputs)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def check_finite(loss_name: str, what: str, value: Tensor) -> None:
    if not torch.isfinite(value).all():
        raise DivergenceError(f"{loss_name}: the {what} became {value.detach().flatten()[:1].item()}")


_GRADIENT_HOOKS: list[Callable[[nn.Module], None]] = []


@contextmanager
def adversary_gradient_hook(hook: Callable[[nn.Module], None]):
    """Call ``hook(module)`` in every :func:`adversary_step` of the block, between the adversary's backward pass
    and its optimizer step, e.g. to average its gradients across processes (:mod:`dgm_ppl.distributed`)."""
    _GRADIENT_HOOKS.append(hook)
    try:
        yield
    finally:
        _GRADIENT_HOOKS.remove(hook)


def adversary_step(
    loss_name: str, what: str, loss: Tensor, module: nn.Module, optim: torch.optim.Optimizer, clip: float | None
) -> None:
    """One optimizer step of the adversary on ``loss`` (refused if it is not finite, before anything moves),
    then clip its weights to ``[-clip, clip]`` when ``clip`` is given. The hooks of
    :func:`adversary_gradient_hook` see the gradients before the step."""
    check_finite(loss_name, what, loss)
    optim.zero_grad(set_to_none=True)
    loss.backward()
    for hook in _GRADIENT_HOOKS:
        hook(module)
    optim.step()
    if clip is not None:
        with torch.no_grad():
            for p in module.parameters():
                p.clamp_(-clip, clip)


def make_optimizer(module: nn.Module, optim, default: Callable[..., torch.optim.Optimizer]) -> torch.optim.Optimizer:
    """``optim`` if it is an optimizer, else ``optim(params)`` (a factory), else ``default(params)``."""
    if isinstance(optim, torch.optim.Optimizer):
        return optim
    return (optim or default)(module.parameters())


class ComparisonLoss:
    """Base of the sample-comparison losses: ``__call__(model, guide, *args, **kwargs)`` returns the
    differentiable loss (what :class:`pyro.infer.SVI` backpropagates). ``_adversary()`` names the adversary
    (discriminator or feature map) and its optimizer, which SVI never sees, for the checkpoint state."""

    history: dict[str, list[float]]

    def __call__(self, model: Callable, guide: Callable | None, *args, **kwargs) -> Tensor:
        raise NotImplementedError

    def loss(self, model: Callable, guide: Callable | None, *args, **kwargs) -> float:
        """The loss, evaluated without updating anything."""
        with torch.no_grad():
            return self(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Callable | None, *args, **kwargs) -> float:
        """One round, with the gradients of the model's and guide's parameters accumulated."""
        loss = self(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()

    def _adversary(self) -> tuple[str, nn.Module, torch.optim.Optimizer] | None:
        return None

    @property
    def adversary(self) -> nn.Module | None:
        """The network that the loss trains itself with its own optimizer, unseen by SVI (the discriminator,
        critic or feature map), or None."""
        adversary = self._adversary()
        return None if adversary is None else adversary[1]

    def state_dict(self) -> dict:
        """The adversary, its optimizer and the history (for :func:`dgm_ppl.save_checkpoint`)."""
        state = {"history": {k: list(v) for k, v in self.history.items()}}
        adversary = self._adversary()
        if adversary is not None:
            name, module, optim = adversary
            state[name] = module.state_dict()
            state[name + "_optim"] = optim.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        adversary = self._adversary()
        if adversary is not None:
            name, module, optim = adversary
            module.load_state_dict(state[name])
            optim.load_state_dict(state[name + "_optim"])
        self.history = {k: list(v) for k, v in state["history"].items()}


def discriminator_loss(kind: str, real: Tensor, fake: Tensor) -> Tensor:
    """The discriminator's (critic's) loss of a GAN of ``kind`` (``"minimax"``, ``"nonsaturating"``,
    ``"wasserstein"``, ``"hinge"``, ``"least_squares"``) from its scores on real and generated samples."""
    if kind in ("minimax", "nonsaturating"):
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "wasserstein":
        return fake.mean() - real.mean()
    if kind == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return 0.5 * ((real - 1).pow(2).mean() + fake.pow(2).mean())


def generator_loss_terms(kind: str, fake: Tensor) -> Tensor:
    """The generator's per-sample loss of a GAN of ``kind`` (the shape of ``fake``, the discriminator's scores on
    generated samples); :func:`generator_loss` is its mean."""
    if kind == "minimax":
        return -F.softplus(fake)
    if kind == "nonsaturating":
        return F.softplus(-fake)
    if kind in ("wasserstein", "hinge"):
        return -fake
    return 0.5 * (fake - 1).pow(2)


def generator_loss(kind: str, fake: Tensor) -> Tensor:
    """The generator's loss of a GAN of ``kind`` from the discriminator's scores on generated samples."""
    return generator_loss_terms(kind, fake).mean()


def critic_scores(discriminator: nn.Module, inputs: list[Tensor], context: list[Tensor]) -> Tensor:
    """``discriminator(*inputs, *context)`` as one score per sample, shape ``(B,)``.

    :raises ValueError: when the discriminator returns anything but a tensor of shape ``(B,)`` or ``(B, 1)``.
    """
    out = discriminator(*inputs, *context)
    batch = inputs[0].shape[0]
    if not isinstance(out, Tensor) or out.shape not in ((batch,), (batch, 1)):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"the discriminator must return one value per (packed) sample, shape ({batch},) or "
            f"({batch}, 1); got {shape}"
        )
    return out.reshape(batch)


def observed_site(trace: poutine.Trace, site: str | None, owner: str) -> dict:
    """The observed sample site of ``trace`` that a loss fits: the one named ``site``, or the only one.

    :param owner: the loss's name, as the errors give it.
    :raises ValueError: when there is no observed site, ``site`` is not one, or there are several and no ``site``.
    """
    observed = [
        name
        for name, s in trace.nodes.items()
        if s["type"] == "sample" and s["is_observed"] and not is_deterministic(s)
    ]
    if site is not None:
        if site not in observed:
            raise ValueError(f"{owner}: {site!r} is not an observed site of the model (those are {observed})")
        return trace.nodes[site]
    if not observed:
        raise ValueError(f"{owner}: the model has no observed site (a pyro.sample with obs=...) to fit")
    if len(observed) > 1:
        raise ValueError(f"{owner}: the model has several observed sites {observed}; name one with site=...")
    return trace.nodes[observed[0]]
