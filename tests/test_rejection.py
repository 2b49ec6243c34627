"""Discriminator rejection sampling against exact answers: known density ratios, Gaussian and enumerated."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from dgm_ppl.infer import GANLoss, discriminator_rejection_sampling

LOG2 = math.log(2.0)


def gaussian_model(x):
    """p_G = N(0, 1) at the observed site ``x``."""
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


class GaussianRatio(nn.Module):
    """The exact log ratio log N(x; 0, 0.5²) − log N(x; 0, 1) = log 2 − 1.5 x², bounded by log 2."""

    def forward(self, x):
        return LOG2 - 1.5 * x.squeeze(-1) ** 2


def ks_to_normal(samples: torch.Tensor, std: float) -> float:
    x = samples.flatten().double().sort().values
    cdf = 0.5 * (1 + torch.erf(x / (std * math.sqrt(2))))
    n = len(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n - cdf
    lower = cdf - torch.arange(0, n, dtype=torch.float64) / n
    return max(upper.max().item(), lower.max().item())


@pytest.mark.parametrize("known_bound", [True, False])
def test_gaussian_ratio_gives_the_target_distribution(known_bound):
    torch.manual_seed(0)
    n = 20_000
    out = discriminator_rejection_sampling(
        gaussian_model,
        GaussianRatio(),
        torch.zeros(5_000),
        num_samples=n,
        max_logit=LOG2 if known_bound else None,
        generator=torch.Generator().manual_seed(1),
    )
    x = out.samples["x"]
    assert x.shape == (n, 1)
    # KS against N(0, 0.5²); the 1% critical value is 1.63 / sqrt(n) = 0.0115. The raw proposal N(0, 1) is at 0.19.
    assert ks_to_normal(x, 0.5) < 0.0115
    assert ks_to_normal(x, 1.0) > 0.1
    # the acceptance rate is exp(-M) = 1/2; the pilot's maximum is just under log 2
    assert out.acceptance_rate == pytest.approx(0.5, abs=0.01)
    assert out.max_logit == pytest.approx(LOG2, abs=1e-3)
    assert out.draws >= 2 * n * 0.95


@pytest.mark.parametrize("gamma", [-1.0, 1.5])
def test_gamma_changes_the_acceptance_rate_as_the_formula_says(gamma):
    # with the exact bound, σ(F) = r / (r + (1 − r) e^γ) for r = exp(D − M): the expected rate by quadrature
    grid = torch.linspace(-10, 10, 200_001, dtype=torch.float64)
    r = torch.exp(-1.5 * grid**2)
    p_accept = r / (r + (1 - r) * math.exp(gamma))
    density = torch.exp(-0.5 * grid**2) / math.sqrt(2 * math.pi)
    expected = torch.trapezoid(p_accept * density, grid).item()
    torch.manual_seed(0)
    out = discriminator_rejection_sampling(
        gaussian_model,
        GaussianRatio(),
        torch.zeros(10_000),
        num_samples=10_000,
        gamma=gamma,
        max_logit=LOG2,
        epsilon=0.0,
        generator=torch.Generator().manual_seed(2),
    )
    assert out.acceptance_rate == pytest.approx(expected, abs=0.01)
    spread = out.samples["x"].std().item()
    assert (spread > 0.5) if gamma < 0 else (spread < 0.5)


def test_enumerated_bits_match_the_target_probabilities():
    """p_G uniform over 3 bits; the discriminator returns the exact log p(x) − log p_G(x) of a fixed table."""
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)))
    target = torch.tensor([0.30, 0.05, 0.10, 0.05, 0.20, 0.05, 0.05, 0.20], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(0.5).expand([3]).to_event(1), obs=x)

    class TableRatio(nn.Module):
        def forward(self, x):
            index = (x * torch.tensor([4.0, 2.0, 1.0])).sum(-1).long()
            return (target[index] * 8).log()

    torch.manual_seed(0)
    n = 16_000
    out = discriminator_rejection_sampling(
        model, TableRatio(), torch.zeros(2_000, 3), num_samples=n, generator=torch.Generator().manual_seed(3)
    )
    x = out.samples["x"]
    index = (x * torch.tensor([4.0, 2.0, 1.0])).sum(-1).long()
    freq = torch.bincount(index, minlength=8).double()
    chi2 = (((freq - n * target) ** 2) / (n * target)).sum().item()
    assert chi2 < 18.5  # 7 degrees of freedom, the 1% critical value
    assert out.acceptance_rate == pytest.approx(1 / (8 * 0.30), abs=0.01)
    assert (states[index] == x).all()


def test_runs_on_a_trained_gan_with_batch_norm_in_eval_mode():
    torch.manual_seed(0)
    pyro.clear_param_store()
    G = nn.Sequential(nn.Linear(2, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    D = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))

    def model(x):
        pyro.module("G", G)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=x)

    data = torch.randn(64, 2) * 0.1 + 1.0
    svi = pyro.infer.SVI(model, lambda x: None, pyro.optim.Adam({"lr": 1e-3}), GANLoss(D))
    for _ in range(5):
        svi.step(data)
    G.eval()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    out = discriminator_rejection_sampling(model, D, data, num_samples=100)
    assert out.samples["x"].shape == (100, 2)
    assert 0 < out.acceptance_rate <= 1
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())


def test_bad_input_is_refused_clearly():
    x = torch.zeros(100)
    with pytest.raises(ValueError, match="num_samples"):
        discriminator_rejection_sampling(gaussian_model, GaussianRatio(), x, num_samples=0)
    with pytest.raises(ValueError, match="gamma"):
        discriminator_rejection_sampling(gaussian_model, GaussianRatio(), x, num_samples=5, gamma=math.nan)
    with pytest.raises(ValueError, match="pilot_rounds"):
        discriminator_rejection_sampling(gaussian_model, GaussianRatio(), x, num_samples=5, pilot_rounds=0)

    class NaNCritic(nn.Module):
        def forward(self, x):
            return torch.full(x.shape[:1], math.nan)

    with pytest.raises(ValueError, match="NaN or inf logits"):
        discriminator_rejection_sampling(gaussian_model, NaNCritic(), x, num_samples=5)

    class WrongShape(nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 2)

    with pytest.raises(ValueError, match="one value per"):
        discriminator_rejection_sampling(gaussian_model, WrongShape(), x, num_samples=5)
    # a bound far above every logit accepts almost nothing: the error says so instead of looping forever
    with pytest.raises(ValueError, match="acceptance rate"):
        discriminator_rejection_sampling(
            gaussian_model, GaussianRatio(), x, num_samples=500, max_logit=30.0, max_rounds=3
        )


def test_numpy_data_batch_is_accepted():
    np = pytest.importorskip("numpy")
    out = discriminator_rejection_sampling(
        gaussian_model, GaussianRatio(), np.zeros(1000, dtype=np.float32), num_samples=50
    )
    assert out.samples["x"].shape == (50, 1)


def test_an_unsized_plate_is_refused_with_a_hint():
    def model(x):
        with pyro.plate("data"):  # no size: under uncondition the model would draw one value
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"plate 'data' has no size.*pyro.plate\('data', len\(x\)\)"):
        discriminator_rejection_sampling(model, GaussianRatio(), torch.zeros(100), num_samples=5)
