r"""Discriminator rejection sampling: a GAN's samples corrected by its discriminator (Azadi et al. 2019).

A discriminator trained by the standard GAN loss (``minimax`` or ``nonsaturating``) tends to
:math:`D^*(x) = \sigma(\tilde D(x))` with :math:`\sigma(\tilde D(x)) = p_{data}(x) / (p_{data}(x) + p_G(x))`, so its
logit estimates the density ratio (Goodfellow et al. 2014; DL book §20.10.4):

.. math::

    \tilde D(x) = \log \frac{p_{data}(x)}{p_G(x)}.

When the ratio is bounded, :math:`\tilde D(x) \le M`, rejection sampling with the generator as proposal draws
exactly from :math:`p_{data}`: draw :math:`x \sim p_G` and accept it with probability
:math:`r(x) = \exp(\tilde D(x) - M)`; the acceptance rate is :math:`e^{-M}`. As in the paper, :math:`M` is the
largest logit seen: first over a pilot draw, then raised whenever a later draw exceeds it (a draw above the
running maximum is accepted; the ones accepted before the raise were accepted slightly too often, a bias that
vanishes as the pilot grows). The paper's practical rule accepts with probability :math:`\sigma(F(x))`,

.. math::

    F(x) = \tilde D(x) - M - \log\!\left(1 - e^{\tilde D(x) - M - \epsilon}\right) - \gamma,

which for :math:`\gamma = 0` is :math:`r(x)` up to :math:`\epsilon` (:math:`\sigma(\log r - \log(1 - r)) = r`),
while :math:`\gamma > 0` rejects more (the samples concentrate where the ratio is high, trading diversity for
quality) and :math:`\gamma < 0` accepts more (closer to the raw generator). Only a discriminator of the standard
GAN loss estimates the log-ratio; the critic of a Wasserstein, hinge or least-squares GAN does not, and a PacGAN
discriminator scores packs, not samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._data import check_finite as _all_finite
from .comparison import critic_scores, draw_real_and_fake

__all__ = ["discriminator_rejection_sampling", "RejectionSamples"]


@dataclass
class RejectionSamples:
    """The accepted draws of :func:`discriminator_rejection_sampling`.

    :ivar samples: observed site name → accepted values, ``(num_samples, *event_shape)`` (``(num_samples, 1)``
        for scalar sites), in the order they were drawn.
    :ivar acceptance_rate: the accepted fraction of all the draws scored after the pilot.
    :ivar max_logit: the final bound :math:`M`.
    :ivar draws: the number of draws made, the pilot included.
    """

    samples: dict[str, Tensor]
    acceptance_rate: float
    max_logit: float
    draws: int


def _draw(model: Callable, discriminator: nn.Module, args: tuple, kwargs: dict, context) -> tuple[list, list, Tensor]:
    comparison = draw_real_and_fake(
        "discriminator_rejection_sampling", model, None, args, kwargs, context=context, require_rsample=False
    )
    fake = [f.detach() for f in comparison.fake]
    logits = critic_scores(discriminator, fake, comparison.context).detach().double()
    if not _all_finite(logits):  # one sum
        raise ValueError("discriminator_rejection_sampling: the discriminator returned NaN or inf logits")
    return comparison.names, fake, logits


@torch.no_grad()
def discriminator_rejection_sampling(
    model: Callable,
    discriminator: nn.Module,
    *args,
    num_samples: int,
    gamma: float = 0.0,
    epsilon: float = 1e-6,
    max_logit: float | None = None,
    pilot_rounds: int = 10,
    max_rounds: int = 10_000,
    context: Callable | None = None,
    generator: torch.Generator | None = None,
    **kwargs,
) -> RejectionSamples:
    """Draw ``num_samples`` samples from a GAN's model, each accepted with the probability the discriminator's
    density-ratio estimate gives it (see the module's notes).

    The model is run as :class:`~dgm_ppl.infer.GANLoss` runs it, with its observations removed, and is called with
    the arguments of ``svi.step`` (``*args``, ``**kwargs``): each round draws one batch of fakes at the observed
    sites, of the size of the data batch passed, and scores it by ``discriminator(*sites, *context)``. Put the
    generator's batch-norm layers in evaluation mode first if the samples should not depend on their batch.

    :param model: the GAN's Pyro model.
    :param discriminator: the discriminator trained with it by the ``minimax`` or ``nonsaturating`` loss (packing 1).
    :param num_samples: the number of samples to accept.
    :param gamma: the shift γ of the acceptance logit; 0 is exact rejection sampling.
    :param epsilon: the ε of the acceptance logit.
    :param max_logit: a known bound M on the logit; by default the maximum over the pilot rounds, raised as
        larger logits are seen.
    :param pilot_rounds: rounds drawn to estimate M before any draw is accepted (at least 1 unless ``max_logit``
        is given).
    :param max_rounds: rounds after the pilot before giving up.
    :param context: maps the model's arguments to extra per-sample discriminator inputs, as for ``GANLoss``.
    :param generator: the random-number generator of the accept/reject coin flips.
    :raises ValueError: for bad settings, non-finite logits, or when ``max_rounds`` rounds do not accept
        ``num_samples`` draws (the message gives the acceptance rate).
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if not math.isfinite(gamma) or not epsilon >= 0:
        raise ValueError(f"gamma must be finite and epsilon >= 0, got gamma={gamma}, epsilon={epsilon}")
    if max_logit is None and pilot_rounds < 1:
        raise ValueError("pilot_rounds must be at least 1 when max_logit is not given")
    if max_logit is not None and not math.isfinite(max_logit):
        raise ValueError(f"max_logit must be finite, got {max_logit}")
    bound = -math.inf if max_logit is None else float(max_logit)
    draws = 0
    for _ in range(pilot_rounds if max_logit is None else 0):
        _, fake, logits = _draw(model, discriminator, args, kwargs, context)
        bound, draws = max(bound, logits.max().item()), draws + len(logits)
    names, kept, accepted, scored = None, [], 0, 0
    for _ in range(max_rounds):
        names, fake, logits = _draw(model, discriminator, args, kwargs, context)
        bound = max(bound, logits.max().item())  # a draw at the new maximum is accepted with probability ~1
        shifted = logits - bound
        # σ(F) with F = (D − M) − log(1 − exp(D − M − ε)) − γ; expm1 keeps 1 − e^u accurate near u = 0
        accept_logit = shifted - torch.log(-torch.expm1(shifted - epsilon)) - gamma
        u = torch.rand(len(logits), dtype=logits.dtype, device=logits.device, generator=generator)
        keep = u < torch.sigmoid(accept_logit)
        draws, scored = draws + len(logits), scored + len(logits)
        if keep.any():
            kept.append([f[keep.to(f.device)] for f in fake])
            accepted += int(keep.sum())
        if accepted >= num_samples:
            break
    else:
        rate = accepted / max(scored, 1)
        raise ValueError(
            f"discriminator_rejection_sampling: {accepted} of {num_samples} samples accepted in {max_rounds} rounds "
            f"(acceptance rate {rate:.3g}, max logit {bound:.3g}); raise max_rounds, use a larger batch, or lower gamma"
        )
    samples = {name: torch.cat([k[i] for k in kept])[:num_samples] for i, name in enumerate(names)}
    return RejectionSamples(samples, accepted / scored, bound, draws)
