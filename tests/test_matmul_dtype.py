"""RBMs whose training path multiplies in bfloat16 (``matmul_dtype``): the gradient, the chains, the scores."""

import pyro
import pytest
import torch
from conftest import random_rbm
from helpers import exact_visible_probs, state_index
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import (
    BernoulliRBM,
    FastPersistentChains,
    GaussianBernoulliRBM,
    PersistentChains,
    average_log_likelihood,
    exact_log_partition,
)
from dgm_ppl.infer import train

LOW = torch.bfloat16


def _pair(cls, centered=False, **kwargs):
    """The same random RBM twice, the second multiplying in bfloat16 on its training path."""
    torch.manual_seed(0)
    exact = random_rbm(cls, 12, 7, scale=0.5, **kwargs)
    low = random_rbm(cls, 12, 7, scale=0.5, matmul_dtype=LOW, **kwargs)
    low.load_state_dict(exact.state_dict())
    for rbm in (exact, low):
        if centered:
            rbm.centered = True
            rbm.visible_offset.fill_(0.4)
            rbm.hidden_offset.fill_(0.6)
    return exact, low


def _surrogate_grads(rbm, rows, n):
    out, _, probs = rbm.sml_terms(rows, n, params=rbm.training_params())
    grads = torch.autograd.grad(out.sum(), [rbm.weight, rbm.visible_bias, rbm.hidden_bias])
    return grads, probs


@pytest.mark.parametrize(
    "cls, centered", [(BernoulliRBM, False), (BernoulliRBM, True), (GaussianBernoulliRBM, False)], ids=str
)
def test_the_sml_gradient_in_bfloat16_is_the_float32_one_rounded(cls, centered):
    exact, low = _pair(cls, centered)
    torch.manual_seed(1)
    rows = torch.bernoulli(torch.full((60, 12), 0.4)) if cls is BernoulliRBM else torch.randn(60, 12)
    (g32, p32), (g16, p16) = _surrogate_grads(exact, rows, 30), _surrogate_grads(low, rows, 30)
    assert low.training_params().matmul_weight.dtype == LOW and exact.training_params().matmul_weight is None
    assert p16.dtype == torch.float32 and all(g.dtype == torch.float32 for g in g16)
    for a, b in zip(g32, g16):
        err = float((a - b).norm() / a.norm())
        assert err < 0.02, err
    # it is rounded, not the same computation: the test would notice a path that ignored the dtype
    assert not torch.equal(g32[0], g16[0])
    torch.testing.assert_close(p16, p32, atol=0.02, rtol=0)


def test_the_scores_stay_in_full_precision():
    exact, low = _pair(BernoulliRBM)
    v = torch.bernoulli(torch.full((20, 12), 0.5))
    assert low.params().matmul_weight is None
    torch.testing.assert_close(low.free_energy(v), exact.free_energy(v), rtol=0, atol=0)
    torch.testing.assert_close(exact_log_partition(low), exact_log_partition(exact), rtol=0, atol=0)
    chains = PersistentChains(low, 5)
    with torch.no_grad():
        lp = low.distribution(chains).log_prob(v)
    torch.testing.assert_close(lp, -exact.free_energy(v) - exact.log_z, rtol=0, atol=0)


def test_bfloat16_chains_reach_the_model():
    torch.manual_seed(2)
    rbm = random_rbm(BernoulliRBM, 5, 4, scale=1.5, matmul_dtype=LOW)
    probs, _ = exact_visible_probs(rbm)
    for chains in (PersistentChains(rbm, 5000), FastPersistentChains(rbm, 5000, fast_lr=1e-6)):
        for _ in range(60):
            p = rbm.training_params()
            v = chains.advance(params=p)
            rows = torch.cat([v[:1], v])  # one data row: the fast weights barely move
            chains.after_phases(rows, torch.sigmoid(rbm.hidden_preactivation(rows)), 1, params=p)
        assert v.dtype == torch.float32
        counts = torch.bincount(state_index(v), minlength=32).float() / len(v)
        assert 0.5 * (counts - probs).abs().sum() < 0.04


def test_fast_weights_shift_the_rounded_weight_too():
    rbm = random_rbm(BernoulliRBM, 6, 4, matmul_dtype=LOW)
    p = rbm.training_params()
    shift = [torch.ones_like(p.weight), torch.zeros_like(p.visible_bias), torch.zeros_like(p.hidden_bias)]
    q = rbm.shifted_params(p, shift)
    torch.testing.assert_close(q.matmul_weight, (p.weight + 1).detach().to(LOW))


@pytest.mark.parametrize("centered", [False, True])
def test_svi_training_in_bfloat16_raises_the_exact_log_likelihood_as_float32_does(centered):
    """Mean over three seeds (one run's trajectory varies by about 1.5 nats uncentered, in either dtype)."""
    x = load_digits("train")[:600]
    xt = load_digits("test")
    scores = {None: [], LOW: []}
    for seed in (3, 4, 5):
        for dtype in scores:
            pyro.clear_param_store()
            torch.manual_seed(seed)
            rbm = BernoulliRBM(64, 12, centered=centered, matmul_dtype=dtype).init_from_data(x)
            chains = PersistentChains(rbm, 100, init=x[:100])

            def model(batch, rbm=rbm, chains=chains):
                with pyro.plate("data", len(x), subsample=batch):
                    pyro.sample("x", rbm.distribution(chains), obs=batch)

            svi = SVI(model, lambda batch: None, pyro.optim.Adam({"lr": 3e-2}), Trace_ELBO())
            train(svi, x, epochs=10, batch_size=50, progress=False)
            scores[dtype].append(average_log_likelihood(rbm, xt, exact_log_partition(rbm)))
    full, low = (sum(v) / len(v) for v in scores.values())
    assert abs(low - full) < 0.6, scores
    assert low > -25.3 + (3.5 if centered else 0.5), scores  # the base rates give about -25.3


def test_bad_matmul_dtype():
    for bad in (torch.int32, "bfloat16"):
        with pytest.raises(ValueError, match="matmul_dtype"):
            BernoulliRBM(4, 3, matmul_dtype=bad)
