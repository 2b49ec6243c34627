"""The RNN-RBM against enumeration on tiny models, its BPTT gradient and its CD training (issue 16)."""

import math

import numpy as np
import pyro
import pytest
import torch
from helpers import all_states
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.energy.rnn_rbm import RNNRBM, RNNRBMFrameDistribution


def assert_close(actual, expected, rtol=1e-6, atol=1e-8):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


def random_rnn_rbm(nv=3, nh=4, nu=2, scale=0.7, dtype=torch.float64):
    model = RNNRBM(nv, nh, nu, init_std=scale).to(dtype)
    with torch.no_grad():
        for name in ("visible_bias", "hidden_bias", "recurrent_bias", "initial_state"):
            getattr(model, name).normal_(0, scale)
    return model


def brute_states(model, seq):
    """u_{t-1} for every frame, by the recurrence written out: u_t = tanh(b_u + W_uu^T u_{t-1} + W_vu^T v_t)."""
    u = model.initial_state.expand(*seq.shape[:-2], -1)
    out = []
    for t in range(seq.shape[-2]):
        out.append(u)
        u = torch.tanh(model.recurrent_bias + u @ model.recurrent_weight + seq[..., t, :] @ model.input_weight)
    return torch.stack(out, -2)


def brute_energy(model, v, h, u_prev):
    b = model.visible_bias + u_prev @ model.visible_bias_weight
    c = model.hidden_bias + u_prev @ model.hidden_bias_weight
    return -((v * b).sum(-1) + (h * c).sum(-1) + ((v @ model.weight) * h).sum(-1))


def brute_log_prob(model, v, u_prev):
    """log p(v | u_prev) by summing exp(-E) over all (v, h) pairs; v, u_prev: (N, .)."""
    vs, hs = all_states(model.n_visible, model.weight), all_states(model.n_hidden, model.weight)
    vv, hh = vs[:, None].expand(-1, len(hs), -1), hs[None].expand(len(vs), -1, -1)
    e_all = brute_energy(model, vv[None], hh[None], u_prev[:, None, None])  # (N, 2^nv, 2^nh)
    e_v = brute_energy(model, v[:, None], hs[None], u_prev[:, None])  # (N, 2^nh)
    return torch.logsumexp(-e_v, -1) - torch.logsumexp(-e_all.flatten(1), -1)


def rotating_sequences(nv=6, length=6):
    """Every binary pattern of nv bits, rotated one place per frame: (2^nv, length, nv)."""
    start = all_states(nv)
    return torch.stack([start.roll(t, -1) for t in range(length)], 1)


# ------------------------------------------------------------------------------------ exactness
def test_frame_free_energy_and_log_partition_match_brute_force():
    model = random_rnn_rbm()
    u_prev = torch.randn(5, 2, dtype=torch.float64)
    v, h = all_states(3, model.weight), all_states(4, model.weight)
    vv, hh = v[:, None, None].expand(-1, 5, 16, -1), h.expand(8, 5, -1, -1)
    e = brute_energy(model, vv, hh, u_prev[None, :, None])  # (8 frames, 5 states, 16 hidden states)
    assert_close(model.energy(vv, hh, u_prev[None, :, None]), e.detach())
    assert_close(model.free_energy(v[:, None], u_prev), -torch.logsumexp(-e, -1).detach())
    log_z = model.exact_log_partition(u_prev)
    assert log_z.requires_grad
    assert_close(log_z, torch.logsumexp(-e.transpose(0, 1).flatten(1), -1).detach())
    # enumerating the hidden layer instead (n_visible > n_hidden) gives the same conditional
    wide = random_rnn_rbm(nv=4, nh=2, nu=3)
    u_prev = torch.randn(6, 3, dtype=torch.float64)
    v = (torch.rand(6, 4) < 0.5).double()
    assert_close(wide.exact_log_prob(v, u_prev), brute_log_prob(wide, v, u_prev).detach())
    log_p = wide.exact_log_prob(all_states(4, wide.weight)[:, None], u_prev)  # (16, 6)
    assert_close(torch.logsumexp(log_p, 0).detach(), torch.zeros(6, dtype=torch.float64), atol=1e-10)


def test_exact_sequence_log_likelihood_is_the_sum_of_brute_force_conditionals():
    model = random_rnn_rbm(nv=3, nh=2, nu=2, scale=1.0)
    seqs = (torch.rand(4, 5, 3) < 0.5).double()
    u_prev = brute_states(model, seqs)
    assert_close(model.recurrent_states(seqs), u_prev.detach())
    expected = brute_log_prob(model, seqs.reshape(-1, 3), u_prev.reshape(-1, 2)).reshape(4, 5).sum(-1)
    ll = model.exact_log_likelihood(seqs)
    assert ll.shape == (4,) and ll.requires_grad
    assert_close(ll, expected.detach())
    assert_close(model.exact_log_likelihood(seqs[1]), expected[1].detach())  # unbatched
    # a distribution over sequences: every sequence of 3 frames together has probability one
    frames = all_states(3, model.weight)
    every = torch.cartesian_prod(*[torch.arange(8)] * 3)  # (512, 3) frame indices
    total = torch.logsumexp(model.exact_log_likelihood(frames[every]), 0)
    assert_close(total.detach(), torch.tensor(0.0, dtype=torch.float64), atol=1e-10)


def test_gibbs_and_generation_reach_the_exact_conditionals():
    torch.manual_seed(0)
    model = random_rnn_rbm(nv=3, nh=2, nu=2, scale=1.2)
    v = all_states(3, model.weight)
    n = 20000
    # the first frame of generated sequences follows p(v_0 | u_0), the second p(v_1 | u_0, v_0)
    gen = model.generate(2, gibbs_steps=20, num_sequences=n)
    assert gen.shape == (n, 2, 3)
    probs0 = model.exact_log_prob(v, model.initial_state).exp().detach()
    codes = (gen * 2 ** torch.arange(3)).sum(-1).long()
    freq = torch.bincount(codes[:, 0], minlength=8).double() / n
    assert 0.5 * (freq - probs0).abs().sum() < 0.025
    u1 = model.step(model.initial_state, v)  # (8, nu): the state after each first frame
    probs1 = model.exact_log_prob(v[:, None], u1).exp().detach().T  # (first frame, second frame)
    joint = torch.bincount(codes[:, 0] * 8 + codes[:, 1], minlength=64).double().reshape(8, 8) / n
    assert 0.5 * (joint - probs0[:, None] * probs1).abs().sum() < 0.04
    # Gibbs sweeps and the frame distribution's draws
    u_prev = torch.randn(2, 2, dtype=torch.float64)
    probs = model.exact_log_prob(v[:, None], u_prev).exp().detach().T  # (2 states, 8 frames)
    states = model.gibbs((torch.rand(n, 2, 3) < 0.5).double(), u_prev, steps=20)
    samples = model.distribution(u_prev, sample_steps=20).sample((n,))
    assert samples.shape == (n, 2, 3)
    for draws in (states, samples):
        codes = (draws * 2 ** torch.arange(3)).sum(-1).long()
        for j in range(2):
            freq = torch.bincount(codes[:, j], minlength=8).double() / n
            assert 0.5 * (freq - probs[j]).abs().sum() < 0.025


# ------------------------------------------------------------------------------------ gradients
def _grads(model):
    out = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    return out


def test_exact_negative_phase_gives_the_gradient_of_the_exact_log_likelihood():
    """CD-infinity: the positive phase at the data and the negative phase the exact expectation under each frame's
    RBM, back-propagated through time, is the gradient of the exact sequence log-likelihood in every parameter."""
    torch.manual_seed(1)
    model = random_rnn_rbm(nv=3, nh=4, nu=2, scale=0.6)
    seqs = (torch.rand(6, 4, 3) < 0.4).double()
    model.exact_log_likelihood(seqs).sum().backward()
    exact = _grads(model)
    assert all(g.abs().max() > 1e-3 for g in exact.values())  # every parameter, the RNN's too, has a gradient
    # surrogate: -F(v_t) - E_{p(v | u_{t-1})}[-F(v)] with the expectation's weights held fixed
    vs = all_states(3, model.weight)
    u_prev = model.recurrent_states(seqs)  # (6, 4, nu), in the graph
    neg_free_data = -model.free_energy(seqs, u_prev)
    neg_free_all = -model.free_energy(vs[:, None, None], u_prev)  # (8, 6, 4)
    weights = torch.softmax(neg_free_all, 0).detach()
    (neg_free_data - (weights * neg_free_all).sum(0)).sum().backward()
    for name, g in _grads(model).items():
        assert_close(g, exact[name], atol=1e-10)
    # the model with exact=True, through Trace_ELBO: the same gradient (the loss is -log p)
    guide = lambda s: None  # noqa: E731
    loss = Trace_ELBO().differentiable_loss(lambda s: model.model(s, exact=True), guide, seqs)
    loss.backward()
    for name, g in _grads(model).items():
        assert_close(-g, exact[name])
    # CD-k with long chains from many copies of every frame approaches the exact gradient
    reps = 500
    loss = Trace_ELBO().differentiable_loss(lambda s: model.model(s, cd_steps=30), guide, seqs.repeat(reps, 1, 1))
    (loss / reps).backward()
    for name, g in _grads(model).items():
        err = (-g - exact[name]).abs().max().item()
        print(f"{name}: max |CD-30 - exact| = {err:.4f} (exact max {exact[name].abs().max().item():.3f})")
        assert err < 0.05 * max(1.0, exact[name].abs().max().item())


def test_cd_value_is_the_negative_free_energy():
    model = random_rnn_rbm()
    seqs = (torch.rand(3, 4, 3) < 0.5).double()
    trace = pyro.poutine.trace(model.model).get_trace(seqs)
    assert [n for n in trace.nodes if n.startswith("v_")] == [f"v_{t}" for t in range(4)]
    u_prev = model.recurrent_states(seqs)
    for t in range(4):
        site = trace.nodes[f"v_{t}"]
        assert isinstance(site["fn"], RNNRBMFrameDistribution) and site["is_observed"]
        with torch.no_grad():
            assert_close(site["fn"].log_prob(seqs[:, t]), -model.free_energy(seqs[:, t], u_prev[:, t]))


# ------------------------------------------------------------------------------------ training
def test_svi_learns_a_rotating_pattern_and_generation_reproduces_it():
    torch.manual_seed(3)
    pyro.set_rng_seed(3)
    seqs = rotating_sequences(6, 6)
    n = len(seqs)
    model = RNNRBM(6, 8, 8, init_std=0.1)

    def ll():
        with torch.no_grad():
            return float(model.exact_log_likelihood(seqs).mean())

    before = ll()
    svi = SVI(lambda s: model.model(s, num_sequences=n), lambda s: None, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(100):
        svi.step(seqs[torch.randint(n, (32,))])
    after = ll()
    best = -6 * math.log(2)  # the first frame is uniform; the rest follow from it
    print(f"exact log p(sequence): {before:.3f} -> {after:.3f} (uniform {6 * best:.3f}, best {best:.3f})")
    assert before < 5.5 * best and after > best - 2.0
    # generation continues the rotation from every first frame
    start = all_states(6)
    generated = model.generate(5, gibbs_steps=20, init=start[:, None])
    assert generated.shape == (64, 5, 6)
    expected = torch.stack([start.roll(t, -1) for t in range(1, 6)], 1)
    accuracy = float((generated == expected).float().mean())
    print(f"generated bits on the pattern: {accuracy:.3f}")
    assert accuracy > 0.93
    # sampling the Pyro program: the frames rotate too
    with torch.no_grad():
        drawn = model.model(num_steps=4, num_sequences=200)
    assert drawn.shape == (200, 4, 6)
    rotates = float((drawn[:, 1:] == drawn[:, :-1].roll(1, -1)).all(-1).float().mean())
    print(f"sampled frames that rotate the one before: {rotates:.3f}")
    assert rotates > 0.8
    assert model.model(num_steps=3).shape == (3, 6)
    assert model.generate(2).shape == (2, 6)


# ------------------------------------------------------------------------------------ input
def test_numpy_input_is_converted():
    model = random_rnn_rbm(dtype=torch.float32)
    seq = np.array([[[0, 1, 1], [1, 0, 0]]], dtype=np.uint8)
    expected = model.exact_log_likelihood(torch.as_tensor(seq, dtype=torch.float32))
    assert_close(model.exact_log_likelihood(seq), expected)
    assert model.free_energy(np.array([1, 0, 1]), np.zeros(2)).dtype == torch.float32
    assert model.generate(2, init=seq).shape == (1, 2, 3)


def test_bad_input_raises_value_errors():
    model = RNNRBM(3, 2, 2)
    ok_seq = torch.zeros(4, 5, 3)
    bad = ok_seq.clone()
    bad[1, 3, 0] = 0.5
    with pytest.raises(ValueError, match=r"v_3: .*binary.*0\.5"):
        model.model(bad)
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="v_3: values contain NaN"):
        model.model(bad)
    with pytest.raises(ValueError, match="sequences: expected shape"):
        model.model(torch.zeros(4, 5, 2))
    with pytest.raises(ValueError, match="num_steps"):
        model.model()
    with pytest.raises(ValueError, match="sequences: .*binary"):
        model.exact_log_likelihood(torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="sequences: expected shape"):
        model.exact_log_likelihood(torch.zeros(3))
    with pytest.raises(ValueError, match="u_prev: expected the last dimension to be n_recurrent=2"):
        model.free_energy(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="u_prev: values contain NaN"):
        model.exact_log_partition(torch.tensor([float("nan"), 0.0]))
    with pytest.raises(ValueError, match="v_t: expected the last dimension to be n_visible=3"):
        model.free_energy(torch.zeros(4), torch.zeros(2))
    with pytest.raises(ValueError, match="init: .*binary"):
        model.generate(3, init=torch.full((2, 3), 0.3))
    with pytest.raises(ValueError, match="max_units=3"):
        RNNRBM(5, 6, 2).exact_log_partition(torch.zeros(2), max_units=3)
    with pytest.raises(ValueError, match="num_steps"):
        model.generate(-1)
    with pytest.raises(ValueError, match="gibbs_steps"):
        model.generate(2, gibbs_steps=0)
    with pytest.raises(ValueError, match="cd_steps"):
        model.distribution(torch.zeros(2), cd_steps=0)
    with pytest.raises(TypeError, match="NumPy array"):
        model.exact_log_likelihood("101")
    for args in [(0, 2, 2), (3, 0, 2), (3, 2, 0), (3, 2, 1.5)]:
        with pytest.raises(ValueError, match="must be an int"):
            RNNRBM(*args)

    # inside SVI, with Pyro's validation on: the error names the frame's site
    svi = SVI(model.model, lambda s: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    bad = ok_seq.clone()
    bad[0, 2, 1] = 3.0
    with pytest.raises(ValueError, match="v_2: .*binary"):
        svi.step(bad)
    dist = model.distribution(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="value: .*binary"):
        dist.log_prob(torch.full((4, 3), 0.3))
    with pytest.raises(ValueError, match="value shape"):
        dist.log_prob(torch.zeros(5, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    model = RNNRBM(4, 3, 2).cuda()
    seqs = (torch.rand(5, 6, 4, device="cuda") < 0.5).float()
    Trace_ELBO().differentiable_loss(model.model, lambda s: None, seqs).backward()
    assert model.recurrent_weight.grad.device.type == "cuda"
    assert model.exact_log_likelihood(seqs).device.type == "cuda"
    assert model.generate(3, init=seqs).device.type == "cuda"
