"""The discriminative (classification) RBM against enumeration on tiny models, and its training (issue 16)."""

import numpy as np
import pyro
import pytest
import torch
from helpers import all_states
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import (
    ContrastiveDivergence,
    EnergyBasedDistribution,
    FreeEnergyModel,
    ParallelTempering,
    PersistentChains,
    ais_log_partition,
    exact_log_partition,
)
from dgm_ppl.energy.discriminative_rbm import ClassificationRBM, ClassificationRBMJoint
from dgm_ppl.energy.protocol import AnnealingPath, Enumeration

NX, NH, K = 4, 3, 3


def assert_close(actual, expected, rtol=1e-6, atol=1e-8):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


def random_crbm(nx=NX, nh=NH, k=K, scale=0.8, dtype=torch.float64):
    rbm = ClassificationRBM(nx, nh, k, init_std=scale).to(dtype)
    with torch.no_grad():
        for p in (rbm.visible_bias, rbm.class_bias, rbm.hidden_bias):
            p.normal_(0, scale)
    return rbm


def energy(rbm, x, y, h):
    """E(y, x, h) written out from the paper's formula (x: (..., nx), y: (...) long, h: (..., nh))."""
    e_y = torch.nn.functional.one_hot(y, rbm.n_classes).to(x)
    w, u = rbm.weight, rbm.class_weight  # (nx, nh), (K, nh)
    return -(
        ((x @ w) * h).sum(-1)
        + x @ rbm.visible_bias
        + h @ rbm.hidden_bias
        + e_y @ rbm.class_bias
        + ((e_y @ u) * h).sum(-1)
    )


def all_triples(rbm):
    """Every (x, y, h) of a tiny model, as flat tensors."""
    xs, hs = all_states(rbm.n_visible, rbm.weight), all_states(rbm.n_hidden, rbm.weight)
    ys = torch.arange(rbm.n_classes)
    ix, iy, ih = torch.meshgrid(torch.arange(len(xs)), ys, torch.arange(len(hs)), indexing="ij")
    return xs[ix.flatten()], iy.flatten(), hs[ih.flatten()], (len(xs), len(ys), len(hs))


def exact_joint_probs(rbm):
    """p(x, y) over all states, index x_code * K + y, by brute force over (x, y, h)."""
    x, y, h, shape = all_triples(rbm)
    with torch.no_grad():
        log_p = torch.logsumexp(-energy(rbm, x, y, h).reshape(shape), -1).flatten()
    return torch.softmax(log_p, 0)


def joint_index(rbm, z):
    x, y = z[..., : rbm.n_visible], z[..., rbm.n_visible :].argmax(-1)
    return (x * 2 ** torch.arange(rbm.n_visible)).sum(-1).long() * rbm.n_classes + y


def tv(counts, probs):
    return 0.5 * (counts / counts.sum() - probs).abs().sum().item()


# ------------------------------------------------------------------------------------ structure
def test_the_joint_satisfies_the_free_energy_protocol():
    rbm = ClassificationRBM(5, 2, 3)
    joint = rbm.joint
    assert isinstance(joint, ClassificationRBMJoint) and isinstance(joint, FreeEnergyModel)
    assert joint.n_visible == 8 and rbm.n_visible == 5
    assert isinstance(joint.annealing_path(), AnnealingPath)
    assert isinstance(joint.enumeration(), Enumeration)
    chains = PersistentChains(joint, 7)
    assert type(chains) is PersistentChains and chains.state.shape == (7, 8)
    assert (chains.state[:, 5:].sum(-1) == 1).all()
    assert isinstance(joint.distribution(chains), EnergyBasedDistribution)
    assert isinstance(rbm.conditional(torch.zeros(2, 5)), pyro.distributions.Categorical)


# ------------------------------------------------------------------------------------ exactness
def test_conditional_logits_match_brute_force_over_the_hidden_units():
    rbm = random_crbm(nh=8, scale=1.0)
    x, y, h, shape = all_triples(rbm)
    with torch.no_grad():
        log_xy = torch.logsumexp(-energy(rbm, x, y, h).reshape(shape), -1)  # (2^nx, K)
        expected = torch.log_softmax(log_xy, -1)
        xs = all_states(rbm.n_visible, rbm.weight)
        logits = rbm.conditional_logits(xs)
        # the logits are log sum_h e^{-E} less b.x, exactly
        assert_close(logits, log_xy - (xs @ rbm.visible_bias)[:, None])
        assert_close(rbm.conditional(xs).logits, expected)
        assert torch.equal(rbm.predict(xs), expected.argmax(-1))
    # batch dimensions pass through; the joint's free energy is the same sum
    assert rbm.conditional_logits(xs.reshape(2, 8, NX)).shape == (2, 8, K)
    z = rbm.join(xs[:, None].expand(-1, K, -1), torch.arange(K).expand(16, -1))
    assert_close(rbm.joint.unnormalized_log_prob(z).detach(), log_xy)


@pytest.mark.parametrize("nx, nh", [(4, 3), (3, 5)])  # enumerate the hidden layer, then the inputs
def test_exact_log_partition_of_the_joint_against_brute_force(nx, nh):
    rbm = random_crbm(nx=nx, nh=nh)
    assert rbm.joint.enumeration().num_units == min(nx, nh)
    x, y, h, _ = all_triples(rbm)
    brute = torch.logsumexp(-energy(rbm, x, y, h), 0)
    log_z = exact_log_partition(rbm.joint)
    assert_close(log_z, brute.detach())
    assert rbm.joint.log_z == pytest.approx(float(brute.detach()))
    assert log_z.requires_grad
    # p(x, y) sums to one; the joint's energy is the paper's
    probs = exact_joint_probs(rbm)
    assert float(probs.sum()) == pytest.approx(1.0)
    z = rbm.join(x, y)
    assert_close(rbm.joint.energy(z, h).detach(), energy(rbm, x, y, h).detach())
    # log Z is saved with the model's state
    other = random_crbm(nx=nx, nh=nh)
    other.load_state_dict(rbm.state_dict())
    assert other.joint.log_z == rbm.joint.log_z


def test_gibbs_sampler_reaches_the_exact_joint():
    torch.manual_seed(0)
    rbm = random_crbm(nx=3, nh=2, scale=1.0)
    probs = exact_joint_probs(rbm)
    n = 20000
    z = rbm.joint.gibbs(rbm.joint.random_state(n), steps=50)
    assert ((z == 0) | (z == 1)).all() and (z[:, 3:].sum(-1) == 1).all()
    counts = torch.bincount(joint_index(rbm, z), minlength=len(probs)).double()
    exact = torch.multinomial(probs, n, replacement=True)
    floor = tv(torch.bincount(exact, minlength=len(probs)).double(), probs)
    joint_tv = tv(counts, probs)
    print(f"joint TV: Gibbs {joint_tv:.4f}, exact draws {floor:.4f}")
    assert joint_tv < 1.5 * floor + 0.01
    # the model's own sampler, as pairs (x, y)
    xs, ys = rbm.sample(n, steps=50)
    counts = torch.bincount(joint_index(rbm, rbm.join(xs, ys)), minlength=len(probs)).double()
    assert tv(counts, probs) < 1.5 * floor + 0.01
    # parallel tempering targets the joint too
    pt = ParallelTempering(rbm.joint, 4000, steps=1, betas=4)
    for _ in range(40):
        pt.advance()
    counts = torch.bincount(joint_index(rbm, pt.state[-1]), minlength=len(probs)).double()
    assert tv(counts, probs) < 0.05


def test_class_conditional_samples_follow_p_x_given_y():
    torch.manual_seed(1)
    rbm = random_crbm(nx=3, nh=2, scale=1.0)
    probs = exact_joint_probs(rbm).reshape(8, K)
    x, y = rbm.sample(20000, steps=30, labels=torch.full((20000,), 2))
    assert (y == 2).all()
    codes = (x * 2 ** torch.arange(3)).sum(-1).long()
    assert tv(torch.bincount(codes, minlength=8).double(), probs[:, 2] / probs[:, 2].sum()) < 0.02


def test_ais_estimates_the_exact_log_partition():
    torch.manual_seed(2)
    rbm = random_crbm(nx=5, nh=4)
    exact = float(exact_log_partition(rbm.joint, record=False).detach())
    data = rbm.joint.sample(200, steps=50)
    result = ais_log_partition(rbm.joint, 100, 300, data=data)
    print(f"log Z: exact {exact:.4f}, AIS {result.log_z:.4f}")
    assert result.log_z == pytest.approx(exact, abs=0.1)


def test_sml_gradient_matches_the_exact_joint_gradient():
    torch.manual_seed(3)
    rbm = random_crbm(nx=4, nh=2, scale=0.7)
    data = rbm.join((torch.rand(40, 4) < 0.4).double(), torch.randint(K, (40,)))
    params = [rbm.weight, rbm.class_weight, rbm.visible_bias, rbm.class_bias, rbm.hidden_bias]
    (rbm.joint.unnormalized_log_prob(data).mean() - exact_log_partition(rbm.joint, record=False)).backward()
    exact = [p.grad.clone() for p in params]
    rbm.zero_grad()
    chains = PersistentChains(rbm.joint, 20000)
    chains.state = rbm.joint.gibbs(chains.state, 50)
    rbm.joint.distribution(chains).log_prob(data).mean().backward()
    for g, p in zip(exact, params):
        err = (p.grad - g).abs().max().item()
        print(f"max |SML - exact| = {err:.4f} (exact max {g.abs().max().item():.3f})")
        assert err < 0.03


# ------------------------------------------------------------------------------------ training
def test_discriminative_svi_on_digits_beats_chance_by_far():
    torch.manual_seed(4)
    x, y = load_digits("train", return_labels=True)
    x_test, y_test = load_digits("test", return_labels=True)
    rbm = ClassificationRBM(64, 100, 10)
    before = float((rbm.predict(x_test) == y_test).float().mean())

    def model(xb, yb):
        with pyro.plate("data", len(x), subsample=torch.arange(len(xb))):
            pyro.sample("y", rbm.conditional(xb), obs=yb)

    svi = SVI(model, lambda *a: None, pyro.optim.Adam({"lr": 0.02}), Trace_ELBO())
    for _ in range(250):
        idx = torch.randint(len(x), (100,))
        svi.step(x[idx], y[idx])
    acc = float((rbm.predict(x_test) == y_test).float().mean())
    print(f"held-out accuracy: {before:.3f} -> {acc:.3f}")
    assert acc > 0.88


def test_hybrid_model_has_both_sites_with_the_generative_one_scaled():
    x, y = load_digits("train", return_labels=True)
    rbm = ClassificationRBM(64, 20, 10)
    chains = PersistentChains(rbm.joint, 10)
    trace = poutine.trace(rbm.hybrid_model).get_trace(x[:50], y[:50], chains, alpha=0.1, num_data=1500)
    assert trace.nodes["y"]["scale"] == pytest.approx(30.0)
    assert trace.nodes["xy"]["scale"] == pytest.approx(3.0)
    assert torch.equal(trace.nodes["xy"]["value"], rbm.join(x[:50], y[:50]))
    assert isinstance(trace.nodes["xy"]["fn"], EnergyBasedDistribution)
    names = {k for k, v in trace.nodes.items() if v["type"] == "param"}
    assert {f"{rbm._pyro_name}.{n}" for n, _ in rbm.named_parameters()} <= names
    # alpha = 0: the purely discriminative model
    trace = poutine.trace(rbm.hybrid_model).get_trace(x[:5], y[:5], alpha=0.0)
    assert "xy" not in trace.nodes and "y" in trace.nodes


def test_hybrid_training_raises_both_the_joint_and_the_conditional_likelihood():
    torch.manual_seed(5)
    pyro.set_rng_seed(5)
    # data: the label is the majority of the first three inputs; the other inputs are noisy copies of the label
    n = 400
    x = (torch.rand(n, 6) < 0.5).float()
    y = (x[:, :3].sum(-1) >= 2).long()
    x[:, 3:] = torch.where(torch.rand(n, 3) < 0.9, y[:, None].float(), 1 - y[:, None].float())
    rbm = ClassificationRBM(6, 4, 2)
    rbm.init_from_data(x, y)
    z = rbm.join(x, y)

    def joint_ll():
        with torch.no_grad():
            return float(rbm.joint.unnormalized_log_prob(z).mean() - exact_log_partition(rbm.joint, record=False))

    def cond_ll():
        with torch.no_grad():
            return float(rbm.conditional(x).log_prob(y).mean())

    before, cond_before = joint_ll(), cond_ll()
    chains = PersistentChains(rbm.joint, 100)
    svi = SVI(rbm.hybrid_model, lambda *a, **k: None, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(300):
        idx = torch.randint(n, (50,))
        svi.step(x[idx], y[idx], chains, alpha=1.0, num_data=n)
    after, cond_after = joint_ll(), cond_ll()
    print(f"log p(x, y): {before:.3f} -> {after:.3f}; log p(y | x): {cond_before:.3f} -> {cond_after:.3f}")
    assert after > before + 1.0  # the data's entropy is about 3.05 nats: the optimum is near -3.05
    assert cond_after > -0.3 and cond_before < -0.6


# ------------------------------------------------------------------------------------ input
def test_numpy_input_is_converted():
    rbm = random_crbm(dtype=torch.float32)
    x = np.array([[0, 1, 1, 0], [1, 1, 0, 0]], dtype=np.uint8)
    expected = rbm.conditional_logits(torch.as_tensor(x, dtype=torch.float32))
    assert_close(rbm.conditional_logits(x), expected)
    assert rbm.predict(x).shape == (2,)
    z = rbm.join(x, np.array([2, 0]))
    assert z.dtype == torch.float32 and z[:, NX:].argmax(-1).tolist() == [2, 0]
    xs, ys = rbm.split(z.numpy())
    assert ys.tolist() == [2, 0] and torch.equal(xs, torch.as_tensor(x, dtype=torch.float32))
    assert rbm.joint.check_data(z.numpy()).shape == (2, NX + K)


def test_bad_input_raises_value_errors():
    rbm = ClassificationRBM(4, 3, 3)
    with pytest.raises(ValueError, match="x: expected the last dimension to be n_visible=4"):
        rbm.conditional_logits(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="x: .*binary.*0.5"):
        rbm.predict(torch.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="x: values contain NaN"):
        rbm.conditional(torch.tensor([[0.0, float("nan"), 1.0, 0.0]]))
    with pytest.raises(ValueError, match="y: labels must lie in 0..2, got 3"):
        rbm.join(torch.zeros(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="y: labels must lie in 0..2, got -1"):
        rbm.join(torch.zeros(2, 4), np.array([-1, 0]))
    with pytest.raises(ValueError, match="y: labels must be whole numbers"):
        rbm.join(torch.zeros(2, 4), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="y: labels contain NaN"):
        rbm.join(torch.zeros(1, 4), torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="same batch shape"):
        rbm.join(torch.zeros(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="label block .* must be one-hot"):
        rbm.joint.check_data(torch.tensor([[0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0]]))
    with pytest.raises(ValueError, match="n_visible \\+ n_classes=7"):
        rbm.joint.check_data(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="init: .*one-hot"):
        PersistentChains(rbm.joint, 2, init=torch.zeros(2, 7))
    with pytest.raises(ValueError, match="alpha"):
        rbm.hybrid_model(torch.zeros(2, 4), torch.tensor([0, 1]), alpha=-1.0)
    with pytest.raises(ValueError, match="needs the joint's chains"):
        rbm.hybrid_model(torch.zeros(2, 4), torch.tensor([0, 1]), alpha=0.5)
    with pytest.raises(TypeError, match="NumPy array"):
        rbm.conditional_logits("0101")
    for args in [(0, 2, 2), (3, 2, 1), (3, 2.5, 2), (True, 2, 2)]:
        with pytest.raises(ValueError, match="must be an int"):
            ClassificationRBM(*args)

    # inside SVI: Pyro's validation refuses out-of-range labels; the joint site refuses bad states
    def model(xb, yb):
        with pyro.plate("data", len(xb)):
            pyro.sample("y", rbm.conditional(xb), obs=yb)

    svi = SVI(model, lambda *a: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    with pytest.raises(ValueError):
        svi.step(torch.zeros(2, 4), torch.tensor([0, 5]))
    chains = PersistentChains(rbm.joint, 3)

    def joint_model(z):
        with pyro.plate("data", len(z)):
            pyro.sample("xy", rbm.generative(chains), obs=z)

    svi = SVI(joint_model, lambda *a: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    with pytest.raises(ValueError, match="value: .*one-hot"):
        svi.step(torch.zeros(2, 7))
    with pytest.raises(ValueError, match="value: values contain NaN"):
        svi.step(torch.tensor([[0.0, float("nan"), 1.0, 0.0, 1.0, 0.0, 0.0]]))
    # CD chains start at the data: they run on the joint as well
    cd = ContrastiveDivergence(rbm.joint, steps=2)
    assert cd.advance(rbm.join(torch.ones(3, 4), torch.tensor([0, 1, 2]))).shape == (3, 7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    rbm = ClassificationRBM(6, 5, 3).cuda()
    x = (torch.rand(8, 6, device="cuda") < 0.5).float()
    y = torch.randint(3, (8,), device="cuda")
    assert rbm.predict(x).device.type == "cuda"
    chains = PersistentChains(rbm.joint, 10)
    trace = poutine.trace(rbm.hybrid_model).get_trace(x, y, chains, alpha=0.5)
    (-trace.log_prob_sum()).backward()
    assert rbm.weight.grad.device.type == "cuda"
    on_cuda = float(exact_log_partition(rbm.joint))
    assert on_cuda == pytest.approx(float(exact_log_partition(rbm.cpu().joint)), rel=1e-5)
