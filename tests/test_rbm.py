"""RBM energies, free energies, conditionals and exact partition functions against enumeration."""

import math

import pytest
import torch
from conftest import random_rbm
from helpers import all_states, exact_visible_probs, state_index

from dgm_ppl.energy import (
    BernoulliRBM,
    GaussianBernoulliRBM,
    ParallelTempering,
    PersistentChains,
    exact_log_partition,
)


def _bernoulli(centered=False):
    rbm = random_rbm(BernoulliRBM, 6, 5, centered=centered)
    if centered:
        with torch.no_grad():
            rbm.visible_offset.uniform_(0.1, 0.9)
            rbm.hidden_offset.uniform_(0.1, 0.9)
    return rbm


@pytest.mark.parametrize("centered", [False, True])
def test_free_energy_is_log_sum_over_hidden(centered):
    rbm = _bernoulli(centered)
    v = all_states(6)
    h = all_states(5)
    e = rbm.energy(v[:, None].expand(-1, 32, -1), h[None].expand(64, -1, -1))
    assert e.shape == (64, 32)
    expected = -torch.logsumexp(-e, 1)
    torch.testing.assert_close(rbm.free_energy(v), expected, atol=1e-5, rtol=1e-5)


def test_energy_is_batched_and_matches_formula():
    rbm = _bernoulli()
    v, h = all_states(6)[:7], all_states(5)[3:10]
    e = rbm.energy(v, h)
    assert e.shape == (7,)
    manual = -(v @ rbm.visible_bias + h @ rbm.hidden_bias + ((v @ rbm.weight) * h).sum(-1))
    torch.testing.assert_close(e, manual)


def test_centering_keeps_the_distribution_when_offsets_move():
    rbm = _bernoulli(centered=True)
    v = all_states(6)
    before = -rbm.free_energy(v) - exact_log_partition(rbm)
    rbm.update_hidden_offset(torch.rand(5))
    after = -rbm.free_energy(v) - exact_log_partition(rbm)
    torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("centered", [False, True])
def test_bernoulli_conditionals_match_enumeration(centered):
    rbm = _bernoulli(centered)
    v, h = all_states(6), all_states(5)
    joint = -rbm.energy(v[:, None].expand(-1, 32, -1), h[None].expand(64, -1, -1))  # (64, 32)
    p_h_given_v = torch.softmax(joint, 1)
    expected_h = p_h_given_v @ h  # E[h | v]
    torch.testing.assert_close(rbm.hidden_given_visible(v).mean, expected_h, atol=1e-5, rtol=1e-5)
    p_v_given_h = torch.softmax(joint, 0)
    expected_v = p_v_given_h.T @ v
    torch.testing.assert_close(rbm.visible_given_hidden(h).mean, expected_v, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("enumerate_visible", [False, True])
@pytest.mark.parametrize("centered", [False, True])
def test_exact_log_partition_bernoulli(enumerate_visible, centered):
    rbm = random_rbm(BernoulliRBM, 5 if enumerate_visible else 7, 6, centered=centered)
    v, h = all_states(rbm.n_visible), all_states(rbm.n_hidden)
    e = rbm.energy(v[:, None].expand(-1, len(h), -1), h[None].expand(len(v), -1, -1))
    brute = torch.logsumexp(-e.flatten(), 0)
    log_z = exact_log_partition(rbm)
    torch.testing.assert_close(log_z, brute, atol=1e-4, rtol=1e-5)
    assert rbm.log_z == pytest.approx(float(brute.detach()), abs=1e-4)


def test_exact_log_partition_refuses_large_layers():
    rbm = BernoulliRBM(30, 25)
    with pytest.raises(ValueError, match="2\\^25 states of the hidden layer"):
        exact_log_partition(rbm)
    assert exact_log_partition(BernoulliRBM(30, 12)).isfinite()


def _gaussian_rbm(learn_std=False):
    rbm = GaussianBernoulliRBM(2, 3, std=torch.tensor([0.7, 1.3]), learn_std=learn_std)
    with torch.no_grad():
        rbm.weight.normal_(0, 0.8)
        rbm.visible_bias.normal_(0, 1)
        rbm.hidden_bias.normal_(0, 1)
    return rbm


def _grid(n=801, lim=12.0):
    g = torch.linspace(-lim, lim, n, dtype=torch.float64)
    vv = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return vv, (g[1] - g[0]) ** 2


@pytest.mark.parametrize("learn_std", [False, True])
def test_gaussian_rbm_against_numerical_integration(learn_std):
    rbm = _gaussian_rbm(learn_std).double()
    vv, cell = _grid()
    h = all_states(3, torch.zeros((), dtype=torch.float64))
    neg_e = -rbm.energy(vv[:, None].expand(-1, 8, -1), h[None].expand(len(vv), -1, -1))  # (G, 8)
    # free energy: log sum over h
    torch.testing.assert_close(-rbm.free_energy(vv), torch.logsumexp(neg_e, 1))
    # log Z: sum over h, integral over v
    log_z_numeric = torch.logsumexp(neg_e.flatten(), 0) + math.log(cell)
    torch.testing.assert_close(exact_log_partition(rbm), log_z_numeric, atol=1e-6, rtol=1e-6)
    # p(v | h): mean and variance by numerical integration
    w = torch.softmax(neg_e, 0)  # (G, 8), normalized over the grid for each h
    mean = w.T @ vv
    var = w.T @ vv**2 - mean**2
    cond = rbm.visible_given_hidden(h)
    torch.testing.assert_close(cond.mean, mean, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(cond.variance, var, atol=1e-6, rtol=1e-6)
    # p(h | v) by enumeration
    pts = vv[::9973][:20]
    joint = -rbm.energy(pts[:, None].expand(-1, 8, -1), h[None].expand(len(pts), -1, -1))
    torch.testing.assert_close(rbm.hidden_given_visible(pts).mean, torch.softmax(joint, 1) @ h)


def test_gibbs_samples_match_exact_distribution():
    rbm = random_rbm(BernoulliRBM, 5, 4)
    probs, _ = exact_visible_probs(rbm)
    v = rbm.sample(20000, steps=50)
    counts = torch.bincount(state_index(v), minlength=32).float() / len(v)
    tv = 0.5 * (counts - probs).abs().sum()
    assert tv < 0.03, tv
    # a sampler that ignored the hidden units would be far off: the test can fail
    wrong = torch.bernoulli(torch.sigmoid(rbm.visible_bias).expand(20000, -1))
    wrong_counts = torch.bincount(state_index(wrong), minlength=32).float() / len(v)
    assert 0.5 * (wrong_counts - probs).abs().sum() > 0.1


def test_gaussian_gibbs_matches_exact_moments():
    rbm = _gaussian_rbm().double()
    vv, cell = _grid(401)
    p = torch.softmax(-rbm.free_energy(vv), 0)
    v = rbm.sample(20000, steps=40)
    torch.testing.assert_close(v.mean(0), p @ vv, atol=0.05, rtol=0)
    torch.testing.assert_close(v.var(0), p @ vv**2 - (p @ vv) ** 2, atol=0.08, rtol=0)


def test_persistent_chains_and_tempering_reach_the_model():
    rbm = random_rbm(BernoulliRBM, 5, 4, scale=1.5)
    probs, _ = exact_visible_probs(rbm)
    for chains in (PersistentChains(rbm, 5000, steps=1), ParallelTempering(rbm, 5000, betas=6)):
        for _ in range(60):
            v = chains.advance()
            if isinstance(chains, PersistentChains):  # the stored hidden sample, as in training
                chains.after_negative_phase(v @ rbm.weight + rbm.hidden_bias)
        counts = torch.bincount(state_index(v), minlength=32).float() / len(v)
        assert 0.5 * (counts - probs).abs().sum() < 0.04
    assert ((chains.swap_rate > 0) & (chains.swap_rate <= 1)).all()


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="n_hidden"):
        BernoulliRBM(5, 0)
    with pytest.raises(ValueError, match="std"):
        GaussianBernoulliRBM(3, 2, std=0.0)
    rbm = BernoulliRBM(4, 3)
    with pytest.raises(ValueError, match="shape"):
        PersistentChains(rbm, 10, init=torch.zeros(10, 5))
    with pytest.raises(ValueError, match="betas"):
        ParallelTempering(rbm, 10, betas=torch.tensor([0.0, 0.5]))
