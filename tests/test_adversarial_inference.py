"""BiGANLoss / ALILoss and AVBLoss: formulas by hand, what the discriminator sees, two fits, and bad input."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from torch import nn

from dgm_ppl.infer import ALILoss, AVBLoss, BiGANLoss, DivergenceError

S = 0.8  # the likelihood's standard deviation in the conjugate model


class Joint(nn.Module):
    """D(x, z): an MLP (or a linear map) on the concatenated inputs; records the shapes it sees."""

    def __init__(self, d_in, hidden=None):
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.net = (
            nn.Linear(d_in, 1)
            if hidden is None
            else nn.Sequential(nn.Linear(d_in, hidden), act, nn.Linear(hidden, hidden), act, nn.Linear(hidden, 1))
        )
        self.calls = []

    def forward(self, *inputs):
        self.calls.append([t.detach().clone() for t in inputs])
        return self.net(torch.cat(inputs, -1))


class Quadratic(nn.Module):
    """T(x, z) linear in (x, z, x², z², xz): holds log q(z|x) - log p(z) for Gaussian q and p."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 1)

    def forward(self, x, z):
        return self.linear(torch.cat([x, z, x * x, z * z, x * z], -1))


def linear_model(x):
    """z ~ N(0, 1), x ~ N(a z + b, 0.1) with learned a, b."""
    a = pyro.param("a", torch.tensor(0.5))
    b = pyro.param("b", torch.tensor(0.0))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(a * z + b, 0.1), obs=x)


def encoder_guide(encoder, scale=0.05):
    def guide(x):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(encoder(x[:, None]).squeeze(-1), scale))

    return guide


def conjugate_model(x):
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, S), obs=x)


# ---------------------------------------------------------------- BiGAN: formulas and plumbing


@pytest.mark.parametrize("kind", ["nonsaturating", "minimax"])
def test_bigan_losses_match_definitions(kind):
    torch.manual_seed(0)
    D = Joint(3).double()
    x, z = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    xf, zf = torch.randn(6, 2, dtype=torch.float64) + 1, torch.randn(6, 1, dtype=torch.float64)
    loss = BiGANLoss(D, kind=kind)
    dr, df = D(x, z).squeeze(-1), D(xf, zf).squeeze(-1)
    s = torch.sigmoid
    d_expected = -(torch.log(s(dr)).mean() + torch.log(1 - s(df)).mean())
    assert torch.allclose(loss.discriminator_loss([x, z], [xf, zf], []), d_expected)
    if kind == "minimax":
        g_expected = torch.log(s(dr)).mean() + torch.log(1 - s(df)).mean()
    else:
        g_expected = -(torch.log(1 - s(dr)).mean() + torch.log(s(df)).mean())
    assert torch.allclose(loss.generator_loss([x, z], [xf, zf], []), g_expected)
    assert ALILoss is BiGANLoss


def test_bigan_pairs_encoder_with_data_and_generator_with_prior():
    """D sees (data, E(data)) and (G(z), z) with z from the prior, flattened to (B, ·); the generator loss
    reaches both the generator's and the encoder's parameters."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    w = pyro.param("w", torch.tensor([[1.0, -2.0]]))
    enc = nn.Linear(2, 1)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Delta(z[:, None] * pyro.param("w"), event_dim=1), obs=x)

    def guide(x):
        pyro.module("enc", enc)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Delta(enc(x).squeeze(-1)))

    D = Joint(3)
    loss = BiGANLoss(D)
    x = torch.randn(5, 2)
    value = loss(model, guide, x)
    real, fake = D.calls[0], D.calls[1]
    assert [tuple(t.shape) for t in real] == [(5, 2), (5, 1)] == [tuple(t.shape) for t in fake]
    assert torch.equal(real[0], x) and torch.allclose(real[1], enc(x).detach())
    assert torch.allclose(fake[0], fake[1] * w.detach())  # G(z) at the prior's z
    assert not torch.allclose(fake[1], real[1])
    d_grads = [p.grad.clone() for p in D.parameters()]  # from the discriminator's own step
    value.backward()
    assert w.grad is not None and enc.weight.grad is not None
    assert all(torch.equal(p.grad, g) for p, g in zip(D.parameters(), d_grads))  # frozen for the generator loss
    assert len(loss.history["d_loss"]) == 1


def test_bigan_encoder_inverts_linear_generator():
    """x = 2 z + 1 + noise: after training, G(E(x)) ≈ x and E(G(z)) ≈ z, from errors of about 7 and 2."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    n = 256
    x = 2 * torch.randn(n) + 1 + 0.1 * torch.randn(n)
    enc = nn.Linear(1, 1)
    guide = encoder_guide(enc)

    def errors():
        with torch.no_grad():
            a, b, z = pyro.param("a"), pyro.param("b"), torch.randn(1000)
            rec_x = ((a * enc(x[:, None]).squeeze(-1) + b - x) ** 2).mean().item()
            rec_z = ((enc((a * z + b)[:, None]).squeeze(-1) - z) ** 2).mean().item()
            return rec_x, rec_z

    linear_model(x)
    before = errors()
    loss = BiGANLoss(Joint(2, hidden=32), d_optim=lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.5, 0.999)))
    svi = SVI(linear_model, guide, pyro.optim.Adam({"lr": 0.01, "betas": (0.5, 0.999)}), loss)
    for _ in range(600):
        svi.step(x)
    after = errors()
    a, b = pyro.param("a").item(), pyro.param("b").item()
    print(f"reconstruction errors (x, z): before {before}, after {after}; a = {a:.3f}, b = {b:.3f}")
    assert before[0] > 3 and before[1] > 1
    assert after[0] < 0.05 and after[1] < 0.05
    assert abs(abs(a) - 2) < 0.2 and abs(b - 1) < 0.25


# ---------------------------------------------------------------- AVB


def test_avb_loss_matches_definition():
    """-[Σ log p(x|z) - Σ T(x, z)] at the guide's z, times N/B under a subsampled plate; T unchanged."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    x = torch.randn(4)

    def model(x):
        with pyro.plate("data", 20, subsample=torch.arange(4)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, S), obs=x)

    def guide(x):
        with pyro.plate("data", 20, subsample=torch.arange(4)):
            pyro.sample("z", dist.Delta(0.5 * x))

    T = Quadratic()
    before = [p.clone() for p in T.parameters()]
    loss = AVBLoss(T)
    value = loss.loss(model, guide, x)  # evaluation only: T does not move
    z = 0.5 * x
    with torch.no_grad():
        t = T(x[:, None], z[:, None]).squeeze(-1)
        expected = -(20 / 4) * (dist.Normal(z, S).log_prob(x) - t).sum()
    assert math.isclose(value, expected.item(), rel_tol=1e-5)
    assert all(torch.equal(p, q) for p, q in zip(before, T.parameters()))
    # the discriminator's loss: guide pairs against prior pairs for the same data
    zp = torch.randn(4, 1)
    w = torch.ones(4)
    d = loss.discriminator_loss([x[:, None]], [z[:, None]], [zp], w)
    t_q, t_p = T(x[:, None], z[:, None]).squeeze(-1), T(x[:, None], zp).squeeze(-1)
    s = torch.sigmoid
    assert torch.allclose(d, -(torch.log(s(t_q)) + torch.log(1 - s(t_p))).mean())


def test_avb_fits_conjugate_gaussian_posterior():
    """z ~ N(0, 1), x | z ~ N(z, 0.8²): the implicit guide's mean and variance at a few x approach the exact
    posterior's, x / 1.64 and 0.39."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    pyro.set_rng_seed(0)
    x = torch.randn(128) * math.sqrt(1 + S**2)
    g = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))

    def sample_q(x):
        eps = torch.randn(len(x), 2)
        return g(torch.cat([x[:, None], eps], -1)).squeeze(-1)

    def guide(x):
        pyro.module("g", g)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Delta(sample_q(x)))

    steps = 400
    loss = AVBLoss(Quadratic(), d_optim=lambda p: torch.optim.Adam(p, lr=0.05), d_steps=2)
    svi = SVI(conjugate_model, guide, pyro.optim.ClippedAdam({"lr": 0.005, "lrd": 0.1 ** (1 / steps)}), loss)
    for _ in range(steps):
        svi.step(x)
    var_exact = S**2 / (1 + S**2)
    for x0 in (-1.5, 0.0, 1.5):
        with torch.no_grad():
            z = sample_q(torch.full((4000,), x0))
        mean, var = z.mean().item(), z.var().item()
        print(f"x = {x0}: q mean {mean:.3f} (exact {x0 / (1 + S**2):.3f}), variance {var:.3f} (exact {var_exact:.3f})")
        assert abs(mean - x0 / (1 + S**2)) < 0.15
        assert abs(var - var_exact) < 0.1
    assert len(loss.history["elbo"]) == steps


# ---------------------------------------------------------------- bad input


def test_wrong_discriminator_shape():
    x = torch.randn(5)
    guide = encoder_guide(nn.Linear(1, 1))

    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 3)

        def forward(self, x, z):
            return self.linear(torch.cat([x, z], -1))

    pyro.clear_param_store()
    with pytest.raises(ValueError, match="one value per"):
        BiGANLoss(Wide())(linear_model, guide, x)
    with pytest.raises(ValueError, match="one value per"):
        AVBLoss(Wide())(conjugate_model, guide, x)


def test_bad_models_and_guides():
    pyro.clear_param_store()
    x = torch.randn(5)
    guide = encoder_guide(nn.Linear(1, 1))
    for loss in (BiGANLoss(Joint(2)), AVBLoss(Quadratic())):
        with pytest.raises(ValueError, match="needs a guide"):
            loss(linear_model, None, x)

        def global_only(x):
            pyro.sample("z", dist.Normal(0.0, 1.0))

        with pytest.raises(ValueError, match="per-datum latent"):
            loss(linear_model, global_only, x)

        def other_site(x):
            with pyro.plate("data", len(x)):
                pyro.sample("w", dist.Normal(torch.zeros(len(x)), 1.0))

        with pytest.raises(ValueError, match="not in the model"):
            loss(linear_model, other_site, x)

        def no_data(x):
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(0.0, 1.0))

        with pytest.raises(ValueError, match="no observed site"):
            loss(no_data, guide, x)

        def pairs_model(x):  # one z per pair of data: mismatched batch shapes
            with pyro.plate("pairs", len(x) // 2, dim=-2):
                z = pyro.sample("z", dist.Normal(0.0, 1.0))
                with pyro.plate("data", 2, dim=-1):
                    pyro.sample("x", dist.Normal(z, 1.0), obs=x.reshape(-1, 2))

        def pairs_guide(x):
            with pyro.plate("pairs", len(x) // 2, dim=-2):
                pyro.sample("z", dist.Normal(torch.zeros(len(x) // 2, 1), 1.0))

        with pytest.raises(ValueError, match="batch shape"):
            loss(pairs_model, pairs_guide, torch.randn(6))

        def wide(x):  # a 2-D code for the model's scalar z
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))

        with pytest.raises(ValueError, match="has shape|Shape mismatch"):  # AVB: Pyro refuses the replay
            loss(linear_model, wide, x)

        def discrete(x):
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Bernoulli(0.5))

        with pytest.raises(ValueError, match="not reparametrized"):
            loss(linear_model, discrete, x)
    with pytest.raises(ValueError, match="kind"):
        BiGANLoss(Joint(2), kind="wasserstein")
    with pytest.raises(TypeError, match="nn.Module"):
        AVBLoss(lambda x, z: x)


@pytest.mark.parametrize("which", ["bigan", "avb"])
def test_nan_raises_before_anything_moves(which):
    pyro.clear_param_store()
    enc = nn.Linear(1, 1)
    with torch.no_grad():
        enc.bias.fill_(float("nan"))

    def guide(x):  # an implicit (Delta) encoder, which Pyro's validation lets through
        pyro.module("encoder", enc)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Delta(enc(x[:, None]).squeeze(-1)))

    D = Joint(2) if which == "bigan" else Quadratic()
    loss = BiGANLoss(D) if which == "bigan" else AVBLoss(D)
    before = [p.clone() for p in D.parameters()]
    x = torch.randn(5)
    svi = SVI(linear_model, guide, pyro.optim.Adam({"lr": 0.1}), loss)
    # with validation on, the model's Normal(a z + b, ·) itself refuses AVB's NaN z (a ValueError)
    with pyro.validation_enabled(which == "bigan"), pytest.raises(DivergenceError):
        svi.step(x)
    assert all(torch.equal(p, q) for p, q in zip(before, D.parameters()))
    assert pyro.param("a").item() == 0.5 and pyro.param("b").item() == 0.0
    assert loss.history[next(iter(loss.history))] == []
