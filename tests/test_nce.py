"""NCELoss: the objective by hand, a fit of a small RBM against exact likelihoods, and bad input."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI

from dgm_ppl.energy import DBM, BernoulliRBM, PersistentChains, exact_log_partition
from dgm_ppl.infer import DivergenceError, NCELoss


def no_guide(*args, **kwargs):
    pass


def gaussian_model(mu, n=None):
    """x ~ N(mu, 1) with an unnormalized log-density supplied through NCELoss(log_prob=...)."""

    def model(x):
        with pyro.plate("data", n or len(x), subsample=torch.arange(len(x)) if n else None):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    return model


def unnormalized(fn, value):
    return -0.5 * (value - fn.loc) ** 2


# ---------------------------------------------------------------- the objective


@pytest.mark.parametrize("n", [None, 40])
def test_objective_matches_definition(n):
    """-[Σ log σ(G(x)) + Σ log(1 - σ(G(y)))] with G = log p̃ - c - log ν - log q, times N/B when subsampled."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    mu = pyro.param("mu", torch.tensor(0.3))
    x = torch.randn(10)
    seen = []

    def log_prob(fn, value):
        seen.append(value)
        return unnormalized(fn, value)

    noise = dist.Normal(0.0, 2.0)
    loss = NCELoss(noise, num_noise=3, log_z_init=0.7, log_prob=log_prob)
    value = loss(gaussian_model(mu, n), None, x)
    assert len(seen) == 2 and seen[1].shape == (3, 10)
    y = seen[1]
    c, s = torch.tensor(0.7), torch.sigmoid

    def G(u):
        return -0.5 * (u - mu) ** 2 - c - math.log(3) - noise.log_prob(u)

    expected = -(torch.log(s(G(x))).sum() + torch.log(1 - s(G(y))).sum())
    expected = expected * (n / 10 if n else 1)
    assert torch.allclose(value, expected, rtol=1e-5)
    # the gradient reaches both mu and log Z
    value.backward()
    assert mu.grad is not None and pyro.param("nce_log_z").grad is not None


def test_mask_drops_data_and_their_noise():
    """A masked-out datum contributes neither its own term nor its ν noise terms."""
    pyro.clear_param_store()
    torch.manual_seed(1)
    mu, x = torch.tensor(0.2), torch.randn(6)
    keep = torch.tensor([True, False, True, True, False, True])
    seen = []

    def log_prob(fn, value):
        seen.append(value)
        return unnormalized(fn, value)

    def model(x):
        with pyro.plate("data", len(x)), pyro.poutine.mask(mask=keep):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    noise = dist.Normal(0.0, 2.0)
    value = NCELoss(noise, num_noise=2, log_z_init=-0.3, log_prob=log_prob)(model, None, x)
    y = seen[1]  # (2, 6)

    def G(u):
        return -0.5 * (u - mu) ** 2 + 0.3 - math.log(2) - noise.log_prob(u)

    terms = -torch.log(torch.sigmoid(G(x))) - torch.log(1 - torch.sigmoid(G(y))).sum(0)
    assert torch.allclose(value, terms[keep].sum(), rtol=1e-5)


def test_energy_distribution_uses_the_free_energy():
    """For an RBM the log-density is -F(v): not log_prob's SML surrogate with the cached log Z."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    rbm = BernoulliRBM(4, 2, init_std=0.5)
    rbm.log_z = 100.0  # a stale cached estimate must not enter
    chains = PersistentChains(rbm, 5)
    state = chains.state.clone()
    v = torch.bernoulli(torch.full((8, 4), 0.5))

    def model(v):
        with pyro.plate("data", len(v)):
            pyro.sample("v", rbm.distribution(chains), obs=v)

    noise = dist.Bernoulli(torch.full((4,), 0.5)).to_event(1)
    loss = NCELoss(noise, num_noise=1)
    torch.manual_seed(3)
    value = loss(model, no_guide, v)
    torch.manual_seed(3)
    y = noise.expand((8,)).sample((1,))
    softplus = torch.nn.functional.softplus
    g_x = -rbm.free_energy(v) - noise.log_prob(v)  # c = 0 and log ν = 0
    g_y = -rbm.free_energy(y) - noise.log_prob(y)
    expected = softplus(-g_x).sum() + softplus(g_y).sum()
    assert torch.allclose(value, expected, rtol=1e-5)
    assert torch.equal(chains.state, state)  # the negative phase is not run


# ---------------------------------------------------------------- a fit


def test_fits_small_rbm_and_learns_log_z():
    """Data from a known 6x3 RBM; NCE through SVI reaches the exact ML fit's log-likelihood, and its learned
    log Z the exact log Z of the learned model."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    true = BernoulliRBM(6, 3, init_std=1.5)
    states = torch.tensor([[(i >> k) & 1 for k in range(6)] for i in range(64)], dtype=torch.float)
    with torch.no_grad():
        true.visible_bias.copy_(torch.randn(6) * 0.5)
        true.hidden_bias.copy_(torch.randn(3) * 0.5)
        probs = (-true.free_energy(states) - exact_log_partition(true, record=False)).exp()
        data = states[torch.multinomial(probs, 1000, replacement=True)]

    def avg_ll(m):
        with torch.no_grad():
            return (-m.free_energy(data) - exact_log_partition(m, record=False)).mean().item()

    ml = BernoulliRBM(6, 3, init_std=0.1).init_from_data(data)
    opt = torch.optim.Adam(ml.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        (ml.free_energy(data).mean() + exact_log_partition(ml, record=False)).backward()
        opt.step()

    rbm = BernoulliRBM(6, 3, init_std=0.1).init_from_data(data)
    chains = PersistentChains(rbm, 10)

    def model(v):
        with pyro.plate("data", len(v)):
            pyro.sample("v", rbm.distribution(chains), obs=v)

    noise = dist.Bernoulli(data.mean(0).clamp(0.02, 0.98)).to_event(1)
    # c starts at log Z of the initial model without its (small) weights: the factorial base model's
    log_z_init = rbm.base_log_partition(rbm.visible_bias).item()
    loss = NCELoss(noise, num_noise=5, log_z_init=log_z_init)
    svi = SVI(model, no_guide, pyro.optim.Adam({"lr": 0.1}), loss)
    for _ in range(500):
        svi.step(data)
    exact = exact_log_partition(rbm, record=False).item()
    ll_nce, ll_ml, ll_true = avg_ll(rbm), avg_ll(ml), avg_ll(true)
    assert abs(loss.log_z.item() - exact) < 0.15, (loss.log_z.item(), exact)
    assert ll_nce > ll_ml - 0.03, (ll_nce, ll_ml, ll_true)
    print(f"log Z: learned {loss.log_z.item():.3f} exact {exact:.3f}")
    print(f"mean log-likelihood: NCE {ll_nce:.4f} ML {ll_ml:.4f} true {ll_true:.4f}")
    assert len(loss.history["loss"]) == 500


# ---------------------------------------------------------------- bad input


def test_nan_loss_raises_before_anything_moves():
    pyro.clear_param_store()
    pyro.param("mu", torch.tensor(0.5))
    loss = NCELoss(dist.Normal(0.0, 2.0), log_prob=lambda fn, v: unnormalized(fn, v) * float("nan"))

    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(pyro.param("mu"), 1.0), obs=x)

    svi = SVI(model, no_guide, pyro.optim.Adam({"lr": 0.1}), loss)
    with pytest.raises(DivergenceError, match="NCELoss"):
        svi.step(torch.randn(5))
    assert pyro.param("mu").item() == 0.5 and loss.log_z.item() == 0.0
    assert loss.history["loss"] == []


def test_bad_input():
    pyro.clear_param_store()
    mu, x = torch.tensor(0.0), torch.randn(5)
    model = gaussian_model(mu)
    # noise of the wrong event shape
    with pytest.raises(ValueError, match="event shape"):
        NCELoss(dist.Normal(torch.zeros(3), 1.0).to_event(1), log_prob=unnormalized)(model, None, x)
    # noise whose batch shape does not broadcast to the plate
    with pytest.raises(ValueError, match="batch shape"):
        NCELoss(dist.Normal(torch.zeros(3), 1.0), log_prob=unnormalized)(model, None, x)
    # a log-density of the wrong shape
    with pytest.raises(ValueError, match="shape"):
        NCELoss(dist.Normal(0.0, 1.0), log_prob=lambda fn, v: v.sum())(model, None, x)

    def latent_only(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observed site"):
        NCELoss(dist.Normal(0.0, 1.0))(latent_only, None, x)

    def two_sites(x):
        with pyro.plate("data", len(x)):
            pyro.sample("a", dist.Normal(0.0, 1.0), obs=x)
            pyro.sample("b", dist.Normal(0.0, 1.0), obs=x)

    with pytest.raises(ValueError, match="several observed sites"):
        NCELoss(dist.Normal(0.0, 1.0))(two_sites, None, x)
    assert torch.isfinite(NCELoss(dist.Normal(0.0, 1.0), site="b")(two_sites, None, x))
    with pytest.raises(ValueError, match="NaN"):
        NCELoss(dist.Normal(0.0, 1.0))(model, None, torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="num_noise"):
        NCELoss(dist.Normal(0.0, 1.0), num_noise=0)
    with pytest.raises(TypeError, match="sample and log_prob"):
        NCELoss(torch.zeros(3))

    dbm = DBM([4, 3, 2])
    chains = PersistentChains(dbm, 4)

    def dbm_model(v):
        with pyro.plate("data", len(v)):
            pyro.sample("v", dbm.distribution(chains), obs=v)

    with pytest.raises(ValueError, match="intractable"):
        NCELoss(dist.Bernoulli(torch.full((4,), 0.5)).to_event(1))(dbm_model, None, torch.ones(3, 4))
