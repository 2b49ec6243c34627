"""Regression tests written from the user's side: real Pyro programs (Pyro's examples and the eight-schools model),
NumPy input, and the messages a user sees when something is wrong (issue 15)."""

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, Predictive

from dgm_ppl.arviz import to_inference_data

Y = torch.tensor([28.0, 8, -3, 7, -1, 1, 18, 12])
SIGMA = torch.tensor([15.0, 10, 16, 11, 9, 11, 10, 18])


def eight_schools(sigma, y=None):
    """Non-centred eight schools, written as in Pyro's and ArviZ's docs: a deterministic inside the plate."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("school", 8):
        theta_tilde = pyro.sample("theta_tilde", dist.Normal(0.0, 1.0))
        theta = pyro.deterministic("theta", mu + tau * theta_tilde)
        pyro.sample("obs", dist.Normal(theta, sigma), obs=y)


@pytest.fixture(scope="module")
def eight_schools_mcmc():
    pyro.set_rng_seed(1)
    mcmc = MCMC(NUTS(eight_schools), num_samples=200, warmup_steps=100, disable_progbar=True)
    mcmc.run(SIGMA, Y)
    return mcmc


@pytest.mark.parametrize("parallel", [False, True])
def test_eight_schools_posterior_predictive_matches_pyro(eight_schools_mcmc, parallel):
    """The deterministic ``theta`` inside the plate used to be re-sampled from its plate-expanded Delta, so that
    ``obs`` came out (chain, draw, 8, 8) with the wrong axis labelled ``school`` (and parallel=True raised)."""
    mcmc = eight_schools_mcmc
    data = to_inference_data(model=eight_schools, mcmc=mcmc, model_args=(SIGMA, Y), parallel=parallel)
    reference = az.from_pyro(mcmc)
    predictive = Predictive(eight_schools, mcmc.get_samples())(SIGMA)

    pp = data.posterior_predictive["obs"]
    assert pp.dims == ("chain", "draw", "school")
    assert pp.shape == (1, 200, 8) == (1, *predictive["obs"].shape)
    for name in ("mu", "tau", "theta_tilde"):
        np.testing.assert_allclose(data.posterior[name].values, reference.posterior[name].values, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        data.log_likelihood["obs"].values, reference.log_likelihood["obs"].values, rtol=1e-5, atol=1e-4
    )
    # each replicate is theta of its own draw plus N(0, sigma) noise, school by school
    z = (pp.values[0] - data.posterior["theta"].values[0]) / SIGMA.numpy()
    assert abs(z.mean()) < 0.1 and abs(z.std() - 1.0) < 0.08
    z_pyro = (predictive["obs"] - predictive["theta"]) / SIGMA
    assert abs(float(z_pyro.std()) - z.std()) < 0.1


def test_eight_schools_prior_predictive_shape():
    data = to_inference_data(model=eight_schools, model_args=(SIGMA, Y), prior=True, num_prior_samples=50)
    assert data.prior_predictive["obs"].dims == ("chain", "draw", "school")
    assert data.prior_predictive["obs"].shape == (1, 50, 8)
    assert data.prior["theta"].shape == (1, 50, 8)


# ----------------------------------------------------------------------------------------------------------------
# Pyro's CVAE example (examples/cvae): boolean-mask indexing in the model, ys=None at test time


class _CVAE(torch.nn.Module):
    """A small CVAE written as Pyro's example is: the input x shows some pixels (-1 elsewhere), the output y is the
    whole image, and the likelihood is taken over the hidden pixels by boolean-mask indexing."""

    def __init__(self, d=12, z_dim=2):
        super().__init__()
        self.d, self.z_dim = d, z_dim
        self.prior_net = torch.nn.Linear(d, 2 * z_dim)
        self.generation_net = torch.nn.Linear(z_dim, d)
        self.recognition_net = torch.nn.Linear(2 * d, 2 * z_dim)

    def _normal(self, out):
        loc, scale = out.chunk(2, -1)
        return dist.Normal(loc, torch.nn.functional.softplus(scale) + 1e-3).to_event(1)

    def model(self, xs, ys=None):
        pyro.module("cvae", self)
        batch_size = xs.shape[0]
        with pyro.plate("data"):
            zs = pyro.sample("z", self._normal(self.prior_net(xs)))
            probs = torch.sigmoid(self.generation_net(zs))
            if ys is not None:
                hidden = (xs == -1).view(-1, self.d)
                mask_probs = probs[hidden].view(batch_size, -1)
                mask_ys = ys[hidden].view(batch_size, -1)
                pyro.sample("y", dist.Bernoulli(mask_probs, validate_args=False).to_event(1), obs=mask_ys)
            else:
                pyro.deterministic("y", probs.detach())
        return probs

    def guide(self, xs, ys=None):
        with pyro.plate("data"):
            out = self.prior_net(xs) if ys is None else self.recognition_net(torch.cat([xs, ys], -1))
            pyro.sample("z", self._normal(out))


def _cvae_data(n=20, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ys = torch.bernoulli(torch.full((n, d), 0.5), generator=g)
    xs = ys.clone()
    xs[:, d // 2 :] = -1.0  # the first half is shown; the rest is to be predicted
    return xs, ys


def test_log_likelihood_falls_back_to_sequential_on_pyros_cvae():
    """The mask indexing cannot broadcast over a particle plate: the estimate is computed one particle at a time,
    and it equals, draw for draw, the estimate of the same model written with a mask instead of indexing."""
    from dgm_ppl.evaluation import log_likelihood

    torch.manual_seed(0)
    cvae = _CVAE()
    xs, ys = _cvae_data()
    hidden = xs == -1

    def masked_model_flat(xs, ys):
        with pyro.plate("data", xs.shape[0]):
            zs = pyro.sample("z", cvae._normal(cvae.prior_net(xs)))
            probs = torch.sigmoid(cvae.generation_net(zs))
            pyro.sample("y", dist.Bernoulli(probs).mask(hidden).to_event(1), obs=ys)

    with pytest.warns(UserWarning, match="does not broadcast over a particle plate"):
        auto = log_likelihood(cvae.model, cvae.guide, xs, ys, num_samples=30, particle_batch_size=10)
    assert auto.log_p.shape == (20,) and torch.isfinite(auto.log_p).all()
    pyro.set_rng_seed(3)
    sequential = log_likelihood(cvae.model, cvae.guide, xs, ys, num_samples=30, vectorize=False)
    pyro.set_rng_seed(3)
    reference = log_likelihood(masked_model_flat, cvae.guide, xs, ys, num_samples=30, vectorize=False)
    torch.testing.assert_close(sequential.log_p, reference.log_p)

    # and the vectorized estimate of the flat model agrees within Monte Carlo error
    # (with the prior network as proposal, 1,000 draws pin each log p(y | x) to about 0.03)
    def prior_guide(xs, ys):
        return cvae.guide(xs, None)

    vectorized = log_likelihood(masked_model_flat, prior_guide, xs, ys, num_samples=1000)
    long_sequential = log_likelihood(cvae.model, prior_guide, xs, ys, num_samples=1000, vectorize=False)
    gap = vectorized.log_p - long_sequential.log_p
    assert gap.abs().max() < 0.15 and gap.mean().abs() < 0.03


def test_log_likelihood_keeps_the_programs_own_errors():
    """An error that is not about broadcasting (here: a guide that misses a latent) is raised as it is."""
    from dgm_ppl.evaluation import log_likelihood

    cvae = _CVAE()
    xs, ys = _cvae_data()
    with pytest.raises(ValueError, match="does not sample the model's latent site 'z'"):
        log_likelihood(cvae.model, lambda xs, ys: None, xs, ys, num_samples=4)


# ----------------------------------------------------------------------------------------------------------------
# NumPy input, and the messages a user sees


def _rbm_svi(n=60):
    from pyro.infer import SVI, Trace_ELBO

    from dgm_ppl.energy import BernoulliRBM, PersistentChains

    rbm = BernoulliRBM(64, 8)
    chains = PersistentChains(rbm, 10)

    def model(batch):
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", rbm.distribution(chains), obs=batch)

    return rbm, SVI(model, lambda batch: None, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())


def test_train_accepts_numpy_arrays():
    from dgm_ppl.datasets import load_digits
    from dgm_ppl.infer import train

    x = load_digits()[:60].numpy().astype(np.uint8)  # as a user loads it from an .npz file
    rbm, svi = _rbm_svi()
    history = train(svi, x, epochs=2, batch_size=20, progress=False)
    assert len(history) == 2 and all(np.isfinite(history))
    with pytest.raises(TypeError, match="train\\(data\\) must be a torch.Tensor or a numeric NumPy array"):
        train(svi, "x.npz", progress=False)


def test_train_names_the_rows_with_nan_before_any_step():
    from dgm_ppl.datasets import load_digits
    from dgm_ppl.infer import train

    x = load_digits()[:60].clone()
    x[[7, 41]] = float("nan")
    rbm, svi = _rbm_svi()
    before = rbm.weight.detach().clone()
    with pytest.raises(ValueError, match="2 rows contain NaN or inf \\(rows 7, 41\\)"):
        train(svi, x, epochs=1, batch_size=20, shuffle=False, progress=False)
    assert torch.equal(before, rbm.weight)  # the first batches (rows 0-39) did not move the parameters


def test_evaluation_accepts_numpy():
    from dgm_ppl.evaluation import memorization, mmd2, mode_coverage

    rng = np.random.default_rng(0)
    train_set, samples = rng.normal(size=(50, 2)), rng.normal(size=(20, 2))
    result = memorization(samples, train_set, held_out=rng.normal(size=(20, 2)))
    assert result.distances.shape == (20,)
    assert float(mmd2(samples, train_set)) == pytest.approx(float(mmd2(torch.tensor(samples), train_set)), abs=1e-6)
    assert mode_coverage(rng.normal(size=(100, 2)), benchmark="ring") is not None
    with pytest.raises(TypeError, match="samples must be"):
        memorization({"a": 1}, train_set)


def test_ais_refuses_a_single_run():
    from dgm_ppl.energy import BernoulliRBM, ais_log_partition

    with pytest.raises(ValueError, match="at least 2 independent runs.*num_chains=1"):
        ais_log_partition(BernoulliRBM(6, 3), num_chains=1, num_betas=10)


def test_mmd_loss_on_a_deterministic_site_says_what_is_wrong():
    """A generator that records its output with pyro.deterministic has no data site: the message says so (it used
    to report a shape mismatch (64, 2) vs (64, 64, 2) from the re-sampled Delta)."""
    from pyro.infer import SVI

    from dgm_ppl.infer import MMDLoss

    G = torch.nn.Linear(2, 2)

    def model(x):
        pyro.module("G", G)
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.deterministic("x", G(z))

    conditioned = pyro.poutine.condition(model, data={"x": torch.randn(64, 2)})
    svi = SVI(conditioned, lambda x: None, pyro.optim.Adam({"lr": 1e-3}), MMDLoss())
    with pytest.raises(ValueError, match="\\['x'\\] are pyro.deterministic sites.*not data.*dist.Delta"):
        svi.step(torch.randn(64, 2))


def test_gan_loss_ignores_deterministic_records_next_to_the_data():
    """A pyro.deterministic site next to the observed one is a record, not a second data site to compare."""
    from pyro.infer import SVI

    from dgm_ppl.infer import MMDLoss

    G = torch.nn.Linear(2, 2)

    def model(x):
        pyro.module("G", G)
        with pyro.plate("batch", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            out = pyro.deterministic("out", G(z))
            pyro.sample("x", dist.Delta(out, event_dim=1), obs=x)

    svi = SVI(model, lambda x: None, pyro.optim.Adam({"lr": 1e-3}), MMDLoss())
    assert np.isfinite(svi.step(torch.randn(64, 2)))
