"""to_inference_data(parallel=True): one vectorized pass gives what the per-draw loop gives."""

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal

from dgm_ppl.arviz import loo, to_inference_data


def model(x, y):
    """Regression with a nested plate: groups (dim -2) x replicates (dim -1), a local offset per group."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    pyro.deterministic("w_norm", w.norm(dim=-1))
    with pyro.plate("groups", x.shape[0], dim=-2):
        offset = pyro.sample("offset", dist.Normal(0.0, 0.5))
        with pyro.plate("replicates", x.shape[1], dim=-1):
            mean = (x * w).sum(-1) + offset
            pyro.sample("y", dist.Normal(mean, sigma), obs=y)


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 3, generator=g)
    y = (x * torch.tensor([1.0, -1.0, 0.5])).sum(-1) + 0.3 * torch.randn(4, 6, generator=g)
    return x, y


def test_parallel_equals_sequential_on_given_samples():
    x, y = data()
    g = torch.Generator().manual_seed(1)
    samples = {
        "w": torch.randn(40, 3, generator=g),
        "sigma": torch.rand(40, generator=g) + 0.2,
        "offset": 0.5 * torch.randn(40, 4, 1, generator=g),
    }
    kwargs = dict(model_args=(x, y), posterior_samples=samples, posterior_predictive=False)
    slow = to_inference_data(model, **kwargs)
    fast = to_inference_data(model, parallel=True, **kwargs)
    assert fast.posterior.offset.dims == ("chain", "draw", "groups", "offset_dim_1")
    assert fast.log_likelihood.y.dims == ("chain", "draw", "groups", "replicates")
    for group, name in [("posterior", "w"), ("posterior", "offset"), ("posterior", "w_norm"), ("log_likelihood", "y")]:
        np.testing.assert_allclose(getattr(fast, group)[name].values, getattr(slow, group)[name].values, rtol=1e-5)
    np.testing.assert_allclose(fast.sample_stats.lp.values, slow.sample_stats.lp.values, rtol=1e-5)


def test_parallel_guide_draws_and_predictive_match_sequential_in_distribution():
    x, y = data()
    guide = AutoMultivariateNormal(model)
    guide(x, y)
    with torch.no_grad():
        guide.loc.copy_(torch.randn(guide.loc.shape) * 0.3)
    kwargs = dict(model_args=(x, y), num_samples=3000, prior=True)
    pyro.set_rng_seed(1)
    slow = to_inference_data(model, guide, **{**kwargs, "num_samples": 600})
    fast = to_inference_data(model, guide, parallel=True, **kwargs)
    for group, name in [
        ("posterior", "w"),
        ("posterior", "offset"),
        ("posterior_predictive", "y"),
        ("prior", "w"),
        ("prior_predictive", "y"),
    ]:
        a, b = getattr(fast, group)[name].values, getattr(slow, group)[name].values
        tol = 4 * b.std(axis=(0, 1)) / np.sqrt(600) + 1e-3
        assert (abs(a.mean(axis=(0, 1)) - b.mean(axis=(0, 1))) < tol).all(), (group, name)
        assert abs(a.std() / b.std() - 1) < 0.1, (group, name)
    for stat in ("lp", "log_q"):
        a, b = fast.sample_stats[stat].values, slow.sample_stats[stat].values
        assert abs(a.mean() - b.mean()) < 4 * b.std() / np.sqrt(600) + 1e-3, stat
    with warnings.catch_warnings():  # an untrained guide: compare the unweighted LOO, which is stable
        warnings.simplefilter("ignore")
        assert abs(loo(fast, reweight=False)["elpd_loo"] - loo(slow, reweight=False)["elpd_loo"]) < 0.5


def test_parallel_log_q_is_the_guide_density_of_each_draw():
    x, y = data()
    m, s = torch.tensor([0.5, -0.5, 0.2]), torch.tensor([0.1, 0.2, 0.3])

    def guide(x, y):
        pyro.sample("w", dist.Normal(m, s).to_event(1))
        pyro.sample("sigma", dist.LogNormal(-1.0, 0.2))
        with pyro.plate("groups", x.shape[0], dim=-2):
            pyro.sample("offset", dist.Normal(0.1, 0.3))

    fast = to_inference_data(model, guide, model_args=(x, y), num_samples=50, parallel=True)
    post = {k: torch.as_tensor(fast.posterior[k].values[0]) for k in ("w", "sigma", "offset")}
    log_q = (
        dist.Normal(m, s).log_prob(post["w"]).sum(-1)
        + dist.LogNormal(-1.0, 0.2).log_prob(post["sigma"])
        + dist.Normal(0.1, 0.3).log_prob(post["offset"]).sum((-2, -1))
    )
    np.testing.assert_allclose(fast.sample_stats.log_q.values[0], log_q.numpy(), rtol=1e-5)
    log_p = (
        dist.Normal(0.0, 1.0).log_prob(post["w"]).sum(-1)
        + dist.HalfNormal(1.0).log_prob(post["sigma"])
        + dist.Normal(0.0, 0.5).log_prob(post["offset"]).sum((-2, -1))
        + dist.Normal((x * post["w"][:, None, None]).sum(-1) + post["offset"], post["sigma"][:, None, None])
        .log_prob(y)
        .sum((-2, -1))
    )
    np.testing.assert_allclose(fast.sample_stats.lp.values[0], log_p.numpy(), rtol=1e-5)


def test_parallel_refuses_unvectorizable_models():
    x, y = data()

    def loose_batch(x, y):  # a batch dim of size 3 outside any plate
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0))
        with pyro.plate("groups", x.shape[0], dim=-2), pyro.plate("replicates", x.shape[1], dim=-1):
            pyro.sample("y", dist.Normal((x * w).sum(-1), 1.0), obs=y)

    with pytest.raises(ValueError, match="parallel=True needs every batch dim of site 'w' in a plate"):
        to_inference_data(loose_batch, posterior_samples={"w": torch.randn(5, 3)}, model_args=(x, y), parallel=True)

    def not_broadcasting(x, y):  # w @ x.T ignores extra leading dims of w
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("groups", x.shape[0], dim=-2), pyro.plate("replicates", x.shape[1], dim=-1):
            pyro.sample("y", dist.Normal((x * w.unsqueeze(-2).unsqueeze(-2)).sum(-1), 1.0), obs=y)

    samples = {"w": torch.randn(5, 3)}
    to_inference_data(not_broadcasting, posterior_samples=samples, model_args=(x, y))  # fine one draw at a time
    with pytest.raises(ValueError, match="does not broadcast over extra leading dims"):
        to_inference_data(not_broadcasting, posterior_samples=samples, model_args=(x, y), parallel=True)
