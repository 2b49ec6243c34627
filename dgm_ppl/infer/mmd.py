r"""Moment matching: a generator trained by minimizing MMD² to the data, as an SVI loss (GMMN: Li et al. 2015,
Dziugaite et al. 2015; DL book §20.10.5).

.. math::

    \mathcal L(G) = \widehat{\mathrm{MMD}}^2_k\big(\{\tilde x_i\} \sim p_G,\ \{x_j\} \sim p_{data}\big)

with the unbiased, biased or linear-time estimator of :func:`dgm_ppl.evaluation.mmd2`. With a learned
``feature_map`` φ (MMD-GAN, Li et al. 2017) the kernel is :math:`k(\phi(x), \phi(y))` and φ is trained to
maximize the same MMD² with its own optimizer, one step per generator step.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from torch import Tensor, nn

from ..evaluation.two_sample import ESTIMATORS, mmd2
from ..kernels import FeatureKernel, Kernel, RBFMixture
from .comparison import ComparisonLoss, adversary_step, check_finite, draw_real_and_fake, frozen, make_optimizer

__all__ = ["MMDLoss"]


class MMDLoss(ComparisonLoss):
    r"""Generative moment matching network loss for :class:`pyro.infer.SVI`.

    Each call runs the guide and the model with observations removed and returns
    :math:`\widehat{\mathrm{MMD}}^2` between the model's draws and the data at the observed sites (all sites,
    flattened and concatenated; with ``context`` the per-sample context is appended to both, so the joint
    distribution of (x, context) is matched: a conditional GMMN).

    :param kernel: a :class:`~dgm_ppl.kernels.Kernel`; default ``RBFMixture([0.05, 0.1, 0.2, 0.5, 1, 2, 5])``,
        suited to standardized data.
    :param estimator: ``"unbiased"``, ``"biased"`` or ``"linear"``.
    :param feature_map: optional network φ for MMD-GAN; it is maximized against the generator.
    :param f_optim: its optimizer (or a factory of its parameters); default Adam(lr=1e-4, betas=(0.5, 0.9)).
    :param clip: optional weight clipping bound for φ (Li et al. 2017 clip at 0.01).
    :param prior_scale: weight of :math:`\log q(\theta) - \log p(\theta)` for the guide's latents.
    :param context: maps the model's arguments to per-sample context tensors.

    ``history`` records ``mmd2`` at each step.
    """

    def __init__(
        self,
        kernel: Kernel | None = None,
        estimator: str = "unbiased",
        *,
        feature_map: nn.Module | None = None,
        f_optim: torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None = None,
        clip: float | None = None,
        prior_scale: float = 0.0,
        context: Callable[..., Tensor | tuple[Tensor, ...]] | None = None,
    ):
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if kernel is not None and not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a dgm_ppl.kernels.Kernel, got {type(kernel).__name__}")
        if not prior_scale >= 0:
            raise ValueError(f"prior_scale must be non-negative, got {prior_scale}")
        kernel = kernel if kernel is not None else RBFMixture([0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0])
        self.base_kernel = kernel
        self.feature_map = feature_map
        self.kernel = kernel if feature_map is None else FeatureKernel(feature_map, kernel)
        self.f_optim = None
        if feature_map is not None:
            self.f_optim = make_optimizer(
                feature_map, f_optim, lambda params: torch.optim.Adam(params, lr=1e-4, betas=(0.5, 0.9))
            )
        self.estimator = estimator
        self.clip = clip
        self.prior_scale = float(prior_scale)
        self.context = context
        self.history: dict[str, list[float]] = {"mmd2": []}

    def _feature_step(self, real: Tensor, fake: Tensor) -> None:
        loss = -mmd2(fake.detach(), real, self.kernel, self.estimator)
        adversary_step("MMDLoss", "feature-map loss", loss, self.feature_map, self.f_optim, self.clip)

    def __call__(self, model: Callable, guide: Callable | None, *args, **kwargs) -> Tensor:
        """Returns the differentiable MMD² (plus the KL term when ``prior_scale`` > 0)."""
        draw = draw_real_and_fake(
            "MMDLoss", model, guide, args, kwargs, context=self.context, with_kl=self.prior_scale > 0
        )
        if draw.batch_size < 2:
            raise ValueError(f"MMDLoss needs at least 2 samples per step, got {draw.batch_size}")
        real, fake = draw.flat()
        kernel = self.kernel.to(real.device)
        train = torch.is_grad_enabled()
        if self.feature_map is None:
            value = mmd2(fake, real, kernel, self.estimator)
        else:
            with poutine.block():
                if train:
                    self._feature_step(real, fake)
                with frozen(self.feature_map):
                    value = mmd2(fake, real, kernel, self.estimator)
        check_finite("MMDLoss", "MMD²", value)
        if train:
            self.history["mmd2"].append(value.item())
        return value + self.prior_scale * draw.kl if self.prior_scale else value

    def _adversary(self):
        return None if self.feature_map is None else ("feature_map", self.feature_map, self.f_optim)
