"""Fast-weights PCD (FastPersistentChains): its gradient, its update, its sampling, its checkpoint."""

import numpy as np
import pytest
import torch
from conftest import random_rbm

from dgm_ppl.energy import (
    DBM,
    BernoulliRBM,
    FastPersistentChains,
    FastWeightModel,
    GaussianBernoulliRBM,
    PersistentChains,
)


def _rows(rbm, n, c):
    if rbm.binary_visible:
        return torch.bernoulli(torch.full((n + c, rbm.n_visible), 0.4))
    return torch.randn(n + c, rbm.n_visible)


@pytest.mark.parametrize(
    "cls, centered", [(BernoulliRBM, False), (BernoulliRBM, True), (GaussianBernoulliRBM, False)], ids=str
)
def test_sml_gradient_is_the_standard_form_gradient(cls, centered):
    torch.manual_seed(0)
    rbm = random_rbm(cls, 6, 4, scale=0.7)
    if centered:
        rbm.centered = True
        with torch.no_grad():
            rbm.visible_offset.uniform_(0.2, 0.8)
            rbm.hidden_offset.uniform_(0.2, 0.8)
    assert isinstance(rbm, FastWeightModel)
    v, n = _rows(rbm, 5, 7), 5
    p = rbm.params()
    probs = torch.sigmoid(rbm.hidden_preactivation(v, params=p)).detach()
    grads = rbm.sml_gradient(v, probs, n, params=p)
    # autograd through a zero shift of the standard-form parameters: d/d(shift) of mean_data(-F) - mean_chains(-F)
    zeros = [torch.zeros_like(t, requires_grad=True) for t in (p.weight, p.visible_bias, p.hidden_bias)]
    neg_free = rbm.unnormalized_log_prob(v, params=rbm.shifted_params(p, zeros))
    exact = torch.autograd.grad(neg_free[:n].mean() - neg_free[n:].mean(), zeros, retain_graph=True)
    for g, e in zip(grads, exact):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-5)
    # the sign and the weights matter: the sum of both phases is another gradient
    assert (grads[0] - torch.autograd.grad(neg_free.mean(), zeros[0])[0]).abs().max() > 1e-3


def test_sml_gradient_needs_both_phases():
    rbm = random_rbm(BernoulliRBM, 6, 4)
    v = _rows(rbm, 3, 0)
    with pytest.raises(ValueError, match="data and chain rows"):
        rbm.sml_gradient(v, torch.sigmoid(rbm.hidden_preactivation(v)).detach(), 3)


def test_fast_weights_follow_the_decayed_gradient():
    torch.manual_seed(1)
    rbm = random_rbm(BernoulliRBM, 6, 4, scale=0.7)
    chains = FastPersistentChains(rbm, 7, fast_lr=0.3, fast_decay=0.8)
    assert all((f == 0).all() for f in chains.fast_weights)
    expected = [torch.zeros_like(f) for f in chains.fast_weights]
    for _ in range(3):
        neg = chains.advance()
        rows = torch.cat([_rows(rbm, 5, 0), neg])
        probs = torch.sigmoid(rbm.hidden_preactivation(rows)).detach()
        g = rbm.sml_gradient(rows, probs, 5)
        expected = [0.8 * e + 0.3 * gi for e, gi in zip(expected, g)]
        chains.after_phases(rows, probs, 5)
        for f, e in zip(chains.fast_weights, expected):
            torch.testing.assert_close(f, e)
    assert max(float(f.abs().max()) for f in chains.fast_weights) > 0.01


def test_the_chains_sample_under_the_shifted_parameters():
    torch.manual_seed(2)
    rbm = random_rbm(BernoulliRBM, 6, 4, scale=0.5)
    chains = FastPersistentChains(rbm, 50, fast_lr=1e-6)
    chains.fast_visible_bias.fill_(30.0)  # the visible units are on under theta + phi, not under theta
    v = chains.advance()
    assert (v == 1).all()
    assert rbm.sample(50, steps=1).mean() < 0.9
    # the stored hidden sample is drawn under theta + phi too
    chains.fast_hidden_bias.fill_(-30.0)
    rows = torch.cat([_rows(rbm, 5, 0), v])
    chains.after_phases(rows, torch.sigmoid(rbm.hidden_preactivation(rows)).detach(), 5)
    assert (chains.hidden == 0).all()


def _bimodal_rbm(n: int = 8, w: float = 8.0) -> BernoulliRBM:
    """One hidden unit that switches all n pixels: modes at all-on and all-off, equally likely."""
    rbm = BernoulliRBM(n, 1)
    with torch.no_grad():
        rbm.weight.fill_(w)
        rbm.visible_bias.fill_(-w / 2)
        rbm.hidden_bias.fill_(-w * n / 2)
    return rbm


def test_fast_weights_move_the_chains_between_modes():
    """The mechanism of FPCD on an exact two-mode model: with the parameters held at the data's distribution (half
    all-on, half all-off), chains started in one mode never leave it under PCD; under FPCD the fast weights, learning
    that the chains over-visit that mode, push them into the other one."""
    torch.manual_seed(3)
    rbm = _bimodal_rbm()
    data = torch.cat([torch.ones(50, 8), torch.zeros(50, 8)])
    for make, low, high in (
        (lambda: PersistentChains(rbm, 200, init=torch.ones(200, 8)), 0.0, 0.02),
        (lambda: FastPersistentChains(rbm, 200, init=torch.ones(200, 8), fast_lr=1.0), 0.2, 1.0),
    ):
        chains, off = make(), []
        for _ in range(40):
            neg = chains.advance()
            rows = torch.cat([data, neg])
            chains.after_phases(rows, torch.sigmoid(rbm.hidden_preactivation(rows)).detach(), len(data))
            off.append(float((neg.sum(-1) <= 1).float().mean()))
        visited = max(off)
        assert low <= visited <= high, (type(chains).__name__, visited)


def test_checkpoint_resumes_exactly():
    torch.manual_seed(4)
    rbm = random_rbm(BernoulliRBM, 6, 4, scale=0.7)
    x = _rows(rbm, 20, 0)

    def step(chains):
        neg = chains.advance()
        rows = torch.cat([x, neg])
        chains.after_phases(rows, torch.sigmoid(rbm.hidden_preactivation(rows)).detach(), len(x))

    chains = FastPersistentChains(rbm, 9, fast_lr=0.5)
    for _ in range(3):
        step(chains)
    saved = {k: v.clone() for k, v in chains.state_dict().items()}
    assert {"fast_weight", "fast_visible_bias", "fast_hidden_bias", "state", "hidden"} <= set(saved)
    rng = torch.get_rng_state()
    step(chains)
    after = chains.state_dict()
    restored = FastPersistentChains(rbm, 9, fast_lr=0.5)
    restored.load_state_dict(saved)
    torch.set_rng_state(rng)
    step(restored)
    for k, v in restored.state_dict().items():
        torch.testing.assert_close(v, after[k], rtol=0, atol=0)


def test_bad_arguments_and_numpy_init():
    rbm = random_rbm(BernoulliRBM, 6, 4)
    with pytest.raises(TypeError, match="not a FastWeightModel"):
        FastPersistentChains(DBM([6, 4, 3]), 5)
    for kwargs in ({"fast_lr": 0.0}, {"fast_decay": 1.0}, {"fast_decay": -0.1}):
        with pytest.raises(ValueError, match="fast_lr"):
            FastPersistentChains(rbm, 5, **kwargs)
    init = np.random.default_rng(0).integers(0, 2, (5, 6))
    chains = FastPersistentChains(rbm, 5, init=init)
    assert chains.state.dtype == rbm.weight.dtype
    with pytest.raises(ValueError, match="Bernoulli"):
        FastPersistentChains(rbm, 5, init=np.full((5, 6), 0.5))
