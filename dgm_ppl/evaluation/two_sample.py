r"""Maximum mean discrepancy and the kernel two-sample test (Gretton et al. 2012).

For a kernel k and samples :math:`x_{1..n} \sim P`, :math:`y_{1..m} \sim Q`,

.. math::

    \mathrm{MMD}^2 = \mathbb E\,k(x, x') + \mathbb E\,k(y, y') - 2\,\mathbb E\,k(x, y),

zero iff P = Q for a characteristic kernel. Estimators:

- ``"unbiased"`` (U-statistic): the within-sample means leave out i = j,
  :math:`\frac{1}{n(n-1)}\sum_{i\ne j} k(x_i,x_j) + \frac{1}{m(m-1)}\sum_{i\ne j} k(y_i,y_j)
  - \frac{2}{nm}\sum_{i,j} k(x_i,y_j)`; it can be negative.
- ``"biased"`` (V-statistic): all means over full Gram matrices; always ≥ 0.
- ``"linear"``: the mean of :math:`h_i = k(x_{2i-1},x_{2i}) + k(y_{2i-1},y_{2i}) - k(x_{2i-1},y_{2i})
  - k(x_{2i},y_{2i-1})` over disjoint pairs; unbiased, O(n) time, higher variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._data import as_data_tensor
from ..kernels import RBF, Kernel, median_bandwidth

__all__ = ["mmd2", "mmd_test", "MMDTestResult", "ESTIMATORS"]

ESTIMATORS = ("unbiased", "biased", "linear")


def _check(x: Tensor, y: Tensor, estimator: str) -> tuple[Tensor, Tensor]:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    x, y = as_data_tensor(x, "x"), as_data_tensor(y, "y")
    if x.dim() == 0 or y.dim() == 0 or x.shape[1:] != y.shape[1:]:
        raise ValueError(f"x and y must be batches of samples of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"need at least 2 samples on each side, got {len(x)} and {len(y)}")
    if not torch.isfinite(x).all() or not torch.isfinite(y).all():
        raise ValueError("x and y must be finite (found NaN or inf)")
    if y.dtype != x.dtype:
        y = y.to(x.dtype)
    return x, y


def _default_kernel(x: Tensor, y: Tensor) -> Kernel:
    return RBF(median_bandwidth(x.detach(), y.detach()) or 1.0).to(x.device)


def _linear_terms(x: Tensor, y: Tensor, kernel: Kernel) -> Tensor:
    half = min(len(x), len(y)) // 2
    x1, x2 = x[0 : 2 * half : 2], x[1 : 2 * half : 2]
    y1, y2 = y[0 : 2 * half : 2], y[1 : 2 * half : 2]
    return kernel.diag(x1, x2) + kernel.diag(y1, y2) - kernel.diag(x1, y2) - kernel.diag(x2, y1)


def mmd2(x: Tensor, y: Tensor, kernel: Kernel | None = None, estimator: str = "unbiased") -> Tensor:
    """The squared MMD between the samples ``x`` ``(n, ...)`` and ``y`` ``(m, ...)``, a differentiable
    scalar tensor. ``kernel`` defaults to a Gaussian kernel at the median heuristic of the pooled samples."""
    x, y = _check(x, y, estimator)
    kernel = kernel if kernel is not None else _default_kernel(x, y)
    if estimator == "linear":
        return _linear_terms(x, y, kernel).mean()
    n, m = len(x), len(y)
    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    if estimator == "biased":
        return kxx.mean() + kyy.mean() - 2 * kxy.mean()
    return (
        (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
        + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
        - 2 * kxy.mean()
    )


@dataclass(frozen=True)
class MMDTestResult:
    """The outcome of :func:`mmd_test`: the observed ``statistic`` (MMD²), its ``p_value``, and the
    permutation ``null`` statistics (``None`` for the linear-time test, whose null is Gaussian)."""

    statistic: float
    p_value: float
    estimator: str
    null: Tensor | None = None

    def reject(self, alpha: float = 0.05) -> bool:
        """Whether the test rejects P = Q at level ``alpha``."""
        return self.p_value <= alpha


def _pooled_statistics(gram: Tensor, member: Tensor, n: int, m: int, estimator: str) -> Tensor:
    """MMD² for each row of the 0/1 matrix ``member`` (which pooled samples are in x), from one Gram matrix."""
    other = 1 - member
    km = member @ gram
    sxx, sxy = (km * member).sum(-1), (km * other).sum(-1)
    syy = ((other @ gram) * other).sum(-1)
    if estimator == "biased":
        return sxx / n**2 + syy / m**2 - 2 * sxy / (n * m)
    diag = gram.diagonal()
    return (sxx - member @ diag) / (n * (n - 1)) + (syy - other @ diag) / (m * (m - 1)) - 2 * sxy / (n * m)


@torch.no_grad()
def mmd_test(
    x: Tensor,
    y: Tensor,
    kernel: Kernel | None = None,
    num_permutations: int = 1000,
    estimator: str = "unbiased",
    generator: torch.Generator | None = None,
) -> MMDTestResult:
    r"""Test P = Q from samples ``x ~ P`` and ``y ~ Q``.

    With the ``"unbiased"`` or ``"biased"`` estimator this is a permutation test: the pooled Gram matrix
    is computed once and the statistic is recomputed for ``num_permutations`` random relabellings;
    :math:`p = (1 + \#\{\text{null} \ge \text{observed}\}) / (1 + B)`, which is exact (valid at every level)
    under exchangeability. With ``"linear"`` the null of the mean of the n/2 i.i.d. terms is Gaussian
    (Gretton et al. 2012, §6) and :math:`p = 1 - \Phi(\widehat{\mathrm{MMD}}^2_l / \widehat{se})`.
    """
    x, y = _check(x, y, estimator)
    if not (isinstance(num_permutations, int) and not isinstance(num_permutations, bool) and num_permutations >= 1):
        raise ValueError(f"num_permutations must be a positive integer, got {num_permutations}")
    kernel = kernel if kernel is not None else _default_kernel(x, y)
    if estimator == "linear":
        if min(len(x), len(y)) < 4:
            raise ValueError("the linear-time test needs at least 4 samples on each side (2 pairs)")
        h = _linear_terms(x, y, kernel)
        stat, se = h.mean().item(), h.std().item() / math.sqrt(len(h))
        p = 0.5 * math.erfc(stat / se / math.sqrt(2)) if se > 0 else float(stat <= 0)
        return MMDTestResult(stat, p, estimator)
    n, m = len(x), len(y)
    z = torch.cat([x, y])
    gram = kernel(z, z)
    observed = torch.zeros(1, n + m, dtype=gram.dtype, device=gram.device)
    observed[:, :n] = 1
    stat = _pooled_statistics(gram, observed, n, m, estimator)[0]
    chunk = max(1, 2**22 // (n + m))
    null = []
    for start in range(0, num_permutations, chunk):
        b = min(chunk, num_permutations - start)
        keys = torch.rand(b, n + m, generator=generator, device="cpu").to(gram.device)
        member = (keys.argsort(-1).argsort(-1) < n).to(gram.dtype)  # a uniformly random n-subset per row
        null.append(_pooled_statistics(gram, member, n, m, estimator))
    null = torch.cat(null)
    p = (1 + (null >= stat).sum().item()) / (1 + num_permutations)
    return MMDTestResult(stat.item(), p, estimator, null.cpu())
