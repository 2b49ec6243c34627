"""Amortized guides on Pyro's own examples, written as users write them (issue 15): the VAE with an unsized data plate,
the CVAE called with ys=None at test time, and the semi-supervised VAE (M2) with labelled and unlabelled batches."""

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceEnum_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from torch import nn

from dgm_ppl.guides import AmortizedCategorical, AmortizedGuideList, AmortizedNormal, ConcatEncoder

PIXELS, HIDDEN, ZDIM = 16, 8, 3


def binary_images(n: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, PIXELS, generator=g) < torch.linspace(0.1, 0.9, PIXELS)).float()


# -- Pyro's VAE example (examples/vae/vae.py), with its data plate unsized ------------------------------------------
class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21 = nn.Linear(ZDIM, HIDDEN), nn.Linear(HIDDEN, PIXELS)

    def forward(self, z):
        return torch.sigmoid(self.fc21(F.softplus(self.fc1(z))))


class VAE(nn.Module):
    def __init__(self, sized: bool):
        super().__init__()
        self.decoder, self.sized = Decoder(), sized

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]) if self.sized else pyro.plate("data"):
            z_loc = x.new_zeros(torch.Size((x.shape[0], ZDIM)))
            z_scale = x.new_ones(torch.Size((x.shape[0], ZDIM)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x.reshape(-1, PIXELS))


@pytest.mark.parametrize("sized", [False, True])
def test_pyro_vae_example_trains_and_matches_a_hand_written_guide(sized):
    """The encoder's hidden layer as features; after a few SVI steps the loss equals, draw for draw, the loss with
    Pyro's hand-written guide built from the same weights, and the guide's plate is the model's (unsized or not)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    vae, x = VAE(sized), binary_images()
    guide = AmortizedNormal(vae.model, nn.Sequential(nn.Linear(PIXELS, HIDDEN), nn.Softplus()), site="latent")
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(5)]
    assert all(torch.isfinite(torch.tensor(losses)))

    def hand_written_guide(x):  # Pyro's guide: encoder -> (z_loc, z_scale) -> Normal in the data plate
        with pyro.plate("data", x.shape[0]) if sized else pyro.plate("data"):
            hidden = guide.encoder(x.reshape(-1, PIXELS))
            z_loc, z_scale = guide.loc["latent"](hidden), F.softplus(guide.scale["latent"](hidden))
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))

    for seed in range(3):
        pyro.set_rng_seed(seed)
        ours = Trace_ELBO().loss(vae.model, guide, x)
        pyro.set_rng_seed(seed)
        theirs = Trace_ELBO().loss(vae.model, hand_written_guide, x)
        assert ours == theirs
    frame = poutine.trace(guide).get_trace(x).nodes["latent"]["cond_indep_stack"][0]
    assert frame.name == "data" and frame.size == (x.shape[0] if sized else -1)
    # vectorized particles put a plate on the left of the unsized one
    assert torch.isfinite(
        torch.tensor(Trace_ELBO(4, vectorize_particles=True, max_plate_nesting=1).loss(vae.model, guide, x))
    )


def test_unsized_plate_with_a_global_latent_in_an_amortized_guide_list():
    """Pyro's AutoGuideList cannot create an unsized plate; AmortizedGuideList creates it unsized, as in the model."""

    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data"):
            z = pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True) + w, 1.0).to_event(1), obs=x)

    x = torch.randn(6, 3)
    guide = AmortizedGuideList(model)
    guide.append(AutoNormal(poutine.block(model, hide=["z"])))
    guide.append(AmortizedNormal(model, nn.Linear(3, 4), site="z"))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    assert all(torch.isfinite(torch.tensor([svi.step(x) for _ in range(3)])))
    plain = AutoGuideList(model)
    plain.append(AutoNormal(poutine.block(model, hide=["z"])))
    plain.append(AmortizedNormal(model, nn.Linear(3, 4), site="z"))
    with pytest.raises(RuntimeError):  # Pyro's AutoGuideList sizes its plates: an unsized frame breaks it
        plain(x)


# -- Pyro's CVAE example (examples/cvae/cvae.py): masked quadrant completion, ys=None at test time ------------------
MASKED = 4  # the last 4 pixels are the "quadrant" to predict: -1 in the inputs, the outputs elsewhere -1


class Encoder(nn.Module):
    """Pyro's CVAE encoder, returning its hidden layer as the guide's features (the heads make loc and scale)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(PIXELS, HIDDEN), nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x, y):
        xc = x.clone()  # put x and y together in the same image
        xc[x == -1] = y[x == -1]
        return F.relu(self.fc2(F.relu(self.fc1(xc.view(-1, PIXELS)))))


class PriorNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features, self.loc, self.scale = Encoder(), nn.Linear(HIDDEN, ZDIM), nn.Linear(HIDDEN, ZDIM)

    def forward(self, x, y):
        h = self.features(x, y)
        return self.loc(h), torch.exp(self.scale(h))


class CVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.baseline_net = nn.Sequential(nn.Linear(PIXELS, PIXELS), nn.Sigmoid())
        self.prior_net = PriorNet()
        self.generation_net = nn.Sequential(nn.Linear(ZDIM, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, PIXELS), nn.Sigmoid())

    def model(self, xs, ys=None):
        pyro.module("generation_net", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            with torch.no_grad():
                y_hat = self.baseline_net(xs).view(xs.shape)
            prior_loc, prior_scale = self.prior_net(xs, y_hat)
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            loc = self.generation_net(zs)
            if ys is not None:  # boolean-mask indexing, as in Pyro's example
                mask_loc = loc[(xs == -1).view(-1, PIXELS)].view(batch_size, -1)
                mask_ys = ys[xs == -1].view(batch_size, -1)
                pyro.sample("y", dist.Bernoulli(mask_loc, validate_args=False).to_event(1), obs=mask_ys)
            else:
                pyro.deterministic("y", loc.detach())
            return loc


def cvae_data():
    images = binary_images()
    xs, ys = images.clone(), images.clone()
    xs[:, -MASKED:] = -1.0
    ys[:, :-MASKED] = -1.0
    return xs, ys


def test_pyro_cvae_example_falls_back_to_the_prior_network_when_ys_is_none():
    """Trained on (xs, ys); at test time Pyro's guide uses the prior network. The amortized guide does the same: with
    ys missing or None it samples the model's own p(z | xs), and Predictive(model, guide)(xs, None) runs."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    cvae, (xs, ys) = CVAE(), cvae_data()
    guide = AmortizedNormal(cvae.model, Encoder(), site="z", encoder_args=2)
    svi = SVI(cvae.model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    assert all(torch.isfinite(torch.tensor([svi.step(xs, ys) for _ in range(5)])))

    prior_loc, prior_scale = cvae.prior_net(xs, cvae.baseline_net(xs))
    for args, kwargs in (((xs,), {}), ((xs, None), {}), ((xs,), {"ys": None})):
        site = poutine.trace(guide).get_trace(*args, **kwargs).nodes["z"]
        torch.testing.assert_close(site["fn"].base_dist.loc, prior_loc)
        torch.testing.assert_close(site["fn"].base_dist.scale, prior_scale)
    trained = poutine.trace(guide).get_trace(xs, ys).nodes["z"]["fn"].base_dist.loc  # with ys: the encoder's q
    assert not torch.allclose(trained, prior_loc, atol=1e-3)

    samples = Predictive(cvae.model, guide=guide, num_samples=3)(xs, None)
    assert samples["z"].shape == (3, xs.shape[0], ZDIM)  # Predictive keeps a plate dim on the deterministic y:
    assert samples["y"].squeeze(1).shape == (3, xs.shape[0], PIXELS)  # (3, 1, B, 16), as with Pyro's own guide

    strict = AmortizedNormal(cvae.model, Encoder(), site="z", encoder_args=2, fallback=None)
    strict(xs, ys)
    with pytest.raises(ValueError, match=r"inputs \[1\] are missing or None"):
        strict(xs)

    class OnlyX(nn.Module):  # a second encoder of the inputs that are present, into the same feature space
        def __init__(self):
            super().__init__()
            self.net = nn.Linear(PIXELS, HIDDEN)

        def forward(self, x):
            return F.relu(self.net(x))

    fallback = OnlyX()
    guided = AmortizedNormal(cvae.model, Encoder(), site="z", encoder_args=2, fallback=fallback)
    guided(xs, ys)
    loc = poutine.trace(guided).get_trace(xs).nodes["z"]["fn"].base_dist.loc
    torch.testing.assert_close(loc, guided.loc["z"](fallback(xs)))


# -- Pyro's SS-VAE tutorial (M2): q(y | x) q(z | x, y), labelled and unlabelled batches --------------------------------
CLASSES = 3


class SSVAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(ZDIM + CLASSES, HIDDEN), nn.Softplus(), nn.Linear(HIDDEN, PIXELS))

    def model(self, xs, ys=None):
        pyro.module("ss_vae", self)
        batch_size = xs.size(0)
        with pyro.plate("data"):
            prior_loc = xs.new_zeros([batch_size, ZDIM])
            prior_scale = xs.new_ones([batch_size, ZDIM])
            zs = pyro.sample("z", dist.Normal(prior_loc, prior_scale).to_event(1))
            alpha_prior = xs.new_ones([batch_size, CLASSES]) / CLASSES
            ys = pyro.sample("y", dist.OneHotCategorical(alpha_prior), obs=ys)
            batch = torch.broadcast_shapes(zs.shape[:-1], ys.shape[:-1])  # ys may be enumerated: (CLASSES, 1, CLASSES)
            logits = self.decoder(torch.cat([zs.expand(batch + (ZDIM,)), ys.expand(batch + (CLASSES,))], -1))
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=xs)


def test_pyro_ssvae_guide_is_a_few_lines_and_handles_labelled_and_unlabelled_batches():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    ssvae, xs = SSVAE(), binary_images()
    ys = F.one_hot(torch.arange(xs.shape[0]) % CLASSES, CLASSES).float()
    encoder_y = nn.Sequential(nn.Linear(PIXELS, HIDDEN), nn.Softplus())
    encoder_z = ConcatEncoder(nn.Sequential(nn.Linear(PIXELS + CLASSES, HIDDEN), nn.Softplus()))
    guide = AmortizedGuideList(ssvae.model)
    guide.append(AmortizedCategorical(ssvae.model, encoder_y, site="y", enumerate="parallel"))
    guide.append(AmortizedNormal(ssvae.model, encoder_z, site="z", encoder_args=("xs", "y")))
    svi = SVI(ssvae.model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    with pytest.warns(UserWarning, match="no sample sites configured for enumeration"):  # labelled: nothing to sum
        labelled = [svi.step(xs[:12], ys[:12]) for _ in range(3)]
    unlabelled = [svi.step(xs[12:]) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(labelled + unlabelled)))
    trace = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(xs[12:])
    assert trace.nodes["y"]["value"].shape == (CLASSES, 1, CLASSES) and trace.nodes["z"]["value"].shape == (
        CLASSES,
        12,
        ZDIM,
    )
    assert "y" not in poutine.trace(guide).get_trace(xs[:12], ys[:12]).nodes
    probs = guide[0].posterior(xs)["y"].probs  # the classifier q(y | x)
    assert probs.shape == (xs.shape[0], CLASSES) and torch.allclose(probs.sum(-1), torch.ones(xs.shape[0]))


def test_discrete_sites_get_a_clear_error_and_bad_options_are_refused():
    ssvae, xs = SSVAE(), binary_images()
    with pytest.raises(ValueError, match="site 'y' is discrete.*AmortizedCategorical"):
        AmortizedNormal(ssvae.model, nn.Linear(PIXELS, 4), site=["z", "y"])(xs)
    with pytest.raises(ValueError, match="site 'z' has a Normal distribution"):
        AmortizedCategorical(ssvae.model, nn.Linear(PIXELS, 4), site="z")(xs)
    with pytest.raises(ValueError, match="enumerate must be one of"):
        AmortizedCategorical(ssvae.model, nn.Linear(PIXELS, 4), enumerate="yes")
    with pytest.raises(TypeError, match="init_scale"):
        AmortizedCategorical(ssvae.model, nn.Linear(PIXELS, 4), init_scale=0.1)
    with pytest.raises(ValueError, match="encoder_args must be"):
        AmortizedNormal(ssvae.model, nn.Linear(PIXELS, 4), encoder_args=0)
    with pytest.raises(ValueError, match="neither a sample site of the model"):
        AmortizedNormal(ssvae.model, nn.Linear(PIXELS, 4), encoder_args=("xs", "label"))(xs)
    with pytest.raises(ValueError, match="fallback must be"):
        AmortizedNormal(ssvae.model, nn.Linear(PIXELS, 4), fallback="posterior")
    # y is latent here and nothing samples it before the z guide: Pyro's AutoGuideList passes no values
    lone = AmortizedNormal(ssvae.model, ConcatEncoder(nn.Linear(PIXELS + CLASSES, 4)), encoder_args=("xs", "y"))
    with pytest.raises(ValueError, match="site 'y', which is latent in this call but was not sampled earlier"):
        lone(xs)
    ys = F.one_hot(torch.arange(xs.shape[0]) % CLASSES, CLASSES).float()
    assert lone(xs, ys)["z"].shape == (xs.shape[0], ZDIM)  # observed: the labels are encoded
