"""MMD estimators and tests against brute-force formulas, the Gaussian-mixture benchmarks, mode coverage and
memorization."""

import itertools
import math

import pytest
import torch

from dgm_ppl.datasets import GRID_STD, RING_STD, grid_centers, grid_of_gaussians, ring_centers, ring_of_gaussians
from dgm_ppl.evaluation import memorization, mmd2, mmd_test, mode_coverage
from dgm_ppl.evaluation.two_sample import _pooled_statistics
from dgm_ppl.kernels import IMQ, RBF, RBFMixture, median_bandwidth

# ---------------------------------------------------------------------------------------------------------------------
# Brute-force references, written with explicit Python loops over samples.


def _k_rbf(a, b, bandwidths=(0.5, 1.0, 2.0)):
    d = sum((u - v) ** 2 for u, v in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True))
    return sum(math.exp(-d / (2 * s * s)) for s in bandwidths)


def _k_imq(a, b, scales=(0.5, 2.0)):
    d = sum((u - v) ** 2 for u, v in zip(a.reshape(-1).tolist(), b.reshape(-1).tolist(), strict=True))
    return sum(c / (c + d) for c in scales)


_KERNELS = {
    "rbf": (lambda: RBFMixture([0.5, 1.0, 2.0]), _k_rbf),
    "imq": (lambda: IMQ([0.5, 2.0]), _k_imq),
}


def _brute_unbiased(x, y, k):
    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    return sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)


def _brute_biased(x, y, k):
    n, m = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    return sxx / n**2 + syy / m**2 - 2 * sxy / (n * m)


def _linear_h(x, y, k):
    """Gretton et al. (2012), Lemma 14, with 1-based indices i = 1..min(n, m)//2 as written there:
    h_i = k(x_{2i-1}, x_{2i}) + k(y_{2i-1}, y_{2i}) - k(x_{2i-1}, y_{2i}) - k(x_{2i}, y_{2i-1})."""
    X = {t + 1: x[t] for t in range(len(x))}  # 1-based views
    Y = {t + 1: y[t] for t in range(len(y))}
    h = []
    for i in range(1, min(len(x), len(y)) // 2 + 1):
        h.append(
            k(X[2 * i - 1], X[2 * i])
            + k(Y[2 * i - 1], Y[2 * i])
            - k(X[2 * i - 1], Y[2 * i])
            - k(X[2 * i], Y[2 * i - 1])
        )
    return h


def _brute_linear(x, y, k):
    h = _linear_h(x, y, k)
    return sum(h) / len(h)


_BRUTE = {"unbiased": _brute_unbiased, "biased": _brute_biased, "linear": _brute_linear}


def _normal(n, d=2, shift=0.0, generator=None, dtype=torch.float64):
    z = torch.randn(n, d, generator=generator, dtype=dtype)
    z[:, 0] += shift
    return z


# ---------------------------------------------------------------------------------------------------------------------
# mmd2


@pytest.mark.parametrize("kernel_name", ["rbf", "imq"])
@pytest.mark.parametrize("estimator", ["unbiased", "biased", "linear"])
def test_mmd2_matches_brute_force_with_unequal_sizes(estimator, kernel_name):
    make, k = _KERNELS[kernel_name]
    x, y = _normal(7, 3), _normal(5, 3, shift=0.7)
    value = mmd2(x, y, make(), estimator=estimator)
    assert value.dim() == 0 and value.dtype == torch.float64
    assert value.item() == pytest.approx(_BRUTE[estimator](x, y, k), rel=1e-12, abs=1e-14)
    # The reverse order (n = 5, m = 7) too: the estimators are not symmetric in general (linear is).
    assert mmd2(y, x, make(), estimator=estimator).item() == pytest.approx(_BRUTE[estimator](y, x, k), rel=1e-12)


def test_linear_estimator_uses_only_the_first_pairs():
    kernel, k = RBFMixture([0.5, 1.0, 2.0]), _k_rbf
    x, y = _normal(7, 2), _normal(5, 2)
    assert len(_linear_h(x, y, k)) == 2  # min(7, 5) // 2 pairs: rows 1-4 (1-based) of each sample
    base = mmd2(x, y, kernel, "linear").item()
    x2, y2 = x.clone(), y.clone()
    x2[4:] += 10.0  # rows 5.. of x and row 5 of y are not used
    y2[4:] -= 10.0
    assert mmd2(x2, y2, kernel, "linear").item() == pytest.approx(base, rel=1e-14)
    x3 = x.clone()
    x3[3] += 1.0  # x_4 (1-based) enters h_2
    assert mmd2(x3, y, kernel, "linear").item() != pytest.approx(base, rel=1e-6)
    # Hand check on four 1-D points per side with k(a, b) = exp(-(a - b)²/2).
    xs, ys = torch.tensor([[0.0], [1.0], [2.0], [4.0]], dtype=torch.float64), torch.tensor([[0.5], [0.0], [3.0], [3.0]])
    ys = ys.double()
    e = lambda a, b: math.exp(-((a - b) ** 2) / 2)  # noqa: E731
    h1 = e(0, 1) + e(0.5, 0) - e(0, 0) - e(1, 0.5)
    h2 = e(2, 4) + e(3, 3) - e(2, 3) - e(4, 3)
    assert mmd2(xs, ys, RBF(1.0), "linear").item() == pytest.approx((h1 + h2) / 2, rel=1e-12)


def test_mmd2_default_kernel_is_rbf_at_the_median_heuristic():
    x, y = _normal(9), _normal(6, shift=1.0)
    bw = median_bandwidth(x, y)
    for estimator in ("unbiased", "biased", "linear"):
        expected = _BRUTE[estimator](x, y, lambda a, b: _k_rbf(a, b, (bw,)))
        assert mmd2(x, y, estimator=estimator).item() == pytest.approx(expected, rel=1e-6)


def test_mmd2_trailing_dims_and_dtype():
    x, y = _normal(6, 4).reshape(6, 2, 2), _normal(5, 4).reshape(5, 2, 2)
    kernel = RBFMixture([0.5, 1.0, 2.0])
    flat = mmd2(x.reshape(6, 4), y.reshape(5, 4), kernel)
    torch.testing.assert_close(mmd2(x, y, kernel), flat, rtol=1e-14, atol=1e-15)
    # y in float32 is cast to x's dtype.
    assert mmd2(x, y.float(), kernel).dtype == torch.float64


@pytest.mark.parametrize("estimator", ["unbiased", "biased", "linear"])
@pytest.mark.parametrize("kernel_name", ["rbf", "imq"])
def test_mmd2_gradient_passes_gradcheck(estimator, kernel_name):
    kernel = _KERNELS[kernel_name][0]()
    x = _normal(6, 2).requires_grad_()
    y = _normal(5, 2, shift=0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: mmd2(a, b, kernel, estimator), (x, y), eps=1e-6, atol=1e-6)
    # And the gradient is not trivially zero.
    (gx,) = torch.autograd.grad(mmd2(x, y, kernel, estimator), x)
    assert gx.abs().max() > 1e-4


def test_unbiased_estimator_averages_to_zero_under_h0_and_biased_does_not():
    # For x, x' ~ N(0, I_2) and the RBF kernel with σ = 1: E k(x, x') = 1/3, k(x, x) = 1, so
    # E[biased] = (1/n + 1/m)(1 - 1/3) while E[unbiased] = 0.
    kernel, n, m, reps = RBF(1.0), 8, 6, 400
    g = torch.Generator().manual_seed(1)
    u, b = [], []
    for _ in range(reps):
        x, y = _normal(n, generator=g), _normal(m, generator=g)
        u.append(mmd2(x, y, kernel, "unbiased").item())
        b.append(mmd2(x, y, kernel, "biased").item())
    u, b = torch.tensor(u, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    se_u, se_b = u.std() / math.sqrt(reps), b.std() / math.sqrt(reps)
    assert abs(u.mean()) < 4 * se_u
    assert (u < 0).any()  # the U-statistic can be negative
    assert (b >= 0).all()  # the V-statistic cannot
    expected_b = (1 / n + 1 / m) * (2 / 3)
    assert abs(b.mean() - expected_b) < 4 * se_b
    assert b.mean() > 10 * se_b


def test_mmd2_of_shifted_gaussians_matches_population_value():
    # N(0, I_2) vs N((2, 0), I_2), RBF σ = 1: MMD² = 2/3 - (2/3) exp(-‖μ‖²/6).
    kernel, g = RBF(1.0), torch.Generator().manual_seed(2)
    truth = 2 / 3 * (1 - math.exp(-4 / 6))
    values = [mmd2(_normal(300, generator=g), _normal(300, shift=2.0, generator=g), kernel).item() for _ in range(4)]
    assert sum(values) / 4 == pytest.approx(truth, abs=0.05)
    assert min(values) > 0.2
    # The same-distribution value is an order of magnitude smaller.
    assert abs(mmd2(_normal(300, generator=g), _normal(300, generator=g), kernel).item()) < 0.02


@pytest.mark.parametrize(
    "x, y, estimator, match",
    [
        (torch.tensor([[0.0], [float("nan")], [1.0]]), torch.zeros(3, 1), "unbiased", "finite"),
        (torch.zeros(3, 1), torch.tensor([[0.0], [float("inf")], [1.0]]), "biased", "finite"),
        (torch.randn(4, 2), torch.randn(4, 3), "unbiased", "one shape"),
        (torch.randn(4, 2, 2), torch.randn(4, 4), "unbiased", "one shape"),
        (torch.tensor(1.0), torch.randn(4), "unbiased", "one shape"),
        (torch.randn(1, 2), torch.randn(4, 2), "unbiased", "at least 2"),
        (torch.randn(4, 2), torch.randn(1, 2), "linear", "at least 2"),
        (torch.randn(4, 2), torch.randn(4, 2), "quadratic", "estimator"),
    ],
)
def test_mmd2_bad_input_raises(x, y, estimator, match):
    with pytest.raises(ValueError, match=match):
        mmd2(x, y, RBF(1.0), estimator)
    with pytest.raises(ValueError, match=match):
        mmd_test(x, y, RBF(1.0), num_permutations=10, estimator=estimator)


# ---------------------------------------------------------------------------------------------------------------------
# mmd_test


@pytest.mark.parametrize("estimator", ["unbiased", "biased", "linear"])
def test_mmd_test_statistic_equals_mmd2(estimator):
    x, y = _normal(12), _normal(9, shift=0.5)
    kernel = RBFMixture([0.5, 1.0, 2.0])
    result = mmd_test(x, y, kernel, num_permutations=50, estimator=estimator)
    assert result.estimator == estimator
    assert result.statistic == pytest.approx(mmd2(x, y, kernel, estimator).item(), rel=1e-10, abs=1e-13)
    # With the default kernel too.
    assert mmd_test(x, y, num_permutations=5, estimator=estimator).statistic == pytest.approx(
        mmd2(x, y, estimator=estimator).item(), rel=1e-10, abs=1e-13
    )


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_pooled_statistics_equal_mmd2_of_each_relabelling(estimator):
    n, m = 5, 4
    z = _normal(n + m, 3)
    kernel = RBFMixture([0.5, 1.0, 2.0])
    gram = kernel(z, z)
    g = torch.Generator().manual_seed(3)
    member = torch.zeros(20, n + m, dtype=torch.float64)
    for r in range(20):
        member[r, torch.randperm(n + m, generator=g)[:n]] = 1
    stats = _pooled_statistics(gram, member, n, m, estimator)
    for r in range(20):
        inside = member[r].bool()
        expected = _BRUTE[estimator](z[inside], z[~inside], _k_rbf)
        assert stats[r].item() == pytest.approx(expected, rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_permutation_null_is_the_distribution_over_relabellings(estimator):
    # n = 4, m = 3: 35 relabellings, each recomputed from scratch with the brute-force estimator.
    n, m, b = 4, 3, 3000
    x, y = _normal(n), _normal(m, shift=0.3)
    z = torch.cat([x, y])
    kernel = RBFMixture([0.5, 1.0, 2.0])
    values = []
    for subset in itertools.combinations(range(n + m), n):
        rest = [i for i in range(n + m) if i not in subset]
        values.append(_BRUTE[estimator](z[list(subset)], z[rest], _k_rbf))
    values = torch.tensor(values, dtype=torch.float64)
    if estimator == "unbiased":
        # The exact permutation mean of the unbiased statistic is 0 (every pair is in x, in y or split with
        # probabilities that cancel the weights).
        assert abs(values.mean().item()) < 1e-12
    observed = _BRUTE[estimator](x, y, _k_rbf)
    assert observed == pytest.approx(values[0].item(), rel=1e-12)  # the identity relabelling comes first

    result = mmd_test(x, y, kernel, num_permutations=b, estimator=estimator, generator=torch.Generator().manual_seed(4))
    assert result.statistic == pytest.approx(observed, rel=1e-10)
    assert result.null.shape == (b,)
    # Every null statistic is one of the 35 relabelling values, and all 35 occur about equally often.
    gap, which = (result.null[:, None] - values[None]).abs().min(-1)
    assert gap.max() < 1e-10
    freq = torch.bincount(which, minlength=35).double()
    expected = b / 35
    assert (freq - expected).abs().max() < 5 * math.sqrt(expected)
    # The Monte-Carlo p-value is close to the exact permutation p-value.
    exact_p = (values >= observed - 1e-12).double().mean().item()
    assert result.p_value == pytest.approx(exact_p, abs=5 * math.sqrt(exact_p * (1 - exact_p) / b) + 1e-3)
    if estimator == "unbiased":
        assert abs(result.null.mean().item()) < 5 * result.null.std().item() / math.sqrt(b)


def test_p_value_is_computed_from_the_null_and_reject_uses_it():
    x, y = _normal(15), _normal(15, shift=0.4)
    result = mmd_test(x, y, RBF(1.0), num_permutations=99)
    assert result.p_value == pytest.approx((1 + (result.null >= result.statistic).sum().item()) / 100)
    assert result.reject(alpha=result.p_value) and not result.reject(alpha=result.p_value - 1e-9)
    assert 1 / 100 <= result.p_value <= 1


def test_generator_makes_mmd_test_reproducible():
    x, y = _normal(10), _normal(10)
    r1 = mmd_test(x, y, num_permutations=30, generator=torch.Generator().manual_seed(7))
    r2 = mmd_test(x, y, num_permutations=30, generator=torch.Generator().manual_seed(7))
    r3 = mmd_test(x, y, num_permutations=30, generator=torch.Generator().manual_seed(8))
    assert torch.equal(r1.null, r2.null) and r1.p_value == r2.p_value
    assert not torch.equal(r1.null, r3.null)


def _h0_p_values(reps, n, estimator, seed, kernel=None, **kwargs):
    p = []
    for s in range(reps):
        g = torch.Generator().manual_seed(seed + s)
        x, y = _normal(n, generator=g, dtype=torch.float32), _normal(n, generator=g, dtype=torch.float32)
        p.append(mmd_test(x, y, kernel, estimator=estimator, generator=g, **kwargs).p_value)
    return torch.tensor(p)


@pytest.mark.parametrize("estimator", ["unbiased", "biased"])
def test_permutation_test_false_positive_rate_under_h0(estimator):
    # 200 independent tests at alpha = 0.05: the rejections are Binomial(200, ~0.05), sd ~ 0.015.
    p = _h0_p_values(200, 40, estimator, seed=10_000, num_permutations=200)
    fpr = (p <= 0.05).double().mean().item()
    assert 0.01 <= fpr <= 0.10
    assert 0.4 <= (p < 0.5).double().mean().item() <= 0.6  # p-values roughly uniform
    assert 0.1 <= (p < 0.2).double().mean().item() <= 0.3


def test_permutation_test_power_against_a_one_sd_shift():
    g = torch.Generator().manual_seed(11)
    x, y = _normal(100, generator=g, dtype=torch.float32), _normal(100, shift=1.0, generator=g, dtype=torch.float32)
    result = mmd_test(x, y, num_permutations=500, generator=g)
    assert result.p_value < 0.01 and result.reject(0.01)
    assert result.statistic > result.null.max()


def test_linear_test_p_value_is_one_sided_gaussian():
    kernel, k = RBFMixture([0.5, 1.0, 2.0]), _k_rbf
    x, y = _normal(20), _normal(20, shift=0.5)
    h = torch.tensor(_linear_h(x, y, k), dtype=torch.float64)
    z = h.mean() / (h.std() / math.sqrt(len(h)))
    expected = 1 - torch.distributions.Normal(0.0, 1.0).cdf(z).item()
    result = mmd_test(x, y, kernel, estimator="linear")
    assert result.null is None
    assert result.statistic == pytest.approx(h.mean().item(), rel=1e-12)
    assert result.p_value == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_linear_test_false_positive_rate_and_power():
    p = _h0_p_values(200, 200, "linear", seed=20_000, kernel=RBF(1.0))
    assert 0.01 <= (p <= 0.05).double().mean().item() <= 0.10
    assert 0.4 <= (p < 0.5).double().mean().item() <= 0.6
    g = torch.Generator().manual_seed(21)
    x, y = _normal(500, generator=g), _normal(500, shift=1.0, generator=g)
    result = mmd_test(x, y, RBF(1.0), estimator="linear")
    assert result.p_value < 0.01 and result.reject(0.01)


@pytest.mark.parametrize("bad", [0, -5, 10.5, 10.0, "10", None])
def test_bad_num_permutations_raise(bad):
    x, y = _normal(6), _normal(6)
    for estimator in ("unbiased", "biased"):
        with pytest.raises(ValueError, match="num_permutations"):
            mmd_test(x, y, num_permutations=bad, estimator=estimator)


def test_linear_test_with_a_single_pair_is_refused_or_valid():
    x, y = _normal(3), _normal(3)
    try:
        mmd_test(x, y, RBF(1.0), estimator="linear")
    except ValueError:
        return
    p = _h0_p_values(100, 3, "linear", seed=30_000, kernel=RBF(1.0))
    assert (p <= 0.05).double().mean().item() <= 0.15


# ---------------------------------------------------------------------------------------------------------------------
# Benchmarks


def test_ring_centers_are_eight_distinct_points_on_the_unit_circle():
    c = ring_centers().double()
    assert c.shape == (8, 2)
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(8, dtype=torch.float64), rtol=0, atol=1e-6)
    d = torch.cdist(c, c) + 10 * torch.eye(8, dtype=torch.float64)
    assert d.min() > 0.5  # neighbours are 2 sin(π/8) ≈ 0.765 apart
    for k in range(8):
        a = 2 * math.pi * k / 8
        assert c[k].tolist() == pytest.approx([math.cos(a), math.sin(a)], abs=1e-6)


def test_grid_centers_are_the_25_grid_points():
    c = grid_centers()
    assert c.shape == (25, 2)
    points = {tuple(p) for p in c.tolist()}
    assert points == {(float(a), float(b)) for a in (-4, -2, 0, 2, 4) for b in (-4, -2, 0, 2, 4)}


@pytest.mark.parametrize(
    "sample, centers, std",
    [(ring_of_gaussians, ring_centers, RING_STD), (grid_of_gaussians, grid_centers, GRID_STD)],
)
def test_mixture_has_the_right_per_mode_std_and_uniform_mode_weights(sample, centers, std):
    n = 12_500
    x = sample(n, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert x.shape == (n, 2) and x.dtype == torch.float64
    c = centers().double()
    nearest = torch.cdist(x, c).argmin(-1)
    k = len(c)
    counts = torch.bincount(nearest, minlength=k).double()
    expected = n / k
    assert ((counts - expected).abs() / math.sqrt(expected * (1 - 1 / k))).max() < 4.5
    for j in range(k):
        resid = x[nearest == j] - c[j]
        assert resid.mean(0).abs().max() < 5 * std / math.sqrt(len(resid))
        assert resid.std().item() == pytest.approx(std, rel=0.1)


def test_mixture_generator_reproducible_and_bad_n_raises():
    for sample in (ring_of_gaussians, grid_of_gaussians):
        a = sample(50, generator=torch.Generator().manual_seed(3))
        b = sample(50, generator=torch.Generator().manual_seed(3))
        c = sample(50, generator=torch.Generator().manual_seed(4))
        assert a.dtype == torch.float32
        assert torch.equal(a, b) and not torch.equal(a, c)
        for bad in (0, -1):
            with pytest.raises(ValueError, match="n must be positive"):
                sample(bad)
        with pytest.raises(ValueError, match="std"):
            sample(10, std=0.0)


# ---------------------------------------------------------------------------------------------------------------------
# mode_coverage

_HQ = 1 - math.exp(-4.5)  # P(chi2_2 <= 9): the Gaussian mass within 3σ in two dimensions


@pytest.mark.parametrize("name, sample, k", [("ring", ring_of_gaussians, 8), ("grid", grid_of_gaussians, 25)])
def test_true_data_covers_every_mode(name, sample, k):
    n = 2500
    result = mode_coverage(sample(n, generator=torch.Generator().manual_seed(6)), name)
    assert result.modes == k and result.num_modes == k
    assert result.counts.shape == (k,) and result.counts.sum().item() == round(result.high_quality * n)
    assert abs(result.high_quality - _HQ) < 4 * math.sqrt(_HQ * (1 - _HQ) / n)
    assert 0 <= result.reverse_kl < 0.02  # E ≈ (K - 1) / 2n for the empirical frequencies


@pytest.mark.parametrize("name, centers, kept", [("ring", ring_centers, [0, 3, 5]), ("grid", grid_centers, [2, 12])])
def test_collapsed_generator_covers_exactly_its_modes(name, centers, kept):
    c = centers()
    samples = c[kept].repeat(40, 1)  # 40 points exactly on each kept centre
    result = mode_coverage(samples, name)
    assert result.modes == len(kept)
    assert result.high_quality == 1.0
    assert result.reverse_kl == pytest.approx(math.log(len(c) / len(kept)), rel=1e-9)
    expected = torch.zeros(len(c), dtype=result.counts.dtype)
    expected[kept] = 40
    assert torch.equal(result.counts, expected)


def test_reverse_kl_with_unequal_mode_frequencies_and_min_count():
    c = ring_centers()
    samples = torch.cat([c[[1]].repeat(10, 1), c[[6]].repeat(30, 1)])
    result = mode_coverage(samples, "ring")
    assert result.reverse_kl == pytest.approx(0.25 * math.log(0.25 * 8) + 0.75 * math.log(0.75 * 8), rel=1e-9)
    assert mode_coverage(samples, "ring", min_count=11).modes == 1
    assert mode_coverage(samples, "ring", min_count=31).modes == 0


@pytest.mark.parametrize(
    "name, sample, std", [("ring", ring_of_gaussians, RING_STD), ("grid", grid_of_gaussians, GRID_STD)]
)
def test_samples_far_from_every_centre_have_no_quality(name, sample, std):
    x = sample(500, generator=torch.Generator().manual_seed(8))
    shifted = x + torch.tensor([10 * std, 0.0])
    result = mode_coverage(shifted, name)
    assert result.high_quality == 0.0 and result.modes == 0
    assert result.counts.sum().item() == 0


def test_explicit_centers_and_std_match_the_named_benchmark():
    for name, sample, centers, std in (
        ("ring", ring_of_gaussians, ring_centers, RING_STD),
        ("grid", grid_of_gaussians, grid_centers, GRID_STD),
    ):
        x = sample(1000, generator=torch.Generator().manual_seed(9)) * 1.01  # some modes off, some on
        named = mode_coverage(x, name)
        explicit = mode_coverage(x, centers=centers(), std=std)
        assert (named.modes, named.num_modes, named.high_quality) == (
            explicit.modes,
            explicit.num_modes,
            explicit.high_quality,
        )
        assert named.reverse_kl == explicit.reverse_kl and torch.equal(named.counts, explicit.counts)
        # A different std with the named benchmark is honoured.
        assert mode_coverage(x, name, std=100 * std).high_quality == 1.0


def test_mode_coverage_matches_brute_force_assignment():
    g = torch.Generator().manual_seed(12)
    centers = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [5.0, 5.0]], dtype=torch.float64)
    weights = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    std = 0.5
    samples = torch.cat([centers[[0, 0, 1, 2, 2, 2]].repeat(10, 1), torch.zeros(4, 2, dtype=torch.float64)])
    samples = samples + 0.8 * torch.randn(samples.shape, generator=g, dtype=torch.float64)
    result = mode_coverage(samples, centers=centers, std=std, weights=weights, min_count=3)
    nearest, good = [], []
    for s in samples.tolist():
        d = [(s[0] - c[0]) ** 2 + (s[1] - c[1]) ** 2 for c in centers.tolist()]
        j = min(range(4), key=d.__getitem__)
        nearest.append(j)
        good.append(d[j] <= (3 * std) ** 2)
    counts = [sum(1 for j, ok in zip(nearest, good) if ok and j == kk) for kk in range(4)]
    q = [nearest.count(kk) / len(samples) for kk in range(4)]
    kl = sum(qk * math.log(qk / pk) for qk, pk in zip(q, weights.tolist()) if qk > 0)
    assert result.counts.tolist() == counts
    assert result.modes == sum(cnt >= 3 for cnt in counts)
    assert result.high_quality == pytest.approx(sum(good) / len(samples), rel=1e-12)
    assert result.reverse_kl == pytest.approx(kl, rel=1e-10)
    assert 0 < result.high_quality < 1 and 0 < result.modes < 4  # the example is not degenerate


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((torch.zeros(10, 3), "ring"), {}, "samples must be"),
        ((torch.zeros(10), "grid"), {}, "samples must be"),
        ((torch.zeros(0, 2), "ring"), {}, "samples must be"),
        ((torch.tensor([[0.0, float("nan")]]), "ring"), {}, "NaN"),
        ((torch.zeros(10, 2), "spiral"), {}, "benchmark must be"),
        ((torch.zeros(10, 2),), {}, "give a benchmark name"),
        ((torch.zeros(10, 2),), {"centers": torch.zeros(3, 2)}, "give a benchmark name"),
        ((torch.zeros(10, 2), "ring"), {"centers": torch.zeros(3, 2)}, "not both"),
        ((torch.zeros(10, 2),), {"centers": torch.zeros(3, 2), "std": 0.0}, "std must be positive"),
        ((torch.zeros(10, 2),), {"centers": torch.zeros(3, 2), "std": 1.0, "weights": torch.ones(3)}, "weights"),
        ((torch.zeros(10, 2),), {"centers": torch.zeros(3, 2), "std": 1.0, "weights": torch.ones(2) / 2}, "weights"),
    ],
)
def test_mode_coverage_bad_input_raises(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        mode_coverage(*args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------------
# memorization


def test_copies_of_training_rows_are_flagged():
    g = torch.Generator().manual_seed(13)
    train = 3 * torch.randn(300, 10, generator=g, dtype=torch.float64)
    held_out = 3 * torch.randn(200, 10, generator=g, dtype=torch.float64)
    idx = torch.randperm(300, generator=g)[:100]
    result = memorization(train[idx].clone(), train, held_out)
    assert result.fraction_copied == 1.0
    assert result.ratio is not None and result.ratio <= 1e-6
    assert torch.equal(result.nearest, idx)
    assert result.distances.shape == (100,) and result.distances.max() <= 1e-6


def test_copies_of_float32_training_rows_are_flagged():
    g = torch.Generator().manual_seed(13)
    train = 3 * torch.randn(300, 10, generator=g)
    result = memorization(train[:100].clone(), train)
    assert result.fraction_copied == 1.0


def test_fresh_samples_are_not_copies():
    g = torch.Generator().manual_seed(14)
    train = torch.randn(500, 2, generator=g, dtype=torch.float64)
    samples = torch.randn(300, 2, generator=g, dtype=torch.float64)
    held_out = torch.randn(300, 2, generator=g, dtype=torch.float64)
    result = memorization(samples, train, held_out)
    assert result.fraction_copied == 0.0
    assert 0.7 < result.ratio < 1.4
    assert memorization(samples, train).ratio is None
    # Samples halfway to their nearest training point: ratio well below 1.
    near = train[:300] + 0.01 * torch.randn(300, 2, generator=g, dtype=torch.float64)
    assert memorization(near, train, held_out).ratio < 0.3


def test_memorization_on_a_hand_made_example():
    train = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=torch.float64)
    samples = torch.tensor([[1.0, 0.0], [9.0, 1.0], [0.0, 11.0], [6.0, 0.0], [10.0, 0.0]], dtype=torch.float64)
    held_out = torch.tensor([[2.0, 0.0], [0.0, 8.0], [10.0, 2.0]], dtype=torch.float64)
    result = memorization(samples, train, held_out)
    assert result.nearest.tolist() == [0, 1, 2, 1, 1]
    torch.testing.assert_close(result.distances, torch.tensor([1.0, math.sqrt(2), 1.0, 4.0, 0.0], dtype=torch.float64))
    assert result.fraction_copied == pytest.approx(1 / 5)
    assert result.ratio == pytest.approx(1.0 / 2.0)  # medians: samples 1, held-out 2
    # Trailing dims are flattened (e.g. images): the same points as (n, 1, 2).
    flat = memorization(samples[:, None], train[:, None], held_out[:, None])
    assert flat.nearest.tolist() == result.nearest.tolist() and flat.ratio == result.ratio
    with pytest.raises(ValueError, match="samples must be"):
        memorization(torch.zeros(4, 3), train)
    with pytest.raises(ValueError, match="NaN"):
        memorization(torch.tensor([[0.0, float("nan")]]), train)
