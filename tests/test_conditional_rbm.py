"""The conditional RBM for sequences against enumeration on tiny models, and its CD training (issue 16)."""

import math

import numpy as np
import pyro
import pytest
import torch
from helpers import all_states
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl.energy.conditional_rbm import ConditionalRBM, ConditionalRBMDistribution


def assert_close(actual, expected, rtol=1e-6, atol=1e-8):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


def random_crbm(nv=3, nh=4, order=2, scale=0.7, visible="bernoulli", dtype=torch.float64):
    crbm = ConditionalRBM(nv, nh, order, visible=visible, init_std=scale).to(dtype)
    with torch.no_grad():
        crbm.visible_bias.normal_(0, scale)
        crbm.hidden_bias.normal_(0, scale)
    return crbm


def random_history(crbm, n, binary=True):
    shape = (n, crbm.order, crbm.n_visible)
    return (torch.rand(shape) < 0.5).double() if binary else torch.randn(shape, dtype=torch.float64)


def brute_energy(crbm, v, h, history):
    """E(v, h | history) from the formula, with the lags summed one by one (history[..., -k, :] is v_{t-k})."""
    b, c = crbm.visible_bias, crbm.hidden_bias
    for k in range(1, crbm.order + 1):
        b = b + history[..., -k, :] @ crbm.visible_history_weight[k - 1]
        c = c + history[..., -k, :] @ crbm.hidden_history_weight[k - 1]
    coupling = ((v @ crbm.weight) * h).sum(-1) + (h * c).sum(-1)
    if crbm.visible == "bernoulli":
        return -((v * b).sum(-1) + coupling)
    return 0.5 * ((v - b) ** 2).sum(-1) - coupling


def shifting_sequences(nv=6, length=8):
    """Every binary pattern of nv bits, rotated one place per frame: (2^nv, length, nv)."""
    start = all_states(nv)
    return torch.stack([start.roll(t, -1) for t in range(length)], 1)


# ------------------------------------------------------------------------------------ exactness
@pytest.mark.parametrize("visible", ["bernoulli", "gaussian"])
def test_conditional_free_energy_matches_brute_force(visible):
    crbm = random_crbm(visible=visible)
    history = random_history(crbm, 5, binary=visible == "bernoulli")
    v = all_states(3, crbm.weight) if visible == "bernoulli" else torch.randn(8, 3, dtype=torch.float64)
    h = all_states(4, crbm.weight)
    vv = v[:, None, None].expand(-1, 5, 16, -1)
    hh = h.expand(8, 5, -1, -1)
    e = brute_energy(crbm, vv, hh, history[None, :, None])  # (8 frames, 5 histories, 16 hidden states)
    expected = -torch.logsumexp(-e, -1)
    assert_close(crbm.free_energy(v[:, None], history), expected.detach())
    assert_close(crbm.energy(vv, hh, history[None, :, None]), e.detach())


@pytest.mark.parametrize("nv, nh", [(3, 4), (4, 2)])  # enumerate the visible layer, then the hidden layer
def test_exact_conditional_log_partition_matches_brute_force(nv, nh):
    crbm = random_crbm(nv=nv, nh=nh, scale=1.0)
    history = random_history(crbm, 6)
    v, h = all_states(nv, crbm.weight), all_states(nh, crbm.weight)
    vv = v[:, None].expand(-1, len(h), -1)
    hh = h[None].expand(len(v), -1, -1)
    e = brute_energy(crbm, vv[None], hh[None], history[:, None, None])  # (6, 2^nv, 2^nh)
    brute = torch.logsumexp(-e.flatten(1), -1)
    log_z = crbm.exact_log_partition(history)
    assert_close(log_z, brute.detach())
    assert log_z.requires_grad
    # p(v | history) sums to one for every history
    log_p = crbm.exact_log_prob(v[:, None], history)  # (2^nv, 6)
    assert_close(torch.logsumexp(log_p, 0).detach(), torch.zeros(6, dtype=torch.float64), atol=1e-10)


def test_gaussian_conditional_density_integrates_to_one():
    crbm = random_crbm(nv=2, nh=3, order=1, visible="gaussian", scale=0.6)
    history = random_history(crbm, 3, binary=False)
    grid = torch.linspace(-9, 9, 361, dtype=torch.float64)
    points = torch.cartesian_prod(grid, grid)  # (361^2, 2)
    with torch.no_grad():
        density = crbm.exact_log_prob(points[:, None], history).exp()  # (points, 3)
    integral = density.sum(0) * (grid[1] - grid[0]) ** 2
    assert_close(integral, torch.ones(3, dtype=torch.float64), atol=1e-6)


def test_gibbs_reaches_the_exact_conditional():
    torch.manual_seed(0)
    crbm = random_crbm(nv=3, nh=2, scale=1.2)
    history = random_history(crbm, 2)
    v = all_states(3, crbm.weight)
    probs = crbm.exact_log_prob(v[:, None], history).exp().detach().T  # (2 histories, 8 states)
    n = 20000
    start = (torch.rand(n, 2, 3) < 0.5).double()
    states = crbm.gibbs(start, history, steps=40)
    samples = crbm.distribution(history).sample((n,))
    assert samples.shape == (n, 2, 3)
    for draws in (states, samples):
        codes = (draws * 2 ** torch.arange(3)).sum(-1).long()
        for j in range(2):
            freq = torch.bincount(codes[:, j], minlength=8).double() / n
            assert 0.5 * (freq - probs[j]).abs().sum() < 0.025


def test_gaussian_gibbs_matches_the_exact_mean():
    torch.manual_seed(1)
    crbm = random_crbm(nv=2, nh=3, order=1, visible="gaussian", scale=0.8)
    history = random_history(crbm, 1, binary=False)
    # E[v] = sum_h p(h) (b_t + W h), p(h) proportional to exp(c_t.h + b_t.W h + |W h|^2 / 2)
    with torch.no_grad():
        b, c = crbm.dynamic_biases(history)
        h = all_states(3, crbm.weight)
        wh = h @ crbm.weight.T
        p_h = torch.softmax(h @ c[0] + wh @ b[0] + 0.5 * (wh * wh).sum(-1), 0)
        mean = b[0] + p_h @ wh
    draws = crbm.gibbs(torch.zeros(20000, 2, dtype=torch.float64), history[0], steps=50)
    assert torch.allclose(draws.mean(0), mean, atol=0.05), (draws.mean(0), mean)


# ------------------------------------------------------------------------------------ training
def test_cd_gradient_approaches_the_exact_gradient():
    torch.manual_seed(2)
    crbm = random_crbm(nv=3, nh=2, order=2, scale=0.6)
    history = random_history(crbm, 20)
    frames = (torch.rand(20, 3) < 0.4).double()
    params = list(crbm.parameters())
    crbm.exact_log_prob(frames, history).mean().backward()
    exact = [p.grad.clone() for p in params]
    crbm.zero_grad()
    reps = 1000  # many CD-30 chains from every datum average the negative phase
    dist = crbm.distribution(history.repeat(reps, 1, 1), cd_steps=30)
    dist.log_prob(frames.repeat(reps, 1)).mean().backward()
    for (name, p), g in zip(crbm.named_parameters(), exact):
        err = (p.grad - g).abs().max().item()
        print(f"{name}: max |CD - exact| = {err:.4f} (exact max {g.abs().max().item():.3f})")
        assert err < 0.012
    # exact=True gives the exact gradient itself
    crbm.zero_grad()
    crbm.distribution(history, exact=True).log_prob(frames).mean().backward()
    for p, g in zip(params, exact):
        assert_close(p.grad, g)


def test_cd_training_learns_a_shifting_pattern_and_generation_reproduces_it():
    torch.manual_seed(3)
    pyro.set_rng_seed(3)
    crbm = ConditionalRBM(6, 8, order=1)
    history, frames = crbm.windows(shifting_sequences(6, 8))
    n = len(frames)

    def ll():
        with torch.no_grad():
            return float(crbm.exact_log_prob(frames, history).mean())

    def model(hist, v):
        with pyro.plate("frames", n, subsample=torch.arange(len(v))):
            pyro.sample("v", crbm.distribution(hist, cd_steps=1), obs=v)

    before = ll()
    svi = SVI(model, lambda *a: None, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(500):
        idx = torch.randint(n, (64,))
        svi.step(history[idx], frames[idx])
    after = ll()
    print(f"exact log p(v_t | v_t-1): {before:.3f} -> {after:.3f} (uniform: {-6 * math.log(2):.3f})")
    assert before < -4.0 and after > -0.2
    # generation continues the rotation from every starting pattern
    start = all_states(6)
    generated = crbm.generate(start[:, None], num_steps=6, gibbs_steps=20)
    assert generated.shape == (64, 6, 6)
    expected = torch.stack([start.roll(t, -1) for t in range(1, 7)], 1)
    accuracy = float((generated == expected).float().mean())
    previous = torch.cat([start[:, None], generated[:, :-1]], 1)
    consistent = float((generated == previous.roll(1, -1)).all(-1).float().mean())
    print(f"generated bits on the pattern: {accuracy:.3f}; frames that rotate the one before: {consistent:.3f}")
    assert accuracy > 0.93 and consistent > 0.9
    # an unbatched history gives an unbatched sequence
    assert crbm.generate(start[5:6], 3).shape == (3, 6)


def test_windows_cut_histories_in_time_order():
    crbm = ConditionalRBM(2, 3, order=2)
    seq = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    history, frames = crbm.windows(seq)
    assert torch.equal(history, torch.stack([seq[0:2], seq[1:3]]))
    assert torch.equal(frames, seq[2:4])
    history, frames = crbm.windows(np.stack([seq.numpy(), seq.numpy()]))
    assert history.shape == (4, 2, 2) and frames.shape == (4, 2)
    # the lag-k weights act on history[..., -k, :]
    with torch.no_grad():
        crbm.visible_history_weight.zero_()
        crbm.visible_history_weight[0] = torch.eye(2)  # lag 1
    b, _ = crbm.dynamic_biases(seq[None, 0:2])
    assert torch.equal(b.detach()[0], crbm.visible_bias.detach() + seq[1])


# ------------------------------------------------------------------------------------ input
def test_numpy_input_is_converted():
    crbm = random_crbm(dtype=torch.float32)
    history = np.array([[[0, 1, 1], [1, 0, 0]]], dtype=np.uint8)
    v = np.array([[1, 1, 0]], dtype=np.int64)
    expected = crbm.free_energy(torch.tensor([[1.0, 1.0, 0.0]]), torch.as_tensor(history, dtype=torch.float32))
    assert_close(crbm.free_energy(v, history), expected)
    assert crbm.exact_log_prob(v, history).dtype == torch.float32
    assert crbm.generate(history, 2).shape == (1, 2, 3)
    assert crbm.distribution(history).log_prob(v).shape == (1,)


def test_bad_input_raises_value_errors():
    crbm = ConditionalRBM(3, 2, order=2)
    ok_history, ok_v = torch.zeros(4, 2, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"history: expected shape batch \+ \(order, n_visible\)"):
        crbm.free_energy(ok_v, torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match="history: expected shape"):
        crbm.distribution(torch.zeros(4, 2, 4))
    with pytest.raises(ValueError, match="history: .*binary.*0.5"):
        crbm.generate(torch.full((2, 3), 0.5), 3)
    with pytest.raises(ValueError, match="history: values contain NaN"):
        crbm.exact_log_partition(torch.tensor([[[0.0, 1.0, 0.0], [float("nan"), 0.0, 0.0]]]))
    with pytest.raises(ValueError, match="v: expected the last dimension to be n_visible=3"):
        crbm.free_energy(torch.zeros(4, 2), ok_history)
    with pytest.raises(ValueError, match="v: .*binary.*2.0"):
        crbm.exact_log_prob(torch.full((4, 3), 2.0), ok_history)
    with pytest.raises(ValueError, match="sequences: expected shape"):
        crbm.windows(torch.zeros(2, 3))  # T = 2 is not more than order = 2
    with pytest.raises(ValueError, match="max_units=3"):
        ConditionalRBM(5, 6).exact_log_partition(torch.zeros(1, 1, 5), max_units=3)
    with pytest.raises(ValueError, match="num_steps"):
        crbm.generate(ok_history, -1)
    with pytest.raises(ValueError, match="cd_steps"):
        crbm.distribution(ok_history, cd_steps=0)
    with pytest.raises(TypeError, match="NumPy array"):
        crbm.free_energy("101", ok_history)
    with pytest.raises(ValueError, match="visible must be one of"):
        ConditionalRBM(3, 2, visible="poisson")
    for args in [(0, 2), (3, 0), (3, 2, 0), (3, 2, 1.5)]:
        with pytest.raises(ValueError, match="must be an int"):
            ConditionalRBM(*args)
    # Gaussian units take real values, but not NaN
    gauss = ConditionalRBM(3, 2, order=1, visible="gaussian")
    assert gauss.free_energy(torch.randn(4, 3), torch.randn(4, 1, 3)).shape == (4,)
    with pytest.raises(ValueError, match="v: values contain NaN"):
        gauss.free_energy(torch.tensor([[0.0, float("inf"), 1.0]]), torch.zeros(1, 1, 3))

    # inside SVI, with Pyro's validation on
    def model(hist, v):
        with pyro.plate("frames", len(v)):
            pyro.sample("v", crbm.distribution(hist), obs=v)

    svi = SVI(model, lambda *a: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    with pytest.raises(ValueError, match="value: .*binary"):
        svi.step(ok_history, torch.full((4, 3), 0.3))
    with pytest.raises(ValueError, match="value: values contain NaN"):
        svi.step(ok_history, torch.tensor([[0.0, float("nan"), 1.0]] * 4))
    with pytest.raises(ValueError, match="value: expected the last dimension"):
        svi.step(ok_history, torch.zeros(4, 2))
    assert isinstance(crbm.distribution(ok_history), ConditionalRBMDistribution)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    crbm = ConditionalRBM(4, 3, order=2).cuda()
    history = (torch.rand(5, 2, 4, device="cuda") < 0.5).float()
    v = (torch.rand(5, 4, device="cuda") < 0.5).float()
    crbm.distribution(history).log_prob(v).sum().backward()
    assert crbm.weight.grad.device.type == "cuda"
    assert crbm.exact_log_prob(v, history).device.type == "cuda"
    assert crbm.generate(history, 3).device.type == "cuda"
