r"""Adversarially learned inference: BiGAN / ALI as an SVI loss (Donahue et al. 2017; Dumoulin et al. 2017).

The model (generator) draws :math:`z \sim p(z)` and :math:`\tilde x \sim p_G(x \mid z)`; the guide (encoder)
draws :math:`\hat z \sim q_E(z \mid x)` for each datum :math:`x \sim p_{data}`. A joint discriminator
:math:`D(x, z)` returns one logit per pair and separates the encoder's pairs from the generator's:

.. math::

    \mathcal L_D = \mathbb E_{x}\,\zeta\big(-D(x, \hat z)\big) + \mathbb E_{z}\,\zeta\big(D(\tilde x, z)\big),

with :math:`\zeta` softplus (:math:`-\log\sigma(D)` and :math:`-\log(1-\sigma(D))`). Generator and encoder
minimize, through the one SVI optimizer,

=================  ============================================================================
kind               generator and encoder loss
=================  ============================================================================
``minimax``        :math:`-\mathcal L_D`, i.e. :math:`\log \sigma(D(x, \hat z)) + \log(1 - \sigma(D(\tilde x, z)))`
``nonsaturating``  :math:`\zeta(D(x, \hat z)) + \zeta(-D(\tilde x, z))`, the labels swapped
=================  ============================================================================

each averaged over the batch. At the optimum of the minimax game the two joints
:math:`p_{data}(x) q_E(z \mid x)` and :math:`p(z) p_G(x \mid z)` coincide, so the encoder inverts the
generator. The discriminator is trained with its own optimizer inside the loss, as in
:class:`~dgm_ppl.infer.GANLoss`.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

from .comparison import (
    Comparison,
    ComparisonLoss,
    adversary_step,
    check_finite,
    critic_scores,
    discriminator_loss,
    draw_real_and_fake,
    frozen,
    make_optimizer,
)

__all__ = ["BiGANLoss", "ALILoss", "BIGAN_KINDS", "split_guide", "flatten_batch"]

BIGAN_KINDS = ("minimax", "nonsaturating")


def split_guide(loss_name: str, guide_trace: poutine.Trace) -> tuple[list[str], poutine.Trace]:
    """The guide's per-datum latent sites (inside a plate), which must be reparametrized, and a copy of its
    trace without them (the global latents, to replay in the model)."""
    local, globals_trace = [], guide_trace.copy()
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        if any(f.vectorized for f in site["cond_indep_stack"]):
            if not getattr(site["fn"], "has_rsample", False):
                raise ValueError(
                    f"{loss_name}: guide site {name!r} is not reparametrized ({type(site['fn']).__name__}); "
                    "the encoder is trained through its samples (use dist.Delta(E(x, eps)) or an rsample-able one)"
                )
            local.append(name)
            globals_trace.remove_node(name)
    if not local:
        raise ValueError(f"{loss_name}: the guide has no per-datum latent site (a pyro.sample inside a plate)")
    return local, globals_trace


def flatten_batch(loss_name: str, name: str, value: Tensor, event_dim: int, batch: torch.Size) -> Tensor:
    """``value`` of shape ``batch + event`` as ``(B, *event)`` (``(B, 1)`` for scalar events)."""
    if tuple(value.shape[: value.dim() - event_dim]) != tuple(batch):
        raise ValueError(
            f"{loss_name}: latent site {name!r} has shape {tuple(value.shape)} (event dim {event_dim}), whose batch "
            f"shape does not match the observed sites' {tuple(batch)}: each datum needs its own latent"
        )
    event = value.shape[value.dim() - event_dim :]
    return value.reshape(batch.numel(), *(event if len(event) else (1,)))


class BiGANLoss(ComparisonLoss):
    r"""BiGAN / ALI loss for :class:`pyro.infer.SVI` (alias :data:`ALILoss`); see the module's notes for the math.

    Each call runs the guide on the data, and the model with its observations removed and only the guide's
    global latents replayed, so that its per-datum latents come from the prior. The guide's latent sites inside
    a plate are the code :math:`z`; each must be in the model, reparametrized, with the observed sites' batch
    shape. Encoder pairs are (data, guide's :math:`\hat z`), generator pairs (model's draw, prior's :math:`z`).

    The discriminator is called as ``D(*sites, *latents, *context)``: one tensor per observed site, then one per
    latent site, in trace order, each ``(B, *event_shape)`` with the plates' batch dimensions flattened (masked
    entries dropped; ``(B, 1)`` for scalar sites), then ``context(*args, **kwargs)``. It returns ``(B,)`` or
    ``(B, 1)`` logits.

    :param discriminator: an :class:`torch.nn.Module`, never seen by SVI.
    :param kind: ``"nonsaturating"`` or ``"minimax"`` (the generator and encoder loss).
    :param d_optim: an optimizer over the discriminator's parameters, or a factory of one; default
        ``Adam(lr=2e-4, betas=(0.5, 0.999))``.
    :param d_steps: discriminator steps per generator step (each after the first on a fresh draw).
    :param context: maps the model's arguments to extra per-sample discriminator inputs.

    ``history`` records ``d_loss`` and ``g_loss`` at each step.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        kind: str = "nonsaturating",
        d_optim: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        d_steps: int = 1,
        *,
        context: Callable[..., Tensor | tuple[Tensor, ...]] | None = None,
    ):
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be an nn.Module, got {type(discriminator).__name__}")
        if kind not in BIGAN_KINDS:
            raise ValueError(f"kind must be one of {BIGAN_KINDS}, got {kind!r}")
        if not (isinstance(d_steps, int) and d_steps >= 1):
            raise ValueError(f"d_steps must be a positive integer, got {d_steps}")
        self.discriminator = discriminator
        self.kind = kind
        self.d_optim = make_optimizer(
            discriminator, d_optim, lambda params: torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))
        )
        self.d_steps = d_steps
        self.context = context
        self.history: dict[str, list[float]] = {"d_loss": [], "g_loss": []}

    def _draw(self, model, guide, args, kwargs) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Encoder pairs, generator pairs (observed sites then latents) and the context."""
        if guide is None:
            raise ValueError("BiGANLoss needs a guide: the encoder q(z | x)")
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        local, globals_trace = split_guide("BiGANLoss", guide_trace)
        draw: Comparison = draw_real_and_fake(
            "BiGANLoss", poutine.replay(model, trace=globals_trace), None, args, kwargs, context=self.context
        )
        z_real, z_fake = [], []
        for name in local:
            site = draw.trace.nodes.get(name)
            if site is None or site["type"] != "sample":
                raise ValueError(f"BiGANLoss: guide site {name!r} is not in the model")
            encoded = guide_trace.nodes[name]["value"]
            if encoded.shape != site["value"].shape:
                raise ValueError(
                    f"BiGANLoss: the guide's latent {name!r} has shape {tuple(encoded.shape)} but the model's has "
                    f"{tuple(site['value'].shape)}"
                )
            event_dim = getattr(site["fn"], "event_dim", 0)
            for out, value in ((z_real, encoded), (z_fake, site["value"])):
                flat = flatten_batch("BiGANLoss", name, value, event_dim, draw.sample_shape)
                out.append(flat if draw.keep is None else flat[draw.keep])
        return draw.real + z_real, draw.fake + z_fake, draw.context

    def discriminator_loss(self, real: list[Tensor], fake: list[Tensor], context: list[Tensor]) -> Tensor:
        """:math:`\\mathcal L_D` on encoder pairs ``real`` and generator pairs ``fake``."""
        d = self.discriminator
        return discriminator_loss("minimax", critic_scores(d, real, context), critic_scores(d, fake, context))

    def generator_loss(self, real: list[Tensor], fake: list[Tensor], context: list[Tensor]) -> Tensor:
        """The generator and encoder loss of ``kind`` (gradients flow into both kinds of pairs)."""
        d_real = critic_scores(self.discriminator, real, context)
        d_fake = critic_scores(self.discriminator, fake, context)
        if self.kind == "minimax":
            return -(F.softplus(-d_real).mean() + F.softplus(d_fake).mean())
        return F.softplus(d_real).mean() + F.softplus(-d_fake).mean()

    def __call__(self, model: Callable, guide: Callable | None, *args, **kwargs) -> Tensor:
        """One adversarial round; returns the differentiable generator and encoder loss."""
        real, fake, ctx = self._draw(model, guide, args, kwargs)
        train = torch.is_grad_enabled()
        with poutine.block():  # the discriminator's parameters stay invisible to SVI
            if train:
                self.discriminator.train()
                step_real, step_fake, step_ctx = [r.detach() for r in real], [f.detach() for f in fake], ctx
                for step in range(self.d_steps):
                    if step > 0:
                        with torch.no_grad():
                            step_real, step_fake, step_ctx = self._draw(model, guide, args, kwargs)
                    d_loss = self.discriminator_loss(step_real, step_fake, step_ctx)
                    adversary_step("BiGANLoss", "discriminator loss", d_loss, self.discriminator, self.d_optim, None)
            with frozen(self.discriminator):
                g_loss = self.generator_loss(real, fake, ctx)
        check_finite("BiGANLoss", "generator loss", g_loss)
        if train:
            self.history["d_loss"].append(d_loss.item())
            self.history["g_loss"].append(g_loss.item())
        return g_loss

    def _adversary(self):
        return "discriminator", self.discriminator, self.d_optim


ALILoss = BiGANLoss
"""Adversarially learned inference (Dumoulin et al. 2017): the same objective as :class:`BiGANLoss`."""
