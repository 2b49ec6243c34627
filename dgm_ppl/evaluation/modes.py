r"""Mode coverage on Gaussian-mixture benchmarks and a nearest-neighbour memorization check.

Mode coverage follows VEEGAN/PacGAN (Srivastava et al. 2017; Lin et al. 2018): each sample is assigned
to its nearest mode centre; it is *high quality* when it lies within 3σ of that centre; a mode is
*covered* when at least ``min_count`` high-quality samples are assigned to it. The reverse KL is
:math:`\mathrm{KL}(\hat q \,\|\, p) = \sum_k \hat q_k \log(\hat q_k / p_k)`, where :math:`\hat q_k` is the
fraction of all samples nearest to mode k and p the true (uniform) mode weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._data import as_data_tensor
from ..datasets import GRID_STD, RING_STD, grid_centers, ring_centers
from ..kernels import squared_distances

__all__ = ["mode_coverage", "ModeCoverage", "memorization", "MemorizationResult"]

_BENCHMARKS = {"ring": (ring_centers, RING_STD), "grid": (grid_centers, GRID_STD)}


@dataclass(frozen=True)
class ModeCoverage:
    """``modes``: the number of covered modes (of ``num_modes``); ``high_quality``: the fraction of samples
    within 3σ of their nearest mode; ``reverse_kl``: KL(generated mode frequencies ‖ true weights);
    ``counts``: high-quality samples per mode."""

    modes: int
    num_modes: int
    high_quality: float
    reverse_kl: float
    counts: Tensor


def _as_samples(samples: Tensor, dim: int) -> Tensor:
    samples = as_data_tensor(samples, "samples")
    if not isinstance(samples, Tensor) or samples.dim() != 2 or samples.shape[-1] != dim or len(samples) == 0:
        shape = tuple(samples.shape) if isinstance(samples, Tensor) else type(samples).__name__
        raise ValueError(f"samples must be a non-empty (n, {dim}) tensor, got {shape}")
    if not torch.isfinite(samples).all():
        raise ValueError("samples contain NaN or inf")
    return samples.detach()


def _nearest(samples: Tensor, reference: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Squared distance to, and index of, each sample's nearest reference point (in chunks)."""
    best, index = [], []
    for s in samples.split(chunk):
        d, i = squared_distances(s, reference).min(-1)
        best.append(d)
        index.append(i)
    return torch.cat(best), torch.cat(index)


@torch.no_grad()
def mode_coverage(
    samples: Tensor,
    benchmark: str | None = None,
    *,
    centers: Tensor | None = None,
    std: float | None = None,
    weights: Tensor | None = None,
    min_count: int = 1,
) -> ModeCoverage:
    """Score ``samples`` ``(n, d)`` against a mixture of isotropic Gaussians: ``benchmark`` ``"ring"`` (8 modes,
    σ = 0.01) or ``"grid"`` (25 modes, σ = 0.05) as made by :mod:`dgm_ppl.datasets`, or explicit ``centers``
    ``(K, d)`` and ``std`` (and optional mode ``weights``, uniform by default)."""
    if benchmark is not None:
        if benchmark not in _BENCHMARKS:
            raise ValueError(f"benchmark must be one of {tuple(_BENCHMARKS)} or None, got {benchmark!r}")
        if centers is not None:
            raise ValueError("give either a benchmark name or centers, not both")
        make, default_std = _BENCHMARKS[benchmark]
        centers, std = make(), default_std if std is None else std
    if centers is None or std is None:
        raise ValueError("give a benchmark name, or both centers= and std=")
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    centers = torch.as_tensor(centers)
    if centers.dim() != 2:
        raise ValueError(f"centers must be (K, d), got {tuple(centers.shape)}")
    samples = _as_samples(samples, centers.shape[-1])
    centers = centers.to(samples)
    k = len(centers)
    p = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(weights).double()
    if p.shape != (k,) or (p < 0).any() or abs(p.sum().item() - 1) > 1e-6:
        raise ValueError(f"weights must be {k} non-negative numbers summing to 1")
    d2, nearest = _nearest(samples, centers)
    good = d2 <= (3 * std) ** 2
    counts = torch.bincount(nearest[good], minlength=k).cpu()
    q = torch.bincount(nearest, minlength=k).double().cpu() / len(samples)
    seen = q > 0
    reverse_kl = (q[seen] * (q[seen] / p[seen]).log()).sum().item()
    return ModeCoverage(
        modes=int((counts >= min_count).sum()),
        num_modes=k,
        high_quality=good.double().mean().item(),
        reverse_kl=reverse_kl,
        counts=counts,
    )


def _exact_distance(samples: Tensor, reference: Tensor, index: Tensor) -> Tensor:
    """Distances recomputed from differences, so that an exact copy is at distance exactly 0."""
    return (samples - reference[index]).pow(2).sum(-1).sqrt()


@dataclass(frozen=True)
class MemorizationResult:
    """``distances``: each sample's distance to its nearest training point; ``nearest``: that point's index;
    ``fraction_copied``: the fraction of samples within ``tol`` of a training point (copies);
    ``ratio``: the median nearest-training distance of the samples over that of held-out data (``None``
    without held-out data). A ratio well below 1 means the samples sit closer to the training set than fresh
    data from the same distribution do: memorization."""

    distances: Tensor
    nearest: Tensor
    fraction_copied: float
    ratio: float | None


@torch.no_grad()
def memorization(
    samples: Tensor, train: Tensor, held_out: Tensor | None = None, *, tol: float = 1e-6
) -> MemorizationResult:
    """Nearest-neighbour memorization check of generated ``samples`` against the ``train`` set (trailing
    dimensions flattened; Euclidean distance). Give ``held_out`` data to calibrate the distances."""
    train = as_data_tensor(train, "train")
    if train.dim() == 0 or len(train) == 0:
        raise ValueError("train must be a non-empty batch of samples")
    train = train.detach().reshape(len(train), -1)
    if not torch.isfinite(train).all():
        raise ValueError("train contains NaN or inf")
    dim = train.shape[-1]
    samples = as_data_tensor(samples, "samples")
    samples = _as_samples(samples.detach().reshape(len(samples), -1), dim)
    samples = samples.to(train)
    nearest = _nearest(samples, train)[1]
    distances = _exact_distance(samples, train, nearest)
    ratio = None
    if held_out is not None:
        held_out = as_data_tensor(held_out, "held_out")
        held = _as_samples(held_out.detach().reshape(len(held_out), -1), dim).to(train)
        reference = _exact_distance(held, train, _nearest(held, train)[1]).median()
        ratio = (distances.median() / reference).item() if reference > 0 else float("inf")
    return MemorizationResult(distances.cpu(), nearest.cpu(), (distances <= tol).double().mean().item(), ratio)
