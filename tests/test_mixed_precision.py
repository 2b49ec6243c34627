"""Mixed precision: ``AutocastLoss`` (forward under ``torch.autocast``, backward outside) and the energy models'
behaviour under autocast (scores in full precision, a low-precision backward pass refused)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceGraph_ELBO
from torch import nn

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import (
    BernoulliRBM,
    PersistentChains,
    ais_log_partition,
    average_log_likelihood,
    exact_log_partition,
)
from dgm_ppl.infer import IWAE, AutocastLoss, GANLoss, train

LOW = dict(device_type="cpu", dtype=torch.bfloat16)


def test_bad_arguments_are_refused_clearly():
    with pytest.raises(TypeError, match="differentiable_loss"):
        AutocastLoss(RenyiELBO(), "cpu")
    with pytest.raises(TypeError, match="differentiable_loss"):
        AutocastLoss(TraceGraph_ELBO(), "cpu")
    with pytest.raises(TypeError, match="callable"):
        AutocastLoss("Trace_ELBO", "cpu")
    with pytest.raises(ValueError, match="device_type"):
        AutocastLoss(Trace_ELBO(), "gpu")
    with pytest.raises(ValueError, match="dtype"):
        AutocastLoss(Trace_ELBO(), "cpu", dtype=torch.int8)
    assert "Trace_ELBO" in repr(AutocastLoss(Trace_ELBO(), "cpu"))
    AutocastLoss(IWAE(4), "cpu")  # dgm_ppl's IWAE has differentiable_loss


def test_the_forward_pass_is_autocast_and_the_backward_pass_is_not():
    """A small VAE: the decoder's product runs in bfloat16 (its output's dtype), the backward pass sees autocast
    off, the parameters and their gradients stay float32, and the loss is float32's to bfloat16 precision."""
    torch.manual_seed(0)
    decoder, encoder = nn.Linear(2, 8), nn.Linear(8, 4)
    seen = {}

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            logits = decoder(z)
            seen["dtype"] = logits.dtype
            pyro.sample("x", dist.Bernoulli(logits=logits.float()).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        out = encoder(x).float()
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(out[:, :2], out[:, 2:].exp()).to_event(1))

    def backward_hook(grad):
        seen["backward_autocast"] = torch.is_autocast_enabled("cpu")
        return grad

    decoder.weight.register_hook(backward_hook)
    x = (torch.rand(16, 8) < 0.5).float()
    values = {}
    for name, loss in (("full", Trace_ELBO()), ("low", AutocastLoss(Trace_ELBO(), **LOW))):
        pyro.clear_param_store()
        pyro.set_rng_seed(1)
        for p in [*decoder.parameters(), *encoder.parameters()]:
            p.grad = None
        values[name] = SVI(model, guide, pyro.optim.Adam({"lr": 0.0}), loss).step(x)
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in decoder.parameters())
        seen[name] = seen.pop("dtype")
    assert seen["full"] == torch.float32 and seen["low"] == torch.bfloat16
    assert seen["backward_autocast"] is False
    assert values["low"] == pytest.approx(values["full"], rel=2e-2) and values["low"] != values["full"]


def _rbm_run(loss_of, centered, steps_under_autocast=False):
    x = load_digits("train")[:300]
    pyro.clear_param_store()
    torch.manual_seed(0)
    rbm = BernoulliRBM(64, 10, centered=centered).init_from_data(x)
    chains = PersistentChains(rbm, 50, init=x[:50])

    def model(batch):
        with pyro.plate("data", len(x), subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    svi = SVI(model, lambda batch: None, pyro.optim.Adam({"lr": 3e-2}), loss_of())
    train(svi, x, epochs=2, batch_size=50, progress=False)
    return rbm, chains


@pytest.mark.parametrize("centered", [False, True])
def test_an_rbm_keeps_full_precision_under_autocast_loss(centered):
    """RBMs take their training precision from ``matmul_dtype``, not from autocast: trained through
    ``AutocastLoss``, the RBM and its chains are bit for bit the float32 ones."""
    full, full_chains = _rbm_run(Trace_ELBO, centered)
    low, low_chains = _rbm_run(lambda: AutocastLoss(Trace_ELBO(), **LOW), centered)
    for a, b in zip([*full.parameters(), *full.buffers()], [*low.parameters(), *low.buffers()]):
        assert torch.equal(a, b)
    assert torch.equal(full_chains.state, low_chains.state)


def test_an_rbm_refuses_a_backward_pass_under_autocast():
    x = load_digits("train")[:100]
    rbm = BernoulliRBM(64, 10).init_from_data(x)
    chains = PersistentChains(rbm, 20)

    def model(batch):
        with pyro.plate("data", len(x), subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    svi = SVI(model, lambda batch: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    before = [p.detach().clone() for p in rbm.parameters()]
    with torch.autocast(**LOW), pytest.raises(RuntimeError, match="backward pass runs under torch.autocast"):
        svi.step(x[:20])
    assert all(torch.equal(a, b) for a, b in zip(before, rbm.parameters()))


def test_scores_ignore_autocast():
    torch.manual_seed(0)
    x = load_digits("train")[:200]
    rbm = BernoulliRBM(64, 8).init_from_data(x)
    with torch.no_grad():
        rbm.weight.normal_(0, 0.3)
    exact = exact_log_partition(rbm)
    torch.manual_seed(1)
    ais = ais_log_partition(rbm, num_chains=20, num_betas=200, data=x, progress=False)
    ll = average_log_likelihood(rbm, x, exact)
    with torch.autocast(**LOW):
        assert exact_log_partition(rbm) == exact
        torch.manual_seed(1)
        assert ais_log_partition(rbm, num_chains=20, num_betas=200, data=x, progress=False).log_z == ais.log_z
        assert average_log_likelihood(rbm, x, exact) == ll


def test_a_gan_step_through_autocast_loss():
    """A comparison loss is a callable: its discriminator step runs inside the autocast forward, and the
    generator's backward pass (SVI's) outside; everything stays float32."""
    torch.manual_seed(0)
    G, D = nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def model(x):
        pyro.module("G", G)
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Delta(G(z), event_dim=1), obs=x)

    gan = GANLoss(D, d_optim=lambda params: torch.optim.Adam(params, lr=1e-3))
    svi = SVI(model, lambda x: None, pyro.optim.Adam({"lr": 1e-3}), AutocastLoss(gan, **LOW))
    before = G.weight.detach().clone()
    assert math.isfinite(svi.step(torch.randn(32, 2) + 2))
    assert not torch.equal(before, G.weight) and G.weight.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in D.parameters()) and len(gan.history["d_loss"]) == 1
