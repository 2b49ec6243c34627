"""The energy models' fast path: closed-form SML gradients against autograd and finite differences,
the fused data checks, host-side chain flags, and NumPy data from the user's side."""

import numpy as np
import pyro
import pytest
import torch
from conftest import random_rbm
from pyro.infer import SVI, Trace_ELBO

import dgm_ppl.energy.dbm as dbm_module
import dgm_ppl.energy.rbm as rbm_module
from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import (
    DBM,
    DBN,
    RBM,
    BernoulliRBM,
    GaussianBernoulliRBM,
    ParallelTempering,
    PersistentChains,
)
from dgm_ppl.energy._ops import check_binary, check_finite
from dgm_ppl.energy.dbm import _MeanFieldBound
from dgm_ppl.infer import DivergenceError

RBM_KINDS = ["bernoulli", "bernoulli_centered", "gaussian", "gaussian_learned_std"]


def _rbm(kind):
    if kind.startswith("bernoulli"):
        rbm = random_rbm(BernoulliRBM, 7, 5, scale=0.8, centered=kind.endswith("centered")).double()
        if rbm.centered:
            with torch.no_grad():
                rbm.visible_offset.uniform_(0.1, 0.9)
                rbm.hidden_offset.uniform_(0.1, 0.9)
        data = torch.bernoulli(torch.full((9, 7), 0.4, dtype=torch.float64))
        chains = torch.bernoulli(torch.full((6, 7), 0.6, dtype=torch.float64))
    else:
        std = torch.linspace(0.5, 1.5, 7)
        rbm = random_rbm(GaussianBernoulliRBM, 7, 5, scale=0.8, std=std, learn_std=kind.endswith("std")).double()
        data, chains = torch.randn(9, 7, dtype=torch.float64) + 0.5, torch.randn(6, 7, dtype=torch.float64)
    return rbm, torch.cat([data, chains])


def _sml_objective(rbm, v, num_data, g):
    r"""The function whose gradient the SML surrogate carries: :math:`\sum_n g_n (-F(v_n)) - (\sum_n g_n) s`,
    evaluated by the plain free energy."""
    neg_free = -rbm.free_energy(v)
    return (g * neg_free[:num_data]).sum() - g.sum() * neg_free[num_data:].mean()


@pytest.mark.parametrize("kind", RBM_KINDS)
def test_rbm_closed_form_sml_gradient_matches_autograd_and_finite_differences(kind):
    rbm, v = _rbm(kind)
    params = list(rbm.parameters())
    assert len(params) == (4 if kind == "gaussian_learned_std" else 3)
    g = torch.randn(9, dtype=torch.float64)
    p = rbm.params()
    fast = rbm._sml_terms(p, v, 9)
    plain = RBM._sml_terms(rbm, p, v, 9)  # the autograd path of the base class
    assert type(fast[0].grad_fn).__name__.startswith(("_BernoulliSML", "_GaussianSML"))
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    grads_fast = torch.autograd.grad((g * fast[0]).sum(), params, retain_graph=True)
    grads_plain = torch.autograd.grad((g * plain[0]).sum(), params)
    for a, b in zip(grads_fast, grads_plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # central differences of the objective the surrogate's gradient belongs to, at a few coordinates
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param, grad in zip(params, grads_fast):
            for flat_index in torch.randint(param.numel(), (3,), generator=gen).tolist():
                index = np.unravel_index(flat_index, param.shape)
                old = float(param[index])
                param[index] = old + 1e-6
                up = _sml_objective(rbm, v, 9, g)
                param[index] = old - 1e-6
                down = _sml_objective(rbm, v, 9, g)
                param[index] = old
                assert float(grad[index]) == pytest.approx(float(up - down) / 2e-6, rel=1e-5, abs=1e-7)


def test_closed_form_is_first_order_and_the_plain_path_serves_higher_orders():
    rbm, v = _rbm("bernoulli")
    out = rbm._sml_terms(rbm.params(), v, 9)[0]
    (gw,) = torch.autograd.grad(out.sum(), rbm.weight, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gw.sum(), rbm.hidden_bias)
    # data that needs a gradient (e.g. a score-matching or gradient-penalty loss) takes autograd
    x = v[:9].clone().requires_grad_()
    lp = rbm.distribution(PersistentChains(rbm, 6)).log_prob(x)
    (gx,) = torch.autograd.grad(lp.sum(), x, create_graph=True)
    (gb,) = torch.autograd.grad(gx.pow(2).sum(), rbm.hidden_bias)
    assert torch.isfinite(gb).all() and gb.abs().sum() > 0
    # as does the public free energy, e.g. through exact_log_partition's enumeration
    (gv,) = torch.autograd.grad(rbm.free_energy(x).sum(), x, create_graph=True)
    assert torch.autograd.grad(gv.sum(), rbm.weight)[0].abs().sum() > 0


@pytest.mark.parametrize("kind", RBM_KINDS)
def test_svi_steps_equal_on_the_closed_form_and_autograd_paths(kind, monkeypatch):
    x = load_digits("train")[:60].double()
    if kind.startswith("gaussian"):
        x = x + 0.3 * torch.randn_like(x)

    def run(closed_form):
        monkeypatch.setattr(rbm_module, "closed_form_applies", lambda v: closed_form)
        pyro.clear_param_store()
        torch.manual_seed(0)
        if kind.startswith("bernoulli"):
            rbm = BernoulliRBM(64, 6, centered=kind.endswith("centered"), name="r").double().init_from_data(x)
        else:
            rbm = GaussianBernoulliRBM(64, 6, learn_std=kind.endswith("std"), name="r").double()
        chains = PersistentChains(rbm, 10)

        def model(batch):
            with pyro.plate("data", len(x), subsample=batch):
                pyro.sample("x", rbm.distribution(chains), obs=batch)

        svi = SVI(model, lambda batch: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        losses = [svi.step(x[i * 20 : (i + 1) * 20]) for i in range(3)]
        return losses, [t.detach().clone() for t in [*rbm.parameters(), *rbm.buffers(), chains.state]]

    losses_fast, state_fast = run(True)
    losses_plain, state_plain = run(False)
    assert losses_fast == pytest.approx(losses_plain, rel=1e-12)
    for a, b in zip(state_fast, state_plain):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def _random_dbm(sizes, gaussian=False, centered=False):
    dbm = DBM(sizes, gaussian_visible=gaussian, std=0.8, centered=centered).double()
    with torch.no_grad():
        for p in dbm.parameters():
            p.normal_(0, 0.7)
        if centered:
            for mu in dbm.offsets():
                mu.uniform_(0.1, 0.9)
    return dbm


DBM_CASES = [([6, 4], False, False), ([6, 4, 3], False, False), ([6, 4, 3, 5], False, True), ([6, 4, 3], True, False)]


@pytest.mark.parametrize("sizes, gaussian, centered", DBM_CASES)
def test_dbm_bound_closed_form_matches_autograd(sizes, gaussian, centered):
    dbm = _random_dbm(sizes, gaussian, centered)
    v = torch.randn(8, sizes[0], dtype=torch.float64) if gaussian else torch.bernoulli(torch.full((8, sizes[0]), 0.5))
    v = v.double()
    p = dbm.params()
    g = torch.randn(8, dtype=torch.float64)
    params = list(dbm.parameters())
    for iters in (0, 1, 7):
        with torch.no_grad():
            stat = dbm._stat(p, 0, v)
            visible_input = stat @ p.weights[0]
            means, logits = dbm._mean_field(p, v, iters, None, visible_input)
            value = dbm._bound_value(p, v, means, logits, visible_input, settled=iters > 0)
        plain = dbm._bound(p, v, means, logits)
        torch.testing.assert_close(value, plain.detach(), rtol=1e-12, atol=1e-10)
        const = [p.const] if isinstance(p.const, torch.Tensor) else []
        fast = _MeanFieldBound.apply(value, (stat, *means), dbm._visible_bias_grad(p, v), *p.weights, *p.biases, *const)
        grads_fast = torch.autograd.grad((g * fast).sum(), params, retain_graph=True)
        grads_plain = torch.autograd.grad((g * plain).sum(), params, retain_graph=True)
        for a, b in zip(grads_fast, grads_plain):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the shortcut for the value needs a settled mean field: below three hidden layers the first
    # bottom-up pass settles it; above, the doubled input of a middle layer would make it wrong
    with torch.no_grad():
        means0, logits0 = dbm._mean_field(p, v, 0, None, visible_input)
        close = torch.allclose(
            dbm._bound_value(p, v, means0, logits0, visible_input, settled=True), dbm._bound(p, v, means0, logits0)
        )
    assert close == (len(sizes) <= 3)


@pytest.mark.parametrize("sizes, gaussian, centered", DBM_CASES)
def test_dbm_chain_statistic_is_the_summed_out_free_energy(sizes, gaussian, centered):
    dbm = _random_dbm(sizes, gaussian, centered)
    states = [s.double() for s in dbm.random_state(9)]
    p = dbm.params()
    fast = dbm._chain_statistic(p, states)
    plain = dbm._sum_out(p, [t if l % 2 == 0 else None for l, t in enumerate(states)], parity=1)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)
    params = list(dbm.parameters())
    grads_fast = torch.autograd.grad(fast.sum(), params, retain_graph=True)
    for a, b in zip(grads_fast, torch.autograd.grad(plain.sum(), params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("centered", [False, True])
def test_dbm_svi_gradient_equal_on_both_paths(centered, monkeypatch):
    x = load_digits("train")[:40, :12].double()

    def grads(closed_form):
        monkeypatch.setattr(dbm_module, "closed_form_applies", lambda v: closed_form)
        pyro.clear_param_store()
        torch.manual_seed(0)
        dbm = DBM([12, 5, 4], centered=centered, name="d").double().init_from_data(x)
        chains = PersistentChains(dbm, 10)

        def model(batch):
            with pyro.plate("data", len(x), subsample=batch):
                pyro.sample("x", dbm.distribution(chains, mean_field_iters=5), obs=batch)

        loss = Trace_ELBO().loss_and_grads(model, lambda batch: None, x[:20])
        return loss, [p.grad.clone() for p in dbm.parameters()]

    loss_fast, fast = grads(True)
    loss_plain, plain = grads(False)
    assert loss_fast == pytest.approx(loss_plain, rel=1e-12)
    for a, b in zip(fast, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_fused_checks():
    ok = torch.tensor([[0.0, 1.0, -0.0, 1.0]])
    assert check_binary(ok) and check_binary(ok.bool()) and check_binary(ok.to(torch.uint8))
    for bad in (0.5, 2.0, -1.0, 1e-30, 1 - 1e-7, float("nan"), float("inf"), float("-inf"), 1e30):
        v = ok.clone()
        v[0, 2] = bad
        assert not check_binary(v), bad
    assert not check_binary(torch.tensor([0, 2])) and not check_binary(torch.tensor([0, 2], dtype=torch.uint8))
    big = torch.full((4,), 3e38)  # finite entries whose float32 sum overflows
    assert check_finite(big) and check_finite(torch.zeros(3)) and check_finite(torch.tensor([1, 2]))
    for bad in (float("nan"), float("inf"), float("-inf")):
        assert not check_finite(torch.tensor([1.0, bad])), bad


def test_validation_off_skips_the_checks():
    """Documented: with validation off nothing is checked, so bad data gives numbers, not errors."""
    rbm = BernoulliRBM(6, 3)
    chains = PersistentChains(rbm, 5)
    pyro.enable_validation(False)
    try:
        lp = rbm.distribution(chains).log_prob(torch.full((2, 6), 0.5))
    finally:
        pyro.enable_validation(True)
    assert lp.shape == (2,)
    with pytest.raises(ValueError, match="need values in"):
        rbm.distribution(chains).log_prob(torch.full((2, 6), 0.5))


def test_chain_flags_live_on_the_host_and_survive_state_dicts():
    rbm = random_rbm(BernoulliRBM, 6, 4)
    a = PersistentChains(rbm, 8)
    a.advance()  # the stored hidden sample is consumed: the next sweep starts from the visible state
    assert not a._hidden_current and not bool(a.hidden_is_current)
    b = PersistentChains(rbm, 8)
    assert b._hidden_current
    b.load_state_dict(a.state_dict())
    assert not b._hidden_current
    torch.manual_seed(3)
    va = a.advance()
    torch.manual_seed(3)
    assert torch.equal(b.advance(), va)
    pt = ParallelTempering(rbm, 4, betas=4)
    pt.advance()
    assert pt._parity == 1 and int(pt.parity) == 1
    pt2 = ParallelTempering(rbm, 4, betas=4)
    pt2.load_state_dict(pt.state_dict())
    assert pt2._parity == 1


def test_dbm_pretraining_divergence_is_reported(monkeypatch):
    """The pretraining loss is summed on the device and checked once per epoch (no sync per step)."""
    x = load_digits("train")[:200, :16].contiguous()
    neg_free_energy = dbm_module._TiedCopiesRBM.neg_free_energy
    monkeypatch.setattr(dbm_module._TiedCopiesRBM, "neg_free_energy", lambda self, c: neg_free_energy(self, c) * np.nan)
    with pytest.raises(DivergenceError, match="pretraining RBM 1 diverged at epoch 0"):
        DBM([16, 6, 4]).pretrain(x, epochs=2, batch_size=50, progress=False)


# ----------------------------------------------------------------------- NumPy data (issue 15, item 6)
def test_numpy_data_is_accepted_by_every_entry():
    x = load_digits("train")[:200]
    xn = x.numpy().astype(np.uint8)
    torch.testing.assert_close(
        BernoulliRBM(64, 8, centered=True).init_from_data(xn).visible_offset,
        BernoulliRBM(64, 8, centered=True).init_from_data(x).visible_offset,
    )
    rbm = BernoulliRBM(64, 8).init_from_data(xn)
    torch.testing.assert_close(rbm.visible_bias, BernoulliRBM(64, 8).init_from_data(x).visible_bias)
    assert rbm.free_energy(xn[:5]).shape == (5,)
    chains = PersistentChains(rbm, 10, init=xn[:10])
    assert chains.state.dtype == torch.float32
    assert rbm.gibbs_step(xn[:3]).shape == (3, 64) and rbm.hidden_given_visible(xn[:3]).batch_shape == (3,)
    assert rbm.distribution(chains).log_prob(xn[:4]).shape == (4,)
    real = np.random.default_rng(0).normal(size=(50, 64))  # float64 data into a float32 model
    gauss = GaussianBernoulliRBM(64, 8).init_from_data(real)
    assert gauss.visible_bias.dtype == torch.float32
    torch.testing.assert_close(gauss.visible_bias, torch.as_tensor(real.mean(0), dtype=torch.float32))
    torch.manual_seed(0)
    dbm = DBM([64, 8, 4], centered=True).init_from_data(xn)
    torch.manual_seed(0)
    torch.testing.assert_close(dbm.offset_1, DBM([64, 8, 4], centered=True).init_from_data(x).offset_1)
    assert dbm.mean_field(xn[:5])[0].shape == (5, 8) and dbm.variational_bound(xn[:5]).shape == (5,)
    dbm.pretrain(xn[:100], epochs=1, progress=False)
    dbn = DBN([64, 8, 4])
    dbn.pretrain(xn[:100], epochs=1, num_chains=10, progress=False)
    assert dbn.up(xn[:5])[-1].shape == (5, 4)
    # a float64 model keeps its dtype
    assert BernoulliRBM(64, 8).double().init_from_data(xn).visible_bias.dtype == torch.float64


@pytest.mark.parametrize("bad", ["not data", np.array([["a", "b"]]), {"x": 1}])
def test_non_numeric_data_is_refused_clearly(bad):
    for entry in (BernoulliRBM(2, 3).init_from_data, DBM([2, 3]).init_from_data, DBN([2, 3]).pretrain):
        with pytest.raises(TypeError, match="must be a torch.Tensor or a numeric NumPy array"):
            entry(bad)


def test_numpy_data_is_still_validated():
    with pytest.raises(ValueError, match="need values in"):
        BernoulliRBM(3, 2).init_from_data(np.array([[0.0, 0.5, 1.0]]))
    with pytest.raises(ValueError, match="NaN or inf"):
        GaussianBernoulliRBM(3, 2).init_from_data(np.array([[0.0, np.nan, 1.0]]))
