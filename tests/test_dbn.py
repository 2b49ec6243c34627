"""Deep belief networks: greedy pretraining, sampling, the up pass, the MLP and the variational bound,
against exact enumeration on tiny networks."""

import pyro
import pytest
import torch
from helpers import all_states, exact_visible_probs, state_index

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import BernoulliRBM, average_log_likelihood, exact_log_partition
from dgm_ppl.energy import dbn as dbn_module
from dgm_ppl.energy.dbn import DBN
from dgm_ppl.infer import train


def _random_dbn(sizes, scale=1.0, centered=False, dtype=torch.float32):
    """A DBN with O(1) random parameters (and random offsets when centered)."""
    dbn = DBN(sizes, centered=centered).to(dtype)
    with torch.no_grad():
        for rbm in dbn.rbms:
            rbm.weight.normal_(0, scale)
            rbm.visible_bias.normal_(0, scale)
            rbm.hidden_bias.normal_(0, scale)
            if centered:
                rbm.visible_offset.uniform_(0.1, 0.9)
                rbm.hidden_offset.uniform_(0.1, 0.9)
    return dbn


def _log_bernoulli(x, logits):
    return (x * logits - torch.nn.functional.softplus(logits)).sum(-1)


def _exact_two_layer(dbn):
    """For a DBN with two RBMs, by enumeration: log p(v) over all v, the exact variational bound
    E_q[log p(v, h1) - log q(h1 | v)] and the visible states, in the order of ``all_states``."""
    bottom, top = dbn.rbms
    like = bottom.weight.detach()
    v, h = all_states(bottom.n_visible, like), all_states(bottom.n_hidden, like)
    with torch.no_grad():
        p_top = torch.softmax(-top.free_energy(h), 0)  # p(h1) of the top RBM
        p = bottom.params()
        log_p_v_given_h = _log_bernoulli(v[:, None], h @ p.weight.T + p.visible_bias)  # (V, H)
        log_joint = log_p_v_given_h + p_top.log()
        log_q = _log_bernoulli(h, (v @ p.weight + p.hidden_bias)[:, None])  # (V, H)
    elbo = (log_q.exp() * (log_joint - log_q)).sum(1)
    return torch.logsumexp(log_joint, 1), elbo, v


def _tv(samples, probs):
    counts = torch.bincount(state_index(samples), minlength=len(probs)).to(probs) / len(samples)
    return float(0.5 * (counts - probs.detach()).abs().sum())


# ---------------------------------------------------------------------------- construction
def test_construction_and_names():
    dbn = DBN([6, 4, 3], name="net")
    assert dbn.layer_sizes == [6, 4, 3] and dbn.n_visible == 6 and len(dbn.rbms) == 2
    assert [(r.n_visible, r.n_hidden) for r in dbn.rbms] == [(6, 4), (4, 3)]
    assert [r._pyro_name for r in dbn.rbms] == ["net.rbm0", "net.rbm1"]
    assert DBN([6, 4, 3], centered=True).rbms[1].centered
    # default names are unique, so two DBNs never share param-store entries
    a, b = DBN([6, 4]), DBN([6, 4])
    assert a.rbms[0]._pyro_name != b.rbms[0]._pyro_name


@pytest.mark.parametrize(
    "sizes, match",
    [([6], "at least two"), ([], "at least two"), ([6, 0], "positive"), ([6, 2.0], "positive"), ([6, True], "pos")],
)
def test_construction_rejects_bad_sizes(sizes, match):
    with pytest.raises(ValueError, match=match):
        DBN(sizes)


# ---------------------------------------------------------------------------- pretraining
@pytest.mark.parametrize(
    "data, kwargs, match",
    [
        (torch.full((20, 6), 0.5), {}, "Bernoulli"),
        (torch.full((20, 6), float("nan")), {}, "NaN"),
        (torch.zeros(20, 5), {}, "n_visible=6"),
        (torch.zeros(6), {}, "shape"),
        (torch.zeros(0, 6), {}, "empty"),
        (torch.zeros(20, 6), {"method": "pt"}, "method"),
        (torch.zeros(20, 6), {"epochs": 0}, "epochs"),
        (torch.zeros(20, 6), {"num_chains": 0}, "num_chains"),
    ],
)
def test_pretrain_rejects_bad_input_and_changes_nothing(data, kwargs, match):
    dbn = _random_dbn([6, 4, 3], centered=True)
    before = {k: v.clone() for k, v in dbn.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(ValueError, match=match):
        dbn.pretrain(data, progress=False, **kwargs)
    after = dbn.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(pyro.get_param_store()) == 0


def test_greedy_pretraining_improves_every_layer(monkeypatch):
    x, xt = load_digits("train"), load_digits("test")
    dbn = DBN([64, 16, 8], centered=True, name="digits")
    inputs = []

    def recording_train(svi, data, **kwargs):
        inputs.append(data)
        return train(svi, data, **kwargs)

    monkeypatch.setattr(dbn_module, "train", recording_train)
    losses = dbn.pretrain(x, epochs=5, batch_size=100, lr=3e-2, progress=False)
    assert len(losses) == 2 and all(len(h) == 5 and all(map(torch.isfinite, torch.tensor(h))) for h in losses)
    # one param-store entry per parameter of each RBM, none shared
    store = pyro.get_param_store()
    names = {f"digits.rbm{i}.{k}" for i in range(2) for k in ("weight", "visible_bias", "hidden_bias")}
    assert set(store.keys()) == names
    assert store["digits.rbm1.weight"] is dbn.rbms[1].weight

    # layer 2 is trained on one binary draw h1 ~ q(h1 | v) per datum, from the trained layer 1
    assert torch.equal(inputs[0], x) and inputs[1].shape == (len(x), 16)
    assert ((inputs[1] == 0) | (inputs[1] == 1)).all()
    with torch.no_grad():
        q = dbn.rbms[0].hidden_given_visible(x).mean
    torch.testing.assert_close(inputs[1].mean(0), q.mean(0), atol=0.05, rtol=0)
    assert float((inputs[1] != (q > 0.5).float()).float().mean()) > 0.02  # draws, not thresholded means

    # layer 1: the exact held-out log-likelihood beats the base-rate model it starts from (about -25.3)
    base = BernoulliRBM(64, 16).init_from_data(x)
    ll_base = average_log_likelihood(base, xt, exact_log_partition(base))
    ll = average_log_likelihood(dbn.rbms[0], xt, exact_log_partition(dbn.rbms[0]))
    assert ll > ll_base + 2.0, (ll_base, ll)
    # layer 2 models codes h1 ~ q(h1 | v): it beats the best factorial model of the training codes
    with torch.no_grad():
        codes, codes_t = dbn.rbms[0].sample_hidden(x), dbn.rbms[0].sample_hidden(xt)
    base = BernoulliRBM(16, 8).init_from_data(codes)
    ll_base = average_log_likelihood(base, codes_t, exact_log_partition(base))
    ll = average_log_likelihood(dbn.rbms[1], codes_t, exact_log_partition(dbn.rbms[1]))
    assert ll > ll_base + 0.5, (ll_base, ll)
    # the DBN's variational bound on log p(v) is far above the factorial model too
    bound = dbn.log_likelihood_bound(xt, num_samples=10)
    assert bound.shape == (len(xt),) and float(bound.mean()) > -25.3 + 2.0


def test_pretrain_with_cd_and_a_shared_optimizer():
    x = load_digits("train")[:300]
    dbn = DBN([64, 8, 4])
    optim = pyro.optim.Adam({"lr": 1e-2})
    before = [rbm.weight.detach().clone() for rbm in dbn.rbms]
    for rbm in dbn.rbms:
        exact_log_partition(rbm)
    losses = dbn.pretrain(x, epochs=2, batch_size=50, method="cd", steps=2, optim=optim, progress=False)
    assert all(rbm.log_z is None for rbm in dbn.rbms)  # stale estimates are dropped
    assert [len(h) for h in losses] == [2, 2]
    assert all(not torch.equal(b, rbm.weight) for b, rbm in zip(before, dbn.rbms))
    assert len(optim.optim_objs) == 6  # one optimizer per parameter of both layers


# ---------------------------------------------------------------------------- sampling
def test_one_layer_samples_match_the_rbm():
    dbn = _random_dbn([6, 4])
    probs, _ = exact_visible_probs(dbn.rbms[0])
    v = dbn.sample(20000, gibbs_steps=50)
    assert v.shape == (20000, 6) and v.dtype == torch.float32 and ((v == 0) | (v == 1)).all()
    assert _tv(v, probs) < 0.05
    # the mean of p(v | h) of the final sweep has the same expectation
    torch.testing.assert_close(
        dbn.sample(20000, 50, mean_visible=True).mean(0), probs @ all_states(6), atol=0.02, rtol=0
    )


def test_two_layer_samples_match_the_exact_marginal():
    dbn = _random_dbn([6, 4, 3])
    log_p, _, states = _exact_two_layer(dbn)
    probs = log_p.exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    v = dbn.sample(20000, gibbs_steps=50)
    assert v.shape == (20000, 6) and ((v == 0) | (v == 1)).all()
    assert _tv(v, probs) < 0.05
    # the bottom RBM alone is a different distribution: the test can fail
    assert _tv(v, exact_visible_probs(dbn.rbms[0])[0]) > 0.1
    mean = dbn.sample(20000, 50, mean_visible=True).mean(0)
    torch.testing.assert_close(mean, probs @ states, atol=0.02, rtol=0)


def test_sample_from_init_uses_the_directed_layer():
    dbn = _random_dbn([6, 4, 3])
    init = torch.zeros(5, 4)
    # no Gibbs sweep from h1 = 0: p(v | h1 = 0) = sigmoid(b1), the bottom RBM's visible bias
    mean = dbn.sample(5, gibbs_steps=0, init=init, mean_visible=True)
    torch.testing.assert_close(mean, torch.sigmoid(dbn.rbms[0].visible_bias).detach().expand(5, -1))
    single = _random_dbn([6, 4])
    init = torch.bernoulli(torch.full((5, 6), 0.5))
    assert torch.equal(single.sample(5, gibbs_steps=0, init=init), init)
    with pytest.raises(ValueError, match="init must have shape"):
        dbn.sample(5, init=torch.zeros(5, 6))
    with pytest.raises(ValueError, match="Bernoulli"):
        dbn.sample(5, init=torch.full((5, 4), 0.5))
    with pytest.raises(ValueError, match="num_samples"):
        dbn.sample(0)


# ---------------------------------------------------------------------------- up pass and MLP
@pytest.mark.parametrize("centered", [False, True])
def test_up_pass_and_mlp(centered):
    dbn = _random_dbn([6, 4, 3], centered=centered)
    v = all_states(6)
    mu1, mu2 = dbn.up(v)
    torch.testing.assert_close(mu1, dbn.rbms[0].hidden_given_visible(v).mean)
    torch.testing.assert_close(mu2, dbn.rbms[1].hidden_given_visible(mu1).mean)

    mlp = dbn.to_mlp()
    assert len(mlp) == 4 and isinstance(mlp[1], torch.nn.Sigmoid)
    for linear, rbm in zip(mlp[::2], dbn.rbms):
        p = rbm.params()
        torch.testing.assert_close(linear.weight, p.weight.T.detach())
        torch.testing.assert_close(linear.bias, p.hidden_bias.detach())
        assert linear.weight.data_ptr() != rbm.weight.data_ptr()
    if centered:  # the standard form, not the raw centered parameter: the test can fail
        assert not torch.allclose(mlp[0].bias, dbn.rbms[0].hidden_bias)
    torch.testing.assert_close(mlp(v), mu2)

    head = dbn.to_mlp(num_outputs=5)
    assert len(head) == 5 and head(v).shape == (64, 5)
    torch.testing.assert_close(head[:-1](v), mu2)
    before = dbn.rbms[0].weight.detach().clone()
    with torch.no_grad():
        for module in (mlp, head):
            for param in module.parameters():
                param.add_(1.0)
    assert torch.equal(dbn.rbms[0].weight, before)
    with pytest.raises(ValueError, match="num_outputs"):
        dbn.to_mlp(0)


# ---------------------------------------------------------------------------- variational bound
@pytest.mark.parametrize("centered", [False, True])
def test_bound_of_one_rbm_is_its_log_likelihood(centered):
    dbn = _random_dbn([6, 4], centered=centered)
    v = all_states(6)
    with pytest.raises(ValueError, match="log partition"):
        dbn.log_likelihood_bound(v)
    log_z = exact_log_partition(dbn.rbms[0])
    probs, _ = exact_visible_probs(dbn.rbms[0])
    bound = dbn.log_likelihood_bound(v)
    assert bound.shape == (64,)
    torch.testing.assert_close(bound, probs.log(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(bound, (-dbn.rbms[0].free_energy(v) - log_z).detach())
    # an explicit log Z is used as given
    torch.testing.assert_close(dbn.log_likelihood_bound(v, log_z_top=dbn.rbms[0].log_z + 1.0), bound - 1.0)


def test_bound_of_two_layers_is_below_the_exact_log_likelihood():
    dbn = _random_dbn([6, 4, 3], dtype=torch.float64)
    exact_log_partition(dbn.rbms[1])
    log_p, elbo, v = _exact_two_layer(dbn)
    # the exact bound is below log p(v) for every v, and not trivially equal to it
    assert (elbo <= log_p + 1e-10).all()
    assert float((log_p - elbo).max()) > 0.05
    pyro.set_rng_seed(1)
    estimate = dbn.log_likelihood_bound(v, num_samples=10000)
    assert estimate.shape == (64,) and estimate.dtype == torch.float64
    torch.testing.assert_close(estimate, elbo, atol=0.1, rtol=0)
    assert abs(float((estimate - elbo).mean())) < 0.02
    # the importance-weighted bound: above the plain one on the same draws (Jensen), and close to log p(v)
    pyro.set_rng_seed(1)
    iw = dbn.log_likelihood_bound(v, num_samples=10000, importance_weighted=True)
    assert (iw >= estimate).all()
    torch.testing.assert_close(iw, log_p, atol=0.3, rtol=0)
    assert float((log_p - iw).abs().mean()) < 0.05 < float((log_p - elbo).mean())


def test_tied_second_layer_leaves_the_model_and_the_bound_unchanged():
    """With RBM 2 the transpose of RBM 1 (W2 = W1^T, b2 = c1, c2 = b1) the DBN is RBM 1 and q(h1 | v)
    is its exact posterior, so every single-sample bound equals log p(v) (Hinton et al. 2006)."""
    dbn = _random_dbn([6, 4, 6], dtype=torch.float64)
    bottom, top = dbn.rbms
    with torch.no_grad():
        top.weight.copy_(bottom.weight.T)
        top.visible_bias.copy_(bottom.hidden_bias)
        top.hidden_bias.copy_(bottom.visible_bias)
    exact_log_partition(top)
    v = all_states(6, torch.zeros((), dtype=torch.float64))
    log_p_rbm = torch.log_softmax(-bottom.free_energy(v), 0).detach()
    torch.testing.assert_close(_exact_two_layer(dbn)[0], log_p_rbm)
    torch.testing.assert_close(dbn.log_likelihood_bound(v, num_samples=1), log_p_rbm)


# ---------------------------------------------------------------------------- dtype
def test_float64_end_to_end():
    x = load_digits("train", dtype=torch.float64)[:200]
    dbn = DBN([64, 8, 4]).double()
    losses = dbn.pretrain(x.float(), epochs=1, batch_size=50, progress=False)  # data follows the model
    assert all(h and all(map(torch.isfinite, torch.tensor(h))) for h in losses)
    assert all(p.dtype == torch.float64 for p in dbn.parameters())
    exact_log_partition(dbn.rbms[-1])
    assert dbn.sample(3, gibbs_steps=5).dtype == torch.float64
    assert dbn.log_likelihood_bound(x[:4]).dtype == torch.float64
    mlp = dbn.to_mlp(2)
    assert mlp(x[:4]).dtype == torch.float64
    torch.testing.assert_close(mlp[:-1](x[:4]), dbn.up(x[:4])[-1].detach())


def test_state_dict_round_trip():
    dbn = _random_dbn([6, 4, 3], centered=True)
    exact_log_partition(dbn.rbms[-1])
    other = DBN([6, 4, 3], centered=True)
    other.load_state_dict(dbn.state_dict())
    assert other.rbms[-1].log_z == dbn.rbms[-1].log_z
    v = all_states(6)
    torch.testing.assert_close(other.up(v)[-1], dbn.up(v)[-1])
    pyro.set_rng_seed(1)
    expected = dbn.log_likelihood_bound(v, num_samples=3)
    pyro.set_rng_seed(1)
    torch.testing.assert_close(other.log_likelihood_bound(v, num_samples=3), expected)
