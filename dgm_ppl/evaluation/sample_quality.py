r"""Sample-quality metrics on features: Fréchet distance (FID), kernel distance (KID), precision and recall.

All three compare two sets of feature vectors, ``(N, d)`` each (the penultimate layer of a classifier, e.g.
:func:`dgm_ppl.evaluation.digits_feature_extractor`, or Inception-v3 pool features for the published FID/KID).
Computations run in float64.

**Fréchet distance** (Heusel et al. 2017): the 2-Wasserstein distance squared between Gaussians fitted to the two
sets, with sample means :math:`\mu_a, \mu_b` and sample covariances :math:`\Sigma_a, \Sigma_b` (divisor N - 1),

.. math::

    \mathrm{FD} = \lVert \mu_a - \mu_b \rVert^2 + \operatorname{Tr}\Sigma_a + \operatorname{Tr}\Sigma_b
    - 2 \operatorname{Tr}\big(\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2}\big)^{1/2}.

The last trace is :math:`\sum_i \sqrt{\lambda_i}` over the eigenvalues of the symmetric PSD matrix
:math:`\Sigma_a^{1/2} \Sigma_b \Sigma_a^{1/2}` (the same as those of :math:`\Sigma_a \Sigma_b`), computed with
``eigh``; rounding-level negative eigenvalues are set to 0. FD is biased upwards in small samples: compare values only
at equal sample sizes.

**Kernel distance** (KID; Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the polynomial kernel
:math:`k(x, y) = (\gamma\, x^\top y + c_0)^p` (:math:`\gamma = 1/d`, :math:`c_0 = 1`, p = 3 by default),

.. math::

    \widehat{\mathrm{MMD}}^2_u = \frac{1}{m(m-1)} \sum_{i \ne j} \big[k(a_i, a_j) + k(b_i, b_j)\big]
    - \frac{2}{m^2} \sum_{i, j} k(a_i, b_j),

averaged over random subsets of m points of each set. It is unbiased (it can be negative) and needs no Gaussian
assumption.

**Precision and recall** (Kynkäänniemi et al. 2019): each set approximates its manifold by the union of balls around its
points, of radius the distance to the point's k-th nearest neighbour in its own set,
:math:`\Phi(X) = \bigcup_{x \in X} B\big(x, \mathrm{NND}_k(x)\big)`. Then precision is the fraction of fake points in
:math:`\Phi(\text{real})` (fidelity) and recall the fraction of real points in :math:`\Phi(\text{fake})` (diversity).
Density and coverage (Naeem et al. 2020) come from the same balls around the real points:
:math:`\mathrm{density} = \frac{1}{kM} \sum_j \sum_i 1[y_j \in B(x_i, \mathrm{NND}_k(x_i))]` (about 1 when the two
distributions agree, above 1 for fakes packed in dense real regions) and coverage, the fraction of real balls holding
at least one fake point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._data import as_data_tensor

__all__ = [
    "frechet_distance",
    "kernel_distance",
    "KernelDistance",
    "precision_recall",
    "PrecisionRecall",
]


def _features(x, name: str, min_rows: int, why: str) -> Tensor:
    """``x`` as a finite float64 ``(N, d)`` tensor with at least ``min_rows`` rows, else a ValueError."""
    x = as_data_tensor(x, name)
    if x.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) array of feature vectors, got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has feature dimension 0")
    if len(x) < min_rows:
        raise ValueError(f"{name} has {len(x)} feature vectors; {why} needs at least {min_rows}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x.detach().to(torch.float64)


def _pair(a, b, names: tuple[str, str], min_rows: int, why: str) -> tuple[Tensor, Tensor]:
    a, b = _features(a, names[0], min_rows, why), _features(b, names[1], min_rows, why)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} have different feature dimensions: {a.shape[1]} and {b.shape[1]}")
    return a, b.to(a.device)


def _psd_sqrt(s: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


@torch.no_grad()
def frechet_distance(feats_a: Tensor, feats_b: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (FID on Inception features).

    :param feats_a: ``(N, d)`` features (tensor or NumPy array).
    :param feats_b: ``(M, d)`` features.
    :returns: the distance, a float ≥ 0.
    :raises ValueError: for non-2-D input, different feature dimensions, fewer than 2 vectors in a set, NaN or inf.
    :raises TypeError: for input that is neither a tensor nor a numeric array.
    """
    a, b = _pair(feats_a, feats_b, ("feats_a", "feats_b"), 2, "a covariance")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], -1), torch.cov(b.T).reshape(b.shape[1], -1)
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    middle = (middle + middle.T) / 2
    trace_sqrt = torch.linalg.eigvalsh(middle).clamp_min(0).sqrt().sum()
    fd = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_sqrt
    return max(fd.item(), 0.0)


@dataclass(frozen=True)
class KernelDistance:
    """The outcome of :func:`kernel_distance`.

    :ivar value: the mean of the subset estimates of MMD² (KID).
    :ivar std: their standard deviation across subsets (0 with a single subset).
    :ivar stderr: ``std / sqrt(num_subsets)``, the Monte Carlo error of the mean over subsets given the two samples.
        It leaves out the sampling error of the samples themselves, which dominates when the subsets cover a large
        part of the data.
    :ivar subsets: the per-subset estimates, shape ``(num_subsets,)``.
    :ivar subset_size: the number of points drawn from each set per subset.
    """

    value: float
    std: float
    stderr: float
    subsets: Tensor = field(repr=False)
    subset_size: int

    def __float__(self) -> float:
        return self.value


def _mmd2_unbiased(kxx: Tensor, kyy: Tensor, kxy: Tensor) -> Tensor:
    m = len(kxx)
    within = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * kxy.mean()


@torch.no_grad()
def kernel_distance(
    feats_a: Tensor,
    feats_b: Tensor,
    *,
    subset_size: int = 1000,
    num_subsets: int = 100,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    generator: torch.Generator | None = None,
) -> KernelDistance:
    """The kernel distance (KID): the unbiased MMD² with a polynomial kernel, averaged over random subsets.

    Each subset draws ``min(subset_size, N, M)`` points without replacement from each set; with a subset size of
    ``N = M`` every subset holds all points and the estimate is the full-sample U-statistic.

    :param feats_a: ``(N, d)`` features (tensor or NumPy array).
    :param feats_b: ``(M, d)`` features.
    :param subset_size: the points drawn from each set per subset (at least 2).
    :param num_subsets: the number of subsets.
    :param degree: the kernel's degree p.
    :param gamma: the kernel's scale γ; default 1/d.
    :param coef0: the kernel's constant :math:`c_0`.
    :param generator: the random generator (CPU) that draws the subsets.
    :returns: a :class:`KernelDistance`; ``float()`` of it is the mean.
    :raises ValueError: for bad input as :func:`frechet_distance`, fewer than 2 vectors per subset, or bad options.
    """
    for name, value in (("subset_size", subset_size), ("num_subsets", num_subsets), ("degree", degree)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if subset_size < 2:
        raise ValueError(f"subset_size must be at least 2 (the unbiased estimate leaves out i = j), got {subset_size}")
    a, b = _pair(feats_a, feats_b, ("feats_a", "feats_b"), 2, "the unbiased MMD estimate")
    gamma = 1.0 / a.shape[1] if gamma is None else float(gamma)
    if not (math.isfinite(gamma) and math.isfinite(coef0)):
        raise ValueError(f"gamma and coef0 must be finite, got {gamma} and {coef0}")
    m = min(subset_size, len(a), len(b))

    def kernel(x: Tensor, y: Tensor) -> Tensor:
        return (gamma * (x @ y.T) + coef0) ** degree

    estimates = torch.empty(num_subsets, dtype=torch.float64)
    for s in range(num_subsets):
        x = a[torch.randperm(len(a), generator=generator)[:m].to(a.device)]
        y = b[torch.randperm(len(b), generator=generator)[:m].to(b.device)]
        estimates[s] = _mmd2_unbiased(kernel(x, x), kernel(y, y), kernel(x, y)).cpu()
    std = estimates.std().item() if num_subsets > 1 else 0.0
    return KernelDistance(estimates.mean().item(), std, std / math.sqrt(num_subsets), estimates, m)


@dataclass(frozen=True)
class PrecisionRecall:
    """The outcome of :func:`precision_recall`.

    :ivar precision: the fraction of fake points inside the real manifold.
    :ivar recall: the fraction of real points inside the fake manifold.
    :ivar density: Naeem et al.'s density: the mean number of real balls holding a fake point, over k.
    :ivar coverage: the fraction of real balls that hold at least one fake point.
    :ivar k: the neighbour used for the radii.
    """

    precision: float
    recall: float
    density: float
    coverage: float
    k: int


def _chunks(rows: int, cols: int, budget: int = 2**22) -> int:
    """Rows per chunk, so that a chunk's distance matrix holds at most ``budget`` entries."""
    return max(1, min(rows, budget // max(cols, 1)))


def _knn_radii(x: Tensor, k: int) -> Tensor:
    """The distance from each point of ``x`` to its k-th nearest neighbour in ``x`` (itself left out)."""
    step = _chunks(len(x), len(x))
    return torch.cat([torch.cdist(c, x).topk(k + 1, dim=1, largest=False).values[:, -1] for c in x.split(step)])


def _inside(points: Tensor, centres: Tensor, radii: Tensor) -> tuple[Tensor, Tensor]:
    """For each point, the number of balls (centres, radii) that hold it; for each ball, whether it holds a point."""
    step = _chunks(len(points), len(centres))
    counts, hit = [], torch.zeros(len(centres), dtype=torch.bool, device=centres.device)
    for c in points.split(step):
        within = torch.cdist(c, centres) <= radii
        counts.append(within.sum(1))
        hit |= within.any(0)
    return torch.cat(counts), hit


@torch.no_grad()
def precision_recall(real_feats: Tensor, fake_feats: Tensor, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall (Kynkäänniemi et al. 2019), with density and coverage (Naeem et al. 2020).

    Distances are Euclidean, computed in row chunks with :func:`torch.cdist` so that memory stays bounded.

    :param real_feats: ``(N, d)`` features of real data (tensor or NumPy array).
    :param fake_feats: ``(M, d)`` features of generated samples.
    :param k: the nearest neighbour whose distance is the radius of a point's ball (3 in the paper).
    :returns: a :class:`PrecisionRecall`.
    :raises ValueError: for bad input as :func:`frechet_distance`, ``k`` not a positive integer, or k or fewer points in
        a set.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    why = f"the radius to the k-th (k={k}) nearest neighbour"
    real, fake = _pair(real_feats, fake_feats, ("real_feats", "fake_feats"), k + 1, why)
    real_radii, fake_radii = _knn_radii(real, k), _knn_radii(fake, k)
    counts, covered = _inside(fake, real, real_radii)
    recalled = _inside(real, fake, fake_radii)[0]
    return PrecisionRecall(
        precision=(counts > 0).double().mean().item(),
        recall=(recalled > 0).double().mean().item(),
        density=counts.double().sum().item() / (k * len(fake)),
        coverage=covered.double().mean().item(),
        k=k,
    )
