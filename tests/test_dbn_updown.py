"""Up-down (contrastive wake-sleep) fine-tuning of DBNs: the untied model against enumeration, its variational bound,
and fine-tuning on a tiny data set and on the digits (issue 16)."""

import numpy as np
import pyro
import pytest
import torch
from helpers import all_states

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import DBN, exact_log_partition
from dgm_ppl.energy.dbn_updown import DBNUpDown, up_down


def _random_dbn(sizes, scale=1.0, centered=False, dtype=torch.float64):
    dbn = DBN(sizes, centered=centered).to(dtype)
    with torch.no_grad():
        for rbm in dbn.rbms:
            for p in (rbm.weight, rbm.visible_bias, rbm.hidden_bias):
                p.normal_(0, scale)
            if centered:
                rbm.visible_offset.uniform_(0.1, 0.9)
                rbm.hidden_offset.uniform_(0.1, 0.9)
    return dbn


def _untie(model, scale=0.3):
    """Perturb the generative and recognition weights independently, so that they differ."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * scale)
    exact_log_partition(model.top)
    return model


def _log_bernoulli(x, logits):
    return (x * logits - torch.nn.functional.softplus(logits)).sum(-1)


def _brute_force(model):
    """For every v, by enumerating all hidden layers jointly: log p(v) and the exact bound E_q[log p(v, h) - log q]."""
    sizes = model.layer_sizes
    like = model.top.weight.detach()
    v = all_states(sizes[0], like)
    hidden = [all_states(n, like) for n in sizes[1:-1]]
    joint = torch.cartesian_prod(*[torch.arange(len(h)) for h in hidden]).reshape(-1, len(hidden))
    states = [v[:, None].expand(-1, len(joint), -1)] + [
        h[joint[:, i]][None].expand(len(v), -1, -1) for i, h in enumerate(hidden)
    ]
    with torch.no_grad():
        log_p = -model.top.free_energy(states[-1]) - model.top.log_z
        log_q = torch.zeros_like(log_p)
        for l in range(len(hidden)):
            log_p = log_p + _log_bernoulli(
                states[l], states[l + 1] @ model.generative_weights[l].T + model.generative_biases[l]
            )
            log_q = log_q + _log_bernoulli(
                states[l + 1], states[l] @ model.recognition_weights[l] + model.recognition_biases[l]
            )
    return torch.logsumexp(log_p, 1), (log_q.exp() * (log_p - log_q)).sum(1), v


# ---------------------------------------------------------------------------- construction
@pytest.mark.parametrize("centered", [False, True])
def test_untied_copy_defines_the_same_model_and_bound(centered):
    dbn = _random_dbn([6, 4, 3], centered=centered)
    exact_log_partition(dbn.rbms[-1])
    model = DBNUpDown(dbn)
    assert model.layer_sizes == [6, 4, 3] and model.num_directed == 1 and model.n_visible == 6
    # the top RBM is copied in standard form, and its log Z follows (the centered energy's constant drops out)
    top_log_z = float(model.top.log_z)
    assert abs(float(exact_log_partition(model.top).detach()) - top_log_z) < 1e-9
    v = all_states(6, model.top.weight)
    pyro.set_rng_seed(0)
    expected = dbn.log_likelihood_bound(v, num_samples=5)
    pyro.set_rng_seed(0)
    torch.testing.assert_close(model.log_likelihood_bound(v, num_samples=5), expected)
    # the DBN is not tied to the copy
    with torch.no_grad():
        model.generative_weights[0].add_(1.0)
    assert not torch.allclose(dbn.rbms[0].params().weight, model.generative_weights[0])


# ---------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("sizes", [[6, 4, 3], [4, 3, 3, 2]])
def test_exact_log_likelihood_and_bound_against_enumeration(sizes):
    torch.manual_seed(0)
    model = _untie(DBNUpDown(_random_dbn(sizes)))
    log_p, elbo, v = _brute_force(model)
    assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-10)  # a distribution over v
    exact = model.exact_log_likelihood(v)
    torch.testing.assert_close(exact, log_p)
    # the bound is below log p(v) for every v, and not trivially equal to it
    assert (elbo <= exact + 1e-10).all() and float((exact - elbo).max()) > 0.05
    pyro.set_rng_seed(1)
    estimate = model.log_likelihood_bound(v, num_samples=10000)
    torch.testing.assert_close(estimate, elbo, atol=0.15, rtol=0)
    assert abs(float((estimate - elbo).mean())) < 0.02
    # the importance-weighted bound lies between the bound and log p(v), near the latter
    pyro.set_rng_seed(1)
    iw = model.log_likelihood_bound(v, num_samples=10000, importance_weighted=True)
    assert (iw >= estimate).all() and float((iw - exact).max()) < 0.25
    assert float((exact - iw).abs().mean()) < 0.05 < float((exact - elbo).mean())
    # sampling follows p(v)
    draws = model.sample(20000, steps=30)
    counts = torch.bincount((draws * 2 ** torch.arange(sizes[0])).sum(-1).long(), minlength=len(v)).double()
    assert 0.5 * float((counts / 20000 - log_p.exp()).abs().sum()) < 0.06


# ---------------------------------------------------------------------------- training
def _prototype_data(n=600, seed=0):
    """Four 6-bit prototypes with 5% bit flips."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1.0]])
    x = protos[torch.randint(4, (n,), generator=g)]
    flips = torch.rand(n, 6, generator=g) < 0.05
    return torch.where(flips, 1 - x, x)


def test_up_down_raises_the_exact_log_likelihood_of_a_tiny_dbn():
    torch.manual_seed(2)
    pyro.set_rng_seed(2)
    x = _prototype_data()
    dbn = DBN([6, 4, 3])
    dbn.pretrain(x, epochs=[8, 8], batch_size=100, lr=5e-2, progress=False)
    start = DBNUpDown(dbn)
    exact_log_partition(start.top)
    before = float(start.exact_log_likelihood(x).mean())
    pyro.set_rng_seed(3)
    bound_before = float(start.log_likelihood_bound(x, num_samples=50).mean())
    model = up_down(dbn, x, epochs=30, batch_size=50, lr=0.02, cd_steps=5)
    assert model.top.log_z is None
    exact_log_partition(model.top)
    after = float(model.exact_log_likelihood(x).mean())
    pyro.set_rng_seed(3)
    bound_after = float(model.log_likelihood_bound(x, num_samples=50).mean())
    print(f"exact log p(v): {before:.3f} -> {after:.3f}; bound: {bound_before:.3f} -> {bound_after:.3f}")
    assert after > before + 0.1 and bound_after > bound_before + 0.1


def test_up_down_improves_the_held_out_bound_on_digits():
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    x, xt = load_digits("train"), load_digits("test")
    dbn = DBN([64, 16, 8], centered=True)
    dbn.pretrain(x, epochs=3, batch_size=100, lr=3e-2, progress=False)
    exact_log_partition(dbn.rbms[-1])
    pyro.set_rng_seed(1)
    before = float(dbn.log_likelihood_bound(xt, num_samples=20).mean())
    model = up_down(dbn, x, epochs=10, lr=0.02, cd_steps=3)
    exact_log_partition(model.top)
    pyro.set_rng_seed(1)
    after = float(model.log_likelihood_bound(xt, num_samples=20).mean())
    print(f"held-out bound on log p(v) of the digits: pretrained {before:.3f} -> up-down {after:.3f}")
    assert after > before + 0.3


# ---------------------------------------------------------------------------- input
def test_bad_input_raises_value_errors():
    model = DBNUpDown(_random_dbn([6, 4, 3], dtype=torch.float32))
    v = torch.zeros(10, 6)
    before = {k: t.clone() for k, t in model.state_dict().items() if isinstance(t, torch.Tensor)}
    exact_log_partition(model.top)
    for data, kwargs, match in [
        (torch.full((10, 6), 0.5), {}, r"data: Bernoulli.*0\.5"),
        (torch.full((10, 6), float("nan")), {}, "data: values contain NaN"),
        (torch.zeros(10, 5), {}, "data: expected the last dimension to be n_visible=6"),
        (torch.zeros(6), {}, r"data: expected shape \(N, n_visible\)"),
        (v, {"epochs": 0}, "epochs"),
        (v, {"batch_size": 0}, "batch_size"),
        (v, {"cd_steps": 0}, "cd_steps"),
        (v, {"lr": -1.0}, "lr"),
        (v, {"momentum": 1.0}, "momentum"),
        (v, {"weight_decay": float("nan")}, "weight_decay"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.fit(data, **kwargs)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.top.log_z is not None  # nothing changed
    with pytest.raises(ValueError, match="v: Bernoulli"):
        model.log_likelihood_bound(torch.full((3, 6), 2.0))
    with pytest.raises(ValueError, match="num_samples"):
        model.log_likelihood_bound(v, num_samples=0)
    with pytest.raises(ValueError, match="max_units=2"):
        model.exact_log_likelihood(v, max_units=2)
    model.top.log_z = None
    with pytest.raises(ValueError, match="log partition"):
        model.log_likelihood_bound(v)
    with pytest.raises(ValueError, match="at least two RBMs"):
        DBNUpDown(DBN([6, 4]))
    with pytest.raises(ValueError, match="must be a DBN"):
        DBNUpDown("dbn")
    with pytest.raises(ValueError, match="num_samples"):
        model.sample(0)
    with pytest.raises(TypeError, match="NumPy array"):
        model.fit("101")
    # NumPy data is converted
    exact_log_partition(model.top)
    out = model.log_likelihood_bound(np.zeros((3, 6), dtype=np.uint8))
    assert out.shape == (3,) and out.dtype == torch.float32
    assert model.fit(np.zeros((10, 6)), epochs=1) is model
