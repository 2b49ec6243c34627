"""Deep Boltzmann machines against enumeration on tiny models."""

import math

import pyro
import pytest
import torch
from helpers import all_states, state_index
from pyro.infer import SVI, Predictive, Trace_ELBO

from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import (
    DBM,
    BernoulliRBM,
    ContrastiveDivergence,
    DBMPersistentChains,
    PersistentChains,
    ais_log_partition,
    average_log_likelihood,
    exact_log_partition,
    reverse_ais_log_partition,
)
from dgm_ppl.infer import AutocastLoss, DivergenceError, train


def random_dbm(sizes, scale=1.0, **kwargs):
    dbm = DBM(sizes, **kwargs)
    with torch.no_grad():
        for p in dbm.parameters():
            p.normal_(0, scale)
    return dbm


def brute_log_unnormalized(dbm, v):
    """log sum_h exp(-E(v, h)) by enumerating every hidden layer."""
    sizes = dbm.layer_sizes
    h = all_states(sum(sizes[1:]), dbm.weight_0)
    hs = list(h.split(sizes[1:], -1))
    states = [v[:, None, :].expand(-1, len(h), -1)] + [x.expand(len(v), -1, -1) for x in hs]
    return torch.logsumexp(-dbm.energy(states), 1)


def brute_log_z(dbm):
    v = all_states(dbm.n_visible, dbm.weight_0)
    return torch.logsumexp(brute_log_unnormalized(dbm, v), 0)


def test_energy_formula():
    dbm = random_dbm([3, 2, 4])
    v, h1, h2 = torch.tensor([[1.0, 0, 1]]), torch.tensor([[0.0, 1]]), torch.tensor([[1.0, 1, 0, 1]])
    w0, w1 = dbm.weight_0, dbm.weight_1
    expected = -(v @ dbm.bias_0 + h1 @ dbm.bias_1 + h2 @ dbm.bias_2 + (v @ w0 * h1).sum() + (h1 @ w1 * h2).sum())
    assert torch.allclose(dbm.energy([v, h1, h2]), expected)
    with pytest.raises(ValueError, match="expected 3 layer states"):
        dbm.energy([v, h1])
    with pytest.raises(ValueError, match="layer 1 has 2 units"):
        dbm.energy([v, h2, h2])


@pytest.mark.parametrize("sizes", [[4, 3, 2], [3, 5, 2], [3, 2, 3, 2], [2, 3, 2, 3]])
@pytest.mark.parametrize("centered", [False, True])
def test_exact_log_partition_matches_brute_force(sizes, centered):
    dbm = random_dbm(sizes, 0.8, centered=centered)
    if centered:
        with torch.no_grad():
            for mu in dbm.offsets():
                mu.uniform_(0.1, 0.9)
    log_z = exact_log_partition(dbm)
    assert torch.allclose(log_z, brute_log_z(dbm), atol=1e-4)
    assert dbm.log_z == pytest.approx(float(log_z.detach()))
    log_z.backward()  # differentiable
    assert dbm.weight_0.grad is not None


def test_exact_log_partition_refuses_large_models():
    with pytest.raises(ValueError, match="max_units=20"):
        exact_log_partition(DBM([30, 30, 30]))


def test_gaussian_visible_log_partition_against_numerical_integration():
    dbm = random_dbm([2, 3, 2], 0.6, gaussian_visible=True, std=torch.tensor([0.7, 1.3]))
    grid = torch.linspace(-12, 12, 481, dtype=torch.float64)
    v = torch.cartesian_prod(grid, grid)
    dbm = dbm.double()
    log_p = brute_log_unnormalized(dbm, v)
    cell = (grid[1] - grid[0]) ** 2
    numeric = (torch.logsumexp(log_p, 0) + torch.log(cell)).detach()
    assert float(exact_log_partition(dbm).detach()) == pytest.approx(float(numeric), abs=1e-4)
    # the Gaussian visible conditional: p(v | h1) = N(b + std * W h1, std^2)
    p = dbm.params()
    h1 = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    draws = torch.stack([dbm._sample_layer(p, 0, [None, h1.expand(20000, -1), None]) for _ in range(1)])[0]
    mean = p.biases[0] + p.std * (h1 @ p.weights[0].T)[0]
    assert torch.allclose(draws.mean(0), mean, atol=0.03) and torch.allclose(draws.std(0), p.std, atol=0.03)


@pytest.mark.parametrize("sizes", [[5, 4, 3], [4, 3, 3, 2]])
def test_variational_bound_never_exceeds_exact_and_is_tight_for_one_layer(sizes):
    dbm = random_dbm(sizes, 1.0)
    v = all_states(sizes[0])
    exact = brute_log_unnormalized(dbm, v)
    bound = dbm.variational_bound(v)
    assert (bound <= exact + 1e-5).all()
    assert (exact - bound).max() > 1e-3  # a two-layer posterior is not factorial
    # with one hidden layer the posterior is factorial: the bound is -F(v)
    rbm_like = random_dbm([5, 4], 1.0)
    vv = all_states(5)
    assert torch.allclose(rbm_like.variational_bound(vv), brute_log_unnormalized(rbm_like, vv), atol=1e-5)


@pytest.mark.parametrize("sizes", [[5, 4, 3], [4, 3, 3, 2], [3, 2, 4, 2, 3]])
@pytest.mark.parametrize("centered", [False, True])
def test_importance_log_prob_converges_to_exact_and_beats_the_mean_field_bound(sizes, centered):
    """Against enumeration: with many draws the estimate is exact; the mean of single-draw estimates (its
    expectation, a lower bound) lies between the mean-field bound and the exact value, as does the mean of the
    K = 10 estimates, above the single-draw one; with one hidden layer it is exact without sampling."""
    torch.manual_seed(0)
    dbm = random_dbm(sizes, 1.0, centered=centered)
    if centered:
        with torch.no_grad():
            for mu in dbm.offsets():
                mu.uniform_(0.1, 0.9)
    v = all_states(sizes[0])
    exact, bound = brute_log_unnormalized(dbm, v), dbm.variational_bound(v)
    many = dbm.importance_log_prob(v, num_samples=20000)
    assert torch.allclose(many, exact, atol=0.02)  # Monte Carlo error about 0.005 at most
    one = torch.stack([dbm.importance_log_prob(v, num_samples=1) for _ in range(2000)]).mean(0)
    ten = torch.stack([dbm.importance_log_prob(v, num_samples=10) for _ in range(500)]).mean(0)
    sd = 0.05  # generous bound on the Monte Carlo error of these means
    assert (one >= bound - sd).all() and (one <= exact + sd).all()
    assert (ten >= one - sd).all() and (ten <= exact + sd).all()
    assert float((one - bound).mean().detach()) > 0.01  # summing out the odd layers beats the factorial Q over them
    assert dbm.importance_log_prob(v[:3].reshape(3, 1, -1)).shape == (3, 1)
    torch.manual_seed(3)
    log_w = dbm.importance_log_weights(v[:3].reshape(3, 1, -1), 7)
    torch.manual_seed(3)
    same = dbm.importance_log_prob(v[:3].reshape(3, 1, -1), 7)
    assert log_w.shape == (3, 1, 7) and torch.allclose(torch.logsumexp(log_w, -1) - math.log(7), same)
    rbm_like = random_dbm([5, 4], 1.0)
    vv = all_states(5)
    assert torch.allclose(rbm_like.importance_log_prob(vv, 1), brute_log_unnormalized(rbm_like, vv), atol=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        dbm.importance_log_prob(v, num_samples=0)
    with pytest.raises(ValueError):
        dbm.importance_log_prob(torch.full_like(v, 0.5))


def test_mean_field_is_a_fixed_point_and_the_bound_never_decreases():
    dbm = random_dbm([6, 5, 4, 3], 1.0)
    v = all_states(6)
    bounds = [dbm.variational_bound(v, num_iters=k, tol=None) for k in range(0, 8)]
    for a, b in zip(bounds[1:], bounds[2:]):
        assert (b >= a - 1e-5).all()
    mu1, mu2, mu3 = dbm.mean_field(v, num_iters=500, tol=1e-7)
    p = dbm.params()
    assert torch.allclose(mu1, torch.sigmoid(p.biases[1] + v @ p.weights[0] + mu2 @ p.weights[1].T), atol=1e-5)
    assert torch.allclose(mu2, torch.sigmoid(p.biases[2] + mu1 @ p.weights[1] + mu3 @ p.weights[2].T), atol=1e-5)
    assert torch.allclose(mu3, torch.sigmoid(p.biases[3] + mu2 @ p.weights[2]), atol=1e-5)


def test_centering_is_a_reparametrization():
    plain = random_dbm([4, 3, 3], 0.8)
    centered = DBM([4, 3, 3], centered=True)
    with torch.no_grad():
        for mu in centered.offsets():
            mu.uniform_(0.2, 0.8)
    p = plain.params()
    centered.set_standard_params(p.weights, p.biases)
    v = all_states(4)
    log_p = brute_log_unnormalized(plain, v) - brute_log_z(plain)
    log_p_c = brute_log_unnormalized(centered, v) - brute_log_z(centered)
    assert torch.allclose(log_p, log_p_c, atol=1e-5)
    centered.update_offsets([torch.rand(3), torch.rand(3)])  # moves offsets, keeps the distribution
    log_p_moved = brute_log_unnormalized(centered, v) - brute_log_z(centered)
    assert torch.allclose(log_p, log_p_moved, atol=1e-5)
    with pytest.raises(ValueError, match="binary visible"):
        DBM([4, 3, 3], centered=True, gaussian_visible=True)


@pytest.mark.parametrize(
    "sizes, kwargs, with_data",
    [
        ([10, 8, 6], {}, False),
        ([10, 8, 6], {}, True),
        ([8, 6, 4, 3], {}, True),
        ([4, 6, 5], {"gaussian_visible": True}, False),
    ],
)
def test_ais_matches_exact_log_z(sizes, kwargs, with_data):
    dbm = random_dbm(sizes, 0.5, **kwargs)
    exact = float(exact_log_partition(dbm, record=False).detach())
    data = dbm.sample(300, steps=50) if with_data else None
    result = ais_log_partition(dbm, num_chains=100, num_betas=2000, data=data)
    assert abs(result.log_z - exact) < 0.05, (result.log_z, exact)
    assert dbm.log_z == result.log_z and result.stderr < 0.05
    chains = PersistentChains(dbm, 100)
    for _ in range(50):
        chains.advance()
    rev = reverse_ais_log_partition(dbm, chains.states(), num_betas=2000, data=data)
    assert abs(rev.log_z - exact) < 0.05, (rev.log_z, exact)


def test_ais_with_too_few_betas_visibly_fails():
    dbm = random_dbm([10, 8, 6], 3.0)
    exact = float(exact_log_partition(dbm, record=False).detach())
    crude = ais_log_partition(dbm, num_chains=100, betas=torch.linspace(0, 1, 3, dtype=torch.float64))
    assert abs(crude.log_z - exact) > 0.5


def _tv_from_exact(dbm, samples):
    v = all_states(dbm.n_visible)
    probs = torch.softmax(brute_log_unnormalized(dbm, v), 0)
    counts = torch.bincount(state_index(samples), minlength=len(v)).double()
    return 0.5 * (counts / counts.sum() - probs.detach()).abs().sum()


def test_persistent_chains_sample_the_dbm():
    dbm = random_dbm([5, 4, 3], 1.0)
    chains = PersistentChains(dbm, num_chains=500, steps=1)
    assert isinstance(chains, DBMPersistentChains)
    samples = []
    for i in range(120):
        states = chains.advance()
        if i >= 20:
            samples.append(states[0])
    assert float(_tv_from_exact(dbm, torch.cat(samples))) < 0.04
    # a sampler that ignores the second layer is measurably wrong
    wrong = DBM([5, 4])
    with torch.no_grad():
        wrong.weight_0.copy_(dbm.weight_0)
        wrong.bias_0.copy_(dbm.bias_0)
        wrong.bias_1.copy_(dbm.bias_1)
    assert float(_tv_from_exact(dbm, wrong.sample(20000, steps=50))) > 0.08


def _exact_log_likelihood(dbm, data):
    return float((brute_log_unnormalized(dbm, data) - exact_log_partition(dbm, record=False)).mean().detach())


def _dbm_model(dbm, chains, n, **kwargs):
    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", dbm.distribution(chains, **kwargs), obs=batch)

    return model


def _small_dbm_and_mixed_chains():
    """A random 5-4-3 DBM, 40 binary images and 20,000 chains run in: a negative phase close to exact."""
    dbm = random_dbm([5, 4, 3], 0.7)
    data = (torch.rand(40, 5) < 0.8).float()
    chains = PersistentChains(dbm, num_chains=20000, steps=1)
    for _ in range(50):
        chains.advance()
    return dbm, data, len(data), chains


def test_svi_gradient_is_algorithm_20_1():
    dbm, data, n, chains = _small_dbm_and_mixed_chains()
    params = [dbm.weight_0, dbm.weight_1, dbm.bias_0, dbm.bias_1, dbm.bias_2]
    bound = dbm.variational_bound(data, num_iters=200, tol=1e-8).mean()
    exact = torch.autograd.grad(-n * (bound - exact_log_partition(dbm, record=False)), params)
    model = _dbm_model(dbm, chains, n, mean_field_iters=200, mean_field_tol=1e-8)
    loss = Trace_ELBO().loss_and_grads(model, lambda batch: None, data)
    store = dict(pyro.get_param_store().named_parameters())
    names = ["weight_0", "weight_1", "bias_0", "bias_1", "bias_2"]
    svi_grads = [store[f"{dbm._pyro_name}.{k}"].grad for k in names]
    g, e = torch.cat([t.flatten() for t in svi_grads]), torch.cat([t.flatten() for t in exact])
    assert float((g - e).norm() / e.norm()) < 0.04
    # the big components individually (small ones, like bias_2's, are dominated by Monte Carlo noise)
    for name, g, e in list(zip(names, svi_grads, exact))[:3]:
        assert float((g - e).norm() / e.norm()) < 0.08, name
    assert loss == pytest.approx(float(-n * bound.detach()), rel=1e-4)  # value: the bound with log_z unset


@pytest.mark.parametrize("centered", [False, True])
def test_importance_positive_phase_is_the_exact_gradient_of_log_p(centered):
    torch.manual_seed(0)
    dbm = random_dbm([5, 4, 3], 0.8, centered=centered)
    data = (torch.rand(30, 5) < 0.7).float()
    params = list(dbm.parameters())
    exact = torch.autograd.grad(brute_log_unnormalized(dbm, data).mean(), params, allow_unused=True)
    value, means = dbm.importance_positive_phase(data, 4000, num_iters=50)
    grads = torch.autograd.grad(value.mean(), params, allow_unused=True)
    g = torch.cat([t.flatten() for t in grads if t is not None])
    e = torch.cat([t.flatten() for t in exact if t is not None])
    error = float((g - e).norm() / e.norm())
    assert error < 0.02
    assert torch.allclose(value.detach(), brute_log_unnormalized(dbm, data).detach(), atol=0.02)
    assert len(means) == 2 and means[1].shape == (30, 3)
    # the mean-field positive phase is the bound's gradient, not this one: the test can tell them apart
    bound, _ = dbm.positive_phase(data, num_iters=50)
    mf = torch.autograd.grad(bound.mean(), params, allow_unused=True)
    m = torch.cat([t.flatten() for t in mf if t is not None])
    assert float((m - e).norm() / e.norm()) > error + 0.02  # 0.034 (0.17 centered) against 0.002 (0.005)
    # one hidden layer: exact for any K
    rbm_like = random_dbm([5, 4], 0.8)
    value, _ = rbm_like.importance_positive_phase(data, 1)
    assert torch.allclose(value, brute_log_unnormalized(rbm_like, data), atol=1e-5)
    with pytest.raises(ValueError, match="num_samples"):
        dbm.importance_positive_phase(data, 0)


def test_svi_with_the_importance_positive_phase_follows_the_exact_likelihood():
    torch.manual_seed(1)
    dbm, data, n, chains = _small_dbm_and_mixed_chains()
    names = ["weight_0", "weight_1", "bias_0", "bias_1", "bias_2"]
    params = [getattr(dbm, k) for k in names]
    log_lik = (brute_log_unnormalized(dbm, data) - exact_log_partition(dbm, record=False)).mean()
    exact = torch.autograd.grad(-n * log_lik, params)
    model = _dbm_model(dbm, chains, n, mean_field_iters=50, positive_phase="importance", importance_samples=3000)
    loss = Trace_ELBO().loss_and_grads(model, lambda batch: None, data)
    store = dict(pyro.get_param_store().named_parameters())
    svi_grads = [store[f"{dbm._pyro_name}.{k}"].grad for k in names]
    g, e = torch.cat([t.flatten() for t in svi_grads]), torch.cat([t.flatten() for t in exact])
    assert float((g - e).norm() / e.norm()) < 0.05
    assert loss == pytest.approx(float(-n * brute_log_unnormalized(dbm, data).detach().mean()), rel=1e-3)
    with pytest.raises(ValueError, match="positive_phase"):
        dbm.distribution(chains, positive_phase="gibbs")
    with pytest.raises(ValueError, match="importance_samples"):
        dbm.distribution(chains, positive_phase="importance", importance_samples=0)
    d = dbm.distribution(chains, positive_phase="importance", importance_samples=7).expand((3,))
    assert (d.positive_phase, d.importance_samples) == ("importance", 7)


@pytest.mark.parametrize("centered", [False, True])
def test_svi_training_raises_the_exact_log_likelihood(centered):
    # noisy copies of four prototypes: strongly correlated pixels, far from any factorial model
    prototypes = (torch.rand(4, 10) < 0.5).float()
    noisy = prototypes[torch.randint(4, (2000,))]
    noisy = (noisy + (torch.rand(2000, 10) < 0.05).float()) % 2
    x, test = noisy[:1500], noisy[1500:]
    dbm = DBM([10, 6, 4], centered=centered).init_from_data(x)
    before = _exact_log_likelihood(dbm, test)
    chains = PersistentChains(dbm, num_chains=100, steps=1)
    svi = SVI(_dbm_model(dbm, chains, len(x)), lambda batch: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    train(svi, x, epochs=8, batch_size=50, progress=False)
    after = _exact_log_likelihood(dbm, test)
    assert after > before + 0.3, (before, after)
    bound = average_log_likelihood(dbm, test, exact_log_partition(dbm))
    assert bound <= after + 1e-6


def test_pretraining_initializes_a_better_dbm():
    x = load_digits("train")
    test = load_digits("test")[:100]
    dbm = DBM([64, 10, 6]).init_from_data(x)
    before = average_log_likelihood(dbm, test, exact_log_partition(dbm))
    histories = dbm.pretrain(x, epochs=[10, 6], batch_size=50, lr=3e-3, progress=False)
    assert [len(h) for h in histories] == [10, 6] and all(math.isfinite(v) for h in histories for v in h)
    after = average_log_likelihood(dbm, test, exact_log_partition(dbm))
    assert after > before + 1.0, (before, after)
    with pytest.raises(ValueError, match="one per RBM"):
        dbm.pretrain(x, epochs=[1, 1, 1])


def test_samples_predictive_and_float64():
    dbm = random_dbm([6, 4, 3], 0.5).double()
    chains = PersistentChains(dbm, 10)
    model = _dbm_model(dbm, chains, 10)
    draws = Predictive(model, num_samples=3)(torch.zeros(10, 6, dtype=torch.float64))["x"]
    assert draws.shape == (3, 10, 6) and draws.dtype == torch.float64 and ((draws == 0) | (draws == 1)).all()
    assert dbm.sample(7, steps=3).shape == (7, 6)
    assert dbm.variational_bound(draws[0]).dtype == torch.float64


def _snapshot(dbm, chains):
    return [t.detach().clone() for t in [*dbm.parameters(), *dbm.offsets(), chains.state]]


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.full((10, 12), 0.5), "Bernoulli visible units need values in \\{0, 1\\}"),
        (torch.zeros(10, 11), "n_visible=12"),
        (torch.full((10, 12), float("nan")), "NaN or inf"),
    ],
)
@pytest.mark.parametrize("centered", [False, True])
def test_bad_data_raises_and_loses_nothing(bad, match, centered):
    dbm = DBM([12, 5, 3], centered=centered)
    chains = PersistentChains(dbm, 20)
    svi = SVI(_dbm_model(dbm, chains, 100), lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step((torch.rand(10, 12) < 0.5).float())
    before, standard = (
        _snapshot(dbm, chains),
        [t.detach().clone() for t in [*dbm.params().weights, *dbm.params().biases]],
    )
    with pytest.raises(ValueError, match=match) as info:
        svi.step(bad)
    assert "site 'x'" in str(info.value)
    if centered:
        # the offset move owed by the last good step is applied (an exact reparametrization), nothing else
        after = [*dbm.params().weights, *dbm.params().biases]
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(standard, after))
        assert torch.equal(before[-1], chains.state)
    else:
        for a, b in zip(before, _snapshot(dbm, chains)):
            assert torch.equal(a, b)


def test_wrong_negative_phase_and_divergence():
    dbm = DBM([12, 5, 3])
    with pytest.raises(TypeError, match="PersistentChains"):
        dbm.distribution(ContrastiveDivergence(dbm))
    chains = PersistentChains(dbm, 20)
    with torch.no_grad():
        dbm.weight_1[0, 0] = float("nan")
    svi = SVI(_dbm_model(dbm, chains, 100), lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    with pytest.raises(DivergenceError, match="DBM"):
        svi.step((torch.rand(10, 12) < 0.5).float())
    with pytest.raises(ValueError, match="at least two"):
        DBM([5])


@pytest.mark.parametrize("centered", [False, True])
def test_checkpoint_resumes_exactly(tmp_path, centered):
    x = load_digits("train")[:200, :16].contiguous()

    def make():
        pyro.clear_param_store()
        dbm = DBM([16, 6, 4], centered=centered, name="dbm").init_from_data(x)
        chains = PersistentChains(dbm, 20)
        optim = pyro.optim.Adam({"lr": 1e-2})
        return dbm, chains, optim, SVI(_dbm_model(dbm, chains, len(x)), lambda b: None, optim, Trace_ELBO())

    dbm, chains, optim, svi = make()
    for i in range(3):
        svi.step(x[i * 20 : (i + 1) * 20])
    save_checkpoint(tmp_path / "ck.pt", {"dbm": dbm, "chains": chains}, optim)
    expected = [svi.step(x[i * 20 : (i + 1) * 20]) for i in range(3, 6)]
    final = [p.detach().clone() for p in dbm.parameters()]

    dbm, chains, optim, svi = make()
    svi.step(x[:20])  # creates the optimizer state that the checkpoint overwrites
    load_checkpoint(tmp_path / "ck.pt", {"dbm": dbm, "chains": chains}, optim)
    resumed = [svi.step(x[i * 20 : (i + 1) * 20]) for i in range(3, 6)]
    assert resumed == expected
    for a, b in zip(final, dbm.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dbm_runs_on_cuda():
    dbm = random_dbm([8, 6, 4], 0.5, centered=True).cuda()
    chains = PersistentChains(dbm, 50)
    x = torch.bernoulli(torch.full((40, 8), 0.5, device="cuda"))
    svi = SVI(_dbm_model(dbm, chains, 40), lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    train(svi, x, epochs=2, batch_size=20, progress=False)
    assert chains.state.is_cuda
    exact = float(exact_log_partition(dbm).detach())
    assert abs(ais_log_partition(dbm, 100, 2000).log_z - exact) < 0.1
    dbm.pretrain(x, epochs=1, progress=False)


@pytest.mark.parametrize("centered", [False, True])
def test_autocast_loss_trains_a_dbm_exactly_as_float32_does(centered):
    """``AutocastLoss(Trace_ELBO(), "cpu")`` leaves a DBM's training in full precision, as an RBM's: the
    parameters and the chains after training are bit-identical to float32's. With the mean field and the sweeps
    in bfloat16, a 784-500-1000 DBM ended 8 nats behind float32 on MNIST, a loss that this 10-6-4 model did not
    show."""
    prototypes = (torch.rand(4, 10, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    noisy = prototypes[torch.randint(4, (2000,), generator=torch.Generator().manual_seed(2))]
    noisy = (noisy + (torch.rand(2000, 10, generator=torch.Generator().manual_seed(3)) < 0.05).float()) % 2
    x = noisy[:1500]
    runs = {}
    for autocast in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(0)
        dbm = DBM([10, 6, 4], centered=centered).init_from_data(x)
        init = dbm.weight_0.detach().clone()
        chains = PersistentChains(dbm, num_chains=100, steps=1)
        loss = AutocastLoss(Trace_ELBO(), "cpu") if autocast else Trace_ELBO()
        svi = SVI(_dbm_model(dbm, chains, len(x)), lambda b: None, pyro.optim.Adam({"lr": 1e-2}), loss)
        train(svi, x, epochs=3, batch_size=50, progress=False)
        assert chains.state.dtype == torch.float32 and all(p.dtype == torch.float32 for p in dbm.parameters())
        runs[autocast] = ([t.detach().clone() for t in [*dbm.parameters(), *dbm.buffers()]], chains.state.clone())
        assert (dbm.weight_0 - init).abs().max() > 1e-2  # it trained
    (full, full_chains), (low, low_chains) = runs[False], runs[True]
    assert all(torch.equal(a, b) for a, b in zip(full, low)) and torch.equal(full_chains, low_chains)


def test_a_backward_pass_under_autocast_is_refused():
    """Autocast around ``svi.step`` would round the SML gradient to noise (a DBM trained so gains nothing): the
    backward pass raises, before the optimizer steps. Scores under autocast stay in float32."""
    x = (torch.rand(60, 6, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    dbm = DBM([6, 4, 3]).init_from_data(x)
    chains = PersistentChains(dbm, num_chains=20, steps=1)
    svi = SVI(_dbm_model(dbm, chains, len(x)), lambda b: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    before = [p.detach().clone() for p in dbm.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="AutocastLoss"):
        svi.step(x[:20])
    assert all(torch.equal(a, b) for a, b in zip(before, dbm.parameters()))
    assert chains.state.dtype == torch.float32
    full = dbm.unnormalized_log_prob(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(dbm.unnormalized_log_prob(x), full)
        assert dbm.sample(5, steps=2).dtype == torch.float32


@pytest.mark.parametrize("gaussian", [False, True])
@pytest.mark.parametrize("copies", [(2, 1), (1, 2), (1, 1)])
def test_centered_tied_copies_rbm_is_its_standard_form_and_recentering_keeps_it(copies, gaussian):
    """A centered ``TiedCopiesRBM`` (random offsets and parameters) is the uncentered RBM of ``standard_params``:
    free energies equal up to one constant over all inputs, and the same conditionals (``up`` and the visible
    means of a Gibbs sweep, by fixed random numbers); ``recenter`` moves the offsets and leaves that RBM unchanged."""
    from dgm_ppl.energy.dbm_pretraining import TiedCopiesRBM

    torch.manual_seed(0)
    kv, kh = copies
    std = torch.rand(5).double() + 0.5 if gaussian else None
    rbm = TiedCopiesRBM(5, 3, kv, kh, std, centered=True).double()
    plain = TiedCopiesRBM(5, 3, kv, kh, std).double()
    with torch.no_grad():
        for p in rbm.parameters():
            p.copy_(torch.randn_like(p))
        rbm.visible_offset.copy_(torch.rand(5))
        rbm.hidden_offset.copy_(torch.rand(3))

    def same_model():
        with torch.no_grad():
            for p, q in zip(plain.parameters(), rbm.standard_params()):
                p.copy_(q)
        v = torch.randn(6, 5).double() if gaussian else (torch.rand(6, 5) < 0.5).double()
        copies_v = torch.stack([v] + [v.roll(1, 0)] * (kv - 1))
        diff = rbm.neg_free_energy(copies_v) - plain.neg_free_energy(copies_v)
        torch.testing.assert_close(diff, diff[:1].expand(6))
        torch.testing.assert_close(rbm.up(v), plain.up(v))
        torch.manual_seed(1)
        a = rbm.gibbs(copies_v)
        torch.manual_seed(1)
        torch.testing.assert_close(a, plain.gibbs(copies_v))
        return rbm.standard_params()

    before = same_model()
    rbm.recenter(torch.rand(5).double(), torch.rand(3).double(), rate=0.3)
    after = same_model()
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="centered=True"):
        plain.recenter(hidden_offset=torch.rand(3).double())


def test_centered_pretraining_initializes_a_better_dbm():
    """The pretraining in the centered parametrization: the DBM it initializes is better than the untrained one by
    the exact likelihood (as the uncentered pretraining's test), and it is a different run from the uncentered one."""
    x = load_digits("train")
    test = load_digits("test")[:100]
    dbm = DBM([64, 10, 6]).init_from_data(x)
    before = average_log_likelihood(dbm, test, exact_log_partition(dbm))
    torch.manual_seed(0)
    dbm.pretrain(x, epochs=[10, 6], batch_size=50, lr=3e-3, centered=True, progress=False)
    after = average_log_likelihood(dbm, test, exact_log_partition(dbm))
    assert after > before + 1.0, (before, after)
    other = DBM([64, 10, 6]).init_from_data(x)
    torch.manual_seed(0)
    other.pretrain(x, epochs=[10, 6], batch_size=50, lr=3e-3, progress=False)
    assert not torch.equal(other.weight_1, dbm.weight_1)


@pytest.mark.parametrize("centered", [False, True])
def test_grow_from_rbm_keeps_the_rbms_marginal_and_bound(centered):
    """A DBM grown from an RBM with top_std=0 has the RBM's p(v) (by enumeration) and a tight mean-field bound;
    with top_std > 0 it stays close, the top units break symmetry, and bad input is refused before any change."""
    torch.manual_seed(0)
    rbm = BernoulliRBM(6, 4, centered=centered)
    with torch.no_grad():
        for p in rbm.parameters():
            p.normal_(0, 1.0)
        if centered:
            rbm.visible_offset.uniform_(0.2, 0.8)
            rbm.hidden_offset.uniform_(0.2, 0.8)
    v = all_states(6, rbm.weight)
    rbm_log_p = rbm.unnormalized_log_prob(v) - torch.logsumexp(rbm.unnormalized_log_prob(v), 0)

    dbm = DBM([6, 4, 3], centered=centered)
    assert dbm.grow_from_rbm(rbm, top_std=0.0, data=v[torch.randperm(64)[:40]]) is dbm
    dbm_log_p = brute_log_unnormalized(dbm, v) - brute_log_z(dbm)
    assert torch.allclose(dbm_log_p, rbm_log_p, atol=1e-5)
    assert torch.allclose(dbm.variational_bound(v, num_iters=50) - brute_log_z(dbm), rbm_log_p, atol=1e-4)

    grown = DBM([6, 4, 3], centered=centered).grow_from_rbm(
        rbm, top_std=0.05, generator=torch.Generator().manual_seed(1)
    )
    grown_log_p = brute_log_unnormalized(grown, v) - brute_log_z(grown)
    gap = (grown_log_p - rbm_log_p).abs().max()
    assert 0 < gap < 0.05
    assert torch.unique(grown.weight_1, dim=1).shape[1] == 3  # the top units differ

    one_layer = DBM([6, 4], centered=centered).grow_from_rbm(rbm, data=v)  # the RBM itself
    assert torch.allclose(brute_log_unnormalized(one_layer, v) - brute_log_z(one_layer), rbm_log_p, atol=1e-5)

    before = {k: t.clone() for k, t in dbm.state_dict().items() if torch.is_tensor(t)}
    for bad, kwargs, match in [
        (DBM([6, 5, 3]), {}, r"the RBM is \(6, 4\)"),
        (dbm, {"top_std": -1.0}, "top_std"),
        (dbm, {"top_std": float("nan")}, "top_std"),
    ]:
        with pytest.raises(ValueError, match=match):
            bad.grow_from_rbm(rbm, **kwargs)
    assert all(torch.equal(before[k], t) for k, t in dbm.state_dict().items() if torch.is_tensor(t))
