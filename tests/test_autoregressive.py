"""FVSBN, NADE and MADE against exact answers: normalization over all 2^D states, sampler vs log_prob, NADE's
running sum vs a naive loop, MADE's autoregressive masks, SVI training, use as a VAE decoder, and bad input."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from torch import nn

from dgm_ppl.energy._ops import binary_states
from dgm_ppl.models.autoregressive import FVSBN, MADE, NADE, AutoregressiveDistribution, PixelCNN

D = 6
CONTEXT = 3


def randomize(model, scale=1.0):
    """O(1) random parameters, so that the distribution is far from uniform."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale)
    return model


FACTORIES = {
    "fvsbn": lambda d, k=0: FVSBN(d, context_dim=k),
    "nade": lambda d, k=0: NADE(d, 5, context_dim=k),
    "made": lambda d, k=0: MADE(d, (12, 10), context_dim=k, num_masks=3),
    "made_natural": lambda d, k=0: MADE(d, (8,), context_dim=k, num_masks=2, natural_ordering=True, seed=3),
    "made_linear": lambda d, k=0: MADE(d, (), context_dim=k),
    "pixelcnn": lambda d, k=0: PixelCNN(2, d // 2, channels=4, num_layers=2, context_dim=k),  # a 2 x D/2 image
}


def all_states(d):
    return binary_states(d, 0, 2**d, torch.zeros(()))


@pytest.mark.parametrize("conditional", [False, True])
@pytest.mark.parametrize("name", FACTORIES)
def test_sums_to_one(name, conditional):
    model = randomize(FACTORIES[name](8, CONTEXT if conditional else 0))
    x = all_states(8)
    context = torch.randn(CONTEXT) if conditional else None
    masks = range(model.num_masks) if isinstance(model, MADE) else [None]
    for k in masks:
        options = {} if k is None else {"mask": k}
        assert abs(model.log_prob(x, context, **options).logsumexp(0).item()) < 1e-5
    if isinstance(model, MADE):
        assert abs(model.log_prob(x, context, ensemble=True).logsumexp(0).item()) < 1e-5
    if conditional:  # a batch of contexts: each row of the batch is a distribution over x
        contexts = torch.randn(4, 1, CONTEXT)
        lp = model.distribution(contexts).log_prob(x)
        assert lp.shape == (4, 2**8)
        assert lp.logsumexp(-1).abs().max() < 1e-5


def total_variation(samples, log_probs):
    codes = (samples * 2 ** torch.arange(samples.shape[-1])).sum(-1).long()
    empirical = torch.bincount(codes, minlength=len(log_probs)).double() / len(samples)
    return 0.5 * (empirical - log_probs.double().exp()).abs().sum().item()


def tv_threshold(probs, n, slack=0.015):
    """E[TV] <= (1/2) sum_x sqrt(p(1 - p) / n) (Jensen), and TV moves by at most 1/n per sample, so McDiarmid gives
    P(TV > E[TV] + t) <= exp(-2 n t^2): about 1e-4 for t = 0.015 and n = 20,000."""
    return 0.5 * (probs * (1 - probs) / n).sqrt().sum().item() + slack


@pytest.mark.parametrize(
    "name,options",
    [("fvsbn", {}), ("nade", {}), ("made", {}), ("made", {"ensemble": True}), ("made_natural", {}), ("pixelcnn", {})],
)
@pytest.mark.parametrize("conditional", [False, True])
def test_sampler_matches_log_prob(name, options, conditional):
    torch.manual_seed(1)
    scale = 0.7 if name == "pixelcnn" else 1.5  # stacked convolutions with larger weights give nearly a point mass
    model = randomize(FACTORIES[name](D, CONTEXT if conditional else 0), scale=scale)
    context = torch.randn(CONTEXT) if conditional else None
    n = 20_000
    samples = model.sample(n, context, **options)
    assert samples.shape == (n, D) and set(samples.unique().tolist()) <= {0.0, 1.0}
    log_probs = model.log_prob(all_states(D), context, **options).detach()
    threshold = tv_threshold(log_probs.exp(), n)
    tv = total_variation(samples, log_probs)
    assert threshold < 0.05 and tv < threshold, (tv, threshold)
    # the test has power: the same samples are far from the distribution with the first coordinate flipped
    flipped = all_states(D)
    flipped[:, 0] = 1 - flipped[:, 0]
    assert total_variation(samples, model.log_prob(flipped, context, **options).detach()) > 2 * threshold


def test_made_ensemble_sampler_uses_every_mask():
    torch.manual_seed(0)
    model = randomize(MADE(D, (12,), num_masks=3))
    x = all_states(D)
    single = torch.stack([model.log_prob(x, mask=k) for k in range(3)]).exp()
    ensemble = model.log_prob(x, ensemble=True).exp()
    assert torch.allclose(ensemble, single.mean(0), atol=1e-6)
    assert (single[0] - single[1]).abs().max() > 1e-3  # the masks define different distributions


def naive_nade_log_prob(nade, x, context=None):
    """p(x_d | x_<d) one coordinate at a time, straight from the definition."""
    c, b = nade.hidden_bias, nade.bias
    if context is not None:
        c = c + context @ nade.context_layer.weight[: nade.n_hidden].T
        b = b + context @ nade.context_layer.weight[nade.n_hidden :].T
    total = torch.zeros(x.shape[0])
    for d in range(nade.n_visible):
        h = torch.sigmoid(c + x[:, :d] @ nade.weight[:, :d].T)
        logit = b[..., d] + h @ nade.out_weight[d]
        total += dist.Bernoulli(logits=logit).log_prob(x[:, d])
    return total


@pytest.mark.parametrize("conditional", [False, True])
def test_nade_matches_naive(conditional):
    nade = randomize(NADE(9, 7, context_dim=CONTEXT if conditional else 0))
    x = torch.randint(0, 2, (50, 9)).float()
    context = torch.randn(50, CONTEXT) if conditional else None
    assert torch.allclose(nade.log_prob(x, context), naive_nade_log_prob(nade, x, context), atol=1e-5)


def test_made_masks_are_autoregressive():
    for natural in (False, True):
        model = randomize(MADE(7, (16, 16), num_masks=4, natural_ordering=natural, seed=1, context_dim=2))
        context = torch.randn(2)
        for k in range(4):
            model.resample_mask(k)
            order = model.ordering()
            if natural:
                assert order.tolist() == list(range(7))
            rank = torch.empty(7, dtype=torch.long)
            rank[order] = torch.arange(7)
            x = torch.rand(7)
            jac = torch.autograd.functional.jacobian(lambda v, m=model, c=context: m.logits(v, c), x)  # (d, j)
            forbidden = rank[None, :] >= rank[:, None]  # j not before d in the ordering
            assert jac[forbidden].abs().max() == 0
            assert (jac[~forbidden] != 0).float().mean() > 0.5  # and the allowed connections are mostly used
            # the logit of the first coordinate generated depends on nothing but the context
            assert jac[order[0]].abs().max() == 0


def test_pixelcnn_on_3x3_images():
    torch.manual_seed(0)
    for k in (0, 2):
        model = randomize(PixelCNN(3, 3, channels=5, num_layers=3, context_dim=k))
        context = torch.randn(k) if k else None
        assert abs(model.log_prob(all_states(9), context).logsumexp(0).item()) < 1e-5  # all 2^(3 x 3) images
        jac = torch.autograd.functional.jacobian(lambda v, m=model, c=context: m.logits(v, c), torch.rand(9))
        below = torch.ones(9, 9, dtype=torch.bool).tril(-1)  # raster order: pixel d sees pixels 0..d-1
        assert jac[~below].abs().max() == 0 and (jac[below] != 0).float().mean() > 0.5
    assert model.sample(4, torch.zeros(2)).shape == (4, 9)


@pytest.mark.parametrize("name", ["fvsbn", "nade"])
def test_fvsbn_nade_are_autoregressive(name):
    model = randomize(FACTORIES[name](7))
    jac = torch.autograd.functional.jacobian(model.logits, torch.rand(7))
    below = torch.ones(7, 7, dtype=torch.bool).tril(-1)
    assert jac[~below].abs().max() == 0 and (jac[below] != 0).all()


def test_resample_mask_cycles():
    model = MADE(4, (8,), num_masks=3)
    assert model.mask_index == 0
    assert [model.resample_mask() for _ in range(4)] == [1, 2, 0, 1]
    assert model.resample_mask(2) == 2
    with pytest.raises(ValueError, match="mask index"):
        model.resample_mask(3)


def exact_kl(truth, model, d):
    x = all_states(d)
    p = truth.log_prob(x).detach()
    return (p.exp() * (p - model.log_prob(x).detach())).sum().item()


@pytest.mark.parametrize("name", ["fvsbn", "nade", "made"])
def test_svi_training_reduces_kl(name):
    d = 5
    torch.manual_seed(0)
    truth = randomize(NADE(d, 4), scale=2.0)
    data = truth.sample(2000)
    model = FACTORIES[name](d)

    def program(data):
        pyro.module("ar", model)
        if isinstance(model, MADE):
            model.resample_mask()
        with pyro.plate("data", len(data), subsample_size=100) as idx:
            pyro.sample("x", model(), obs=data[idx])

    def guide(data):
        pass

    before = exact_kl(truth, model, d)
    svi = SVI(program, guide, ClippedAdam({"lr": 0.08}), Trace_ELBO())
    for _ in range(150):
        loss = svi.step(data)
    assert math.isfinite(loss)
    ensemble = {"ensemble": True} if isinstance(model, MADE) else {}
    x = all_states(d)
    p = truth.log_prob(x).detach()
    after = (p.exp() * (p - model.log_prob(x, **ensemble).detach())).sum().item()
    assert after < 0.1 and after < before / 5, (before, after)


@pytest.mark.parametrize("name", ["fvsbn", "nade", "made"])
def test_vae_with_autoregressive_decoder(name):
    x_dim, z_dim, n = 8, 2, 64
    data = torch.randint(0, 2, (n, x_dim)).float()
    decoder = FACTORIES[name](x_dim, z_dim)
    encoder = nn.Sequential(nn.Linear(x_dim, 2 * z_dim))

    def model(data):
        pyro.module("decoder", decoder)
        with pyro.plate("data", n, subsample_size=16) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros(z_dim), 1.0).to_event(1))
            pyro.sample("x", decoder(z), obs=data[idx])

    def guide(data):
        pyro.module("encoder", encoder)
        with pyro.plate("data", n, subsample_size=16) as idx:
            loc, log_scale = encoder(data[idx]).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    for elbo in (Trace_ELBO(), Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)):
        svi = SVI(model, guide, ClippedAdam({"lr": 1e-2}), elbo)
        losses = [svi.step(data) for _ in range(5)]
        assert all(math.isfinite(loss) for loss in losses)
    assert decoder.context_layer.weight.grad is not None  # the context (z) enters the likelihood


def test_distribution_interface():
    nade = randomize(NADE(D, 4, context_dim=CONTEXT))
    z = torch.randn(5, CONTEXT)
    d = nade(z)
    assert isinstance(d, AutoregressiveDistribution) and isinstance(nade.distribution(z), AutoregressiveDistribution)
    assert d.batch_shape == (5,) and d.event_shape == (D,) and not d.has_rsample
    assert d.sample().shape == (5, D) and d.sample((2,)).shape == (2, 5, D)
    assert d.expand((3, 5)).sample().shape == (3, 5, D)
    x = d.sample()
    assert torch.allclose(d.log_prob(x), nade.log_prob(x, z))
    assert d.support.check(x).all()
    unconditional = NADE(D, 4)
    assert unconditional().batch_shape == () and unconditional.sample(7).shape == (7, D)
    assert unconditional().expand((4,)).log_prob(torch.zeros(4, D)).shape == (4,)
    with pytest.raises(ValueError, match="does not broadcast with batch shape"):
        d.log_prob(torch.zeros(4, D))
    # with Pyro's validation off, values are converted but not checked
    pyro.enable_validation(False)
    off = nade.distribution(z)
    assert torch.allclose(off.log_prob(x.numpy()), nade.log_prob(x, z))
    assert off.log_prob(torch.full((5, D), 0.5)).shape == (5,)  # not a probability, but no error


def test_bad_input():
    nade = NADE(D, 4)
    x = torch.randint(0, 2, (3, D)).float()
    with pytest.raises(ValueError, match=r"x must have last dimension n_visible=6"):
        nade.log_prob(x[:, :4])
    with pytest.raises(ValueError, match="x must be binary"):
        nade.log_prob(x * 0.5)
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="x must be binary"):
        nade.log_prob(bad)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        nade.log_prob("0101")
    # NumPy arrays are converted (float64 and integer arrays alike)
    assert torch.allclose(nade.log_prob(x.numpy().astype(np.float64)), nade.log_prob(x))
    assert torch.allclose(nade.log_prob(x.numpy().astype(np.int64)), nade.log_prob(x))
    # contexts
    with pytest.raises(ValueError, match="is conditional"):
        NADE(D, 4, context_dim=2).log_prob(x)
    with pytest.raises(ValueError, match="context must have last dimension context_dim=2"):
        NADE(D, 4, context_dim=2).log_prob(x, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="context contains NaN"):
        FVSBN(D, context_dim=2).distribution(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="no context"):
        MADE(D, (8,)).log_prob(x, torch.zeros(3, 2))

    # inside a Pyro program, the error names the site
    def program(data):
        pyro.module("nade", nade)
        with pyro.plate("data", len(data)):
            pyro.sample("pixels", nade(), obs=data)

    for data, message in [(x[:, :4], "n_visible"), (x * 0.5, "binary"), (bad, "binary")]:
        with pytest.raises(ValueError, match=rf"(?s)site 'pixels'.*{message}"):
            Trace_ELBO().loss(program, lambda data: None, data)
    with pytest.raises(ValueError, match="n_hidden"):
        NADE(D, 0)
    with pytest.raises(ValueError, match="num_masks"):
        MADE(D, (8,), num_masks=0)
