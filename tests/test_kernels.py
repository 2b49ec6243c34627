"""Kernels against brute-force loops over pairs, in float64."""

import math
import statistics

import pytest
import torch
from torch import nn

from dgm_ppl.kernels import (
    IMQ,
    RBF,
    FeatureKernel,
    InverseMultiquadric,
    RBFMixture,
    median_bandwidth,
    squared_distances,
)


def _sq(a, b):
    """‖a − b‖² of two flattened samples, as a Python float, by an explicit loop."""
    a, b = a.reshape(-1).tolist(), b.reshape(-1).tolist()
    return sum((u - v) ** 2 for u, v in zip(a, b, strict=True))


def _rbf(a, b, bandwidths):
    d = _sq(a, b)
    return sum(math.exp(-d / (2 * s * s)) for s in bandwidths)


def _imq(a, b, scales):
    d = _sq(a, b)
    return sum(c / (c + d) for c in scales)


def _gram(x, y, k):
    return torch.tensor([[k(xi, yj) for yj in y] for xi in x], dtype=torch.float64)


def _data(*shape):
    return torch.randn(*shape, dtype=torch.float64)


@pytest.mark.parametrize("bandwidths", [(1.0,), (0.5, 1.0, 2.0), (0.25, 4.0, 16.0)])
def test_rbf_mixture_gram_matches_pairwise_loop(bandwidths):
    x, y = _data(7, 3), _data(5, 3)
    kernel = RBFMixture(bandwidths)
    gram = kernel(x, y)
    assert gram.shape == (7, 5) and gram.dtype == torch.float64
    torch.testing.assert_close(gram, _gram(x, y, lambda a, b: _rbf(a, b, bandwidths)), rtol=1e-12, atol=1e-14)
    # Self-similarity: k(x, x) = number of bandwidths on the diagonal.
    torch.testing.assert_close(kernel(x, x).diagonal(), torch.full((7,), float(len(bandwidths)), dtype=torch.float64))


@pytest.mark.parametrize("scales", [(1.0,), (0.5, 2.0, 8.0), (0.125, 32.0)])
def test_imq_gram_matches_pairwise_loop(scales):
    x, y = _data(6, 4), _data(4, 4)
    gram = InverseMultiquadric(scales)(x, y)
    assert gram.shape == (6, 4)
    torch.testing.assert_close(gram, _gram(x, y, lambda a, b: _imq(a, b, scales)), rtol=1e-12, atol=1e-14)
    assert IMQ is InverseMultiquadric


def test_rbf_is_a_one_bandwidth_mixture():
    x, y = _data(5, 2), _data(3, 2)
    torch.testing.assert_close(RBF(0.5)(x, y), _gram(x, y, lambda a, b: math.exp(-_sq(a, b) / 0.5)))
    assert RBF(2.0).bandwidths.tolist() == [2.0]


@pytest.mark.parametrize(
    "kernel, pair",
    [
        (RBFMixture([0.5, 2.0]), lambda a, b: _rbf(a, b, (0.5, 2.0))),
        (IMQ([1.0, 4.0]), lambda a, b: _imq(a, b, (1.0, 4.0))),
    ],
)
def test_trailing_dimensions_are_flattened(kernel, pair):
    x, y = _data(5, 2, 3), _data(4, 2, 3)
    gram = kernel(x, y)
    assert gram.shape == (5, 4)
    torch.testing.assert_close(gram, kernel(x.reshape(5, 6), y.reshape(4, 6)), rtol=0, atol=0)
    torch.testing.assert_close(gram, _gram(x, y, pair), rtol=1e-12, atol=1e-14)
    # One-dimensional samples (n,) are n scalars.
    u, v = _data(4), _data(3)
    torch.testing.assert_close(kernel(u, v), kernel(u[:, None], v[:, None]), rtol=0, atol=0)


def test_squared_distances_match_loop_and_are_non_negative():
    x, y = _data(6, 2, 2), _data(5, 4)
    d = squared_distances(x, y)
    torch.testing.assert_close(d, _gram(x, y, _sq), rtol=1e-12, atol=1e-12)
    # Near-duplicates: the expansion ‖x‖² + ‖y‖² − 2x·y can round below 0; it must be clamped.
    z = 1e3 + _data(20, 3) * 1e-9
    assert (squared_distances(z, z) >= 0).all()


@pytest.mark.parametrize("make", [lambda: RBFMixture([0.5, 1.0, 2.0]), lambda: IMQ([0.5, 2.0])])
def test_diag_equals_gram_diagonal_for_paired_samples(make):
    kernel = make()
    x, y = _data(6, 3), _data(6, 3)
    torch.testing.assert_close(kernel.diag(x, y), kernel(x, y).diagonal(), rtol=1e-12, atol=1e-14)
    # With trailing dims too.
    x3, y3 = _data(6, 2, 3), _data(6, 2, 3)
    torch.testing.assert_close(kernel.diag(x3, y3), kernel(x3, y3).diagonal(), rtol=1e-12, atol=1e-14)
    with pytest.raises(ValueError, match="paired"):
        kernel.diag(_data(6, 3), _data(5, 3))


@pytest.mark.parametrize("make", [lambda: RBFMixture([0.5, 1.0, 2.0]), lambda: IMQ([0.5, 2.0])])
def test_gram_matrix_is_positive_semidefinite(make):
    z = _data(30, 2)
    eig = torch.linalg.eigvalsh(make()(z, z))
    assert eig.min() > -1e-10


@pytest.mark.parametrize("cls", [RBFMixture, InverseMultiquadric])
@pytest.mark.parametrize("bad", [[0.0], [-1.0], [1.0, -0.5], [float("nan")], [float("inf")], []])
def test_bad_bandwidths_raise(cls, bad):
    with pytest.raises(ValueError, match="positive and finite"):
        cls(bad)


def test_rbf_with_bad_bandwidth_raises():
    for bad in (0.0, -2.0, float("nan")):
        with pytest.raises(ValueError):
            RBF(bad)


@pytest.mark.parametrize("make", [lambda: RBFMixture([1.0]), lambda: IMQ([1.0])])
def test_mismatched_feature_sizes_raise(make):
    kernel = make()
    with pytest.raises(ValueError, match="different sizes"):
        kernel(_data(4, 2), _data(3, 3))
    with pytest.raises(ValueError, match="different sizes"):
        kernel(_data(4, 2, 3), _data(3, 5))
    with pytest.raises(ValueError, match="different sizes"):
        squared_distances(_data(4, 2), _data(3, 3))
    with pytest.raises(ValueError, match="scalar"):
        kernel(torch.tensor(1.0), _data(3, 1))


def _pairwise_distances(z):
    return [math.sqrt(_sq(z[i], z[j])) for i in range(len(z)) for j in range(i + 1, len(z))]


def test_median_bandwidth_equals_brute_force_median():
    x = _data(6, 3)  # 15 pairs: an odd count, so the median is unique
    assert median_bandwidth(x) == pytest.approx(statistics.median(_pairwise_distances(x)), rel=1e-12)
    # The pooled samples: 4 + 3 = 7 points, 21 pairs.
    a, b = _data(4, 3), _data(3, 3) + 2
    pooled = torch.cat([a, b])
    assert median_bandwidth(a, b) == pytest.approx(statistics.median(_pairwise_distances(pooled)), rel=1e-12)
    # Trailing dims flattened.
    img = _data(7, 2, 2)
    assert median_bandwidth(img) == pytest.approx(statistics.median(_pairwise_distances(img)), rel=1e-12)
    # An even number of pairs (5 points, 10 pairs): one of the two middle values (or between them).
    e = _data(5, 2)
    dist = _pairwise_distances(e)
    mb = median_bandwidth(e)
    assert statistics.median_low(dist) - 1e-12 <= mb <= statistics.median_high(dist) + 1e-12


def test_median_bandwidth_scales_with_the_data():
    x = _data(9, 2)
    assert median_bandwidth(3 * x) == pytest.approx(3 * median_bandwidth(x), rel=1e-12)
    assert median_bandwidth(x + 5) == pytest.approx(median_bandwidth(x), rel=1e-9)


def test_feature_kernel_is_base_kernel_on_features():
    phi = nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Tanh()).double()
    base = RBFMixture([0.5, 1.0])
    kernel = FeatureKernel(phi, base)
    x, y = _data(5, 2, 3), _data(4, 2, 3)
    fx, fy = phi(x), phi(y)
    gram = kernel(x, y)
    torch.testing.assert_close(gram, base(fx, fy))
    torch.testing.assert_close(gram, _gram(fx.detach(), fy.detach(), lambda a, b: _rbf(a, b, (0.5, 1.0))))
    y5 = _data(5, 2, 3)
    torch.testing.assert_close(kernel.diag(x, y5), base.diag(phi(x), phi(y5)))
    torch.testing.assert_close(kernel.diag(x, y5), kernel(x, y5).diagonal())
    # Gradients reach the feature map (an MMD-GAN critic is trained through the kernel).
    gram.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in phi.parameters())


def test_kernel_parameters_follow_the_module():
    kernel = RBFMixture([0.5, 2.0])
    assert "bandwidths" in dict(kernel.named_buffers())
    assert kernel.double().bandwidths.dtype == torch.float64
    assert "scales" in dict(IMQ([1.0]).named_buffers())


def test_float64_gram_with_non_dyadic_bandwidth_is_exact():
    x = _data(6, 3)
    expected = _gram(x, x, lambda a, b: _rbf(a, b, (0.3, 0.7)))
    torch.testing.assert_close(RBFMixture([0.3, 0.7])(x, x), expected, rtol=1e-12, atol=1e-14)
