"""Sample-quality metrics on features (FID, KID, precision/recall), density-ratio estimation and the local feature
extractor: closed forms, brute-force references, constructed cases and bad input."""

import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Normal

from dgm_ppl.datasets import load_digits
from dgm_ppl.evaluation import (
    density_ratio,
    digits_feature_extractor,
    frechet_distance,
    kernel_distance,
    precision_recall,
    sample_quality,
    train_feature_extractor,
)
from dgm_ppl.evaluation import features as features_module


def _with_moments(n, mean, cov, generator):
    """n points whose sample mean and sample covariance (divisor n - 1) are exactly ``mean`` and ``cov``."""
    z = torch.randn(n, len(mean), generator=generator, dtype=torch.float64)
    z = z - z.mean(0)
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(torch.cov(z.T)), z.T, upper=False).T
    return white @ torch.linalg.cholesky(cov).T + mean


def _random_cov(d, generator):
    a = torch.randn(d, d, generator=generator, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_closed_form_2d():
    """Non-commuting 2x2 covariances: Tr sqrt(A B) = sqrt(tr(A B) + 2 sqrt(det A det B)) for 2x2 A, B ≻ 0."""
    g = torch.Generator().manual_seed(1)
    mu_a, mu_b = torch.tensor([0.0, 1.0], dtype=torch.float64), torch.tensor([2.0, -1.0], dtype=torch.float64)
    cov_a = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    cov_b = torch.tensor([[0.5, -0.3], [-0.3, 3.0]], dtype=torch.float64)
    a, b = _with_moments(500, mu_a, cov_a, g), _with_moments(700, mu_b, cov_b, g)
    tr_sqrt = math.sqrt((cov_a @ cov_b).trace().item() + 2 * math.sqrt(cov_a.det().item() * cov_b.det().item()))
    expected = (mu_a - mu_b).square().sum().item() + cov_a.trace().item() + cov_b.trace().item() - 2 * tr_sqrt
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-10)


def test_frechet_diagonal_and_shift():
    """Diagonal covariances: ||Δμ||² + Σ (√a_i - √b_i)²; a translated copy (even with a singular covariance, n < d)
    is at ||shift||²; a set is at 0 from itself."""
    g = torch.Generator().manual_seed(2)
    va = torch.tensor([1.0, 2.0, 0.5, 4.0, 3.0], dtype=torch.float64)
    vb = torch.tensor([2.0, 2.0, 1.5, 1.0, 0.2], dtype=torch.float64)
    shift = torch.tensor([0.5, 0.0, -1.0, 0.0, 2.0], dtype=torch.float64)
    a = _with_moments(300, torch.zeros(5, dtype=torch.float64), torch.diag(va), g)
    b = _with_moments(400, shift, torch.diag(vb), g)
    expected = shift.square().sum().item() + (va.sqrt() - vb.sqrt()).square().sum().item()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    x = torch.randn(6, 20, generator=g, dtype=torch.float64)  # rank-5 covariance in 20 dimensions
    offset = torch.randn(20, generator=g, dtype=torch.float64)
    assert frechet_distance(x, x + offset) == pytest.approx(offset.square().sum().item(), abs=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(3)
    d = 12
    a = _with_moments(200, torch.randn(d, generator=g, dtype=torch.float64), _random_cov(d, g), g)
    b = _with_moments(150, torch.randn(d, generator=g, dtype=torch.float64), _random_cov(d, g), g)
    an, bn = a.numpy(), b.numpy()
    ca, cb = np.cov(an, rowvar=False), np.cov(bn, rowvar=False)
    root = linalg.sqrtm(ca @ cb).real
    expected = np.sum((an.mean(0) - bn.mean(0)) ** 2) + np.trace(ca + cb - 2 * root)
    assert frechet_distance(an, bn) == pytest.approx(expected, rel=1e-8)  # NumPy input too
    assert frechet_distance(a.float(), b.float()) == pytest.approx(expected, rel=1e-4)  # float32 features


# ---------------------------------------------------------------------------------------------------------------------
# Kernel distance (KID)


def _brute_kid(x, y, degree, gamma, coef0):
    def k(u, v):
        return (gamma * sum(p * q for p, q in zip(u.tolist(), v.tolist(), strict=True)) + coef0) ** degree

    n = len(x)
    within = sum(k(x[i], x[j]) + k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return within - 2 * sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / n**2


@pytest.mark.parametrize("degree,gamma,coef0", [(3, None, 1.0), (2, 0.7, 0.5)])
def test_kid_brute_force(degree, gamma, coef0):
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(7, 3, generator=g, dtype=torch.float64), 1.3 * torch.randn(7, 3, generator=g).double() + 0.2
    result = kernel_distance(x, y, subset_size=7, num_subsets=1, degree=degree, gamma=gamma, coef0=coef0, generator=g)
    expected = _brute_kid(x, y, degree, 1 / 3 if gamma is None else gamma, coef0)
    assert result.value == pytest.approx(expected, abs=1e-10)
    assert float(result) == result.value and result.subset_size == 7 and result.std == 0.0
    many = kernel_distance(x, y, subset_size=50, num_subsets=3, degree=degree, gamma=gamma, coef0=coef0, generator=g)
    assert many.subset_size == 7 and many.subsets.shape == (3,)  # every subset is all points: the same estimate
    assert torch.allclose(many.subsets, torch.full((3,), expected, dtype=torch.float64), atol=1e-10)


def test_kid_same_and_different_distributions():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(3000, 8, generator=g), torch.randn(3000, 8, generator=g)
    same = kernel_distance(a, b, subset_size=100, num_subsets=40, generator=g)
    assert abs(same.value) < 3 * same.stderr
    different = kernel_distance(a, 1.2 * b + 0.3, subset_size=100, num_subsets=40, generator=g)
    assert different.value > 10 * different.stderr and different.value > 20 * abs(same.value)


# ---------------------------------------------------------------------------------------------------------------------
# Precision and recall


def _brute_pr(real, fake, k):
    def dist(u, v):
        return math.sqrt(sum((p - q) ** 2 for p, q in zip(u.tolist(), v.tolist(), strict=True)))

    def radii(x):
        return [sorted(dist(x[i], x[j]) for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))]

    rr, fr = radii(real), radii(fake)
    inside = [[dist(f, r) <= rr[i] for i, r in enumerate(real)] for f in fake]  # inside[j][i]: fake j in real ball i
    precision = sum(any(row) for row in inside) / len(fake)
    recall = sum(any(dist(r, f) <= fr[j] for j, f in enumerate(fake)) for r in real) / len(real)
    density = sum(sum(row) for row in inside) / (k * len(fake))
    coverage = sum(any(inside[j][i] for j in range(len(fake))) for i in range(len(real))) / len(real)
    return precision, recall, density, coverage


@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_brute_force(k, monkeypatch):
    g = torch.Generator().manual_seed(6)
    real, fake = torch.randn(12, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g).double() + 0.7
    expected = _brute_pr(real, fake, k)
    result = precision_recall(real, fake, k=k)
    assert (result.precision, result.recall, result.density, result.coverage) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(sample_quality, "_chunks", lambda rows, cols: 2)  # tiny chunks: the same answer
    chunked = precision_recall(real.numpy(), fake.numpy(), k=k)
    assert (chunked.precision, chunked.recall, chunked.density, chunked.coverage) == pytest.approx(expected, abs=1e-12)


def test_precision_recall_constructed():
    g = torch.Generator().manual_seed(7)
    real = torch.randn(400, 5, generator=g)
    same = precision_recall(real, real.clone())
    assert same.precision == 1.0 and same.recall == 1.0 and same.coverage == 1.0
    subset = precision_recall(real, real[:40])  # samples that cover only part of the data
    assert subset.precision == 1.0 and subset.recall < 0.9
    far = precision_recall(real, torch.randn(300, 5, generator=g) + 100.0)
    assert (far.precision, far.recall, far.density, far.coverage) == (0.0, 0.0, 0.0, 0.0)
    fresh = precision_recall(real, torch.randn(400, 5, generator=g))
    assert fresh.precision > 0.6 and fresh.recall > 0.6 and 0.7 < fresh.density < 1.3


# ---------------------------------------------------------------------------------------------------------------------
# Density ratio


def _gaussians(n_p, n_q, seed=8):
    g = torch.Generator().manual_seed(seed)
    p, q = Normal(0.0, 1.0), Normal(0.5, 1.5)
    x_p = p.loc + p.scale * torch.randn(n_p, 1, generator=g)
    x_q = q.loc + q.scale * torch.randn(n_q, 1, generator=g)
    grid = torch.linspace(-1.5, 1.5, 31)[:, None]  # the bulk of both
    return x_p, x_q, grid, p.log_prob(grid[:, 0]) - q.log_prob(grid[:, 0])


@pytest.mark.parametrize("balanced", [True, False])
def test_density_ratio_quadratic_gaussians(balanced):
    """Logistic regression on [x, x²] is exact for two Gaussians; unequal class sizes exercise the prior correction."""
    x_p, x_q, grid, true = _gaussians(3000, 9000)
    fit = density_ratio(x_p, x_q, "quadratic", epochs=200, batch_size=12000, lr=0.1, balanced=balanced)
    assert (fit.log_ratio(grid) - true).abs().max() < 0.15
    assert fit.prior_correction == (0.0 if balanced else pytest.approx(math.log(7200 / 2400)))
    assert fit.held_out_log_loss < math.log(2) - 0.03 and fit.held_out_accuracy > 0.6


def test_density_ratio_mlp_and_calibration():
    x_p, x_q, grid, true = _gaussians(2000, 2000, seed=9)
    options = {"epochs": 60, "batch_size": 4096, "lr": 0.03}
    fit = density_ratio(x_p.numpy(), x_q.numpy(), **options)  # default MLP, NumPy input
    assert (fit.log_ratio(grid) - true).abs().max() < 0.25
    calibrated = density_ratio(x_p, x_q, calibrate="platt", **options)
    assert calibrated.held_out_log_loss <= fit.held_out_log_loss + 1e-6  # the same classifier (seed), recalibrated
    assert (calibrated.log_ratio(grid) - true).abs().max() < 0.25
    temperature = density_ratio(x_p, x_q, "linear", epochs=50, batch_size=4096, lr=0.1, calibrate="temperature")
    assert temperature.scale > 0 and temperature.shift == 0.0


def test_density_ratio_custom_module_seed_and_null():
    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, x):
            return self.linear(torch.cat([x, x**2], -1)).squeeze(-1)

    x_p, x_q, grid, true = _gaussians(1500, 1500, seed=10)
    module = Quadratic()
    state = torch.get_rng_state()
    fit = density_ratio(x_p, x_q, module, epochs=150, batch_size=3000, lr=0.1)
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    assert (fit.log_ratio(grid) - true).abs().max() < 0.15
    linear = {"epochs": 50, "batch_size": 4096, "lr": 0.1}
    again = density_ratio(x_p, x_q, "linear", seed=3, **linear)
    assert torch.equal(again.log_ratio(grid), density_ratio(x_p, x_q, "linear", seed=3, **linear).log_ratio(grid))
    g = torch.Generator().manual_seed(11)
    null = density_ratio(torch.randn(1500, 2, generator=g), torch.randn(1500, 2, generator=g), "linear", **linear)
    assert null.log_ratio(torch.randn(200, 2, generator=g)).abs().max() < 0.3
    assert abs(null.held_out_accuracy - 0.5) < 0.1 and abs(null.held_out_log_loss - math.log(2)) < 0.02
    with pytest.raises(ValueError, match=r"\(N,\) logits"):
        density_ratio(x_p, x_q, nn.Linear(1, 1), epochs=1)


# ---------------------------------------------------------------------------------------------------------------------
# Local feature extractor


def test_digits_features_cache_and_metrics(tmp_path, monkeypatch):
    path = tmp_path / "digits_features.pt"
    extractor = digits_feature_extractor(path, epochs=20)
    assert extractor.held_out_accuracy > 0.85 and os.path.exists(path)  # chance is 0.1
    x, y = load_digits("test", return_labels=True)  # never seen in training
    assert (extractor(x).argmax(-1) == y).float().mean() > 0.85
    monkeypatch.setattr(features_module, "_train", lambda *args: pytest.fail("retrained instead of loading"))
    loaded = digits_feature_extractor(path, epochs=20)
    assert (
        torch.equal(loaded.extract(x), extractor.extract(x)) and loaded.held_out_accuracy == extractor.held_out_accuracy
    )
    monkeypatch.undo()
    with pytest.warns(UserWarning, match="other settings"):
        digits_feature_extractor(path, epochs=1)  # another configuration: retrained, cache overwritten

    real = extractor.extract(load_digits("all"))
    halves = real[torch.randperm(len(real))].chunk(2)
    g = torch.Generator().manual_seed(12)
    noise = extractor.extract(torch.bernoulli(torch.full((len(halves[1]), 64), 0.3), generator=g))
    fid_real, fid_noise = frechet_distance(*halves), frechet_distance(halves[0], noise)
    assert fid_noise > 20 * fid_real
    kid_real = kernel_distance(*halves, subset_size=300, num_subsets=20, generator=g)
    kid_noise = kernel_distance(halves[0], noise, subset_size=300, num_subsets=20, generator=g)
    assert kid_noise.value > 20 * abs(kid_real.value)
    pr_real, pr_noise = precision_recall(*halves), precision_recall(halves[0], noise)
    assert pr_real.precision > 0.8 and pr_real.recall > 0.8 and pr_real.coverage > 0.8
    assert pr_noise.precision < 0.4 and pr_noise.recall < 0.4 and pr_noise.coverage < 0.2


def test_feature_cache_damaged(tmp_path):
    g = torch.Generator().manual_seed(13)
    x, y = torch.rand(60, 10, generator=g), torch.randint(3, (60,), generator=g)
    path = tmp_path / "features.pt"
    train_feature_extractor(x, y, path=path, hidden=(8,), epochs=1)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="damaged"):
        train_feature_extractor(x, y, path=path, hidden=(8,), epochs=1)
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="not a dgm_ppl feature-extractor cache"):
        train_feature_extractor(x, y, path=path, hidden=(8,), epochs=1)
    model = train_feature_extractor(x.numpy(), y.numpy(), hidden=(8,), epochs=1)  # NumPy input, no cache
    assert model.extract(x).shape == (60, 8)
    with pytest.raises(ValueError, match=r"\(N, 10\)"):
        model.extract(torch.rand(5, 11))
    with pytest.raises(ValueError, match="labels"):
        train_feature_extractor(x, y[:-1], hidden=(8,), epochs=1)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input

_METRICS = {
    "fid": frechet_distance,
    "kid": lambda a, b: kernel_distance(a, b, num_subsets=2),
    "pr": precision_recall,
    "ratio": lambda a, b: density_ratio(a, b, "linear", epochs=1),
}


@pytest.mark.parametrize("metric", list(_METRICS))
def test_bad_input(metric):
    f = _METRICS[metric]
    ok = torch.randn(20, 3)
    with pytest.raises(ValueError, match="different"):
        f(ok, torch.randn(20, 4))
    with pytest.raises(ValueError, match="2-D"):
        f(ok, torch.randn(20))
    with pytest.raises(ValueError, match="2-D"):
        f(torch.randn(20, 3, 1), ok)
    for bad in (float("nan"), float("inf")):
        broken = ok.clone()
        broken[3, 1] = bad
        with pytest.raises(ValueError, match="NaN or inf"):
            f(ok, broken)
    with pytest.raises(ValueError, match="at least"):
        f(ok, torch.randn(1, 3))
    with pytest.raises(TypeError, match="NumPy"):
        f(ok, "features")
    with pytest.raises(TypeError, match="NumPy"):
        f({"a": 1}, ok)
    f(ok.numpy(), np.random.default_rng(0).normal(size=(15, 3)))  # NumPy arrays are fine


def test_bad_options():
    ok = torch.randn(20, 3)
    with pytest.raises(ValueError, match="at least 4"):
        precision_recall(ok, torch.randn(3, 3), k=3)
    with pytest.raises(ValueError, match="k must"):
        precision_recall(ok, ok, k=0)
    with pytest.raises(ValueError, match="subset_size must be at least 2"):
        kernel_distance(ok, ok, subset_size=1)
    with pytest.raises(ValueError, match="num_subsets"):
        kernel_distance(ok, ok, num_subsets=0)
    with pytest.raises(ValueError, match="calibrate"):
        density_ratio(ok, ok, calibrate="isotonic")
    with pytest.raises(ValueError, match="held-out"):
        density_ratio(ok, ok, holdout=0.0, calibrate="platt")
    with pytest.raises(ValueError, match="classifier"):
        density_ratio(ok, ok, "forest")


def test_torch_fidelity_cross_check():
    """Where torch-fidelity is installed, its KID and FID on the same features agree with ours."""
    metrics = pytest.importorskip("torch_fidelity.metric_fid")
    if not hasattr(metrics, "fid_statistics_to_metric"):
        pytest.skip("this torch-fidelity version has no fid_statistics_to_metric")
    g = torch.Generator().manual_seed(14)
    a, b = torch.randn(300, 6, generator=g).double(), (torch.randn(300, 6, generator=g) * 1.3 + 0.2).double()
    mu_a, sigma_a = a.mean(0).numpy(), np.cov(a.numpy(), rowvar=False)
    mu_b, sigma_b = b.mean(0).numpy(), np.cov(b.numpy(), rowvar=False)
    expected = metrics.fid_statistics_to_metric(
        {"mu": mu_a, "sigma": sigma_a}, {"mu": mu_b, "sigma": sigma_b}, verbose=False
    )["frechet_inception_distance"]
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
