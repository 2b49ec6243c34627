r"""Adversarial variational Bayes as an SVI loss (Mescheder, Nowozin & Geiger 2017).

The guide may be implicit: :math:`z = g_\phi(x, \epsilon)` with :math:`\epsilon` any noise, recorded at a
``dist.Delta`` site, so :math:`q_\phi(z \mid x)` can be sampled but not evaluated. The ELBO's intractable part
:math:`\log q_\phi(z \mid x) - \log p(z)` is replaced by a discriminator :math:`T(x, z)` trained, with its own
optimizer inside the loss, by logistic regression of guide pairs against prior pairs for the same data,

.. math::

    \mathcal L_T = \mathbb E_{x}\Big[\mathbb E_{q_\phi(z \mid x)}\, \zeta\big(-T(x, z)\big)
        + \mathbb E_{p(z)}\, \zeta\big(T(x, z)\big)\Big],

(:math:`\zeta` softplus) whose minimizer is :math:`T^*(x, z) = \log q_\phi(z \mid x) - \log p(z)`. The model and
guide then minimize, through SVI, the negative ELBO estimate

.. math::

    \mathcal L(\theta, \phi) = -\sum_n \mathbb E_{q_\phi(z_n \mid x_n)}\big[\log p_\theta(x_n \mid z_n)
        - T(x_n, z_n)\big],

with the gradient flowing through :math:`z = g_\phi(x, \epsilon)` into :math:`T` (the term of
:math:`\nabla_\phi T^*` at fixed :math:`z` has expectation zero). The per-datum terms carry the plate's scale
and mask, as in an ELBO; the guide's global latents, if any, enter with their usual
:math:`\log p - \log q` terms.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.poutine.util import prune_subsample_sites
from torch import Tensor, nn

from ..handlers import is_deterministic
from .bigan import flatten_batch, split_guide
from .comparison import ComparisonLoss, adversary_step, check_finite, critic_scores, frozen, make_optimizer

__all__ = ["AVBLoss"]


class AVBLoss(ComparisonLoss):
    r"""Adversarial variational Bayes for :class:`pyro.infer.SVI`; see the module's notes for the math.

    The guide's latent sites inside a plate are the per-datum latents :math:`z` (reparametrized, e.g.
    ``dist.Delta(g(x, eps))``; their ``log_prob`` is not used) and must be in the model with the observed sites'
    batch shape. Each call runs the guide, the model replayed on the guide's draws (for
    :math:`\log p(x \mid z)`), and the model with only the guide's global latents replayed (for prior draws).

    The discriminator is called as ``T(*sites, *latents)``: the observed sites' data, then the latents, in trace
    order, each ``(B, *event_shape)`` with the plates' batch dimensions flattened (``(B, 1)`` for scalar
    sites); it returns ``(B,)`` or ``(B, 1)``.

    :param discriminator: :math:`T`, an :class:`torch.nn.Module` never seen by SVI.
    :param d_optim: an optimizer over its parameters, or a factory of one; default ``Adam(lr=1e-3)``.
    :param d_steps: steps of :math:`T` per SVI step (each after the first on fresh draws).

    ``history`` records ``d_loss`` and ``elbo`` at each step.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        d_optim: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        d_steps: int = 1,
    ):
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be an nn.Module, got {type(discriminator).__name__}")
        if not (isinstance(d_steps, int) and d_steps >= 1):
            raise ValueError(f"d_steps must be a positive integer, got {d_steps}")
        self.discriminator = discriminator
        self.d_optim = make_optimizer(discriminator, d_optim, lambda params: torch.optim.Adam(params, lr=1e-3))
        self.d_steps = d_steps
        self.history: dict[str, list[float]] = {"d_loss": [], "elbo": []}

    def _draw(self, model, guide, args, kwargs):
        """The traces, the data, the guide's and the prior's latents (flattened) and the per-datum weights."""
        if guide is None:
            raise ValueError("AVBLoss needs a guide: the (implicit) q(z | x)")
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        local, globals_trace = split_guide("AVBLoss", guide_trace)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        with torch.no_grad():
            prior_trace = poutine.trace(poutine.replay(model, trace=globals_trace)).get_trace(*args, **kwargs)
        observed = [
            (n, s)
            for n, s in model_trace.nodes.items()
            if s["type"] == "sample" and s["is_observed"] and not is_deterministic(s)
        ]
        if not observed:
            raise ValueError("AVBLoss: the model has no observed site (a pyro.sample with obs=...)")
        batch, data = None, []
        for name, site in observed:
            value, event_dim = site["value"], getattr(site["fn"], "event_dim", 0)
            site_batch = value.shape[: value.dim() - event_dim]
            if batch is None:
                batch = site_batch
                if len(batch) == 0:
                    raise ValueError(f"AVBLoss: observed site {name!r} has no batch dimension; put it in a plate")
            value = value if value.is_floating_point() else value.to(torch.get_default_dtype())
            data.append(flatten_batch("AVBLoss", name, value, event_dim, batch))
        z_q, z_p = [], []
        for name in local:
            site = model_trace.nodes.get(name)
            if site is None or site["type"] != "sample":
                raise ValueError(f"AVBLoss: guide site {name!r} is not in the model")
            encoded, prior = guide_trace.nodes[name]["value"], prior_trace.nodes[name]["value"]
            if encoded.shape != prior.shape:
                raise ValueError(
                    f"AVBLoss: the guide's latent {name!r} has shape {tuple(encoded.shape)} but the model's prior "
                    f"draws {tuple(prior.shape)}"
                )
            event_dim = getattr(site["fn"], "event_dim", 0)
            z_q.append(flatten_batch("AVBLoss", name, encoded, event_dim, batch))
            z_p.append(flatten_batch("AVBLoss", name, prior, event_dim, batch))
        site = model_trace.nodes[local[0]]
        weight = torch.ones(batch, dtype=data[0].dtype, device=data[0].device)
        if site["mask"] is not None:
            weight = weight * torch.as_tensor(site["mask"], device=weight.device).expand(batch)
        return guide_trace, model_trace, local, data, z_q, z_p, weight.reshape(-1), site["scale"]

    def discriminator_loss(self, data: list[Tensor], z_q: list[Tensor], z_p: list[Tensor], weight: Tensor) -> Tensor:
        """:math:`\\mathcal L_T`: the mean over the (unmasked) data of the logistic losses."""
        t_q = critic_scores(self.discriminator, data + z_q, [])
        t_p = critic_scores(self.discriminator, data + z_p, [])
        return ((F.softplus(-t_q) + F.softplus(t_p)) * weight).sum() / weight.sum().clamp(min=1)

    def __call__(self, model: Callable, guide: Callable | None, *args, **kwargs) -> Tensor:
        """One round: a step of :math:`T`, then the differentiable negative ELBO estimate."""
        guide_trace, model_trace, local, data, z_q, z_p, weight, scale = self._draw(model, guide, args, kwargs)
        train = torch.is_grad_enabled()
        with poutine.block():  # T's parameters stay invisible to SVI
            if train:
                self.discriminator.train()
                step_q, step_p = [z.detach() for z in z_q], z_p
                step_data, step_weight = [d.detach() for d in data], weight
                for step in range(self.d_steps):
                    if step > 0:
                        with torch.no_grad():
                            _, _, _, step_data, step_q, step_p, step_weight, _ = self._draw(model, guide, args, kwargs)
                    d_loss = self.discriminator_loss(step_data, step_q, step_p, step_weight)
                    adversary_step("AVBLoss", "discriminator loss", d_loss, self.discriminator, self.d_optim, None)
            with frozen(self.discriminator):
                t_q = critic_scores(self.discriminator, data + z_q, [])
        model_trace, guide_trace = prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)
        rest = model_trace.log_prob_sum(lambda n, s: n not in local)
        rest = rest - guide_trace.log_prob_sum(lambda n, s: n not in local)
        elbo = rest - (scale * weight * t_q).sum()
        loss = -elbo
        check_finite("AVBLoss", "loss", loss)
        if train:
            self.history["d_loss"].append(d_loss.item())
            self.history["elbo"].append(elbo.item())
        return loss

    def _adversary(self):
        return "discriminator", self.discriminator, self.d_optim
