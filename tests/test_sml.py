"""The SML gradient through an unmodified SVI, against the exact log-likelihood gradient."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import random_rbm
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceGraph_ELBO

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import (
    BernoulliRBM,
    ContrastiveDivergence,
    FastPersistentChains,
    GaussianBernoulliRBM,
    ParallelTempering,
    PersistentChains,
    average_log_likelihood,
    exact_log_partition,
)
from dgm_ppl.infer import train


def _model(rbm, chains, n):
    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    return model


def _guide(batch):
    pass


def _exact_grads(rbm, data, n):
    """Gradient of the loss -n * (mean_data log p(v)) with the exact log Z."""
    params = [rbm.weight, rbm.visible_bias, rbm.hidden_bias]
    loss = -n * ((-rbm.free_energy(data)).mean() - exact_log_partition(rbm, record=False))
    return torch.autograd.grad(loss, params)


def _svi_grads(model, batch):
    loss = Trace_ELBO().loss_and_grads(model, _guide, batch)
    rbm_params = {name: p.grad.clone() for name, p in pyro.get_param_store().named_parameters()}
    return loss, rbm_params


def _equilibrated_chains(rbm, num_chains):
    chains = PersistentChains(rbm, num_chains, steps=1)
    for _ in range(100):  # each advance consumes the stored hidden sample: the next sweep is a full one
        chains.advance()
    assert not chains._hidden_current
    return chains


@pytest.mark.parametrize("cls", [BernoulliRBM, GaussianBernoulliRBM])
def test_sml_gradient_through_svi_matches_exact_gradient(cls):
    rbm = random_rbm(cls, 6, 5, scale=0.7)
    n = 40
    # data away from the model, so that the exact gradient is large and the relative error meaningful
    data = torch.randn(n, 6) * 0.8 + 1.0 if cls is GaussianBernoulliRBM else torch.bernoulli(torch.full((n, 6), 0.3))
    chains = _equilibrated_chains(rbm, 20000)
    loss, grads = _svi_grads(_model(rbm, chains, n), data)
    exact = _exact_grads(rbm, data, n)
    names = [rbm._pyro_get_fullname(k) for k in ("weight", "visible_bias", "hidden_bias")]
    for name, g in zip(names, exact):
        err = (grads[name] - g).norm() / g.norm()
        assert err < 0.05, (name, err)
    # The value of log_prob is -F(v) - log Z_hat with log Z_hat = 0 here
    assert loss == pytest.approx(float(rbm.free_energy(data).sum().detach()), rel=1e-5)


def test_subsampled_plate_scales_the_gradient():
    rbm = random_rbm(BernoulliRBM, 6, 5, scale=0.7)
    full = torch.bernoulli(torch.full((200, 6), 0.4))
    batch = full[:25]
    chains = _equilibrated_chains(rbm, 20000)
    _, grads = _svi_grads(_model(rbm, chains, 200), batch)
    # N times the per-datum SML gradient of this batch
    exact = _exact_grads(rbm, batch, 200)
    err = (grads[rbm._pyro_get_fullname("weight")] - exact[0]).norm() / exact[0].norm()
    assert err < 0.05
    # with the wrong N the gradient would be off by the ratio: the test can fail
    wrong = _exact_grads(rbm, batch, 25)
    assert (grads[rbm._pyro_get_fullname("weight")] - wrong[0]).norm() / wrong[0].norm() > 1


def test_log_prob_value_uses_latest_log_z():
    rbm = random_rbm(BernoulliRBM, 6, 5)
    chains = PersistentChains(rbm, 10)
    v = torch.bernoulli(torch.full((3, 6), 0.5))
    d = rbm.distribution(chains)
    torch.testing.assert_close(d.log_prob(v), -rbm.free_energy(v))
    log_z = exact_log_partition(rbm)
    lp = rbm.distribution(chains).log_prob(v)
    torch.testing.assert_close(lp, -rbm.free_energy(v) - log_z)
    # with no grad it is the exact log-probability, and it normalizes
    from helpers import all_states

    with torch.no_grad():
        total = torch.logsumexp(rbm.distribution(chains).log_prob(all_states(6)), 0)
    assert abs(float(total)) < 1e-4


@pytest.mark.parametrize(
    "make_chains",
    [
        lambda rbm, x: PersistentChains(rbm, 100, init=x[:100]),
        lambda rbm, x: ContrastiveDivergence(rbm, steps=1),
        lambda rbm, x: ParallelTempering(rbm, 50, betas=5),
        lambda rbm, x: FastPersistentChains(rbm, 100, init=x[:100], fast_lr=0.05),
    ],
    ids=["pcd", "cd", "pt", "fpcd"],
)
@pytest.mark.parametrize("centered", [False, True])
def test_svi_training_raises_exact_log_likelihood(make_chains, centered):
    x = load_digits("train")[:600]
    xt = load_digits("test")
    rbm = BernoulliRBM(64, 12, centered=centered).init_from_data(x)
    chains = make_chains(rbm, x)
    before = average_log_likelihood(rbm, xt, exact_log_partition(rbm))
    svi = SVI(_model(rbm, chains, len(x)), _guide, pyro.optim.Adam({"lr": 3e-2}), Trace_ELBO())
    train(svi, x, epochs=10, batch_size=50, progress=False)
    after = average_log_likelihood(rbm, xt, exact_log_partition(rbm))
    # base rates give about -25.3 nats; centering learns much faster (about -21 vs -24.4)
    assert after > before + (3.0 if centered else 0.5), (before, after)


def test_two_rbms_and_an_rbm_prior_under_a_decoder_compose():
    """An RBM prior over binary codes z, a Bernoulli decoder, an amortized guide, and a second RBM
    on the data, all in one model trained by one SVI."""
    x = load_digits("train")[:200]
    prior = BernoulliRBM(8, 6)
    prior_chains = PersistentChains(prior, 50)
    side = BernoulliRBM(64, 4)
    side_chains = PersistentChains(side, 50)
    decoder = torch.nn.Linear(8, 64)
    encoder = torch.nn.Linear(64, 8)

    def model(batch):
        pyro.module("decoder", decoder)
        with pyro.plate("data", len(x), subsample=batch):
            z = pyro.sample("z", prior.distribution(prior_chains))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=batch)
            pyro.sample("x_side", side.distribution(side_chains), obs=batch)

    def guide(batch):
        pyro.module("encoder", encoder)
        with pyro.plate("data", len(x), subsample=batch):
            pyro.sample("z", dist.Bernoulli(logits=encoder(batch)).to_event(1))

    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceGraph_ELBO())
    before = {k: v.detach().clone() for k, v in [("p", prior.weight), ("s", side.weight)]}
    state_before = prior_chains.state.clone()
    for i in range(5):
        svi.step(x[i * 40 : (i + 1) * 40])
    names = set(pyro.get_param_store().keys())
    assert {prior._pyro_get_fullname("weight"), side._pyro_get_fullname("weight")} <= names
    assert prior._pyro_get_fullname("weight") != side._pyro_get_fullname("weight")
    assert not torch.equal(before["p"], prior.weight) and not torch.equal(before["s"], side.weight)
    assert not torch.equal(state_before, prior_chains.state)
    # Predictive draws z from the RBM prior by Gibbs, and x from the decoder
    samples = Predictive(model, num_samples=3)(x[:5])
    assert samples["z"].shape == (3, 5, 8) and samples["x"].shape == (3, 5, 64)
    assert ((samples["z"] == 0) | (samples["z"] == 1)).all()
