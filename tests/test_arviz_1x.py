"""The ArviZ >= 1 code path, run against the real arviz-base and arviz-stats packages.

ArviZ 1.x needs Python >= 3.12, so here (Python 3.11, ArviZ 0.23) its namespace is assembled from the two packages
it is made of, arviz_base (``from_dict`` with a dict of groups, returning a DataTree) and arviz_stats (``loo``,
``compare``, ``ELPDData``, ``loo_approximate_posterior``), and swapped in for ``arviz`` inside dgm_ppl.
"""

import math
import types
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import dgm_ppl._arviz_compat as compat
import dgm_ppl.arviz as dgm_arviz

arviz_base = pytest.importorskip("arviz_base")
arviz_stats = pytest.importorskip("arviz_stats")

SIGMA, TAU, N = 1.0, 2.0, 25


@pytest.fixture
def az1(monkeypatch):
    """``arviz`` as ArviZ 1.x presents it: arviz_base and arviz_stats in one namespace."""
    module = types.ModuleType("arviz")
    for source in (arviz_base, arviz_stats):
        module.__dict__.update({k: v for k, v in vars(source).items() if not k.startswith("_")})
    module.__version__ = "1.0.0"
    for target in (compat, dgm_arviz):
        monkeypatch.setattr(target, "az", module)
        monkeypatch.setattr(target, "ARVIZ_1", True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield module


def model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), TAU))
    pyro.deterministic("twice", 2 * mu)
    with pyro.plate("obs", len(y)):
        pyro.sample("y", dist.Normal(mu, SIGMA), obs=y)


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(3)
    y = 1.5 + SIGMA * torch.randn(N, generator=g, dtype=torch.float64)
    y[0] = 6.0
    precision = 1 / TAU**2 + N / SIGMA**2
    return y, (y.sum() / SIGMA**2 / precision).item(), precision**-0.5


def exact_loo(y):
    total = 0.0
    for i in range(len(y)):
        precision = 1 / TAU**2 + (len(y) - 1) / SIGMA**2
        mean = ((y.sum() - y[i]) / SIGMA**2 / precision).item()
        total += dist.Normal(mean, math.sqrt(SIGMA**2 + 1 / precision)).log_prob(y[i]).item()
    return total


@pytest.mark.parametrize("parallel", [False, True])
def test_datatree_groups_and_vi_loo(az1, data, parallel):
    y, m, s = data

    def guide(y):  # shifted by one posterior sd, twice too wide
        pyro.sample("mu", dist.Normal(torch.tensor(m + s, dtype=y.dtype), 2 * s))

    tree = dgm_arviz.to_inference_data(model, guide, model_args=(y,), num_samples=2000, prior=True, parallel=parallel)
    assert type(tree).__name__ == "DataTree"
    assert set(tree.children) == {
        "posterior", "posterior_predictive", "log_likelihood", "sample_stats", "observed_data", "prior",
        "prior_predictive",
    }  # fmt: skip
    assert tree.posterior["twice"].dims == ("chain", "draw") and tree.posterior["mu"].shape == (1, 2000)
    assert tree.log_likelihood["y"].dims == ("chain", "draw", "obs")
    assert tree.observed_data["y"].dims == ("obs",)
    assert set(tree.sample_stats.data_vars) == {"lp", "log_q"}
    result = dgm_arviz.loo(tree)
    assert isinstance(result, arviz_stats.ELPDData) and result.kind == "loo"
    assert abs(result.elpd - exact_loo(y)) < 0.1
    # ArviZ 1.x's own correction for approximate posteriors gives the same pointwise values and k̂
    reference = az1.loo_approximate_posterior(
        tree, log_p=tree.sample_stats["lp"], log_q=tree.sample_stats["log_q"], pointwise=True
    )
    np.testing.assert_allclose(result.elpd_i.values, reference.elpd_i.values, atol=1e-9)
    np.testing.assert_allclose(result.pareto_k.values, reference.pareto_k.values, atol=1e-9)
    assert dgm_arviz.guide_pareto_k(tree) < 0.5 and tree.sample_stats.attrs["guide_pareto_k"] < 0.5
    assert abs(az1.loo(tree, pointwise=True).elpd - exact_loo(y)) > 0.3  # uncorrected


def test_samples_loo_and_heldout_compare(az1, data):
    y, m, s = data
    tree = dgm_arviz.to_inference_data(
        model, posterior_samples={"mu": m + s * torch.randn(2000, dtype=torch.float64)}, model_args=(y,)
    )
    assert abs(dgm_arviz.loo(tree).elpd - exact_loo(y)) < 0.1  # plain az.loo: exact posterior draws
    with pytest.raises(ValueError, match="no scale argument"):
        dgm_arviz.loo(tree, scale="deviance")
    g = np.random.default_rng(0)
    a = -20 + g.normal(size=100)
    b = a - 0.5 + 0.3 * g.normal(size=100)
    table = az1.compare({"a": dgm_arviz.heldout_elpd(a), "b": dgm_arviz.heldout_elpd(b)})
    assert list(table.index) == ["a", "b"]
    assert table.loc["b", "elpd_diff"] == pytest.approx((a - b).sum())
    assert table.loc["b", "dse"] == pytest.approx(math.sqrt(100 * np.var(a - b)))
