"""The general Boltzmann machine against enumeration on tiny models (issue 16)."""

import math

import pyro
import pytest
import torch
from helpers import all_states, state_index
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.energy import (
    ContrastiveDivergence,
    EnergyModel,
    FreeEnergyModel,
    PersistentChains,
    ais_log_partition,
    exact_log_partition,
    reverse_ais_log_partition,
)
from dgm_ppl.energy.boltzmann import BoltzmannChains, BoltzmannDistribution, BoltzmannMachine
from dgm_ppl.energy.protocol import AnnealingPath, Enumeration
from dgm_ppl.infer import DivergenceError

NV, NH = 5, 3


def assert_close(actual, expected, rtol=1e-6, atol=1e-8):
    """torch.allclose with a message (torch.testing.assert_close imports torch.distributed: seconds)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


def random_bm(nv=NV, nh=NH, scale=0.6, dtype=torch.float64, **kwargs):
    bm = BoltzmannMachine(nv, nh, init_std=scale, **kwargs).to(dtype)
    with torch.no_grad():
        bm.bias.normal_(0, scale)
    return bm


def brute_joint_log_probs(bm):
    """log p(x) of all 2^n joint states (codes as in all_states), by brute force from energy()."""
    x = all_states(bm.num_units, bm.weight)
    with torch.no_grad():
        neg_e = -bm.energy(x)
    return neg_e - torch.logsumexp(neg_e, 0), x


def brute_visible_log_unnormalized(bm, v):
    """log sum_h exp(-E(v, h)) by listing every (v, h)."""
    h = all_states(bm.n_hidden, bm.weight)
    vv = v[:, None].expand(-1, len(h), -1)
    hh = h[None].expand(len(v), -1, -1)
    return torch.logsumexp(-bm.energy(torch.cat([vv, hh], -1)), 1)


def tv(counts, probs):
    return 0.5 * (counts / counts.sum() - probs).abs().sum().item()


# ------------------------------------------------------------------------------------ structure
def test_satisfies_the_energy_protocol_and_declares_its_chains():
    bm = BoltzmannMachine(4, 2)
    assert isinstance(bm, EnergyModel) and not isinstance(bm, FreeEnergyModel)
    assert isinstance(bm.annealing_path(), AnnealingPath)
    assert isinstance(bm.enumeration(), Enumeration)
    assert bm.chain_class is BoltzmannChains
    assert type(PersistentChains(bm, 5)) is BoltzmannChains
    assert type(bm.persistent_chains(5, steps=2)) is BoltzmannChains
    assert isinstance(bm.distribution(bm.persistent_chains(3)), BoltzmannDistribution)


def test_energy_is_the_quadratic_form_with_a_symmetric_zero_diagonal_coupling():
    bm = random_bm()
    u = bm.coupling
    assert_close(u, u.T)
    assert torch.all(u.diagonal() == 0)
    x = all_states(8, bm.weight)[::7]
    manual = -(((x @ u) * x).sum(-1) + x @ bm.bias)
    assert_close(bm.energy(x), manual)
    # pairs [v, h] are the same states
    assert_close(bm.energy([x[:, :NV], x[:, NV:]]), manual)
    # the pairwise sum of Goodfellow et al. eq. 20.1: each pair counted twice in x^T U x
    pair = sum(2 * u[i, j] * x[:, i] * x[:, j] for i in range(8) for j in range(i + 1, 8))
    assert_close(bm.energy(x), -(pair + x @ bm.bias))


@pytest.mark.parametrize("nh", [0, 3])
def test_exact_log_partition_against_brute_force(nh):
    bm = random_bm(nh=nh)
    x = all_states(NV + nh, bm.weight)
    brute = torch.logsumexp(-bm.energy(x), 0)
    log_z = exact_log_partition(bm)
    assert_close(log_z, brute.detach())
    assert bm.log_z == pytest.approx(float(brute.detach()))
    assert log_z.requires_grad  # differentiable in the parameters


@pytest.mark.parametrize("nh", [0, 3])
def test_visible_marginal_sums_the_hidden_units_out(nh):
    bm = random_bm(nh=nh)
    v = all_states(NV, bm.weight)
    if nh:
        expected = brute_visible_log_unnormalized(bm, v)
    else:
        expected = -bm.energy(v)
    assert_close(bm.unnormalized_log_prob(v), expected)
    # p(v) sums to one with the exact log Z; batch dimensions pass through
    log_z = exact_log_partition(bm)
    assert float(torch.logsumexp(bm.unnormalized_log_prob(v) - log_z, 0)) == pytest.approx(0.0, abs=1e-10)
    assert bm.unnormalized_log_prob(v.reshape(4, 8, NV)).shape == (4, 8)


def test_marginal_enumerates_hidden_units_in_chunks():
    # 13 hidden units: 2^13 states in two chunks of 2^12
    bm = random_bm(nv=2, nh=13, scale=0.2)
    v = all_states(2, bm.weight)
    assert_close(bm.unnormalized_log_prob(v), brute_visible_log_unnormalized(bm, v))


def test_conditionals_match_brute_force():
    bm = random_bm()
    log_p, x = brute_joint_log_probs(bm)
    index = state_index(x)
    cond = bm.log_conditional(x)
    for i in range(8):
        flipped = x.clone()
        flipped[:, i] = 1 - flipped[:, i]
        other = log_p[state_index(flipped)]
        expected = log_p[index] - torch.logaddexp(log_p[index], other)
        assert_close(cond[:, i], expected)
    logits = bm.conditional_logits(x)
    logsig = torch.nn.functional.logsigmoid
    assert_close(torch.where(x == 1, logsig(logits), logsig(-logits)), cond)


# ------------------------------------------------------------------------------------ sampling
def test_gibbs_sampler_reaches_the_exact_distribution():
    torch.manual_seed(0)
    bm = random_bm(scale=0.7)
    log_p, x = brute_joint_log_probs(bm)
    n = 20000
    states = bm.gibbs(bm.random_state(n), steps=60)
    counts = torch.bincount(state_index(states), minlength=2**8).double()
    exact = torch.multinomial(log_p.exp(), n, replacement=True)  # the same number of exact draws, for scale
    floor = tv(torch.bincount(exact, minlength=2**8).double(), log_p.exp())
    joint_tv = tv(counts, log_p.exp())
    print(f"joint TV: Gibbs {joint_tv:.4f}, exact draws {floor:.4f}")
    assert joint_tv < 1.5 * floor + 0.01
    # the visible marginal, and the model's own sampler
    p_v = torch.softmax(bm.unnormalized_log_prob(all_states(NV, bm.weight)), 0).detach()
    v = bm.sample(n, steps=60)
    assert tv(torch.bincount(state_index(v), minlength=2**NV).double(), p_v) < 0.02


def test_tempered_and_clamped_gibbs_target_their_distributions():
    torch.manual_seed(1)
    bm = random_bm(scale=0.8)
    x = all_states(8, bm.weight)
    base = torch.tensor([1.0, -1.0, 0.5, 0.0, 2.0], dtype=torch.float64)
    beta = 0.4
    with torch.no_grad():
        log_p = beta * -bm.energy(x) + (1 - beta) * (x[:, :NV] @ base)
    p = torch.softmax(log_p, 0)
    states = bm.gibbs(bm.random_state(20000), steps=40, beta=beta, base=base)
    assert tv(torch.bincount(state_index(states), minlength=256).double(), p) < 0.06
    # at beta = 0 the base model: exact draws
    start = bm.sample_base(20000, base)
    assert torch.allclose(start[:, :NV].mean(0), torch.sigmoid(base), atol=0.02)
    assert torch.allclose(start[:, NV:].mean(0), torch.full((NH,), 0.5, dtype=torch.float64), atol=0.02)
    # visible units clamped: the hidden units follow p(h | v)
    v0 = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    init = torch.cat([v0.expand(20000, -1), torch.zeros(20000, NH, dtype=torch.float64)], -1)
    clamped = bm.gibbs(init, steps=30, clamp_visible=True)
    assert torch.equal(clamped[:, :NV], init[:, :NV])
    rows = (x[:, :NV] == v0).all(-1)
    p_h = torch.softmax(-bm.energy(x[rows]).detach(), 0)
    assert tv(torch.bincount(state_index(clamped[:, NV:]), minlength=8).double(), p_h) < 0.02


def test_ais_brackets_the_exact_log_partition():
    torch.manual_seed(2)
    bm = random_bm(scale=0.7)
    exact = float(exact_log_partition(bm, record=False))
    data = bm.sample(200, steps=50)
    forward = ais_log_partition(bm, 100, 400, data=data)
    assert forward.log_z == pytest.approx(exact, abs=0.1)
    assert bm.log_z == forward.log_z
    chains = PersistentChains(bm, 100)
    chains.state = bm.gibbs(chains.state, 50)
    reverse = reverse_ais_log_partition(bm, chains.state, 400, data=data)
    assert reverse.log_z == pytest.approx(exact, abs=0.1)
    print(f"log Z: exact {exact:.4f}, AIS {forward.log_z:.4f}, reverse AIS {reverse.log_z:.4f}")


# ------------------------------------------------------------------------------------ SML
def _exact_gradient(bm, data):
    bm.zero_grad()
    (bm.unnormalized_log_prob(data).mean() - exact_log_partition(bm, record=False)).backward()
    grads = [p.grad.clone() for p in (bm.weight, bm.bias)]
    bm.zero_grad()
    return grads


@pytest.mark.parametrize("positive_phase", ["exact", "gibbs"])
def test_sml_gradient_matches_the_exact_gradient(positive_phase):
    torch.manual_seed(3)
    bm = random_bm(nv=4, nh=2, scale=0.7)
    data = (torch.rand(40, 4) < 0.4).double()
    exact = _exact_gradient(bm, data)
    chains = PersistentChains(bm, 20000, steps=1)
    chains.state = bm.gibbs(chains.state, 50)  # equilibrate
    reps = 500 if positive_phase == "gibbs" else 1  # the clamped chains also average over copies of the data
    dist = bm.distribution(chains, positive_phase=positive_phase, positive_steps=20)
    dist.log_prob(data.repeat(reps, 1)).mean().backward()
    for g_exact, p in zip(exact, (bm.weight, bm.bias)):
        err = (p.grad - g_exact).abs().max().item()
        print(f"{positive_phase}: max |SML - exact| = {err:.4f} (exact max {g_exact.abs().max().item():.3f})")
        assert err < 0.03


def test_log_prob_value_without_gradient_is_the_exact_log_likelihood():
    bm = random_bm()
    chains = PersistentChains(bm, 10)
    state = chains.state.clone()
    v = all_states(NV, bm.weight)
    log_z = exact_log_partition(bm)
    with torch.no_grad():
        lp = bm.distribution(chains).log_prob(v)
    assert_close(lp, bm.unnormalized_log_prob(v).detach() - log_z.detach())
    assert torch.equal(chains.state, state)  # no negative phase without a gradient


def _svi_model(bm, chains, n):
    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("v", bm.distribution(chains), obs=batch)

    return model


def test_svi_trains_by_sml_towards_the_data():
    torch.manual_seed(4)
    pyro.set_rng_seed(4)
    target = random_bm(nv=5, nh=2, scale=1.2, dtype=torch.float32)
    v_all = all_states(5)
    p_target = torch.softmax(target.unnormalized_log_prob(v_all), 0).detach()
    data = v_all[torch.multinomial(p_target, 500, replacement=True)]
    p_data = torch.bincount(state_index(data), minlength=32).float() / 500

    bm = BoltzmannMachine(5, 2, init_std=0.01)
    chains = PersistentChains(bm, 100)

    def kl():
        with torch.no_grad():
            log_p = bm.unnormalized_log_prob(v_all) - exact_log_partition(bm, record=False)
        keep = p_data > 0
        return float((p_data[keep] * (p_data[keep].log() - log_p[keep])).sum())

    before = kl()
    svi = SVI(_svi_model(bm, chains, len(data)), lambda b: None, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(200):
        svi.step(data[torch.randint(len(data), (50,))])
    after = kl()
    print(f"KL(data || model): {before:.4f} -> {after:.4f}")
    assert after < 0.35 * before


def test_checkpoint_with_chains_resumes_exactly(tmp_path):
    torch.manual_seed(5)
    data = (torch.rand(200, 6) < 0.3).float()

    def make():
        pyro.clear_param_store()
        bm = BoltzmannMachine(6, 2, name="bm").init_from_data(data)
        chains = PersistentChains(bm, 20, steps=2)
        optim = pyro.optim.Adam({"lr": 1e-2})
        return bm, chains, optim, SVI(_svi_model(bm, chains, len(data)), lambda b: None, optim, Trace_ELBO())

    bm, chains, optim, svi = make()
    for i in range(3):
        svi.step(data[i * 20 : (i + 1) * 20])
    bm.log_z = 1.5
    save_checkpoint(tmp_path / "ck.pt", {"bm": bm, "chains": chains}, optim)
    expected = [svi.step(data[i * 20 : (i + 1) * 20]) for i in range(3, 6)]
    final = [p.detach().clone() for p in bm.parameters()] + [chains.state.clone()]

    bm, chains, optim, svi = make()
    svi.step(data[:20])  # creates the optimizer state that the checkpoint overwrites
    load_checkpoint(tmp_path / "ck.pt", {"bm": bm, "chains": chains}, optim)
    assert bm.log_z == 1.5
    resumed = [svi.step(data[i * 20 : (i + 1) * 20]) for i in range(3, 6)]
    assert resumed == expected
    for a, b in zip(final, list(bm.parameters()) + [chains.state]):
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------ bad input
def test_bad_input_raises_value_errors_naming_the_argument():
    bm = BoltzmannMachine(4, 2)
    with pytest.raises(ValueError, match="data: expected the last dimension to be n_visible=4"):
        bm.check_data(torch.zeros(3, 5), "data")
    with pytest.raises(ValueError, match="init_from_data.*binary.*0.5"):
        bm.init_from_data(torch.full((3, 4), 0.5))
    with pytest.raises(ValueError, match="x: values contain NaN"):
        bm.check_data(torch.tensor([[0.0, 1.0, float("nan"), 0.0]]), "x")
    with pytest.raises(ValueError, match="states: expected the last dimension to be n_visible \\+ n_hidden=6"):
        bm.energy(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="states: .*binary"):
        bm.gibbs(torch.full((2, 6), 2.0))
    with pytest.raises(ValueError, match="init must have shape"):
        PersistentChains(bm, 3, init=torch.zeros(3, 5))
    with pytest.raises(ValueError, match="init: values contain NaN"):
        PersistentChains(bm, 1, init=torch.tensor([[0.0, 1.0, 1.0, float("nan")]]))
    chains = PersistentChains(bm, 3)

    def model(v):
        with pyro.plate("data", len(v)):
            pyro.sample("v", bm.distribution(chains), obs=v)

    svi = SVI(model, lambda v: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for bad, match in [(torch.zeros(2, 3), "value: expected"), (torch.full((2, 4), 0.3), "value: .*binary")]:
        with pytest.raises(ValueError, match=match):
            svi.step(bad)
    with pytest.raises(ValueError, match="value: values contain NaN"):
        svi.step(torch.tensor([[0.0, float("nan"), 1.0, 0.0]]))
    with pytest.raises(TypeError, match="PersistentChains"):
        bm.distribution(ContrastiveDivergence(bm))
    with pytest.raises(ValueError, match="positive_phase"):
        bm.distribution(chains, positive_phase="bogus")
    for args in [(0, 2), (3, -1), (2.5,)]:
        with pytest.raises(ValueError, match="must be an int"):
            BoltzmannMachine(*args)


def test_too_many_units_for_enumeration_is_a_clear_error():
    bm = BoltzmannMachine(3, 18, max_enumerated_hidden=12)
    with pytest.raises(ValueError, match="2\\^18 hidden states.*max_enumerated_hidden=12"):
        bm.unnormalized_log_prob(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="2\\^21 joint states of all units"):
        exact_log_partition(bm)
    # SML then takes the positive phase from clamped chains
    chains = PersistentChains(bm, 4)
    dist = bm.distribution(chains)
    assert dist.positive_phase == "gibbs"
    out = dist.log_prob(torch.ones(5, 3))
    out.sum().backward()
    assert out.shape == (5,) and torch.isfinite(bm.weight.grad).all()


def test_divergence_raises_before_any_parameter_moves():
    bm = BoltzmannMachine(4, 1)
    chains = PersistentChains(bm, 5)
    with torch.no_grad():
        bm.weight[0, 1] = float("nan")
    before = [p.detach().clone() for p in bm.parameters()]

    def model(v):
        with pyro.plate("data", len(v)):
            pyro.sample("v", bm.distribution(chains), obs=v)

    svi = SVI(model, lambda v: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    with pytest.raises(DivergenceError, match="Boltzmann machine"):
        svi.step(torch.ones(3, 4))
    for a, b in zip(before, bm.parameters()):
        assert torch.equal(a, b.detach()) or torch.allclose(a, b.detach(), equal_nan=True)
    assert math.isnan(float(bm.weight[0, 1]))
