"""Tests of dgm_ppl.arviz.to_inference_data: values of every group recomputed by hand, dims, sources, errors."""

import math

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from scipy import stats

from dgm_ppl.arviz import to_inference_data

matplotlib.use("Agg")

POSTERIOR_GROUPS = {"posterior", "posterior_predictive", "log_likelihood", "sample_stats", "observed_data"}

# ---------------------------------------------------------------------------------------------------------------------
# Models and hand-written guides with known densities


def normal_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, sigma), obs=y)


# q(mu) = Normal(0.3, 0.2), q(sigma) = LogNormal(0.1, 0.3)
Q_MU, Q_SIGMA = (0.3, 0.2), (0.1, 0.3)


def normal_guide(y):
    pyro.sample("mu", dist.Normal(*Q_MU))
    pyro.sample("sigma", dist.LogNormal(*Q_SIGMA))


def point_guide(mu=5.0, sigma=0.1):
    def guide(y):
        pyro.sample("mu", dist.Delta(torch.tensor(mu)))
        pyro.sample("sigma", dist.Delta(torch.tensor(sigma)))

    return guide


def conjugate_model(y):
    """mu ~ N(0, 1), y_i ~ N(mu, 1): posterior N(sum(y) / (n + 1), 1 / (n + 1)); a deterministic shift of mu."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.deterministic("shift", mu + 1.0)
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def conjugate_posterior(y):
    n = y.shape[0]
    return float(y.sum()) / (n + 1), 1.0 / math.sqrt(n + 1)


@pytest.fixture
def y():
    return torch.tensor([0.5, -0.2, 1.3, 0.8])


@pytest.fixture(params=[False, True], ids=["seq", "par"])
def parallel(request):
    return request.param


def _np(x):
    return np.asarray(x, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------------
# 1. Pointwise log-likelihood


def test_pointwise_log_likelihood_is_the_observation_density_at_each_draw(y, parallel):
    idata = to_inference_data(normal_model, normal_guide, model_args=(y,), num_samples=100, parallel=parallel)
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "obs")
    assert ll.shape == (1, 100, 4)
    mu = _np(idata.posterior["mu"])[..., None]
    sigma = _np(idata.posterior["sigma"])[..., None]
    expected = stats.norm.logpdf(y.numpy()[None, None, :], loc=mu, scale=sigma)
    np.testing.assert_allclose(_np(ll), expected, atol=1e-4)
    # the draws differ, so this is a check at every draw rather than of one broadcast value
    assert np.std(_np(ll)[0, :, 0]) > 0.1
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())


TRIL = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.7, 0.0], [-0.3, 0.2, 0.4]])


def mvn_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.MultivariateNormal(mu, scale_tril=TRIL), obs=y)


def diag_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, torch.tensor([0.5, 1.0, 2.0])).to_event(1), obs=y)


def vector_guide(y):
    pyro.sample("mu", dist.Normal(torch.tensor([0.5, -0.5, 1.0]), 0.3).to_event(1))


def _mvn_logpdf(y, mu):
    cov = (TRIL @ TRIL.T).numpy()
    return np.stack([stats.multivariate_normal.logpdf(y, mean=m, cov=cov) for m in mu])


def _diag_logpdf(y, mu):
    return stats.norm.logpdf(y[None], loc=mu[:, None, :], scale=np.array([0.5, 1.0, 2.0])).sum(-1)


@pytest.mark.parametrize(
    "model, logpdf", [(mvn_model, _mvn_logpdf), (diag_model, _diag_logpdf)], ids=["mvn", "to_event"]
)
def test_log_likelihood_sums_event_dims(model, logpdf, parallel):
    y = torch.randn(5, 3)
    idata = to_inference_data(model, vector_guide, model_args=(y,), num_samples=60, parallel=parallel)
    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "obs")
    assert ll.shape == (1, 60, 5)
    mu = _np(idata.posterior["mu"])[0]  # (draw, 3)
    assert idata.posterior["mu"].dims == ("chain", "draw", "mu_dim_0")
    np.testing.assert_allclose(_np(ll)[0], logpdf(y.numpy(), mu), atol=1e-4)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "obs", "y_dim_1")
    assert idata.posterior_predictive["y"].shape == (1, 60, 5, 3)
    assert idata.observed_data["y"].dims == ("obs", "y_dim_1")
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())


# ---------------------------------------------------------------------------------------------------------------------
# 2. sample_stats: lp = log p(theta, y), log_q = log q(theta)


def test_lp_is_the_joint_density_and_log_q_the_guide_density(y, parallel):
    idata = to_inference_data(normal_model, normal_guide, model_args=(y,), num_samples=80, parallel=parallel)
    assert set(idata.sample_stats.data_vars) == {"lp", "log_q"}
    assert idata.sample_stats["lp"].dims == ("chain", "draw")
    mu, sigma = _np(idata.posterior["mu"])[0], _np(idata.posterior["sigma"])[0]
    lp = (
        stats.norm.logpdf(mu, 0, 1)
        + stats.halfnorm.logpdf(sigma, scale=1.0)
        + stats.norm.logpdf(y.numpy()[None], mu[:, None], sigma[:, None]).sum(-1)
    )
    np.testing.assert_allclose(_np(idata.sample_stats["lp"])[0], lp, atol=1e-3)
    log_q = stats.norm.logpdf(mu, *Q_MU) + stats.lognorm.logpdf(sigma, s=Q_SIGMA[1], scale=math.exp(Q_SIGMA[0]))
    np.testing.assert_allclose(_np(idata.sample_stats["log_q"])[0], log_q, atol=1e-3)
    # the draws are from the guide
    assert abs(mu.mean() - Q_MU[0]) < 0.1
    assert abs(np.log(sigma).std() - Q_SIGMA[1]) < 0.1


# ---------------------------------------------------------------------------------------------------------------------
# 3. Groups and dims


@pytest.mark.parametrize(
    "kwargs, groups",
    [
        ({}, POSTERIOR_GROUPS),
        ({"prior": True}, POSTERIOR_GROUPS | {"prior", "prior_predictive"}),
        ({"posterior_predictive": False}, POSTERIOR_GROUPS - {"posterior_predictive"}),
        ({"log_likelihood": False}, POSTERIOR_GROUPS - {"log_likelihood"}),
        ({"posterior_predictive": False, "log_likelihood": False}, {"posterior", "sample_stats", "observed_data"}),
    ],
)
def test_groups(y, kwargs, groups, parallel):
    idata = to_inference_data(normal_model, normal_guide, model_args=(y,), num_samples=20, **kwargs, parallel=parallel)
    assert set(idata.groups()) == groups
    assert idata.posterior.sizes["chain"] == 1
    assert idata.posterior.sizes["draw"] == 20
    assert idata.posterior.attrs["posterior_source"] == "guide"
    assert idata.posterior.attrs["inference_library"] == "pyro"


def grid_model(y):
    """Nested plates rows (dim -2, size 3) x cols (dim -1, size 5) with a local latent in each."""
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    rows, cols = pyro.plate("rows", 3, dim=-2), pyro.plate("cols", 5, dim=-1)
    with cols:
        c = pyro.sample("c", dist.Normal(0.0, 1.0))
    with rows:
        r = pyro.sample("r", dist.Normal(0.0, 1.0))
    with rows, cols:
        pyro.sample("y", dist.Normal(mu + r + c, 0.5), obs=y)


def grid_guide(y):
    pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("cols", 5, dim=-1):
        pyro.sample("c", dist.Normal(torch.arange(5.0), 1.0))
    with pyro.plate("rows", 3, dim=-2):
        pyro.sample("r", dist.Normal(torch.arange(3.0).unsqueeze(-1), 1.0))


def test_nested_plates_map_to_the_right_axes(parallel):
    y = torch.randn(3, 5)
    idata = to_inference_data(grid_model, grid_guide, model_args=(y,), num_samples=40, parallel=parallel)
    post = idata.posterior
    assert post["c"].dims == ("chain", "draw", "cols")
    assert post["r"].dims == ("chain", "draw", "rows", "r_dim_1")
    assert dict(post.sizes) == {"chain": 1, "draw": 40, "cols": 5, "rows": 3, "r_dim_1": 1}
    # the guide's means (arange) land on the named axes
    np.testing.assert_allclose(_np(post["c"]).mean((0, 1)), np.arange(5.0), atol=0.6)
    np.testing.assert_allclose(_np(post["r"]).mean((0, 1, 3)), np.arange(3.0), atol=0.6)
    for group in (idata.log_likelihood, idata.posterior_predictive):
        assert group["y"].dims == ("chain", "draw", "rows", "cols")
        assert group["y"].shape == (1, 40, 3, 5)
    assert idata.observed_data["y"].dims == ("rows", "cols")
    loc = _np(post["mu"])[..., None, None] + _np(post["r"]) + _np(post["c"])[:, :, None, :]
    expected = stats.norm.logpdf(y.numpy(), loc=loc, scale=0.5)
    np.testing.assert_allclose(_np(idata.log_likelihood["y"]), expected, atol=1e-4)


def local_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.deterministic("mu2", 2 * mu)
    with pyro.plate("obs", y.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.deterministic("z_sq", z**2, event_dim=0)
        pyro.sample("y", dist.Normal(z, 0.5), obs=y)


def local_guide(y):
    pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("z", dist.Normal(y, 0.3))


def test_local_latent_and_deterministic_sites(y, parallel):
    idata = to_inference_data(local_model, local_guide, model_args=(y,), num_samples=50, prior=True, parallel=parallel)
    post = idata.posterior
    assert set(post.data_vars) == {"mu", "mu2", "z", "z_sq"}
    assert post["z"].dims == ("chain", "draw", "obs")
    assert post["z_sq"].dims == ("chain", "draw", "obs")
    assert post["mu2"].dims == ("chain", "draw")
    assert post.sizes["obs"] == 4
    np.testing.assert_allclose(_np(post["mu2"]), 2 * _np(post["mu"]), rtol=1e-6)
    np.testing.assert_allclose(_np(post["z_sq"]), _np(post["z"]) ** 2, rtol=1e-6)
    # deterministic sites are not observations
    assert set(idata.log_likelihood.data_vars) == {"y"}
    assert set(idata.posterior_predictive.data_vars) == {"y"}
    assert set(idata.observed_data.data_vars) == {"y"}
    # z follows the guide, y | z is the likelihood
    expected = stats.norm.logpdf(y.numpy(), loc=_np(post["z"]), scale=0.5)
    np.testing.assert_allclose(_np(idata.log_likelihood["y"]), expected, atol=1e-4)
    # the prior group recomputes the deterministic sites from the prior draws
    prior = idata.prior
    assert set(prior.data_vars) == {"mu", "mu2", "z", "z_sq"}
    assert prior["z_sq"].dims == ("chain", "draw", "obs") and prior["mu2"].dims == ("chain", "draw")
    np.testing.assert_allclose(_np(prior["mu2"]), 2 * _np(prior["mu"]), rtol=1e-6)
    np.testing.assert_allclose(_np(prior["z_sq"]), _np(prior["z"]) ** 2, rtol=1e-6)
    assert abs(_np(prior["z"]).std() - math.sqrt(2)) < 0.3  # z ~ N(mu, 1), mu ~ N(0, 1): not the guide's


def plate_deterministic_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("obs", y.shape[0]):
        pyro.deterministic("mean", mu + torch.arange(float(y.shape[0])))  # default event_dim
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.mark.parametrize("parallel", [False, True], ids=["seq", "par"])
def test_deterministic_in_plate_values(y, parallel):
    mu = torch.randn(10)
    idata = to_inference_data(
        plate_deterministic_model,
        posterior_samples={"mu": mu},
        model_args=(y,),
        prior=True,
        num_prior_samples=20,
        parallel=parallel,
    )
    np.testing.assert_allclose(_np(idata.posterior["mean"])[0], mu.numpy()[:, None] + np.arange(4.0), rtol=1e-6)
    assert idata.prior["mean"].shape == (1, 20, 4)
    np.testing.assert_allclose(_np(idata.prior["mean"]), _np(idata.prior["mu"])[..., None] + np.arange(4.0), rtol=1e-6)


def test_deterministic_in_plate_gets_plate_dim(y):
    idata = to_inference_data(plate_deterministic_model, posterior_samples={"mu": torch.zeros(10)}, model_args=(y,))
    assert idata.posterior["mean"].dims == ("chain", "draw", "obs")


def test_var_names_filters_posterior_and_prior(y, parallel):
    idata = to_inference_data(
        local_model, local_guide, model_args=(y,), num_samples=20, prior=True, var_names=["mu"], parallel=parallel
    )
    assert set(idata.posterior.data_vars) == {"mu"}
    assert set(idata.prior.data_vars) == {"mu"}
    # the other groups are untouched
    assert set(idata.log_likelihood.data_vars) == {"y"}
    assert set(idata.posterior_predictive.data_vars) == {"y"}
    assert set(idata.prior_predictive.data_vars) == {"y"}


def test_user_dims_and_coords_override(y, parallel):
    names = ["a", "b", "c", "d"]
    idata = to_inference_data(
        normal_model,
        normal_guide,
        model_args=(y,),
        num_samples=20,
        dims={"y": ["datum"]},
        coords={"datum": names},
        parallel=parallel,
    )
    for group in (idata.log_likelihood, idata.posterior_predictive):
        assert group["y"].dims == ("chain", "draw", "datum")
        assert list(group["datum"].values) == names
    assert idata.observed_data["y"].dims == ("datum",)
    assert list(idata.observed_data["datum"].values) == names
    assert "obs" not in idata.log_likelihood.dims


def test_model_kwargs(y):
    def model(y=None):
        normal_model(y)

    def guide(y=None):
        normal_guide(y)

    idata = to_inference_data(model, guide, model_kwargs={"y": y}, num_samples=10)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())
    assert idata.log_likelihood["y"].shape == (1, 10, 4)


# ---------------------------------------------------------------------------------------------------------------------
# 4. posterior_samples and MCMC


def test_posterior_samples_from_exact_posterior(y, parallel):
    loc, scale = conjugate_posterior(y)
    mu = loc + scale * torch.randn(200)
    samples = {"mu": mu, "shift": torch.full((200,), 999.0)}  # a deterministic site's value is recomputed
    idata = to_inference_data(conjugate_model, posterior_samples=samples, model_args=(y,), parallel=parallel)
    assert set(idata.groups()) == POSTERIOR_GROUPS
    assert idata.posterior.attrs["posterior_source"] == "samples"
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 200
    np.testing.assert_array_equal(idata.posterior["mu"].values[0], mu.numpy())
    np.testing.assert_allclose(_np(idata.posterior["shift"])[0], mu.numpy() + 1.0, rtol=1e-6)
    assert set(idata.sample_stats.data_vars) == {"lp"}
    lp = stats.norm.logpdf(mu.numpy(), 0, 1) + stats.norm.logpdf(y.numpy()[None], mu.numpy()[:, None], 1).sum(-1)
    np.testing.assert_allclose(_np(idata.sample_stats["lp"])[0], lp, atol=1e-3)
    ll = stats.norm.logpdf(y.numpy()[None], mu.numpy()[:, None], 1)
    np.testing.assert_allclose(_np(idata.log_likelihood["y"])[0], ll, atol=1e-4)


def test_posterior_samples_numpy_and_local_latents(y, parallel):
    z = np.random.default_rng(0).normal(size=(30, 4))
    samples = {"mu": np.zeros(30), "z": z}
    idata = to_inference_data(local_model, posterior_samples=samples, model_args=(y,), parallel=parallel)
    assert idata.posterior["z"].dims == ("chain", "draw", "obs")
    np.testing.assert_allclose(_np(idata.posterior["z"])[0], z, rtol=1e-6)
    np.testing.assert_allclose(_np(idata.posterior["z_sq"])[0], z**2, rtol=1e-6)
    np.testing.assert_allclose(
        _np(idata.log_likelihood["y"])[0], stats.norm.logpdf(y.numpy(), loc=z, scale=0.5), atol=1e-4
    )


def test_mcmc(y, parallel):
    mcmc = MCMC(NUTS(conjugate_model), num_samples=50, warmup_steps=50, num_chains=1, disable_progbar=True)
    mcmc.run(y)
    idata = to_inference_data(conjugate_model, mcmc=mcmc, parallel=parallel)  # model_args taken from the run
    assert idata.posterior.attrs["posterior_source"] == "mcmc"
    assert idata.posterior.sizes["chain"] == 1 and idata.posterior.sizes["draw"] == 50
    np.testing.assert_array_equal(idata.posterior["mu"].values, mcmc.get_samples(group_by_chain=True)["mu"].numpy())
    np.testing.assert_array_equal(idata.posterior["mu"].values[0], mcmc.get_samples()["mu"].numpy())
    np.testing.assert_allclose(_np(idata.posterior["shift"]), _np(idata.posterior["mu"]) + 1, rtol=1e-6)
    assert set(idata.sample_stats.data_vars) == {"lp", "diverging"}
    assert idata.sample_stats["diverging"].dims == ("chain", "draw")
    assert idata.sample_stats["diverging"].dtype == bool
    np.testing.assert_array_equal(idata.observed_data["y"].values, y.numpy())
    assert idata.log_likelihood["y"].shape == (1, 50, 4)
    loc, scale = conjugate_posterior(y)
    assert abs(float(idata.posterior["mu"].mean()) - loc) < 3 * scale


def test_mcmc_divergences_are_flagged_at_their_draws(y):
    kernel = NUTS(conjugate_model, step_size=8.0, adapt_step_size=False, adapt_mass_matrix=False)
    mcmc = MCMC(kernel, num_samples=30, warmup_steps=5, num_chains=1, disable_progbar=True)
    mcmc.run(y)
    where = sorted(mcmc.diagnostics()["divergences"]["chain 0"])
    assert len(where) > 0
    idata = to_inference_data(conjugate_model, mcmc=mcmc, model_args=(y,), posterior_predictive=False)
    diverging = idata.sample_stats["diverging"].values[0]
    assert list(np.flatnonzero(diverging)) == where


class _FakeMCMC:
    """What to_inference_data uses of a run pyro MCMC, with two chains (multi-chain NUTS needs processes)."""

    def __init__(self, samples, divergences, args):
        self._samples, self._divergences, self._args, self._kwargs = samples, divergences, args, {}

    def get_samples(self, group_by_chain=False):
        assert group_by_chain
        return self._samples

    def diagnostics(self):
        return {"divergences": self._divergences}


def test_several_chains(y, parallel):
    mu, z = torch.randn(2, 7), torch.randn(2, 7, 4)
    fake = _FakeMCMC({"mu": mu, "z": z}, {"chain 0": [1], "chain 1": [3, 5]}, (y,))
    idata = to_inference_data(local_model, mcmc=fake, parallel=parallel)
    assert idata.posterior.sizes["chain"] == 2 and idata.posterior.sizes["draw"] == 7
    np.testing.assert_array_equal(idata.posterior["mu"].values, mu.numpy())
    np.testing.assert_array_equal(idata.posterior["z"].values, z.numpy())
    np.testing.assert_allclose(_np(idata.posterior["mu2"]), 2 * mu.numpy(), rtol=1e-6)
    diverging = np.zeros((2, 7), dtype=bool)
    diverging[0, 1] = diverging[1, 3] = diverging[1, 5] = True
    np.testing.assert_array_equal(idata.sample_stats["diverging"].values, diverging)
    expected = stats.norm.logpdf(y.numpy(), loc=z.numpy(), scale=0.5)
    np.testing.assert_allclose(_np(idata.log_likelihood["y"]), expected, atol=1e-4)


@pytest.mark.parametrize("model", [grid_model, local_model, conjugate_model], ids=["grid", "local", "conjugate"])
def test_parallel_and_sequential_agree_on_given_draws(model):
    data = torch.randn(3, 5) if model is grid_model else torch.tensor([0.5, -0.2, 1.3, 0.8])
    samples = {
        "mu": torch.randn(12),
        "c": torch.randn(12, 5),
        "r": torch.randn(12, 3, 1),
        "z": torch.randn(12, 4),
    }
    names = {"grid": ["mu", "c", "r"], "local": ["mu", "z"], "conjugate": ["mu"]}[model.__name__.split("_")[0]]
    samples = {k: samples[k] for k in names}
    seq, par = (
        to_inference_data(model, posterior_samples=samples, model_args=(data,), parallel=p, posterior_predictive=False)
        for p in (False, True)
    )
    for group in ("posterior", "log_likelihood", "sample_stats"):
        a, b = seq[group], par[group]
        assert set(a.data_vars) == set(b.data_vars)
        for name in a.data_vars:
            assert a[name].dims == b[name].dims
            np.testing.assert_allclose(_np(a[name]), _np(b[name]), rtol=1e-5, atol=1e-5)


def test_parallel_refuses_batch_dims_outside_plates(y):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 1.0))  # a batch dim that is in no plate
        with pyro.plate("obs", y.shape[0], dim=-2):
            pyro.sample("y", dist.Normal(mu.sum(), 1.0), obs=y.unsqueeze(-1))

    samples = {"mu": torch.randn(5, 2)}
    idata = to_inference_data(model, posterior_samples=samples, model_args=(y,))  # sequential is fine
    assert idata.posterior["mu"].dims == ("chain", "draw", "mu_dim_0")
    with pytest.raises(ValueError, match="parallel=True needs every batch dim of site 'mu' in a plate"):
        to_inference_data(model, posterior_samples=samples, model_args=(y,), parallel=True)


def test_factor_counts_in_lp_and_several_observed_sites(parallel):
    x, w = torch.tensor([0.2, 1.1, -0.4]), torch.tensor([2.0, 3.5])

    def model(x, w):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        pyro.factor("penalty", -(mu**2))
        with pyro.plate("xs", 3):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)
        with pyro.plate("ws", 2):
            pyro.sample("w", dist.Normal(mu + 2.0, 0.5), obs=w)

    mu = torch.randn(15)
    idata = to_inference_data(model, posterior_samples={"mu": mu}, model_args=(x, w), parallel=parallel)
    m = mu.numpy()[:, None]
    ll_x, ll_w = stats.norm.logpdf(x.numpy(), m, 1.0), stats.norm.logpdf(w.numpy(), m + 2.0, 0.5)
    assert set(idata.log_likelihood.data_vars) == {"x", "w"}
    assert set(idata.posterior_predictive.data_vars) == {"x", "w"}
    assert set(idata.posterior.data_vars) == {"mu"}
    np.testing.assert_allclose(_np(idata.log_likelihood["x"])[0], ll_x, atol=1e-4)
    np.testing.assert_allclose(_np(idata.log_likelihood["w"])[0], ll_w, atol=1e-4)
    assert idata.log_likelihood["w"].dims == ("chain", "draw", "ws")
    lp = stats.norm.logpdf(mu.numpy(), 0, 1) - mu.numpy() ** 2 + ll_x.sum(-1) + ll_w.sum(-1)
    np.testing.assert_allclose(_np(idata.sample_stats["lp"])[0], lp, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------------------
# 5. Predictive draws


def test_posterior_predictive_follows_the_guide(y, parallel):
    idata = to_inference_data(normal_model, point_guide(5.0, 0.1), model_args=(y,), num_samples=200, parallel=parallel)
    pp = _np(idata.posterior_predictive["y"])
    assert pp.shape == (1, 200, 4)
    assert abs(pp.mean() - 5.0) < 0.02
    assert abs(pp.std() - 0.1) < 0.01
    # fresh draws for every (draw, datum), not the observed values
    assert len(np.unique(pp)) == pp.size
    # a point-mass guide has log_q = 0
    np.testing.assert_array_equal(idata.sample_stats["log_q"].values, 0.0)


def test_prior_and_prior_predictive_have_the_prior_spread(y, parallel):
    idata = to_inference_data(
        normal_model,
        normal_guide,
        model_args=(y,),
        num_samples=30,
        prior=True,
        num_prior_samples=300,
        parallel=parallel,
    )
    assert idata.posterior.sizes["draw"] == 30
    assert idata.prior.sizes["draw"] == 300 and idata.prior.sizes["chain"] == 1
    assert idata.prior_predictive["y"].dims == ("chain", "draw", "obs")
    mu, sigma = _np(idata.prior["mu"]), _np(idata.prior["sigma"])
    assert abs(mu.mean()) < 0.2 and abs(mu.std() - 1.0) < 0.12
    assert abs(sigma.mean() - math.sqrt(2 / math.pi)) < 0.1
    ypred = _np(idata.prior_predictive["y"])
    assert abs(ypred.mean()) < 0.25
    assert abs(ypred.std() - math.sqrt(2.0)) < 0.2  # Var y = Var mu + E sigma^2 = 2
    # prior draws ignore the data (which has mean 0.6 and sd 0.6)
    assert ypred.std() > 1.0


def test_prior_only_conversion(y, parallel):
    idata = to_inference_data(normal_model, model_args=(y,), prior=True, num_samples=100, parallel=parallel)
    assert set(idata.groups()) == {"prior", "prior_predictive", "observed_data"}
    assert idata.prior.sizes["draw"] == 100
    assert idata.prior.attrs["posterior_source"] == "none"
    assert set(idata.prior.data_vars) == {"mu", "sigma"}
    assert (_np(idata.prior["sigma"]) > 0).all()


# ---------------------------------------------------------------------------------------------------------------------
# 6. ArviZ functions on the output


@pytest.fixture
def data20():
    return 1.0 + 0.5 * torch.randn(20)


def near_truth_guide(y):
    pyro.sample("mu", dist.Normal(float(y.mean()), 0.1))
    pyro.sample("sigma", dist.LogNormal(math.log(float(y.std())), 0.15))


def offset_model(y):
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("obs", y.shape[0]):
        pyro.sample("y", dist.Normal(-3.0, sigma), obs=y)


def offset_guide(y):
    pyro.sample("sigma", dist.LogNormal(math.log(float((y + 3).pow(2).mean().sqrt())), 0.15))


def test_loo_waic_summary(data20):
    idata = to_inference_data(normal_model, near_truth_guide, model_args=(data20,), num_samples=200)
    loo = az.loo(idata, pointwise=True)
    assert np.isfinite(loo.elpd_loo) and loo.n_data_points == 20
    # elpd_loo is close to the in-sample log density at the data's mean and sd
    plug_in = stats.norm.logpdf(data20.numpy(), float(data20.mean()), float(data20.std())).sum()
    assert plug_in - 5 < loo.elpd_loo < plug_in
    waic = az.waic(idata)
    assert np.isfinite(waic.elpd_waic)
    summary = az.summary(idata, kind="stats")
    assert set(summary.index) == {"mu", "sigma"}
    assert abs(summary.loc["mu", "mean"] - float(data20.mean())) < 0.05


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_plot_ppc(y):
    import matplotlib.pyplot as plt

    idata = to_inference_data(normal_model, normal_guide, model_args=(y,), num_samples=30)
    try:
        axes = az.plot_ppc(idata, num_pp_samples=10)
        assert np.size(axes) >= 1
    finally:
        plt.close("all")


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto", "ignore:The inplace keyword")
def test_compare_two_models(data20):
    good = to_inference_data(normal_model, near_truth_guide, model_args=(data20,), num_samples=150)
    bad = to_inference_data(offset_model, offset_guide, model_args=(data20,), num_samples=150)
    table = az.compare({"good": good, "bad": bad})
    assert list(table.index) == ["good", "bad"]
    assert table.loc["bad", "elpd_diff"] > 10


# ---------------------------------------------------------------------------------------------------------------------
# 7. Errors


def test_model_without_observed_sites(y):
    def model(y):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="no observed sites"):
        to_inference_data(model, lambda y: pyro.sample("mu", dist.Normal(0.0, 1.0)), model_args=(y,))


@pytest.mark.parametrize("n", [0, -1, 2.5, True, "10", None])
def test_bad_num_samples(y, n):
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        to_inference_data(normal_model, normal_guide, model_args=(y,), num_samples=n)


@pytest.mark.parametrize("n", [-1, 2.5, True])
def test_bad_num_prior_samples(y, n):
    with pytest.raises(ValueError, match="num_prior_samples must be a positive integer"):
        to_inference_data(normal_model, model_args=(y,), prior=True, num_prior_samples=n)


def test_num_prior_samples_zero_is_refused(y):
    with pytest.raises(ValueError, match="num_prior_samples must be a positive integer"):
        to_inference_data(normal_model, model_args=(y,), prior=True, num_samples=5, num_prior_samples=0)


def _guide_with(**sites):
    def guide(y):
        for name, d in sites.items():
            pyro.sample(name, d)

    return guide


BAD_GUIDES = {
    "unknown-site": (
        _guide_with(mu=dist.Normal(0.0, 1.0), sigma=dist.LogNormal(0.0, 1.0), tau=dist.Normal(0.0, 1.0)),
        "value for 'tau', which is not a site of the model",
    ),
    "observed-site": (
        _guide_with(mu=dist.Normal(0.0, 1.0), sigma=dist.LogNormal(0.0, 1.0), y=dist.Normal(torch.zeros(4), 1.0)),
        "value for 'y', which is an observed site",
    ),
    "missing-latent": (_guide_with(mu=dist.Normal(0.0, 1.0)), r"no value for the model's latent sites \['sigma'\]"),
    "wrong-shape": (
        _guide_with(mu=dist.Normal(torch.zeros(2), 1.0).to_event(1), sigma=dist.LogNormal(0.0, 1.0)),
        r"site 'mu' shape \(2,\), the model expects \(\)",
    ),
}


@pytest.mark.parametrize(
    "guide, match, parallel",
    [
        pytest.param(
            guide,
            match,
            par,
            id=f"{'par' if par else 'seq'}-{key}",
        )
        for par in (False, True)
        for key, (guide, match) in BAD_GUIDES.items()
    ],
)
def test_bad_guide(y, guide, match, parallel):
    if parallel and "the model expects" in match:  # the vectorized pass sees the shape with the draw plate's dims
        match = r"site 'mu' has shape \(5, 1, 2\) under the draw plate"
    with pytest.raises(ValueError, match=match):
        to_inference_data(normal_model, guide, model_args=(y,), num_samples=5, parallel=parallel)


@pytest.mark.parametrize(
    "samples, match",
    [
        ({"mu": torch.zeros(10)}, r"no value for the model's latent sites \['sigma'\]"),
        ({"mu": torch.zeros(10), "sigma": torch.ones(10), "y": torch.zeros(10, 4)}, "'y', which is an observed site"),
        ({"mu": torch.zeros(10), "sigma": torch.ones(9)}, r"one leading draw dimension.*\[9, 10\]"),
        ({"mu": torch.zeros(10, 2), "sigma": torch.ones(10)}, r"shape \(2,\), the model expects \(\)"),
        ({"mu": torch.tensor(0.0), "sigma": torch.tensor(1.0)}, "one leading draw dimension"),
        ({"mu": torch.zeros(0), "sigma": torch.ones(0)}, "one leading draw dimension"),
        ({}, "one leading draw dimension|latent sites"),
    ],
    ids=["missing-latent", "observed-site", "draw-counts", "wrong-shape", "no-draw-dim", "zero-draws", "empty"],
)
def test_bad_posterior_samples(y, samples, match):
    with pytest.raises(ValueError, match=match):
        to_inference_data(normal_model, posterior_samples=samples, model_args=(y,))


def test_several_sources_or_none(y):
    mcmc = MCMC(NUTS(normal_model), num_samples=2, warmup_steps=2, disable_progbar=True)
    with pytest.raises(ValueError, match="give one of guide, posterior_samples or mcmc"):
        to_inference_data(normal_model, normal_guide, mcmc=mcmc, model_args=(y,))
    with pytest.raises(ValueError, match="give one of guide, posterior_samples or mcmc"):
        to_inference_data(normal_model, normal_guide, posterior_samples={"mu": torch.zeros(3)}, model_args=(y,))
    with pytest.raises(ValueError, match="nothing to convert"):
        to_inference_data(normal_model, model_args=(y,))


def test_subsampled_plate_is_refused(y):
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("obs", y.shape[0], subsample_size=2) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    with pytest.raises(ValueError, match="subsampled to 2 of 4"):
        to_inference_data(model, posterior_samples={"mu": torch.zeros(5)}, model_args=(y,))


@pytest.mark.parametrize("names", [["mu", "nope"], ["y"]], ids=["unknown", "observed"])
def test_bad_var_names(y, names):
    with pytest.raises(ValueError, match=r"var_names \['(nope|y)'\] are not latent or deterministic sites"):
        to_inference_data(normal_model, normal_guide, model_args=(y,), num_samples=5, var_names=names)


@pytest.mark.parametrize("kwargs", [{"model_args": "y"}, {"model_args": None}, {"model_kwargs": [1]}])
def test_bad_model_args_type(y, kwargs):
    with pytest.raises(TypeError, match="model_args must be a tuple and model_kwargs a dict"):
        to_inference_data(normal_model, normal_guide, num_samples=5, **kwargs)


def test_model_args_tensor_is_a_type_error(y):
    with pytest.raises(TypeError, match="model_args must be a tuple"):
        to_inference_data(normal_model, normal_guide, model_args=y, num_samples=5)


# ---------------------------------------------------------------------------------------------------------------------
# 8. SVI-trained autoguides end to end


def _fit(guide_cls, y, steps=80):
    guide = guide_cls(normal_model)
    svi = SVI(normal_model, guide, pyro.optim.Adam({"lr": 0.1}), Trace_ELBO())
    for _ in range(steps):
        svi.step(y)
    return guide


@pytest.fixture
def data30():
    return 2.0 + 0.5 * torch.randn(30)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_auto_normal_end_to_end(data30, parallel):
    guide = _fit(AutoNormal, data30)
    idata = to_inference_data(normal_model, guide, model_args=(data30,), num_samples=80, parallel=parallel)
    assert set(idata.groups()) == POSTERIOR_GROUPS
    mu, sigma = _np(idata.posterior["mu"])[0], _np(idata.posterior["sigma"])[0]
    assert abs(mu.mean() - float(data30.mean())) < 0.15
    assert abs(sigma.mean() - float(data30.std())) < 0.15
    # log_q: the Normal density of (mu, log sigma) plus the log-Jacobian -log sigma
    with torch.no_grad():
        loc_mu, scale_mu = (float(t) for t in guide._get_loc_and_scale("mu"))
        loc_s, scale_s = (float(t) for t in guide._get_loc_and_scale("sigma"))
    log_q = stats.norm.logpdf(mu, loc_mu, scale_mu) + stats.norm.logpdf(np.log(sigma), loc_s, scale_s) - np.log(sigma)
    np.testing.assert_allclose(_np(idata.sample_stats["log_q"])[0], log_q, atol=1e-3)
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_auto_multivariate_normal_end_to_end(data30, parallel):
    guide = _fit(AutoMultivariateNormal, data30)
    idata = to_inference_data(normal_model, guide, model_args=(data30,), num_samples=80, parallel=parallel)
    mu, sigma = _np(idata.posterior["mu"])[0], _np(idata.posterior["sigma"])[0]
    assert abs(mu.mean() - float(data30.mean())) < 0.15
    assert abs(sigma.mean() - float(data30.std())) < 0.15
    with torch.no_grad():
        q = guide.get_posterior()
        u = torch.stack([torch.as_tensor(mu), torch.as_tensor(np.log(sigma))], -1).float()
        log_q = (q.log_prob(u) - torch.as_tensor(np.log(sigma))).numpy()
    np.testing.assert_allclose(_np(idata.sample_stats["log_q"])[0], log_q, atol=1e-3)
    ll = stats.norm.logpdf(data30.numpy()[None], mu[:, None], sigma[:, None])
    np.testing.assert_allclose(_np(idata.log_likelihood["y"])[0], ll, atol=1e-4)
    assert np.isfinite(az.loo(idata).elpd_loo)
