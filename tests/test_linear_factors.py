import math

import numpy as np
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam, ClippedAdam

from dgm_ppl.models.linear_factors import ICA, ProbabilisticSFA, SlowFeatureAnalysis, SparseCoding, amari_index


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- ICA -------------------------------------------------------------------------------------------------------------
def laplace_mixture(n_sources: int = 4, n: int = 2000, seed: int = 1):
    g = gen(seed)
    u = torch.rand(n, n_sources, generator=g) - 0.5
    sources = -u.sign() * torch.log1p(-2 * u.abs())  # Laplace(0, 1)
    mixing = torch.randn(n_sources, n_sources, generator=g)
    return sources @ mixing.T + 1.0, mixing


def test_amari_index():
    a = torch.randn(3, 3, generator=gen(0))
    perm = torch.tensor([[0.0, 2, 0], [0, 0, -1], [3, 0, 0]])
    assert amari_index(perm @ torch.linalg.inv(a), a) == pytest.approx(0.0, abs=1e-6)
    assert amari_index(torch.eye(3), torch.ones(3, 3)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="mixing"):
        amari_index(torch.eye(3), torch.eye(2))


@pytest.mark.parametrize("prior", ["logistic", "laplace"])
def test_ica_recovers_laplace_sources(prior):
    """Measured: Amari index 0.023 (logistic prior), 0.018 (Laplace prior); whitening alone: 0.3."""
    x, mixing = laplace_mixture()
    ica = ICA(4, prior).fit(x, num_steps=150, lr=0.05)
    assert amari_index(ica.unmixing.detach(), mixing) < 0.05
    assert amari_index(ICA(4, prior).init_whitening(x).unmixing, mixing) > 0.1  # the fit did the work
    s = ica.transform(x)
    assert s.shape == x.shape
    assert ica.sample(5).shape == (5, 4)


@pytest.mark.parametrize("prior", ["logistic", "laplace"])
def test_ica_density_is_the_change_of_variables(prior):
    ica = ICA(2, prior)
    with torch.no_grad():
        ica.weight.copy_(torch.tensor([[1.0, 0.5], [-0.3, 2.0]]))
        ica.loc.copy_(torch.tensor([0.2, -0.1]))
    x = torch.randn(6, 2, generator=gen(2))
    s = (x - ica.loc) @ ica.unmixing.T
    base = (
        torch.distributions.Laplace(0.0, 1.0)
        if prior == "laplace"
        else torch.distributions.TransformedDistribution(
            torch.distributions.Uniform(0.0, 1.0), [torch.distributions.transforms.SigmoidTransform().inv]
        )
    )
    expected = base.log_prob(s).sum(-1) + math.log(abs(2.0 + 0.15))
    assert torch.allclose(ica.log_prob(x), expected, atol=1e-5)
    # the density integrates to one (2-D grid)
    grid = torch.linspace(-12, 12, 601)
    pts = torch.cartesian_prod(grid, grid)
    mass = ica.log_prob(pts).exp().sum() * (grid[1] - grid[0]) ** 2
    assert mass.item() == pytest.approx(1.0, abs=0.01)
    # with the empty guide, Trace_ELBO is the negative log-likelihood, scaled like a subsampled plate
    with torch.no_grad():
        assert Trace_ELBO().loss(ica.model, ica.guide, x, 12) == pytest.approx(-2 * ica.log_prob(x).sum().item(), 1e-5)


# -- sparse coding ---------------------------------------------------------------------------------------------------
def test_sparse_coding_recovers_the_dictionary():
    """10 features, 12 unit atoms, 3 active per datum. Measured: all 12 true atoms matched with |cos| > 0.99."""
    g = gen(1)
    n_features, n_atoms, n = 10, 12, 2000
    true = torch.randn(n_features, n_atoms, generator=g)
    true = true / true.norm(dim=0)
    codes = torch.zeros(n, n_atoms)
    active = torch.rand(n, n_atoms, generator=g).argsort(1)[:, :3]
    codes.scatter_(1, active, torch.randn(n, 3, generator=g).sign() * (0.5 + torch.rand(n, 3, generator=g)))
    x = codes @ true.T + 0.01 * torch.randn(n, n_features, generator=g)

    sc = SparseCoding(n_features, n_atoms, sparsity=1.0, noise_scale=0.1, num_iters=30).init_from_data(x, g)
    steps = 300
    svi = SVI(sc.model, sc.guide, ClippedAdam({"lr": 0.03, "lrd": 0.1 ** (1 / steps)}), Trace_ELBO())
    for _ in range(steps):
        svi.step(x[torch.randint(0, n, (256,), generator=g)], n)
    cosines = (sc.dictionary.detach().T @ true).abs().max(0).values
    assert (cosines > 0.9).float().mean() >= 0.9, cosines
    assert torch.allclose(sc.dictionary.norm(dim=0), torch.ones(n_atoms))
    h = sc.encode(x[:100])
    assert (h.abs() > 0.1).float().sum(1).mean() < 6  # sparse: of 12 atoms (the data have 3 active, of size >= 0.5)
    assert ((sc.reconstruct(x[:100]) - x[:100]).norm(dim=1) / x[:100].norm(dim=1)).mean() < 0.2


def test_sparse_coding_encode_is_the_map():
    """FISTA's codes minimize ½‖x − Dh‖² + λσ²‖h‖₁: no small perturbation does better."""
    sc = SparseCoding(5, 7, sparsity=2.0, noise_scale=0.3, num_iters=500)
    x = torch.randn(4, 5, generator=gen(3))
    h = sc.encode(x)
    d = sc.dictionary.detach()

    def objective(h):
        return 0.5 * (x - h @ d.T).pow(2).sum(-1) + 2.0 * 0.09 * h.abs().sum(-1)

    best = objective(h)
    for _ in range(50):
        assert (objective(h + 1e-3 * torch.randn(h.shape)) >= best - 1e-6).all()


# -- slow feature analysis -------------------------------------------------------------------------------------------
def test_sfa_recovers_the_slow_signal():
    """Measured: |corr| = 1.000 with the slow sine; slowness 1e-5."""
    g = gen(0)
    t = torch.linspace(0, 4 * math.pi, 2000)
    slow = torch.sin(t / 2)
    fast = torch.stack([torch.sin(37 * t), torch.randn(2000, generator=g), torch.cos(23 * t + 1)], 1)
    x = torch.cat([slow[:, None], fast], 1) @ torch.randn(4, 4, generator=g).T
    sfa = SlowFeatureAnalysis(2).fit(x)
    y = sfa.transform(x)
    assert torch.corrcoef(torch.stack([y[:, 0], slow]))[0, 1].abs() > 0.95
    assert torch.allclose(y.T @ y / len(y), torch.eye(2), atol=1e-3)  # unit variance, decorrelated
    assert sfa.slowness_[0] <= sfa.slowness_[1]
    assert torch.allclose(sfa.fit_transform(x.numpy()), y, atol=1e-4)  # NumPy accepted


def brute_force_log_likelihood(model: ProbabilisticSFA, x: torch.Tensor) -> torch.Tensor:
    """log N(vec x; vec μ, Σ) with Cov(x_s, x_t) = C diag(λ^|s−t|) Cᵀ + δ_st Ψ."""
    T, D = x.shape
    lam, c = model.coefficients.detach(), model.weight.detach()
    lags = (torch.arange(T)[:, None] - torch.arange(T)[None]).abs()
    blocks = torch.einsum("dk,stk,ek->sdte", c, lam ** lags[..., None], c)
    cov = blocks.reshape(T * D, T * D) + torch.diag(model.log_noise.detach().exp().pow(2).repeat(T))
    mean = model.loc.detach().repeat(T)
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x.reshape(-1))


def test_probabilistic_sfa_log_likelihood_is_exact():
    model = ProbabilisticSFA(3, 2)
    with torch.no_grad():
        model.raw_coefficients.copy_(torch.tensor([1.5, -0.4]))
        model.loc.normal_()
        model.log_noise.normal_(-1, 0.2)
    x = torch.randn(5, 3, generator=gen(4))
    assert model.log_likelihood(x).item() == pytest.approx(brute_force_log_likelihood(model, x).item(), abs=1e-3)
    assert model.log_likelihood(x[None].expand(2, 5, 3)).shape == (2,)


def test_probabilistic_sfa_fit_by_svi():
    """Data from the model with λ = (0.98, 0.3): SVI (empty guide) recovers λ. Measured: (0.983, 0.279)."""
    true = ProbabilisticSFA(3, 2)
    with torch.no_grad():
        true.raw_coefficients.copy_(torch.atanh(torch.tensor([0.98, 0.3])))
        true.log_noise.fill_(math.log(0.1))
    x = true.sample(200, 2)
    model = ProbabilisticSFA(3, 2)
    svi = SVI(model.model, model.guide, Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(80):
        loss = svi.step(x)
    lam = model.coefficients.detach().sort().values
    assert lam[1] == pytest.approx(0.98, abs=0.02)
    assert lam[0] == pytest.approx(0.3, abs=0.15)
    assert loss <= -true.log_likelihood(x).sum().item() + 5  # at least as good as the truth, up to optimization


# -- bad input -------------------------------------------------------------------------------------------------------
def test_bad_inputs():
    nan = torch.full((5, 3), float("nan"))
    with pytest.raises(ValueError, match="prior"):
        ICA(3, prior="gaussian")
    with pytest.raises(ValueError, match="n_sources"):
        ICA(0)
    ica = ICA(3)
    with pytest.raises(ValueError, match="x"):
        ica.model(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="NaN"):
        ica.model(nan)
    with pytest.raises(ValueError, match="NaN"):
        ica.fit(nan.numpy())
    with pytest.raises(TypeError, match="x"):
        ica.log_prob("data")
    assert ica.log_prob(np.zeros((2, 3))).shape == (2,)  # NumPy accepted

    sc = SparseCoding(3, 4)
    with pytest.raises(ValueError, match="sparsity"):
        SparseCoding(3, 4, sparsity=-1.0)
    with pytest.raises(ValueError, match="x"):
        sc.guide(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="NaN"):
        sc.model(nan)
    assert sc.encode(np.zeros((2, 3))).shape == (2, 4)

    sfa = SlowFeatureAnalysis(2)
    with pytest.raises(RuntimeError, match="fit"):
        sfa.transform(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="x"):
        sfa.fit(torch.zeros(10))
    with pytest.raises(ValueError, match="NaN"):
        sfa.fit(nan)
    with pytest.raises(ValueError, match="n_components"):
        SlowFeatureAnalysis(4).fit(torch.randn(10, 3))
    sfa.fit(torch.randn(50, 3))
    with pytest.raises(ValueError, match="x"):
        sfa.transform(torch.randn(50, 4))

    psfa = ProbabilisticSFA(3, 2)
    with pytest.raises(ValueError, match="x"):
        psfa.model(torch.zeros(2, 5, 4))
    with pytest.raises(ValueError, match="NaN"):
        psfa.log_likelihood(nan)
