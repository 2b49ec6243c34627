r"""Adversarial training of a Pyro model's generator as an SVI loss (Goodfellow et al. 2014; DL book §20.10.4).

With data :math:`x \sim p_{data}` at the observed sites and fakes :math:`\tilde x \sim p_G` drawn by the model
with its observations removed, a discriminator (critic) :math:`D` returns one logit per sample. Writing
:math:`\sigma` for the logistic function and :math:`\zeta` for softplus, the ``kind`` selects

=================  =====================================================  =====================================
kind               discriminator loss                                     generator loss
=================  =====================================================  =====================================
``minimax``        :math:`\zeta(-D(x)) + \zeta(D(\tilde x))`              :math:`-\zeta(D(\tilde x))`, log(1 − σ(D))
``nonsaturating``  the same                                               :math:`\zeta(-D(\tilde x))`, −log σ(D)
``wasserstein``    :math:`D(\tilde x) - D(x)` (Arjovsky et al. 2017)      :math:`-D(\tilde x)`
``hinge``          :math:`[1 - D(x)]_+ + [1 + D(\tilde x)]_+`             :math:`-D(\tilde x)`
``least_squares``  :math:`\tfrac12 (D(x) - 1)^2 + \tfrac12 D(\tilde x)^2`  :math:`\tfrac12 (D(\tilde x) - 1)^2`
=================  =====================================================  =====================================

(hinge: Lim & Ye 2017; least squares: Mao et al. 2017), each averaged over the batch. The gradient
penalty (WGAN-GP, Gulrajani et al. 2017) adds
:math:`\lambda\,\mathbb E_{\hat x}(\|\nabla_{\hat x} D(\hat x)\|_2 - 1)^2` at
:math:`\hat x = \epsilon x + (1 - \epsilon)\tilde x`,
:math:`\epsilon \sim U(0, 1)`, to the discriminator loss; without it ``wasserstein`` clips the critic's weights.
The zero-centered penalties of Mescheder et al. (2018) add instead

.. math::

    R_1 = \frac{\gamma_1}{2}\,\mathbb E_{x \sim p_{data}} \|\nabla_x D(x)\|_2^2, \qquad
    R_2 = \frac{\gamma_2}{2}\,\mathbb E_{\tilde x \sim p_G} \|\nabla_{\tilde x} D(\tilde x)\|_2^2,

which vanish at the equilibrium :math:`p_G = p_{data}`, :math:`D = 0` and make it locally convergent (under
their assumptions) where the unregularized game can circle around it, as in their one-parameter Dirac-GAN. With
lazy regularization (Karras et al. 2020) they are computed at every k-th discriminator step only, scaled by k,
which keeps their expected gradient at a k-th of the cost of the double backward pass.

**Discrete outputs.** When the observed site is discrete (bits, a category), :math:`\tilde x` is not a
differentiable function of the generator's parameters and D's gradient cannot reach G. Two remedies:

- *relaxation* (Jang et al. 2017; Maddison et al. 2017): observe the site with a Concrete / Gumbel-softmax
  distribution, ``dist.RelaxedBernoulliStraightThrough(t, logits=G(z))`` or
  ``dist.RelaxedOneHotCategoricalStraightThrough``. Its ``rsample`` is a hard 0/1 (one-hot) value in the forward
  pass, so D compares exact discrete fakes with the exact discrete data (a soft relaxed fake would be told from a
  0/1 datum by its fractional values alone), while the backward pass uses the gradient of the soft sample (a
  biased estimate; a lower temperature t lowers the bias of the relaxation and raises the variance);
- *REINFORCE* (``estimator="reinforce"``; Williams 1992, as in SeqGAN, Yu et al. 2017): any discrete site,
  e.g. ``dist.Bernoulli(logits=G(z)).to_event(1)``. With :math:`\ell(\tilde x)` the generator loss of one fake
  above and :math:`\tilde x \sim p_G(\cdot \mid z)`,
  :math:`\nabla_\theta \mathbb E\,\ell(\tilde x) = \mathbb E\,[(\ell(\tilde x) - b)\,
  \nabla_\theta \log p_G(\tilde x \mid z)]` for any constant b. The loss returned has the value of the batch
  mean of :math:`\ell` and the gradient of the mean of :math:`(\ell - b) \log p_G(\tilde x \mid z)`
  (the factor held fixed), where the baseline b, which lowers the variance, is an exponential moving average of
  the batch means of :math:`\ell` over the previous steps (decay ``baseline_decay``). It is unbiased but noisy;
  only the observed sites' conditional log-probabilities are differentiated (latent ``z`` must be reparametrized
  or parameter-free).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from .comparison import (
    ComparisonLoss,
    adversary_step,
    check_finite,
    critic_scores,
    discriminator_loss,
    draw_real_and_fake,
    frozen,
    generator_loss,
    generator_loss_terms,
    make_optimizer,
    pack,
)

__all__ = ["GANLoss", "gradient_penalty", "zero_centered_gradient_penalty", "GAN_KINDS", "GAN_ESTIMATORS"]

GAN_KINDS = ("minimax", "nonsaturating", "wasserstein", "hinge", "least_squares")
GAN_ESTIMATORS = ("reparam", "reinforce")


def gradient_penalty(
    discriminator: nn.Module,
    real: Tensor | list[Tensor],
    fake: Tensor | list[Tensor],
    *context: Tensor,
    eps: Tensor | None = None,
    target: float = 1.0,
    one_sided: bool = False,
) -> Tensor:
    r"""The per-sample penalty :math:`(\|\nabla_{\hat x} D(\hat x)\|_2 - t)^2` at :math:`\hat x = \epsilon x +
    (1 - \epsilon) \tilde x`, shape ``(B,)``, differentiable in D's parameters. Several inputs (a list, one per
    observed site) share ε and the norm runs over all of them; ``context`` inputs are passed to D unchanged.
    ``eps`` (``(B,)``) defaults to uniform draws. ``one_sided`` penalizes only norms above t,
    :math:`[\|\nabla D\| - t]_+^2` (WGAN-LP, Petzka et al. 2018)."""
    real = [real] if isinstance(real, Tensor) else list(real)
    fake = [fake] if isinstance(fake, Tensor) else list(fake)
    batch = real[0].shape[0]
    if eps is None:
        eps = torch.rand(batch, dtype=real[0].dtype, device=real[0].device)
    points = []
    for r, f in zip(real, fake, strict=True):
        e = eps.reshape(batch, *([1] * (r.dim() - 1))).to(r)
        points.append((e * r.detach() + (1 - e) * f.detach()).requires_grad_(True))
    out = critic_scores(discriminator, points, list(context))
    grads = torch.autograd.grad(out.sum(), points, create_graph=True)
    sq = sum(g.reshape(batch, -1).pow(2).sum(-1) for g in grads)
    excess = (sq + 1e-12).sqrt() - target
    return (excess.clamp_min(0) if one_sided else excess).pow(2)


def _scores_and_squared_gradients(
    discriminator: nn.Module, inputs: list[Tensor], context: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """D's scores at ``inputs`` and, per sample, :math:`\\|\\nabla_x D(x)\\|_2^2` over all the inputs, from one
    forward pass; both differentiable in D's parameters."""
    points = [x.detach().requires_grad_(True) for x in inputs]
    scores = critic_scores(discriminator, points, context)
    grads = torch.autograd.grad(scores.sum(), points, create_graph=True)
    return scores, sum(g.reshape(len(g), -1).pow(2).sum(-1) for g in grads)


def zero_centered_gradient_penalty(discriminator: nn.Module, inputs: Tensor | list[Tensor], *context: Tensor) -> Tensor:
    r"""The per-sample squared gradient norm :math:`\|\nabla_x D(x)\|_2^2` at the inputs themselves, shape
    ``(B,)``, differentiable in D's parameters: the R1 penalty on data and the R2 penalty on fakes (Mescheder et
    al. 2018) are :math:`\tfrac\gamma2` times its mean. Several inputs (a list, one per observed site) share one
    norm; ``context`` inputs are passed to D unchanged and not differentiated."""
    inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    return _scores_and_squared_gradients(discriminator, inputs, list(context))[1]


class GANLoss(ComparisonLoss):
    r"""Train the model's generator against a discriminator, as a loss for :class:`pyro.infer.SVI`.

    Each call (one ``svi.step``) runs the guide and the model with its observations removed, so the model draws
    fakes at its observed sites; takes ``d_steps`` steps of the discriminator with its own optimizer (fresh fakes
    for each step after the first); and returns the generator loss, whose gradient SVI's optimizer applies to the
    model's (and guide's) parameters. The discriminator's parameters are never seen by SVI. (Each redraw runs the
    model again, so batch-norm layers in the generator update their running statistics once per draw.) Under
    ``torch.no_grad()`` (``svi.evaluate_loss``) it only evaluates.

    The discriminator is called as ``D(*sites, *context)``: one tensor per observed site, ``(B, *event_shape)``
    with the plates' batch dimensions flattened (masked entries dropped; ``(B, 1)`` for scalar sites), then
    ``context(*args, **kwargs)`` for conditional GANs (e.g. ``context=lambda x, y: y`` when the labels are a
    model argument). It returns ``(B,)`` or ``(B, 1)`` logits (critic values).

    :param discriminator: an :class:`torch.nn.Module` (a plain module or a PyroModule; not registered with
        ``pyro.module`` in the model).
    :param kind: one of ``"minimax"``, ``"nonsaturating"``, ``"wasserstein"``, ``"hinge"``, ``"least_squares"``.
    :param d_optim: a :class:`torch.optim.Optimizer` over the discriminator's parameters, or a callable that makes
        one from them; default ``Adam(lr=2e-4, betas=(0.5, 0.999))``.
    :param d_steps: discriminator steps per generator step.
    :param gradient_penalty: λ of the gradient penalty (WGAN-GP with ``kind="wasserstein"``, λ = 10).
    :param one_sided: penalize only gradient norms above 1 (WGAN-LP). The two-sided penalty has a barrier at
        norm 0 that can trap a critic whose slope starts with the wrong sign, most visibly on 1-D data.
    :param clip: weight clipping bound for ``"wasserstein"`` without a penalty.
    :param r1: γ of the R1 penalty :math:`\tfrac\gamma2 \mathbb E\|\nabla_x D(x)\|^2` on the (packed) data.
    :param r2: γ of the R2 penalty, the same on the (packed) fakes.
    :param penalty_every: lazy regularization: R1 and R2 are added at every ``penalty_every``-th discriminator
        step only, multiplied by ``penalty_every`` (Karras et al. 2020 use 16).
    :param packing: PacGAN's m: the discriminator sees m samples concatenated along the first event dimension.
    :param prior_scale: weight of :math:`\log q(\theta) - \log p(\theta)` added to the generator loss for the
        guide's (global) latents, as in :class:`pyro.infer.EnergyDistance`.
    :param context: maps the model's arguments to extra per-sample discriminator inputs.
    :param estimator: the generator's gradient: ``"reparam"`` (backpropagation through the fakes, which must be
        drawn by ``rsample``: continuous or straight-through relaxed sites) or ``"reinforce"`` (the score function
        with a moving-average baseline, for any discrete observed site; see the module's notes).
    :param baseline_decay: the decay of the REINFORCE baseline's moving average, in [0, 1).

    ``history`` records ``d_loss``, ``g_loss`` (and ``gradient_penalty``; ``baseline`` for REINFORCE) at each step,
    and ``r1`` / ``r2`` (the batch means of :math:`\|\nabla D\|^2`, without γ) at each discriminator step that
    computes them.
    """

    def __init__(
        self,
        discriminator: nn.Module,
        kind: str = "nonsaturating",
        d_optim: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        d_steps: int = 1,
        gradient_penalty: float = 0.0,
        *,
        one_sided: bool = False,
        clip: float = 0.01,
        packing: int = 1,
        prior_scale: float = 0.0,
        context: Callable[..., Tensor | tuple[Tensor, ...]] | None = None,
        estimator: str = "reparam",
        baseline_decay: float = 0.9,
        r1: float = 0.0,
        r2: float = 0.0,
        penalty_every: int = 1,
    ):
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be an nn.Module, got {type(discriminator).__name__}")
        if kind not in GAN_KINDS:
            raise ValueError(f"kind must be one of {GAN_KINDS}, got {kind!r}")
        if not (isinstance(d_steps, int) and d_steps >= 1):
            raise ValueError(f"d_steps must be a positive integer, got {d_steps}")
        if not (isinstance(packing, int) and packing >= 1):
            raise ValueError(f"packing must be a positive integer, got {packing}")
        if not (isinstance(penalty_every, int) and penalty_every >= 1):
            raise ValueError(f"penalty_every must be a positive integer, got {penalty_every}")
        nonnegative = (
            ("gradient_penalty", gradient_penalty), ("prior_scale", prior_scale), ("clip", clip), ("r1", r1), ("r2", r2)
        )  # fmt: skip
        for name, value in nonnegative:
            if not value >= 0:
                raise ValueError(f"{name} must be non-negative, got {value}")
        if estimator not in GAN_ESTIMATORS:
            raise ValueError(f"estimator must be one of {GAN_ESTIMATORS}, got {estimator!r}")
        if not 0 <= baseline_decay < 1:
            raise ValueError(f"baseline_decay must be in [0, 1), got {baseline_decay}")
        self.discriminator = discriminator
        self.kind = kind
        self.estimator = estimator
        self.baseline_decay = float(baseline_decay)
        self.baseline: float | None = None
        self.d_optim = make_optimizer(
            discriminator, d_optim, lambda params: torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))
        )
        self.d_steps = d_steps
        self.gradient_penalty = float(gradient_penalty)
        self.one_sided = one_sided
        self.clip = clip if kind == "wasserstein" and gradient_penalty == 0 else None
        self.r1, self.r2 = float(r1), float(r2)
        self.penalty_every = penalty_every
        self.packing = packing
        self.prior_scale = float(prior_scale)
        self.context = context
        self.history: dict[str, list[float]] = {"d_loss": [], "g_loss": []}
        if self.gradient_penalty:
            self.history["gradient_penalty"] = []
        for name in ("r1", "r2"):
            if getattr(self, name):
                self.history[name] = []
        if estimator == "reinforce":
            self.history["baseline"] = []

    def _draw(self, model, guide, args, kwargs):
        return draw_real_and_fake(
            "GANLoss",
            model,
            guide,
            args,
            kwargs,
            context=self.context,
            with_kl=self.prior_scale > 0,
            require_rsample=self.estimator == "reparam",
        )

    def _fake_log_prob(self, draw) -> Tensor:
        """``log p_G(x̃ | z)`` per (packed) fake, summed over the observed sites, ``(B // packing,)``."""
        n = draw.sample_shape.numel()
        total = 0.0
        for name in draw.names:
            site = draw.trace.nodes[name]
            lp = site["fn"].log_prob(site["value"].detach())
            total = total + lp.expand(draw.sample_shape).reshape(n)
        if draw.keep is not None:
            total = total[draw.keep]
        m = self.packing
        return total if m == 1 else pack([total], m)[0].sum(-1)

    def _reinforce_loss(self, draw, fake: list[Tensor], ctx: list[Tensor]) -> Tensor:
        with torch.no_grad():
            terms = generator_loss_terms(self.kind, critic_scores(self.discriminator, fake, ctx))
        mean = terms.mean()
        if not torch.is_grad_enabled():
            return mean
        baseline = mean.item() if self.baseline is None else self.baseline
        surrogate = ((terms - baseline) * self._fake_log_prob(draw)).mean()
        d = self.baseline_decay
        self.baseline = mean.item() if self.baseline is None else d * self.baseline + (1 - d) * mean.item()
        return mean + surrogate - surrogate.detach()

    def discriminator_loss(
        self, real: list[Tensor], fake: list[Tensor], context: list[Tensor], *, zero_centered: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The discriminator loss on packed inputs, and the mean gradient penalty (0 without one). With
        ``zero_centered`` it includes the R1 and R2 penalties, each times ``penalty_every``."""
        loss, penalty, _ = self._discriminator_terms(real, fake, context, zero_centered)
        return loss, penalty

    def _discriminator_terms(
        self, real: list[Tensor], fake: list[Tensor], context: list[Tensor], zero_centered: bool
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """:meth:`discriminator_loss`, and the batch means of :math:`\\|\\nabla D\\|^2` of the R1 / R2 terms it
        computed (keyed ``"r1"``, ``"r2"``)."""
        weights = {"r1": self.r1, "r2": self.r2} if zero_centered else {}
        scores: list[Tensor] = []  # D(x), D(x̃)
        squared: dict[str, Tensor] = {}
        for name, inputs in (("r1", real), ("r2", fake)):
            if weights.get(name):
                score, squared[name] = _scores_and_squared_gradients(self.discriminator, inputs, context)
            else:
                score = critic_scores(self.discriminator, inputs, context)
            scores.append(score)
        loss = discriminator_loss(self.kind, *scores)
        means = {name: sq.mean() for name, sq in squared.items()}
        for name, mean in means.items():
            loss = loss + 0.5 * weights[name] * self.penalty_every * mean
        penalty = torch.zeros((), dtype=loss.dtype, device=loss.device)
        if self.gradient_penalty:
            penalty = gradient_penalty(self.discriminator, real, fake, *context, one_sided=self.one_sided).mean()
            loss = loss + self.gradient_penalty * penalty
        return loss, penalty, means

    def _discriminator_step(self, real, fake, context, index: int) -> tuple[float, float]:
        lazy = (self.r1 or self.r2) and index % self.penalty_every == 0
        d_loss, penalty, means = self._discriminator_terms(real, fake, context, bool(lazy))
        adversary_step("GANLoss", "discriminator loss", d_loss, self.discriminator, self.d_optim, self.clip)
        for name, mean in means.items():
            self.history[name].append(mean.item())
        # the penalty is recorded only when there is one: no host sync for the constant 0 otherwise
        return d_loss.item(), penalty.item() if self.gradient_penalty else 0.0

    def __call__(self, model: Callable, guide: Callable | None, *args, **kwargs) -> Tensor:
        """One adversarial round; returns the differentiable generator loss."""
        draw = self._draw(model, guide, args, kwargs)
        m = self.packing
        real, fake, ctx = pack(draw.real, m), pack(draw.fake, m), pack(draw.context, m)
        train = torch.is_grad_enabled()
        with poutine.block():  # the discriminator's parameters stay invisible to SVI
            if train:
                self.discriminator.train()
                for step in range(self.d_steps):
                    if step == 0:
                        step_fake = [f.detach() for f in fake]
                    else:
                        with torch.no_grad():
                            again = self._draw(model, guide, args, kwargs)
                        step_fake, real, ctx = pack(again.fake, m), pack(again.real, m), pack(again.context, m)
                    index = len(self.history["d_loss"]) * self.d_steps + step  # resumes with the history
                    d_loss, penalty = self._discriminator_step(real, step_fake, ctx, index)
            with frozen(self.discriminator):
                if self.estimator == "reinforce":
                    g_loss = self._reinforce_loss(draw, [f.detach() for f in fake], ctx)
                else:
                    g_loss = generator_loss(self.kind, critic_scores(self.discriminator, fake, ctx))
        check_finite("GANLoss", "generator loss", g_loss)
        loss = g_loss + self.prior_scale * draw.kl if self.prior_scale else g_loss
        if train:
            self.history["d_loss"].append(d_loss)
            self.history["g_loss"].append(g_loss.item())
            if self.gradient_penalty:
                self.history["gradient_penalty"].append(penalty)
            if self.estimator == "reinforce":
                self.history["baseline"].append(self.baseline)
        return loss

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.estimator == "reinforce":  # the baseline resumes from the last one recorded
            recorded = self.history.get("baseline")
            self.baseline = recorded[-1] if recorded else None

    def _adversary(self):
        return "discriminator", self.discriminator, self.d_optim
