"""The spike-and-slab RBM against quadrature and enumeration on tiny models, and its training (issue 16)."""

import math

import numpy as np
import pyro
import pytest
import torch
from helpers import all_states
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.energy import (
    EnergyBasedDistribution,
    FreeEnergyModel,
    ParallelTempering,
    PersistentChains,
    ais_log_partition,
    exact_log_partition,
)
from dgm_ppl.energy.protocol import AnnealingPath, Enumeration
from dgm_ppl.energy.spike_slab_rbm import SpikeSlabParams, SpikeSlabRBM

D, NH = 2, 3


def assert_close(actual, expected, rtol=1e-6, atol=1e-8):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


def random_ssrbm(d=D, nh=NH, scale=0.6, bounded=True, seed=0):
    torch.manual_seed(seed)
    rbm = SpikeSlabRBM(d, nh, init_std=scale, bounded_precision=bounded).double()
    with torch.no_grad():
        rbm.hidden_bias.normal_(0, 0.5)
        rbm.slab_mean.normal_(0, 0.5)
        rbm.visible_bias.normal_(0, 0.5)
        rbm.log_slab_precision.normal_(0, 0.3)
        rbm.log_precision.normal_(0, 0.3)
    return rbm


def grid(lo, hi, n):
    g = torch.linspace(lo, hi, n, dtype=torch.float64)
    return g, float(g[1] - g[0])


def log_q_by_quadrature(rbm, v, nh):
    """log of the integral over the slabs of exp(-E(v, s, h)), for every v and every spike state h: shape (V, 2^nh)."""
    g, ds = grid(-14, 14, 281)
    s = torch.cartesian_prod(*([g] * nh)) if nh > 1 else g[:, None]  # (S, nh)
    hs = all_states(nh, s)
    out = torch.empty(len(v), len(hs), dtype=torch.float64)
    with torch.no_grad():
        for k, h in enumerate(hs):
            e = rbm.energy([v[:, None, :], s, h.expand(len(s), -1)])  # (V, S)
            out[:, k] = torch.logsumexp(-e, 1) + nh * math.log(ds)
    return out, hs


def exact_mixture(rbm):
    """p(v) as a mixture over the spike states: weights, means, covariances (closed form)."""
    plan = rbm.enumeration()
    hs = all_states(rbm.n_hidden, plan.like)
    with torch.no_grad():
        w = torch.softmax(plan.log_marginal(hs), 0)
        mvn = rbm.visible_given_hidden(hs)
    return w, mvn.mean, mvn.covariance_matrix


def test_is_a_free_energy_model_with_the_protocol_members():
    rbm = random_ssrbm()
    assert isinstance(rbm, FreeEnergyModel)
    assert isinstance(rbm.annealing_path(), AnnealingPath)
    assert isinstance(rbm.enumeration(), Enumeration)
    assert isinstance(rbm.params(), SpikeSlabParams)
    assert rbm.min_precision_eigenvalue() > 0


def test_free_energy_and_spike_probabilities_match_quadrature_over_the_slabs():
    rbm = random_ssrbm(d=2, nh=2, scale=0.8)
    torch.manual_seed(1)
    v = torch.randn(4, 2, dtype=torch.float64) * 1.5
    log_q, hs = log_q_by_quadrature(rbm, v, 2)
    with torch.no_grad():
        assert_close(rbm.unnormalized_log_prob(v), torch.logsumexp(log_q, 1), rtol=1e-8, atol=1e-8)
        assert_close(-rbm.free_energy(v), torch.logsumexp(log_q, 1), rtol=1e-8, atol=1e-8)
        post = torch.softmax(log_q, 1)  # p(h | v)
        assert_close(rbm.hidden_probs(v), post @ hs, rtol=1e-7, atol=1e-9)
        assert_close(rbm.hidden_given_visible(v).mean, post @ hs, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("nh", [3, 1])  # direct factorization; Woodbury (fewer spikes than visible units)
def test_log_partition_matches_a_grid_over_v(nh):
    rbm = random_ssrbm(d=2, nh=nh)
    g, dv = grid(-14, 14, 1001)
    v = torch.cartesian_prod(g, g)
    with torch.no_grad():
        by_grid = torch.logsumexp(rbm.unnormalized_log_prob(v), 0) + 2 * math.log(dv)
    log_z = exact_log_partition(rbm)
    assert log_z.requires_grad
    assert abs(float(log_z.detach()) - float(by_grid)) < 1e-7
    assert rbm.log_z == pytest.approx(float(log_z.detach()))
    # and normalized: log_prob integrates to one on the grid
    with torch.no_grad():
        assert float(torch.logsumexp(rbm.log_prob(v), 0) + 2 * math.log(dv)) == pytest.approx(0.0, abs=1e-7)


def test_log_partition_in_one_dimension_with_a_free_precision():
    rbm = random_ssrbm(d=1, nh=2, bounded=False)
    assert rbm.min_precision_eigenvalue() > 0
    g, dv = grid(-30, 30, 20001)
    with torch.no_grad():
        by_grid = torch.logsumexp(rbm.unnormalized_log_prob(g[:, None]), 0) + math.log(dv)
    assert float(exact_log_partition(rbm).detach()) == pytest.approx(float(by_grid), abs=1e-8)


def test_log_partition_by_woodbury_matches_dense_gaussian_integrals():
    rbm = random_ssrbm(d=5, nh=3, scale=0.5)
    p = rbm.params()
    hs = all_states(3, p.weight)
    terms = []
    with torch.no_grad():
        for h in hs:
            prec = rbm.visible_precision(h)
            m = p.visible_bias + p.weight @ (h * p.slab_mean)
            gauss = 0.5 * (5 * math.log(2 * math.pi) - torch.logdet(prec) + m @ torch.linalg.solve(prec, m))
            terms.append(h @ p.hidden_bias + gauss + 0.5 * (math.log(2 * math.pi) - p.slab_precision.log()).sum())
        expected = torch.logsumexp(torch.stack(terms), 0)
    assert_close(exact_log_partition(rbm).detach(), expected, rtol=1e-10)
    # the Woodbury mean of p(v | h) is the dense one
    with torch.no_grad():
        mvn = rbm.visible_given_hidden(hs)
        dense = torch.linalg.solve(
            rbm.visible_precision(hs), (p.visible_bias + (hs * p.slab_mean) @ p.weight.T)[..., None]
        )
        assert_close(mvn.mean, dense.squeeze(-1), rtol=1e-9, atol=1e-12)


def test_slab_and_visible_conditionals_are_the_closed_forms_of_the_energy():
    rbm = random_ssrbm()
    p = rbm.params()
    torch.manual_seed(2)
    v = torch.randn(5, D, dtype=torch.float64)
    h = torch.bernoulli(torch.full((5, NH), 0.5, dtype=torch.float64))
    # p(s | v, h): the energy is stationary in s at the mean, with curvature alpha
    s_dist = rbm.slab_given(v, h)
    s = s_dist.mean.detach().clone().requires_grad_(True)
    (grad_s,) = torch.autograd.grad(rbm.energy([v, s, h]).sum(), s)
    assert_close(grad_s, torch.zeros_like(grad_s), atol=1e-10)
    assert_close(s_dist.base_dist.scale**-2, p.slab_precision.detach().expand(5, NH))
    # p(v | s, h): stationary in v at the mean, curvature Lambda
    s = torch.randn(5, NH, dtype=torch.float64)
    v_dist = rbm.visible_given_slab(s, h)
    v0 = v_dist.mean.detach().clone().requires_grad_(True)
    (grad_v,) = torch.autograd.grad(rbm.energy([v0, s, h]).sum(), v0)
    assert_close(grad_v, torch.zeros_like(grad_v), atol=1e-10)
    assert_close(v_dist.base_dist.scale**-2, p.precision.detach().expand(5, D))


def test_visible_given_spikes_is_the_slab_integrated_conditional():
    rbm = random_ssrbm(d=2, nh=2, scale=0.8)
    torch.manual_seed(3)
    v = torch.randn(6, 2, dtype=torch.float64)
    log_q, hs = log_q_by_quadrature(rbm, v, 2)
    with torch.no_grad():
        for k, h in enumerate(hs):
            diff = log_q[:, k] - rbm.visible_given_hidden(h).log_prob(v)
            assert float(diff.max() - diff.min()) < 1e-7  # equal up to the normalizer of p(v | h)


@pytest.mark.parametrize("d, nh", [(2, 3), (3, 2)])
def test_gibbs_samples_match_the_exact_moments(d, nh):
    rbm = random_ssrbm(d=d, nh=nh, scale=0.7)
    w, means, covs = exact_mixture(rbm)
    mean = w @ means
    second = (w[:, None, None] * (covs + means[:, :, None] * means[:, None, :])).sum(0)
    cov = second - torch.outer(mean, mean)
    torch.manual_seed(4)
    n = 4000
    for sweep in ("gibbs", "collapsed"):
        v = rbm.random_state(n)
        for _ in range(60):
            v = rbm.gibbs(v, 1) if sweep == "gibbs" else rbm.sample_visible(rbm.sample_hidden(v))
        se = (torch.diagonal(cov) / n).sqrt()
        assert ((v.mean(0) - mean).abs() < 5 * se).all(), (sweep, v.mean(0), mean)
        emp = torch.cov(v.T)
        assert torch.allclose(emp, cov, rtol=0.12, atol=0.05 * float(torch.diagonal(cov).max())), (sweep, emp, cov)


def test_sml_gradient_with_an_exact_negative_phase_is_the_log_likelihood_gradient():
    rbm = random_ssrbm(d=1, nh=2)
    torch.manual_seed(5)
    data = torch.randn(7, 1, dtype=torch.float64)
    # an exact negative phase in one dimension: the quantiles of p(v), from its CDF on a fine grid
    g, dv = grid(-25, 25, 200001)
    with torch.no_grad():
        logp = rbm.unnormalized_log_prob(g[:, None])
        cdf = torch.cumsum(torch.softmax(logp, 0), 0)
    c = 20000
    quantiles = (torch.arange(c, dtype=torch.float64) + 0.5) / c
    negatives = g[torch.searchsorted(cdf, quantiles)][:, None]
    out, s, probs = rbm.sml_terms(torch.cat([data, negatives]), len(data))
    assert out.shape == (7,) and probs.shape == (7 + c, 2) and not s.requires_grad
    params = [t for t in rbm.parameters()]
    sml = torch.autograd.grad(out.sum(), params)
    exact = torch.autograd.grad(rbm.unnormalized_log_prob(data).sum() - len(data) * exact_log_partition(rbm), params)
    for a, b in zip(sml, exact):
        assert torch.allclose(a, b, rtol=2e-3, atol=2e-3), (a, b)


def test_ais_and_parallel_tempering_on_the_annealing_path():
    rbm = random_ssrbm()
    exact = float(exact_log_partition(rbm, record=False).detach())
    torch.manual_seed(6)
    data = rbm.sample(200, steps=50)
    res = ais_log_partition(rbm, num_chains=100, num_betas=500, data=data, record=False)
    assert abs(res.log_z - exact) < max(4 * res.stderr, 0.03), (res.log_z, exact, res.stderr)
    # the tempered path starts at the base model, whose log Z is the base log partition
    betas0 = torch.zeros((), dtype=torch.float64)
    g, dv = grid(-14, 14, 801)
    v = torch.cartesian_prod(g, g)
    a = torch.tensor([0.3, -0.2], dtype=torch.float64)
    with torch.no_grad():
        lp0 = torch.logsumexp(rbm.tempered_log_prob(v, float(betas0), a), 0) + 2 * math.log(dv)
        assert float(lp0) == pytest.approx(float(rbm.base_log_partition(a)), abs=1e-7)
    pt = ParallelTempering(rbm, num_chains=20, steps=2, betas=5)
    assert pt.advance().shape == (20, D)
    assert torch.isfinite(pt.state).all()


def test_improper_model_is_refused():
    rbm = random_ssrbm(d=2, nh=2, bounded=False)
    with torch.no_grad():
        rbm.weight.mul_(20.0)
    assert rbm.min_precision_eigenvalue() < 0
    with pytest.raises(ValueError, match="improper"):
        exact_log_partition(rbm)
    with pytest.raises(ValueError, match="improper"):
        rbm.sample_visible(torch.ones(3, 2, dtype=torch.float64))
    rbm.bounded_precision = True  # the same weights, with the bounded precision, are proper
    assert rbm.min_precision_eigenvalue() > 0
    assert torch.isfinite(exact_log_partition(rbm))


def test_svi_training_with_persistent_chains_raises_the_exact_log_likelihood():
    pyro.set_rng_seed(7)
    pyro.clear_param_store()
    # an X: two directions of high variance, each switched on by a spike and scaled by its slab
    n = 400
    which = torch.rand(n, 1) < 0.5
    dirs = torch.where(which, torch.tensor([1.0, 1.0]), torch.tensor([1.0, -1.0])) / math.sqrt(2)
    x = 2 * torch.randn(n, 1) * dirs + 0.2 * torch.randn(n, 2)
    x = (x - x.mean(0)) / x.std(0)
    rbm = SpikeSlabRBM(2, 4, init_std=0.5).init_from_data(x)

    def avg_ll():
        with torch.no_grad():
            return float(rbm.unnormalized_log_prob(x).mean() - exact_log_partition(rbm, record=False))

    before = avg_ll()
    chains = PersistentChains(rbm, num_chains=100, init=x[:100])

    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    svi = SVI(model, lambda batch: None, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    for _ in range(100):
        idx = torch.randint(0, n, (100,))
        loss = svi.step(x[idx])
        assert math.isfinite(loss)
    after = avg_ll()
    assert after > before + 0.15, (before, after)  # about +0.35 nats (seeds 7 to 9)
    assert isinstance(rbm.distribution(chains), EnergyBasedDistribution)
    assert rbm.distribution(chains).sample((5,)).shape == (5, 2)


def test_bad_input_numpy_input_and_state_dict_round_trip(tmp_path):
    rbm = random_ssrbm()
    chains = PersistentChains(rbm, num_chains=10)
    d = rbm.distribution(chains)
    with pytest.raises(ValueError, match="value: expected the last dimension to be n_visible=2"):
        d.log_prob(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="value: values contain NaN"):
        d.log_prob(torch.tensor([[0.0, float("nan")]], dtype=torch.float64))
    with pytest.raises(ValueError, match="init_from_data\\(data\\): values contain NaN or inf"):
        rbm.init_from_data(np.array([[1.0, np.inf]]))
    with pytest.raises(ValueError, match="init must have shape"):
        PersistentChains(rbm, num_chains=2, init=torch.zeros(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="h: expected the last dimension to be n_hidden=3"):
        rbm.visible_given_hidden(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="states"):
        rbm.energy([torch.zeros(2)])
    with pytest.raises(ValueError, match="n_hidden must be an int"):
        SpikeSlabRBM(2, 0)
    with pytest.raises(ValueError, match="precision must be positive"):
        SpikeSlabRBM(2, 2, precision=-1.0)
    # NumPy input
    x = np.random.default_rng(0).normal(size=(4, D))
    with torch.no_grad():
        assert_close(rbm.unnormalized_log_prob(x), rbm.unnormalized_log_prob(torch.as_tensor(x)))
        assert_close(d.log_prob(torch.as_tensor(x)), rbm.unnormalized_log_prob(torch.as_tensor(x)))
    # state_dict round trip (with log_z)
    exact_log_partition(rbm)
    path = tmp_path / "ssrbm.pt"
    torch.save(rbm.state_dict(), path)
    other = SpikeSlabRBM(D, NH).double()
    other.load_state_dict(torch.load(path))
    assert other.log_z == rbm.log_z
    with torch.no_grad():
        assert_close(other.unnormalized_log_prob(x), rbm.unnormalized_log_prob(x))
