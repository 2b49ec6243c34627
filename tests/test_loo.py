"""LOO for variational fits against the exact LOO of a conjugate model; guide k̂; held-out ELPD in az.compare."""

import math
import warnings

import arviz as az
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.importance import psis_diagnostic

from dgm_ppl.arviz import guide_pareto_k, heldout_elpd, loo, to_inference_data
from dgm_ppl.evaluation import LogLikelihoodEstimate

SIGMA, TAU, N = 1.0, 2.0, 25


def model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), TAU))
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, SIGMA), obs=y)


def posterior(y, drop=None):
    """Normal-normal conjugacy: mean and sd of p(mu | y), leaving out y[drop] if given."""
    total, n = y.sum(), len(y)
    if drop is not None:
        total, n = total - y[drop], n - 1
    precision = 1 / TAU**2 + n / SIGMA**2
    return (total / SIGMA**2 / precision).item(), precision**-0.5


def exact_loo(y):
    """elpd_loo = sum_i log N(y_i; m_{-i}, sigma^2 + s_{-i}^2), in closed form."""
    terms = []
    for i in range(len(y)):
        m, s = posterior(y, drop=i)
        terms.append(dist.Normal(m, math.sqrt(SIGMA**2 + s**2)).log_prob(y[i]).item())
    return np.array(terms)


def normal_guide(loc, scale):
    def guide(y):
        pyro.sample("mu", dist.Normal(torch.tensor(loc, dtype=y.dtype), scale))

    return guide


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    y = 1.5 + SIGMA * torch.randn(N, generator=g, dtype=torch.float64)
    y[0] = 6.0  # one influential point, so that LOO differs from the in-sample fit
    return y


@pytest.mark.parametrize("parallel", [False, True])
def test_reweighted_loo_of_a_crude_guide_matches_exact_loo(data, parallel):
    """A guide shifted by one posterior sd and twice too wide: its draws alone misjudge LOO, reweighted they don't."""
    m, s = posterior(data)
    exact = exact_loo(data)
    guide = normal_guide(m + s, 2 * s)
    idata = to_inference_data(model, guide, model_args=(data,), num_samples=2000, parallel=parallel)
    result = loo(idata)
    assert abs(result["elpd_loo"] - exact.sum()) < 0.1, (result["elpd_loo"], exact.sum())
    np.testing.assert_allclose(result["loo_i"].values, exact, atol=0.05)
    assert (result["pareto_k"].values < 0.5).all() and not result["warning"]
    assert result["n_samples"] == 2000 and result["n_data_points"] == N
    # the in-sample density at the exact posterior minus elpd_loo: p_loo ~ 1 parameter
    lppd = sum(dist.Normal(m, math.sqrt(SIGMA**2 + s**2)).log_prob(data).tolist())
    assert abs(result["p_loo"] - (lppd - exact.sum())) < 0.05
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = az.loo(idata, pointwise=True)
    assert abs(naive["elpd_loo"] - exact.sum()) > 0.3  # the correction matters here
    assert loo(idata, reweight=False)["elpd_loo"] == pytest.approx(naive["elpd_loo"])


def test_loo_of_exact_posterior_samples_is_az_loo(data):
    """Without log_q (samples, MCMC) loo() is az.loo; on exact posterior draws it matches the exact LOO."""
    m, s = posterior(data)
    samples = {"mu": m + s * torch.randn(2000, dtype=torch.float64)}
    idata = to_inference_data(model, posterior_samples=samples, model_args=(data,))
    assert "log_q" not in idata.sample_stats
    result = loo(idata)
    assert result["elpd_loo"] == pytest.approx(az.loo(idata)["elpd_loo"])
    assert abs(result["elpd_loo"] - exact_loo(data).sum()) < 0.05


def test_guide_pareto_k_separates_good_and_bad_guides(data):
    m, s = posterior(data)
    wide = to_inference_data(model, normal_guide(m, 1.5 * s), model_args=(data,), num_samples=2000, parallel=True)
    narrow = to_inference_data(
        model, normal_guide(m + 2 * s, 0.5 * s), model_args=(data,), num_samples=2000, parallel=True
    )
    assert guide_pareto_k(wide) < 0.5 and wide.sample_stats.attrs["guide_pareto_k"] == guide_pareto_k(wide)
    assert guide_pareto_k(narrow) > 0.7
    # Pyro's psis_diagnostic gives the same verdicts (its k̂ is not shrunk towards 0.5 as ArviZ's is, and its draws
    # are independent of ours, so the values differ)
    assert psis_diagnostic(model, normal_guide(m, 1.5 * s), data, num_particles=2000) < 0.5
    assert psis_diagnostic(model, normal_guide(m + 2 * s, 0.5 * s), data, num_particles=2000) > 0.7
    assert loo(narrow)["warning"]  # the LOO ratios inherit the guide's tail
    with pytest.raises(ValueError, match="log_q"):
        guide_pareto_k(to_inference_data(model, posterior_samples={"mu": torch.randn(10)}, model_args=(data,)))


def test_loo_and_compare_pick_the_right_variable_and_model(data):
    """Two observed sites need var_name; az.compare ranks models from loo() results."""

    def two_sites(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), TAU))
        with pyro.plate("obs", len(y)):
            pyro.sample("y", dist.Normal(mu, SIGMA), obs=y)
            pyro.sample("y2", dist.Normal(mu, SIGMA), obs=y)

    m, s = posterior(data)
    idata = to_inference_data(two_sites, normal_guide(m, s), model_args=(data,), num_samples=200)
    with pytest.raises(ValueError, match="var_name"):
        loo(idata)
    assert loo(idata, var_name="y2")["n_data_points"] == N
    with pytest.raises(ValueError, match="no log-likelihood variable 'z'"):
        loo(idata, var_name="z")

    def wrong_scale(y):  # a misspecified noise level is worse out of sample
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), TAU))
        with pyro.plate("obs", len(y)):
            pyro.sample("y", dist.Normal(mu, 0.3), obs=y)

    good = to_inference_data(model, normal_guide(m, s), model_args=(data,), num_samples=1000, parallel=True)
    bad = to_inference_data(wrong_scale, normal_guide(m, 0.06), model_args=(data,), num_samples=1000, parallel=True)
    table = az.compare({"good": loo(good), "bad": loo(bad)})
    assert list(table.index) == ["good", "bad"] and table.loc["bad", "elpd_diff"] > table.loc["bad", "dse"]
    assert loo(good, scale="deviance")["elpd_loo"] == pytest.approx(-2 * loo(good)["elpd_loo"])
    with pytest.raises(ValueError, match="scale"):
        loo(good, scale="nats")


def test_heldout_elpd_in_az_compare():
    """ELPD = sum of per-datum values, SE = sqrt(N Var); az.compare's difference and dse from the paired values."""
    g = np.random.default_rng(0)
    a = -20 + g.normal(size=200)
    b = a - 0.3 + 0.5 * g.normal(size=200)
    elpd_a, elpd_b = heldout_elpd(torch.as_tensor(a)), heldout_elpd(b)
    assert elpd_a["elpd_loo"] == pytest.approx(a.sum()) and elpd_a["p_loo"] == 0
    assert elpd_a["se"] == pytest.approx(math.sqrt(200 * a.var()))
    table = az.compare({"a": elpd_a, "b": elpd_b})
    assert list(table.index) == ["a", "b"]
    assert table.loc["b", "elpd_diff"] == pytest.approx((a - b).sum())
    assert table.loc["b", "dse"] == pytest.approx(math.sqrt(200 * np.var(a - b)))
    est = LogLikelihoodEstimate(
        log_p=torch.as_tensor(a), ess=torch.ones(200), pareto_k=torch.full((200,), 0.8), num_samples=50, plate="data"
    )
    wrapped = heldout_elpd(est)
    assert wrapped["warning"] and wrapped["n_samples"] == 50 and wrapped["loo_i"].dims == ("data",)
    assert "Pareto k" in str(wrapped)
    for bad in (np.zeros((3, 2)), np.zeros(1), np.array([0.0, np.nan])):
        with pytest.raises(ValueError):
            heldout_elpd(bad)
