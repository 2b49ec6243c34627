r"""Positive-definite kernels on samples, for MMD two-sample statistics and moment-matching losses.

A kernel is an :class:`torch.nn.Module` called as ``kernel(x, y)`` on two batches, ``(n, ...)`` and
``(m, ...)``, that returns the ``(n, m)`` Gram matrix :math:`K_{ij} = k(x_i, y_j)`; trailing dimensions
are flattened, so images and vectors are treated alike. ``kernel.diag(x, y)`` returns the ``(n,)``
values :math:`k(x_i, y_i)` for the linear-time estimator.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "Kernel",
    "RBFMixture",
    "RBF",
    "InverseMultiquadric",
    "IMQ",
    "FeatureKernel",
    "squared_distances",
    "median_bandwidth",
]


def _flatten(x: Tensor) -> Tensor:
    if x.dim() == 0:
        raise ValueError("a kernel takes a batch of samples, got a scalar")
    return x.reshape(x.shape[0], -1)


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """The ``(n, m)`` matrix of squared Euclidean distances ``‖x_i − y_j‖²`` (trailing dims flattened),
    as ``‖x‖² + ‖y‖² − 2 x·y`` clamped at 0."""
    x, y = _flatten(x), _flatten(y)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"samples of different sizes: {tuple(x.shape)} and {tuple(y.shape)}")
    d = x.pow(2).sum(-1, keepdim=True) + y.pow(2).sum(-1) - 2 * x @ y.T
    return d.clamp_min(0)


def median_bandwidth(x: Tensor, y: Tensor | None = None) -> float:
    """The median heuristic: the median pairwise distance ``‖x_i − x_j‖`` (i < j) of the pooled samples."""
    z = _flatten(x) if y is None else torch.cat([_flatten(x), _flatten(y)])
    d = squared_distances(z, z)
    i, j = torch.triu_indices(len(z), len(z), offset=1, device=z.device)
    return d[i, j].median().sqrt().item()


class Kernel(nn.Module):
    """Base class: subclasses define :meth:`from_sq_dist`, a function of ``‖x − y‖²``."""

    def from_sq_dist(self, d: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.from_sq_dist(squared_distances(x, y))

    def diag(self, x: Tensor, y: Tensor) -> Tensor:
        """``k(x_i, y_i)`` for paired rows, shape ``(n,)``."""
        x, y = _flatten(x), _flatten(y)
        if x.shape != y.shape:
            raise ValueError(f"diag needs paired samples of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        return self.from_sq_dist((x - y).pow(2).sum(-1))


class RBFMixture(Kernel):
    r"""A sum of Gaussian kernels :math:`k(x, y) = \sum_\sigma \exp(-\|x - y\|^2 / 2\sigma^2)`
    (GMMN, Li et al. 2015), characteristic for any positive bandwidths.

    :param bandwidths: the σ's.
    """

    def __init__(self, bandwidths: Sequence[float] | Tensor = (1.0,)):
        super().__init__()
        bw = torch.as_tensor(bandwidths, dtype=torch.float64).reshape(-1)  # cast to the data's dtype on use
        if bw.numel() == 0 or not (bw > 0).all() or not torch.isfinite(bw).all():
            raise ValueError(f"bandwidths must be positive and finite, got {bandwidths}")
        self.register_buffer("bandwidths", bw)

    def from_sq_dist(self, d: Tensor) -> Tensor:
        gamma = 0.5 / self.bandwidths.to(d).pow(2)
        # exp of very negative arguments takes a slow (subnormal) path on CPUs: stop at exp(-80) ≈ 2e-35 in
        # single precision (exp(-700) in double), below anything that could matter in a sum of kernel values.
        limit = 700.0 if d.dtype == torch.float64 else 80.0
        return torch.exp(-(d.unsqueeze(-1) * gamma).clamp_max(limit)).sum(-1)

    def extra_repr(self) -> str:
        return f"bandwidths={self.bandwidths.tolist()}"


def RBF(bandwidth: float = 1.0) -> RBFMixture:
    """The Gaussian kernel with one bandwidth σ."""
    return RBFMixture([bandwidth])


class InverseMultiquadric(Kernel):
    r"""The inverse multiquadric :math:`k(x, y) = \sum_c c / (c + \|x - y\|^2)`, with heavy tails that keep
    gradients alive far from the data (Tolstikhin et al. 2018 use :math:`c = 2 d \sigma^2`).

    :param scales: the c's.
    """

    def __init__(self, scales: Sequence[float] | Tensor = (1.0,)):
        super().__init__()
        c = torch.as_tensor(scales, dtype=torch.float64).reshape(-1)
        if c.numel() == 0 or not (c > 0).all() or not torch.isfinite(c).all():
            raise ValueError(f"scales must be positive and finite, got {scales}")
        self.register_buffer("scales", c)

    def from_sq_dist(self, d: Tensor) -> Tensor:
        c = self.scales.to(d)
        return (c / (c + d.unsqueeze(-1))).sum(-1)

    def extra_repr(self) -> str:
        return f"scales={self.scales.tolist()}"


IMQ = InverseMultiquadric


class FeatureKernel(Kernel):
    r"""A kernel on learned features, :math:`k(\phi(x), \phi(y))` (MMD-GAN, Li et al. 2017).

    :param feature_map: a network φ applied to each batch.
    :param base: the kernel on features.
    """

    def __init__(self, feature_map: nn.Module, base: Kernel):
        super().__init__()
        self.feature_map = feature_map
        self.base = base

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.base(self.feature_map(x), self.feature_map(y))

    def diag(self, x: Tensor, y: Tensor) -> Tensor:
        return self.base.diag(self.feature_map(x), self.feature_map(y))
