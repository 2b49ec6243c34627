"""Pseudo-likelihood, ratio matching and score matching as SVI losses, against their definitions computed by
brute force on tiny models (issue 16)."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import random_rbm
from helpers import all_states, state_index
from pyro.infer import SVI

from dgm_ppl.energy import DBM, BernoulliRBM, GaussianBernoulliRBM, PersistentChains, exact_log_partition
from dgm_ppl.energy.boltzmann import BoltzmannMachine
from dgm_ppl.infer import DivergenceError
from dgm_ppl.infer.pseudo_likelihood import PseudoLikelihood
from dgm_ppl.infer.ratio_matching import RatioMatching
from dgm_ppl.infer.score_matching import ScoreMatching, gaussian_rbm_score_matching


def no_guide(*args, **kwargs):
    pass


def assert_close(actual, expected, rtol=1e-6, atol=1e-8):
    """torch.allclose with a message (torch.testing.assert_close imports torch.distributed: seconds)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, rtol=rtol, atol=atol), (actual - expected).abs().max().item()


def site_model(model, chains, n=None):
    """v ~ model.distribution(chains), subsampled (scale n / B) when n is given."""

    def fn(v):
        with pyro.plate("data", n or len(v), subsample=torch.arange(len(v)) if n else None):
            pyro.sample("v", model.distribution(chains), obs=v)

    return fn


def tiny_models():
    torch.manual_seed(0)
    rbm = random_rbm(BernoulliRBM, 4, 3).double()
    centered = random_rbm(BernoulliRBM, 4, 3, centered=True).double()
    with torch.no_grad():
        centered.visible_offset.uniform_(0.2, 0.8)
        centered.hidden_offset.uniform_(0.2, 0.8)
    bm = BoltzmannMachine(4, 2, init_std=0.8).double()
    visible_bm = BoltzmannMachine(4, 0, init_std=0.8).double()
    for m in (bm, visible_bm):
        with torch.no_grad():
            m.bias.normal_()
    return {"rbm": rbm, "centered_rbm": centered, "bm": bm, "visible_bm": visible_bm}


def brute_log_p(model):
    """Normalized log p(v) of all 2^D visible states, from the joint energy of every (v, h)."""
    v = all_states(model.n_visible, model.weight)
    nh = model.n_hidden
    h = all_states(nh, model.weight)
    vv, hh = v[:, None].expand(-1, len(h), -1), h[None].expand(len(v), -1, -1)
    with torch.no_grad():
        if isinstance(model, BoltzmannMachine):
            neg_e = -model.energy(torch.cat([vv, hh], -1)) if nh else -model.energy(v)[:, None]
        else:
            neg_e = -model.energy(vv, hh)
    log_p = torch.logsumexp(neg_e, 1)
    return log_p - torch.logsumexp(log_p, 0)


def flipped_log_p(log_p, x, i):
    y = x.clone()
    y[:, i] = 1 - y[:, i]
    return log_p[state_index(y)]


MODELS = ["rbm", "centered_rbm", "bm", "visible_bm"]


# ---------------------------------------------------------------- the objectives against their definitions
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n", [None, 40])
def test_pseudo_likelihood_is_the_sum_of_exact_conditionals(name, n):
    model = tiny_models()[name]
    chains = PersistentChains(model, 5)
    state = chains.state.clone()
    x = (torch.rand(10, 4) < 0.5).double()
    value = PseudoLikelihood()(site_model(model, chains, n), no_guide, x)
    log_p = brute_log_p(model)
    lx = log_p[state_index(x)]
    expected = 0.0
    for i in range(4):  # log p(x_i | x_-i) = log p(x) - log(p(x) + p(flip_i x)), by enumeration
        expected = expected - (lx - torch.logaddexp(lx, flipped_log_p(log_p, x, i))).sum()
    expected = expected * (n / 10 if n else 1)
    assert_close(value.detach(), expected)
    assert torch.equal(chains.state, state)  # no sampling
    value.backward()
    assert model.weight.grad is not None and torch.isfinite(model.weight.grad).all()


def test_pseudo_likelihood_of_a_visible_bm_is_its_direct_conditionals():
    bm = tiny_models()["visible_bm"]
    x = (torch.rand(12, 4) < 0.5).double()
    value = PseudoLikelihood()(site_model(bm, PersistentChains(bm, 2)), no_guide, x)
    assert_close(value, -bm.log_conditional(x).sum())


@pytest.mark.parametrize("n", [None, 30])
def test_stochastic_pseudo_likelihood_takes_one_coordinate_scaled_by_d(n):
    model = tiny_models()["bm"]
    x = (torch.rand(15, 4) < 0.5).double()
    fn = site_model(model, PersistentChains(model, 2), n)
    torch.manual_seed(7)
    value = PseudoLikelihood(stochastic=True)(fn, no_guide, x)
    torch.manual_seed(7)
    index = torch.randint(4, (15,))
    log_p = brute_log_p(model)
    lx = log_p[state_index(x)]
    y = x.clone()
    y[torch.arange(15), index] = 1 - y[torch.arange(15), index]
    expected = -4 * (lx - torch.logaddexp(lx, log_p[state_index(y)])).sum() * (n / 15 if n else 1)
    assert_close(value.detach(), expected)


def test_stochastic_pseudo_likelihood_is_unbiased():
    model = tiny_models()["bm"]
    x = (torch.rand(15, 4) < 0.5).double()
    fn = site_model(model, PersistentChains(model, 2))
    with torch.no_grad():
        draws = torch.stack([PseudoLikelihood(stochastic=True)(fn, no_guide, x) for _ in range(200)])
        full = PseudoLikelihood()(fn, no_guide, x)
    assert abs(draws.mean() - full) < 4 * draws.std() / 200**0.5


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("n", [None, 25])
def test_ratio_matching_is_its_formula(name, n):
    model = tiny_models()[name]
    x = (torch.rand(10, 4) < 0.5).double()
    value = RatioMatching()(site_model(model, PersistentChains(model, 3), n), no_guide, x)
    log_p = brute_log_p(model)
    px = log_p[state_index(x)].exp()
    expected = 0.0
    for i in range(4):  # sum_i g(p(x) / p(flip_i x))^2, g(u) = 1 / (1 + u)
        u = px / flipped_log_p(log_p, x, i).exp()
        expected = expected + ((1 / (1 + u)) ** 2).sum()
    expected = expected * (n / 10 if n else 1)
    assert_close(value.detach(), expected)


def test_objectives_weight_masked_data_by_zero():
    model = tiny_models()["rbm"]
    x = (torch.rand(6, 4) < 0.5).double()
    keep = torch.tensor([True, False, True, True, False, True])
    chains = PersistentChains(model, 2)

    def masked(v):
        with pyro.plate("data", len(v)), pyro.poutine.mask(mask=keep):
            pyro.sample("v", model.distribution(chains), obs=v)

    for loss in (PseudoLikelihood(), RatioMatching()):
        assert_close(loss(masked, no_guide, x), loss(site_model(model, chains), no_guide, x[keep]))


def _gaussian_rbm(learn_std=False):
    torch.manual_seed(1)
    rbm = GaussianBernoulliRBM(3, 4, std=torch.tensor([0.7, 1.0, 1.3]), learn_std=learn_std, init_std=0.8).double()
    with torch.no_grad():
        rbm.visible_bias.normal_()
        rbm.hidden_bias.normal_()
    return rbm


def test_score_matching_closed_form_is_the_autograd_definition():
    rbm = _gaussian_rbm(learn_std=True)
    v = torch.randn(7, 3, dtype=torch.float64) * 1.5
    closed = gaussian_rbm_score_matching(rbm.params(), v)
    # the definition: sum_i 1/2 (d log p / dv_i)^2 + d^2 log p / dv_i^2, with the full Hessian by autograd
    expected = []
    for row in v:
        grad = torch.autograd.functional.jacobian(lambda u: -rbm.free_energy(u), row)
        hess = torch.autograd.functional.hessian(lambda u: -rbm.free_energy(u), row)
        expected.append(0.5 * (grad**2).sum() + hess.diagonal().sum())
    assert_close(closed, torch.stack(expected).detach())
    # the loss, closed form and autograd, with N / B and the same parameter gradients (std included)
    chains = PersistentChains(rbm, 2)
    grads = {}
    for method in ("closed_form", "autograd"):
        rbm.zero_grad()
        value = ScoreMatching(method=method)(site_model(rbm, chains, 21), no_guide, v)
        assert_close(value.detach(), 3 * torch.stack(expected).sum().detach())
        value.backward()
        grads[method] = [p.grad.clone() for p in rbm.parameters()]
    for a, b in zip(*grads.values()):
        assert_close(a, b)
    assert len(grads["closed_form"]) == 4  # weight, biases and log_std


def test_score_matching_of_a_plain_distribution_by_autograd():
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 2.0).to_event(1), obs=x)

    # psi = -(x - mu) / 4 and d psi / dx = -1/4 per coordinate
    expected = (0.5 * ((x - mu) / 4) ** 2 - 0.25).sum()
    assert_close(ScoreMatching()(model, no_guide, x), expected)


# ---------------------------------------------------------------- training through SVI
def _kl_setup():
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    true = BernoulliRBM(6, 3, init_std=1.5)
    states = all_states(6)
    with torch.no_grad():
        true.visible_bias.copy_(torch.randn(6) * 0.5)
        true.hidden_bias.copy_(torch.randn(3) * 0.5)
        p_true = (-true.free_energy(states) - exact_log_partition(true, record=False)).exp()
    data = states[torch.multinomial(p_true, 1000, replacement=True)]
    return p_true, data, states


@pytest.mark.parametrize(
    "loss", [PseudoLikelihood(), PseudoLikelihood(stochastic=True), RatioMatching()], ids=["PL", "SPL", "RM"]
)
def test_training_moves_a_tiny_rbm_towards_the_data(loss):
    p_true, data, states = _kl_setup()
    rbm = BernoulliRBM(6, 3, init_std=0.1)
    chains = PersistentChains(rbm, 2)

    def kl():
        with torch.no_grad():
            log_q = -rbm.free_energy(states) - exact_log_partition(rbm, record=False)
        return float((p_true * (p_true.log() - log_q)).sum())

    before = kl()
    svi = SVI(site_model(rbm, chains, len(data)), no_guide, pyro.optim.Adam({"lr": 0.05}), loss)
    for _ in range(150):
        svi.step(data[torch.randint(len(data), (100,))])
    after = kl()
    label = type(loss).__name__ + (" (stochastic)" if loss.stochastic else "")
    print(f"{label}: KL(true || model) {before:.4f} -> {after:.4f}")
    assert after < 0.2 * before
    assert len(loss.history["loss"]) == 150


def test_score_matching_fits_the_visible_means_of_a_gaussian_rbm():
    torch.manual_seed(2)
    data = torch.randn(500, 3) * 0.5 + torch.tensor([1.0, -2.0, 0.5])
    rbm = GaussianBernoulliRBM(3, 2, std=0.5, init_std=0.01)
    svi = SVI(site_model(rbm, PersistentChains(rbm, 2), 500), no_guide, pyro.optim.Adam({"lr": 0.05}), ScoreMatching())
    before = float(svi.evaluate_loss(data))
    for _ in range(150):
        svi.step(data[torch.randint(500, (100,))])
    assert float(svi.evaluate_loss(data)) < before
    # the model's mean (b + std * W E[h]) approaches the data's
    samples = rbm.sample(2000, steps=20)
    assert torch.allclose(samples.mean(0), data.mean(0), atol=0.15)


# ---------------------------------------------------------------- divergence and bad input
@pytest.mark.parametrize("make", [PseudoLikelihood, RatioMatching, ScoreMatching])
def test_nan_raises_divergence_before_any_parameter_moves(make):
    gaussian = make is ScoreMatching
    rbm = GaussianBernoulliRBM(3, 2) if gaussian else BernoulliRBM(4, 2)
    with torch.no_grad():
        rbm.hidden_bias[0] = float("nan")
    before = [p.detach().clone() for p in rbm.parameters()]
    x = torch.randn(5, 3) if gaussian else (torch.rand(5, 4) < 0.5).float()
    loss = make()
    svi = SVI(site_model(rbm, PersistentChains(rbm, 2)), no_guide, pyro.optim.Adam({"lr": 0.1}), loss)
    with pytest.raises(DivergenceError, match=make.__name__):
        svi.step(x)
    for a, b in zip(before, rbm.parameters()):
        assert torch.allclose(a, b.detach(), equal_nan=True)
    assert all(p.grad is None for p in rbm.parameters())
    assert loss.history["loss"] == []


def test_bad_input():
    rbm = BernoulliRBM(4, 2)
    chains = PersistentChains(rbm, 2)
    model = site_model(rbm, chains)
    pyro.enable_validation(False)  # the objectives check the data themselves
    for loss in (PseudoLikelihood(), RatioMatching()):
        with pytest.raises(ValueError, match=f"{loss.name}: the data at observed site 'v' must be binary"):
            loss(model, no_guide, torch.full((3, 4), 0.5))
        with pytest.raises(ValueError, match="site 'v' contain NaN"):
            loss(model, no_guide, torch.tensor([[0.0, float("nan"), 1.0, 1.0]]))
    pyro.enable_validation(True)
    # score matching needs continuous data; the closed form a Gaussian-Bernoulli RBM
    with pytest.raises(ValueError, match="discrete support"):
        ScoreMatching()(model, no_guide, torch.ones(3, 4))

    def normal(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1), obs=x)

    with pytest.raises(ValueError, match="closed form is for a GaussianBernoulliRBM"):
        ScoreMatching(method="closed_form")(normal, no_guide, torch.randn(3, 2))
    with pytest.raises(ValueError, match="method"):
        ScoreMatching(method="bogus")
    # a DBM's unnormalized density is only a bound
    dbm = DBM([4, 3, 2])
    with pytest.raises(ValueError, match="intractable"):
        PseudoLikelihood()(site_model(dbm, PersistentChains(dbm, 2)), no_guide, torch.ones(3, 4))

    def two_sites(v):
        with pyro.plate("data", len(v)):
            pyro.sample("a", rbm.distribution(chains), obs=v)
            pyro.sample("b", rbm.distribution(chains), obs=v)

    with pytest.raises(ValueError, match="several observed sites"):
        RatioMatching()(two_sites, no_guide, torch.ones(3, 4))
    assert torch.isfinite(RatioMatching(site="b")(two_sites, no_guide, torch.ones(3, 4)))
    with pytest.raises(ValueError, match="not an observed site"):
        RatioMatching(site="c")(two_sites, no_guide, torch.ones(3, 4))
    with pytest.raises(ValueError, match="no observed site"):
        PseudoLikelihood()(lambda v: pyro.sample("z", dist.Normal(0.0, 1.0)), no_guide, torch.ones(3, 4))

    def scalar(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Bernoulli(0.5), obs=x)

    with pytest.raises(ValueError, match="vector events"):
        PseudoLikelihood()(scalar, no_guide, torch.ones(3))
