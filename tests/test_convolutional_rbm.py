"""The convolutional RBM with probabilistic max pooling against enumeration on tiny images, and its training
(issue 16)."""

import io
import itertools
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
    NegativePhase,
    ParallelTempering,
    PersistentChains,
    ais_log_partition,
    exact_log_partition,
)
from dgm_ppl.energy.convolutional_rbm import ConvolutionalRBM, ConvolutionalRBMChains
from dgm_ppl.energy.protocol import AnnealingPath, Enumeration


def assert_close(actual, expected, rtol=1e-6, atol=1e-8):
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


def random_crbm(shape=(4, 4), k=2, r=3, c=2, scale=0.8, dtype=torch.float64):
    crbm = ConvolutionalRBM(shape, k, r, c, init_std=scale).to(dtype)
    with torch.no_grad():
        crbm.hidden_bias.normal_(0, scale)
        crbm.visible_bias.normal_(0, scale)
    return crbm


def detection_inputs(crbm, v):
    """I^k_ij = sum_ab W^k_ab v_{i+a, j+b} + b_k written out, for images v (..., H, W): (..., K, H', W')."""
    (dh, dw), r = crbm.detection_shape, crbm.filter_size
    w = crbm.weight
    out = 0
    for a in range(r):
        for b in range(r):
            out = out + w[:, a, b, None, None] * v[..., None, a : a + dh, b : b + dw]
    return out + crbm.hidden_bias[:, None, None]


def valid_hidden(crbm):
    """Every hidden configuration with at most one unit on per pooling block, as detection layers (n, K, H', W')."""
    k, c = crbm.n_filters, crbm.pool_size
    ph, pw = crbm.pooling_shape
    blocks = [(f, i, j) for f in range(k) for i in range(ph) for j in range(pw)]
    configs = []
    for choice in itertools.product(range(c * c + 1), repeat=len(blocks)):
        h = torch.zeros(k, *crbm.detection_shape, dtype=crbm.weight.dtype)
        for (f, i, j), s in zip(blocks, choice):
            if s:
                h[f, i * c + (s - 1) // c, j * c + (s - 1) % c] = 1
        configs.append(h)
    return torch.stack(configs)


def neg_energy(crbm, v, h):
    """-E(v, h) from the paper's formula, images v (..., H, W) against detection layers h (..., K, H', W')."""
    return (detection_inputs(crbm, v) * h).sum((-3, -2, -1)) + crbm.visible_bias * v.sum((-2, -1))


def log_joint_table(crbm):
    """-E over all (v, valid h) of a tiny model: (2^n_visible, n_configs), with the images and configurations."""
    v = all_states(crbm.n_visible, crbm.weight).reshape(-1, *crbm.image_shape)
    h = valid_hidden(crbm)
    x = detection_inputs(crbm, v).flatten(1)  # (n_v, n_hidden)
    return x @ h.flatten(1).T + crbm.visible_bias * v.sum((-2, -1))[:, None], v, h


def exact_visible_probs(crbm):
    with torch.no_grad():
        table, _, _ = log_joint_table(crbm)
        return torch.softmax(torch.logsumexp(table, 1), 0)


def state_index(v):
    return (v * 2 ** torch.arange(v.shape[-1], dtype=v.dtype)).sum(-1).long()


def tv(counts, probs):
    return 0.5 * (counts / counts.sum() - probs).abs().sum().item()


# ------------------------------------------------------------------------------------ structure
def test_the_model_satisfies_the_free_energy_protocol():
    crbm = ConvolutionalRBM((8, 8), 5, 3, 2)
    assert isinstance(crbm, FreeEnergyModel)
    assert crbm.n_visible == 64 and crbm.detection_shape == (6, 6) and crbm.pooling_shape == (3, 3)
    assert crbm.n_hidden == 5 * 36 and crbm.n_pools == 5 * 9
    assert isinstance(crbm.annealing_path(), AnnealingPath)
    assert isinstance(crbm.enumeration(), Enumeration)
    chains = PersistentChains(crbm, 7)
    assert type(chains) is ConvolutionalRBMChains and chains.state.shape == (7, 64)
    assert chains.hidden.shape == (7, crbm.n_hidden)
    crbm.check_hidden(chains.hidden)  # at most one unit on per block
    assert isinstance(crbm.distribution(chains), EnergyBasedDistribution)
    assert isinstance(crbm(chains), EnergyBasedDistribution)
    for args in [((8, 8), 0, 3), ((8, 8), 2, 9), ((8, 8), 2, 4, 2), ((8,), 2, 3), ((8, 8), 2, 3, 4), ((8, 8), 2.0, 3)]:
        with pytest.raises(ValueError):
            ConvolutionalRBM(*args)


# ------------------------------------------------------------------------------------ exactness
def test_free_energy_and_conditionals_match_brute_force_over_the_hidden_units():
    torch.manual_seed(0)
    crbm = random_crbm(shape=(4, 6), k=2, r=3, c=2, scale=1.0)  # detection 2 x 4: two blocks per filter
    h = valid_hidden(crbm)
    assert len(h) == 5**4
    v = (torch.rand(6, 4, 6) < 0.5).double()
    with torch.no_grad():
        log_joint = neg_energy(crbm, v[:, None], h)  # (6, 625)
        assert_close(-crbm.energy(v[:, None].flatten(-2), crbm.hidden_vector(h)), log_joint)
        assert_close(-crbm.energy([v[:, None], h]), log_joint)  # images and detection layers accepted
        assert_close(crbm.free_energy(v), -torch.logsumexp(log_joint, 1))
        assert_close(crbm.unnormalized_log_prob(v.flatten(1)), torch.logsumexp(log_joint, 1))
        post = torch.softmax(log_joint, 1)  # p(h | v) over the valid configurations
        assert_close(crbm.hidden_probs(v), torch.einsum("bn,nkij->bkij", post, h))
        pooled = h.reshape(len(h), 2, 1, 2, 2, 2).amax((3, 5))  # OR over each 2 x 2 block: (n, K, 1, 2)
        assert_close(crbm.pooling_probs(v), torch.einsum("bn,nkij->bkij", post, pooled))
    # a configuration with two units on in one block has probability zero
    bad = h[0].clone()
    bad[0, 0, 0] = bad[0, 1, 1] = 1
    assert math.isinf(float(crbm.energy(v[0], bad).detach()))
    with pytest.raises(ValueError, match="more than one detection unit"):
        crbm.visible_probs(bad)


def test_visible_conditional_matches_enumeration():
    torch.manual_seed(1)
    crbm = random_crbm(shape=(3, 3), k=2, r=2, c=2, scale=1.0)
    v = all_states(9, crbm.weight)
    with torch.no_grad():
        for h in valid_hidden(crbm)[[0, 3, 7, 12, 24]]:
            log_p = torch.log_softmax(neg_energy(crbm, v.reshape(-1, 3, 3), h), 0)  # p(v | h) over 512 states
            probs = crbm.visible_probs(h)
            factorial = (v * probs.log() + (1 - v) * (1 - probs).log()).sum(-1)
            assert_close(factorial, log_p)


def test_exact_log_partition_against_brute_force_over_visible_and_hidden():
    torch.manual_seed(2)
    crbm = random_crbm(shape=(4, 4), k=2, r=3, c=2)
    table, _, h = log_joint_table(crbm)
    assert table.shape == (2**16, 25)
    brute = torch.logsumexp(table.flatten(), 0)
    log_z = exact_log_partition(crbm)
    assert_close(log_z, brute.detach())
    assert crbm.log_z == pytest.approx(float(brute.detach()))
    # differentiable: the gradient of log Z is the model expectation of the sufficient statistics
    (g,) = torch.autograd.grad(log_z, crbm.hidden_bias)
    (g_brute,) = torch.autograd.grad(brute, crbm.hidden_bias)
    assert_close(g, g_brute)
    with pytest.raises(ValueError, match="2\\^16 states of the visible pixels"):
        exact_log_partition(crbm, max_units=15)


def test_ais_estimates_the_exact_log_partition():
    torch.manual_seed(3)
    crbm = random_crbm(shape=(4, 4), k=2, r=3, c=2)
    exact = float(exact_log_partition(crbm, record=False).detach())
    data = crbm.sample(200, steps=50)
    result = ais_log_partition(crbm, 100, 500, data=data)
    print(f"log Z: exact {exact:.4f}, AIS {result.log_z:.4f} +- {result.stderr:.4f}")
    assert result.log_z == pytest.approx(exact, abs=0.1)


def test_gibbs_sampler_reaches_the_exact_visible_distribution():
    torch.manual_seed(4)
    crbm = random_crbm(shape=(3, 3), k=2, r=2, c=2, scale=1.0)
    probs = exact_visible_probs(crbm)
    n = 20000
    exact = torch.multinomial(probs, n, replacement=True)
    floor = tv(torch.bincount(exact, minlength=len(probs)).double(), probs)
    v = crbm.gibbs(crbm.random_state(n), steps=40)
    gibbs_tv = tv(torch.bincount(state_index(v), minlength=len(probs)).double(), probs)
    print(f"TV: Gibbs {gibbs_tv:.4f}, exact draws {floor:.4f}")
    assert gibbs_tv < 1.5 * floor + 0.01
    # parallel tempering on the model's annealing path targets it too
    pt = ParallelTempering(crbm, 4000, steps=1, betas=4)
    for _ in range(30):
        pt.advance()
    floor = tv(torch.bincount(exact[:4000], minlength=len(probs)).double(), probs)
    pt_tv = tv(torch.bincount(state_index(pt.state[-1]), minlength=len(probs)).double(), probs)
    print(f"TV: parallel tempering {pt_tv:.4f}, exact draws {floor:.4f}")
    assert pt_tv < 1.5 * floor + 0.01


def test_block_draws_of_the_hidden_units_follow_p_h_given_v():
    torch.manual_seed(5)
    crbm = random_crbm(shape=(4, 6), k=1, r=3, c=2, scale=1.5)  # two blocks: 25 configurations
    layers = valid_hidden(crbm)
    h = layers.flatten(1)
    v = (torch.rand(4, 6) < 0.5).double()
    with torch.no_grad():
        post = torch.softmax(neg_energy(crbm, v, layers), 0)
    n = 20000
    codes = (h * 2 ** torch.arange(8, dtype=h.dtype)).sum(-1).long()
    lookup = torch.full((256,), -1, dtype=torch.long)
    lookup[codes] = torch.arange(len(h))
    floor = tv(torch.bincount(torch.multinomial(post, n, replacement=True), minlength=len(h)).double(), post)
    draws = {
        "sample_hidden": crbm.sample_hidden(v.flatten().expand(n, -1)),
        "draw_hidden": crbm.draw_hidden(crbm.hidden_probs(v).detach().expand(n, -1, -1, -1)),
    }
    for what, d in draws.items():
        d = crbm.detection_layers(d).flatten(1)  # block order -> (k, i, j)
        idx = lookup[(d * 2 ** torch.arange(8, dtype=d.dtype)).sum(-1).long()]
        assert (idx >= 0).all(), f"{what} drew an invalid configuration"
        err = tv(torch.bincount(idx, minlength=len(h)).double(), post)
        print(f"{what}: TV {err:.4f} (exact draws {floor:.4f})")
        assert err < 1.5 * floor + 0.01


class FixedStates(NegativePhase):
    """A negative phase that returns given states."""

    def __init__(self, model, states):
        super().__init__(model)
        self.states = states

    def advance(self, data=None, *, params=None):
        return self.states


def test_sml_gradient_is_the_exact_gradient_for_an_exact_negative_phase():
    torch.manual_seed(6)
    crbm = random_crbm(shape=(3, 3), k=2, r=2, c=2, scale=0.7)
    params = [crbm.weight, crbm.hidden_bias, crbm.visible_bias]
    data = (torch.rand(40, 9) < 0.4).double()
    # the surrogate's gradient is the positive phase less the chains' mean, term by term
    negatives = all_states(9, crbm.weight)[torch.randint(512, (30,))]
    crbm.distribution(FixedStates(crbm, negatives)).log_prob(data).mean().backward()
    sml = [p.grad.clone() for p in params]
    crbm.zero_grad()
    (crbm.unnormalized_log_prob(data).mean() - crbm.unnormalized_log_prob(negatives).mean()).backward()
    for g, p in zip(sml, params):
        assert_close(g, p.grad, rtol=1e-10, atol=1e-12)
    crbm.zero_grad()
    # exact draws from p(v) as the negative phase: the exact log-likelihood gradient, up to Monte Carlo error
    (crbm.unnormalized_log_prob(data).mean() - exact_log_partition(crbm, record=False)).backward()
    exact = [p.grad.clone() for p in params]
    crbm.zero_grad()
    probs = exact_visible_probs(crbm)
    draws = all_states(9, crbm.weight)[torch.multinomial(probs, 40000, replacement=True)]
    crbm.distribution(FixedStates(crbm, draws)).log_prob(data).mean().backward()
    for g, p in zip(exact, params):
        err = (p.grad - g).abs().max().item()
        print(f"max |SML - exact| = {err:.4f} (exact max {g.abs().max().item():.3f})")
        assert err < 0.03


# ------------------------------------------------------------------------------------ training
def bars(n, generator):
    """4 x 4 images: one random horizontal or vertical bar, 5% of the pixels flipped."""
    x = torch.zeros(n, 4, 4)
    idx = torch.randint(4, (n,), generator=generator)
    vertical = torch.rand(n, generator=generator) < 0.5
    x[torch.arange(n)[~vertical], idx[~vertical], :] = 1
    x[torch.arange(n)[vertical], :, idx[vertical]] = 1
    flip = torch.rand(n, 4, 4, generator=generator) < 0.05
    return torch.where(flip, 1 - x, x)


def train_steps(crbm, chains, data, steps, batch=50, lr=0.05):
    n = len(data)

    def model(xb):
        with pyro.plate("data", n, subsample=torch.arange(len(xb))):
            pyro.sample("x", crbm.distribution(chains), obs=crbm.check_data(xb))

    svi = SVI(model, lambda xb: None, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    for _ in range(steps):
        svi.step(data[torch.randint(n, (batch,))])
    return svi


def test_svi_with_persistent_chains_raises_the_exact_log_likelihood():
    torch.manual_seed(7)
    pyro.set_rng_seed(7)
    pyro.clear_param_store()
    data = bars(300, torch.Generator().manual_seed(0))
    crbm = ConvolutionalRBM((4, 4), 4, 3, 2, init_std=0.1).init_from_data(data)
    chains = PersistentChains(crbm, 100, init=crbm.check_data(data[:100]))

    def ll():
        with torch.no_grad():
            return float(crbm.unnormalized_log_prob(data).mean() - exact_log_partition(crbm, record=False))

    before = ll()
    train_steps(crbm, chains, data, 150)
    after = ll()
    print(f"exact log-likelihood: {before:.3f} -> {after:.3f}")
    assert after > before + 1.0


def test_sparsity_penalty_matches_its_definition_and_reaches_the_biases_only():
    torch.manual_seed(8)
    crbm = random_crbm(shape=(4, 6), k=2, r=3, c=2)
    v = (torch.rand(10, 4, 6) < 0.5).double()
    q = crbm.hidden_probs(v).reshape(10, 2, -1)
    expected = ((0.05 - q.mean((0, 2))) ** 2).sum()
    penalty = crbm.sparsity_penalty(v, 0.05)
    assert_close(penalty, expected.detach())
    penalty.backward()
    assert crbm.weight.grad is None and crbm.hidden_bias.grad is not None
    assert (crbm.hidden_bias.grad > 0).all() == bool((q.mean((0, 2)) > 0.05).all())
    crbm.sparsity_penalty(v, 0.05, biases_only=False).backward()
    assert crbm.weight.grad is not None
    with pytest.raises(ValueError, match="target"):
        crbm.sparsity_penalty(v, 1.5)


# ------------------------------------------------------------------------------------ input
def test_numpy_and_image_input_is_accepted():
    crbm = random_crbm(shape=(4, 4), dtype=torch.float32)
    x = (np.random.default_rng(0).random((3, 4, 4)) < 0.5).astype(np.uint8)
    expected = crbm.free_energy(torch.as_tensor(x, dtype=torch.float32).reshape(3, 16))
    assert_close(crbm.free_energy(x), expected)
    assert_close(crbm.free_energy(x.reshape(3, 16)), expected)
    assert crbm.check_data(x).shape == (3, 16) and crbm.check_data(x).dtype == torch.float32
    assert crbm.hidden_probs(x).shape == (3, 2, 2, 2)
    chains = PersistentChains(crbm, 3, init=x.reshape(3, 16))
    assert torch.equal(chains.state, torch.as_tensor(x, dtype=torch.float32).reshape(3, 16))
    assert crbm.persistent_chains(3, init=x).state.shape == (3, 16)  # images flattened
    assert crbm.distribution(chains).log_prob(x.reshape(3, 16)).shape == (3,)


def test_bad_input_raises_value_errors_naming_the_site():
    crbm = ConvolutionalRBM((4, 4), 2, 3, 2)
    with pytest.raises(ValueError, match="v: expected images of shape \\(..., 4, 4\\)"):
        crbm.hidden_probs(torch.zeros(2, 15))
    with pytest.raises(ValueError, match="v: .*binary.*0.5"):
        crbm.pooling_probs(torch.full((2, 4, 4), 0.5))
    with pytest.raises(ValueError, match="v: values contain NaN"):
        crbm.hidden_probs(torch.tensor([[float("nan")] + [0.0] * 15]))
    with pytest.raises(ValueError, match="init: .*binary"):
        PersistentChains(crbm, 2, init=torch.full((2, 16), 0.5))
    with pytest.raises(ValueError, match="h: expected hidden states"):
        crbm.visible_probs(torch.zeros(3, 7))
    with pytest.raises(TypeError, match="NumPy array"):
        crbm.free_energy("0101")
    chains = PersistentChains(crbm, 3)

    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("pixels", crbm.distribution(chains), obs=x)

    svi = SVI(model, lambda x: None, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for bad, message in [
        (torch.zeros(2, 15), "value: expected images"),
        (torch.full((2, 16), 0.5), "value: .*binary"),
        (torch.tensor([[float("nan")] + [0.0] * 15]), "value: values contain NaN"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            svi.step(bad)
        assert "pixels" in str(info.value)


def test_state_dict_round_trip_with_chains_resumes_exactly():
    torch.manual_seed(9)
    pyro.clear_param_store()
    data = bars(200, torch.Generator().manual_seed(1))
    crbm = ConvolutionalRBM((4, 4), 3, 3, 2, init_std=0.1).init_from_data(data)
    chains = PersistentChains(crbm, 20)
    train_steps(crbm, chains, data, 5, batch=20)
    exact_log_partition(crbm)
    buffer = io.BytesIO()
    torch.save({"crbm": crbm.state_dict(), "chains": chains.state_dict()}, buffer)
    rng = torch.get_rng_state()
    train_steps(crbm, chains, data, 5, batch=20)
    # a fresh model and chains, loaded from the checkpoint, continue the same way
    pyro.clear_param_store()
    buffer.seek(0)
    saved = torch.load(buffer)
    other = ConvolutionalRBM((4, 4), 3, 3, 2)
    other.load_state_dict(saved["crbm"])
    assert other.log_z == pytest.approx(float(saved["crbm"]["_extra_state"]["log_z"]))
    other_chains = PersistentChains(other, 20)
    other_chains.load_state_dict(saved["chains"])
    torch.set_rng_state(rng)
    train_steps(other, other_chains, data, 5, batch=20)
    for (name, a), b in zip(crbm.named_parameters(), other.parameters()):
        assert torch.equal(a, b), name
    assert torch.equal(chains.state, other_chains.state) and torch.equal(chains.hidden, other_chains.hidden)


def test_dense_and_convolution_paths_agree():
    torch.manual_seed(10)
    dense = random_crbm(shape=(6, 8), k=3, r=3, c=2, scale=0.7)
    conv = ConvolutionalRBM((6, 8), 3, 3, 2, dense=False).double()
    conv.load_state_dict(dense.state_dict())
    assert dense.dense and not conv.dense and conv.params().dense is None
    v = (torch.rand(2, 5, 48) < 0.5).double()
    h = dense.sample_hidden(v)
    beta = torch.tensor([0.3, 1.0], dtype=torch.float64)[:, None, None]
    base = torch.randn(48, dtype=torch.float64)
    for f in [
        lambda m: m.free_energy(v),
        lambda m: m.hidden_probs(v),
        lambda m: m.pooling_probs(v),
        lambda m: m.visible_probs(h),
        lambda m: m.energy(v, h),
        lambda m: m.tempered_log_prob(v, beta, base),
        lambda m: m.sml_terms(v[0], 2)[0],
    ]:
        assert_close(f(conv), f(dense).detach(), rtol=1e-10, atol=1e-10)
    for m in (dense, conv):
        m.sml_terms(v[0], 2)[0].sum().backward()
    for a, b in zip(dense.parameters(), conv.parameters()):
        assert_close(b.grad, a.grad, rtol=1e-10, atol=1e-10)
    # the dense matrix is the convolution: column (k, i, j) of block order holds filter k at offset (i, j)
    m = dense.detection_layers(dense.dense_weight()).permute(1, 2, 3, 0).reshape(3, 4, 6, 6, 8)  # (k, i, j, H, W)
    assert torch.equal(m[1, 2, 3, 2:5, 3:6], dense.weight[1]) and m[1, 2, 3].abs().sum() == dense.weight[1].abs().sum()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    torch.manual_seed(11)
    for dense in (True, False):
        crbm = ConvolutionalRBM((4, 4), 2, 3, 2, init_std=0.5, dense=dense).cuda()
        x = (torch.rand(8, 16, device="cuda") < 0.5).float()
        chains = PersistentChains(crbm, 10, steps=2)
        assert chains.state.is_cuda and chains.hidden.is_cuda
        crbm.distribution(chains).log_prob(x).sum().backward()
        assert crbm.weight.grad.is_cuda and torch.isfinite(crbm.weight.grad).all()
        assert crbm.gibbs(x, 3).is_cuda and crbm.sample(5, steps=3).shape == (5, 16)
        exact = float(exact_log_partition(crbm, record=False).detach())
        assert ais_log_partition(crbm, 50, 300).log_z == pytest.approx(exact, abs=0.1)
        pt = ParallelTempering(crbm, 20, betas=3)
        assert pt.advance().is_cuda
