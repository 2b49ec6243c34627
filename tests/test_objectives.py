"""β/KL annealing, free bits and IWAE over Pyro's ELBOs; KL per dimension and active units against closed forms."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from torch import nn

from dgm_ppl.evaluation import active_units, kl_per_dimension
from dgm_ppl.guides import AmortizedFlow, AmortizedNormal
from dgm_ppl.infer import IWAE, AnnealedELBO, FreeBitsELBO, linear_warmup

N, D, K = 40, 4, 3


@pytest.fixture
def problem():
    """A linear-Gaussian model whose third latent coordinate is unused (W's third column is 0), and a fixed guide
    q(z|x) = N(A x, diag(s)) with known parameters, so that per-dimension KLs have closed forms."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(D, K, generator=g)
    W[:, 2] = 0.0
    x = torch.randn(N, D, generator=g)
    A = 0.3 * torch.randn(K, D, generator=g)
    A[2] = 0.0  # the unused coordinate's posterior mean does not move with x
    s = torch.tensor([0.5, 0.8, 1.0])

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T, 0.5).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x @ A.T, s).to_event(1))

    mean = x @ A.T
    kl = 0.5 * (s**2 + mean**2 - 1 - 2 * s.log())  # KL(N(m, s^2) || N(0, 1)) per coordinate, (N, K)
    return dict(model=model, guide=guide, x=x, kl=kl, mean=mean)


def test_annealed_elbo_is_linear_in_beta(problem):
    """With the same draws, the β-ELBO is recon − β·KL-term: loss(β) is affine in β, and β = 1 is the plain ELBO."""
    model, guide, x = problem["model"], problem["guide"], problem["x"]
    losses = {}
    for beta in (0.0, 0.5, 1.0, 2.0):
        pyro.set_rng_seed(3)
        losses[beta] = AnnealedELBO(beta=beta).loss(model, guide, x)
    pyro.set_rng_seed(3)
    plain = pyro.infer.Trace_ELBO().loss(model, guide, x)
    assert losses[1.0] == pytest.approx(plain, rel=1e-6)
    assert losses[0.5] == pytest.approx((losses[0.0] + losses[1.0]) / 2, rel=1e-5)
    assert losses[2.0] == pytest.approx(2 * losses[1.0] - losses[0.0], rel=1e-5)
    assert losses[0.0] != pytest.approx(losses[1.0])


def test_annealing_schedule_counts_svi_steps_and_resumes():
    schedule = linear_warmup(4)
    assert [schedule(t) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    loss = AnnealedELBO(beta=schedule)

    def model():
        pyro.sample("z", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))

    def guide():
        pyro.sample("z", dist.Normal(0.0, 1.0))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), loss)
    for _ in range(3):
        svi.step()
    assert loss.step == 3 and loss.current_beta == 0.75
    again = AnnealedELBO(beta=schedule)
    again.load_state_dict(loss.state_dict())
    assert again.current_beta == 0.75
    with pytest.raises(ValueError, match="beta"):
        AnnealedELBO(beta=-1.0)
    with pytest.raises(ValueError, match="steps"):
        linear_warmup(0)


def test_free_bits_zero_is_mean_field_elbo_and_floor_applies_per_dimension(problem):
    model, guide, x, kl = problem["model"], problem["guide"], problem["x"], problem["kl"]
    pyro.set_rng_seed(1)
    reference = TraceMeanField_ELBO().loss(model, guide, x)
    pyro.set_rng_seed(1)
    assert FreeBitsELBO(free_bits=0.0).loss(model, guide, x) == pytest.approx(reference, rel=1e-6)
    # λ between the coordinates' mean KLs: only those below it are raised to λ
    mean_kl = kl.mean(0)
    lam = float(mean_kl.sort().values[1])  # the middle one
    pyro.set_rng_seed(1)
    floored = FreeBitsELBO(free_bits=lam).loss(model, guide, x)
    expected = reference + N * (mean_kl.clamp(min=lam) - mean_kl).sum().item()
    assert floored == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="free_bits"):
        FreeBitsELBO(free_bits=-0.1)


def test_free_bits_trains_and_refuses_non_factorized_guides(problem):
    model, x = problem["model"], problem["x"]
    guide = AmortizedNormal(model, nn.Linear(D, 8))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), FreeBitsELBO(free_bits=0.1))
    losses = [svi.step(x) for _ in range(150)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    flow = AmortizedFlow(model, nn.Linear(D, 8), flow="iaf")
    with pytest.raises(ValueError, match="closed-form KL"):
        FreeBitsELBO().loss(model, flow, x)


def test_iwae_is_renyi_alpha_zero_and_tightens(problem):
    model, guide, x = problem["model"], problem["guide"], problem["x"]
    bounds = []
    for k in (1, 10, 100):
        pyro.set_rng_seed(0)
        bounds.append(-IWAE(k, max_plate_nesting=1).loss(model, guide, x))
    assert bounds[0] < bounds[1] < bounds[2]
    with pytest.raises(ValueError, match="k must be"):
        IWAE(0)


def test_kl_per_dimension_and_active_units_match_closed_forms(problem):
    model, guide, x, kl, mean = problem["model"], problem["guide"], problem["x"], problem["kl"], problem["mean"]
    torch.testing.assert_close(kl_per_dimension(model, guide, x), kl.mean(0))
    units = active_units(guide, x)
    torch.testing.assert_close(units.variances, mean.var(0))
    assert units.count == int((mean.var(0) > 0.01).sum()) and units.variances[2] == 0
    # a trained amortized guide: the unused coordinate collapses onto the prior (KL ~ 0, inactive)
    amortized = AmortizedNormal(model, nn.Sequential(nn.Linear(D, 16), nn.Tanh()))
    svi = SVI(model, amortized, pyro.optim.Adam({"lr": 0.02}), TraceMeanField_ELBO())
    for _ in range(600):
        svi.step(x)
    per_dim = kl_per_dimension(model, amortized, x)
    assert per_dim[2] < 0.02 < per_dim[:2].min(), per_dim
    units = active_units(amortized, x)
    assert units.count == 2 and units.variances[2] < 0.01, units
    with pytest.raises(ValueError, match="no latent sample site 'w'"):
        kl_per_dimension(model, guide, x, site="w")


@pytest.mark.parametrize(
    "objective", [lambda: AnnealedELBO(beta=0.5), lambda: FreeBitsELBO(0.1), lambda: IWAE(3, max_plate_nesting=1)]
)
def test_a_nan_loss_raises_and_changes_nothing(objective):
    """A decoder whose weights went NaN: the objective raises DivergenceError inside svi.step, before the optimizer
    moves anything, and leaves no NaN gradient behind."""
    from dgm_ppl.infer import DivergenceError

    pyro.clear_param_store()
    decoder = nn.Linear(2, D)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0, validate_args=False).to_event(1), obs=x)

    x = torch.randn(N, D)
    guide = AmortizedNormal(model, nn.Linear(D, 8))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), objective())
    assert math.isfinite(svi.step(x))
    with torch.no_grad():
        decoder.bias[0] = float("nan")
    before = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    with pytest.raises(DivergenceError, match="loss is nan"):
        svi.step(x)
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), before[name]) or name == "decoder$$$bias", name
        assert value.grad is None, name


def test_iwae_under_a_subsampled_plate_is_the_scaled_per_datum_bound():
    """With a plate of N data subsampled to B, IWAE's loss and gradients are N/B times the batch's own, and the bound
    stays below the exact log p(x) of PPCA; Pyro's RenyiELBO, which scales inside the logsumexp, overshoots it."""
    from pyro.infer import RenyiELBO

    from dgm_ppl.models import PPCA

    torch.manual_seed(0)
    ppca = PPCA(5, 2)
    x = torch.randn(10, 5)
    loc = torch.zeros(2, requires_grad=True)

    def plate(n):
        return pyro.plate("data", n or len(x), subsample=torch.arange(len(x)))

    def model(x, n=None):
        with plate(n):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ ppca.weight.detach().T, ppca.log_noise.exp().detach()).to_event(1), obs=x)

    def guide(x, n=None):
        pyro.param("loc", loc)
        with plate(n):
            pyro.sample("z", dist.Normal(pyro.param("loc"), 1.5).to_event(1))

    exact = ppca.log_marginal(x).sum().item()
    results = {}
    for n in (None, 1000):
        pyro.clear_param_store()
        loc.grad = None  # loss_and_grads expects zero gradients on entry, as SVI leaves them
        torch.manual_seed(1)
        loss = IWAE(20, max_plate_nesting=1).loss_and_grads(model, guide, x, n)
        results[n] = loss, pyro.param("loc").unconstrained().grad.clone()
    assert results[1000][0] == pytest.approx(100 * results[None][0], rel=1e-5)
    assert torch.allclose(results[1000][1], 100 * results[None][1], rtol=1e-4)
    assert -results[None][0] < exact
    torch.manual_seed(1)
    renyi = RenyiELBO(0.0, 20, vectorize_particles=True, max_plate_nesting=1).loss(model, guide, x, 1000)
    assert -renyi / 100 > exact  # not a bound on log p(x) any more


@pytest.mark.parametrize("num_data", [None, 1000])
def test_iwae_differentiable_loss_is_loss_and_grads(num_data):
    """``differentiable_loss`` (what ``AutocastLoss`` and other callers that run the backward pass need) has the
    value and the gradient of ``loss_and_grads`` for the same draws, with a subsampled plate's scale too."""
    torch.manual_seed(0)
    x, w = torch.randn(10, 5), torch.randn(5, 2)
    loc = torch.zeros(2, requires_grad=True)

    def model(x, n=None):
        with pyro.plate("data", n or len(x), subsample=torch.arange(len(x))):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ w.T, 0.5).to_event(1), obs=x)

    def guide(x, n=None):
        pyro.param("loc", loc)
        with pyro.plate("data", n or len(x), subsample=torch.arange(len(x))):
            pyro.sample("z", dist.Normal(pyro.param("loc"), 1.5).to_event(1))

    iwae = IWAE(8, max_plate_nesting=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    value = iwae.loss_and_grads(model, guide, x, num_data)
    grad = pyro.param("loc").unconstrained().grad.clone()
    pyro.clear_param_store()
    loc.grad = None
    pyro.set_rng_seed(1)
    loss = iwae.differentiable_loss(model, guide, x, num_data)
    loss.backward()
    assert loss.item() == pytest.approx(value, rel=1e-5)
    torch.testing.assert_close(pyro.param("loc").unconstrained().grad, grad, rtol=1e-5, atol=1e-6)
