"""Amortized guides: exact answers on PPCA, change of variables for every flow, composition, bad input."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from torch import nn

from dgm_ppl.evaluation import log_likelihood
from dgm_ppl.guides import FLOWS, AmortizedFlow, AmortizedMultivariateNormal, AmortizedNormal


def ppca(correlated: bool, n: int = 64, d: int = 5, seed: int = 0):
    """x = W z + sigma eps, z ~ N(0, I_2); nearly parallel columns of W make the posterior of z correlated."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, 2, generator=g)
    if correlated:
        W[:, 1] = W[:, 0] + 0.3 * torch.randn(d, generator=g)
    sigma = 0.5
    x = torch.randn(n, 2, generator=g) @ W.T + sigma * torch.randn(n, d, generator=g)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T, sigma).to_event(1), obs=x)

    exact = dist.MultivariateNormal(torch.zeros(d), W @ W.T + sigma**2 * torch.eye(d)).log_prob(x)
    precision = torch.eye(2) + W.T @ W / sigma**2  # of p(z | x), the same for every x
    mean_field_gap = 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision))  # min KL(diag q || p)
    return model, x, exact, mean_field_gap.item()


def fit(model, guide, x, steps: int, lr: float = 0.03, particles: int = 8):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO(particles, vectorize_particles=True))
    for _ in range(steps):
        svi.step(x)


def elbo_per_datum(model, guide, x, particles: int = 1000) -> float:
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    with torch.no_grad():
        return -elbo.loss(model, guide, x) / len(x)


def test_full_rank_guide_closes_the_gap_and_diagonal_does_not():
    """With a correlated posterior the ELBO gap of a full-rank guide goes to 0, a diagonal guide's to the mean-field
    minimum 0.5 (sum log Lambda_ii - log det Lambda) > 0 (Lambda: the posterior precision)."""
    model, x, exact, mean_field_gap = ppca(correlated=True)
    assert mean_field_gap > 0.5
    gaps = {}
    for name, cls in (("full", AmortizedMultivariateNormal), ("diagonal", AmortizedNormal)):
        pyro.clear_param_store()
        guide = cls(model, nn.Linear(5, 8), init_scale=0.3)
        fit(model, guide, x, steps=800)
        gaps[name] = exact.mean().item() - elbo_per_datum(model, guide, x)
    assert -0.02 < gaps["full"] < 0.03, gaps
    assert abs(gaps["diagonal"] - mean_field_gap) < 0.1 * mean_field_gap + 0.03, (gaps, mean_field_gap)


def chain(transforms, u):
    for t in transforms:
        u = t(u)
    return u


@pytest.mark.parametrize("flow", FLOWS)
def test_flow_log_density_is_the_change_of_variables(flow):
    """log q(z|x) = log N(u; mu(h), sigma(h)) - log |det df/du| with the Jacobian of the flow taken numerically."""
    torch.set_default_dtype(torch.float64)
    try:
        model, x, _, _ = ppca(correlated=False, d=5)
        guide = AmortizedFlow(model, nn.Sequential(nn.Linear(5, 6), nn.Tanh()), flow=flow, num_flows=3)
        guide(x.double())
        with torch.no_grad():  # move the steps away from their near-identity initialization
            for p in guide.steps.parameters():
                p.add_(0.3 * torch.randn_like(p))
        xi = x[:1].double()
        q = guide.distribution("z", guide.encoder(xi))
        u = q.base_dist.rsample()  # (1, 2)
        jacobian = torch.autograd.functional.jacobian(lambda v: chain(q.transforms, v[None])[0], u[0])
        z = chain(q.transforms, u)  # refreshes the transforms' caches (planar and radial have no inverse)
        expected = q.base_dist.log_prob(u) - torch.linalg.slogdet(jacobian)[1]
        torch.testing.assert_close(q.log_prob(z), expected, atol=1e-8, rtol=1e-8)
        assert not torch.allclose(z, u, atol=1e-3)  # the flow does something
    finally:
        torch.set_default_dtype(torch.float32)


@pytest.mark.parametrize("flow", FLOWS)
def test_each_flow_guide_trains_and_gives_the_exact_likelihood(flow):
    """Each flow guide improves the ELBO by SVI; importance sampling with it recovers the closed-form log p(x)."""
    model, x, exact, _ = ppca(correlated=False, n=32)  # radial steps are slow to learn a strongly correlated one
    guide = AmortizedFlow(model, nn.Linear(5, 8), flow=flow, num_flows=2, init_scale=0.3)
    fit(model, guide, x, steps=1)
    before = elbo_per_datum(model, guide, x, particles=200)
    fit(model, guide, x, steps=300)
    after = elbo_per_datum(model, guide, x, particles=200)
    assert after > before + 1.0, (before, after)
    assert exact.mean().item() - after < 1.0
    estimate = log_likelihood(model, guide, x, num_samples=2000)
    # the IWAE ordering ELBO <= log p̂ <= log p (in expectation), and IS close to the closed form on average
    assert after < estimate.mean() < exact.mean().item() + 0.02
    assert (estimate.log_p - exact).abs().mean() < 0.05


def test_local_sites_subsampling_supports_and_autoguide_list():
    """Two local sites (one positive: LogNormal through biject_to) in a subsampled plate, a global latent guided by
    AutoNormal in an AutoGuideList; guide plates scale like the model's."""
    N, B = 100, 10
    data = torch.randn(N, 3)

    def model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", N, subsample=x):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            loc = w + z.sum(-1, keepdim=True)
            pyro.sample("x", dist.Normal(loc, s.unsqueeze(-1)).to_event(1), obs=x)

    guide = AutoGuideList(model)
    guide.append(AutoNormal(poutine.block(model, hide=["z", "s"])))
    local = AmortizedNormal(model, nn.Sequential(nn.Linear(3, 4), nn.ReLU()), site=("z", "s"))
    guide.append(local)
    x = data[:B]
    trace = poutine.trace(guide).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (B, 2) and trace.nodes["s"]["value"].shape == (B,)
    assert (trace.nodes["s"]["value"] > 0).all()
    assert trace.nodes["z"]["scale"] == pytest.approx(N / B) and trace.nodes["w"]["scale"] == 1.0
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    losses = [svi.step(data[i : i + B]) for i in range(0, N, B) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    names = set(pyro.get_param_store().keys())
    assert "AutoGuideList.0.locs.w" in names and any(n.startswith("AutoGuideList.1.encoder") for n in names)
    # a datum's q depends on that datum only
    q1 = local.distribution("z", local.encoder(data[:2]))
    q2 = local.distribution("z", local.encoder(data[:1]))
    torch.testing.assert_close(q1.mean[:1], q2.mean)


def test_full_rank_guide_in_a_plate_at_dim_minus_two():
    """The data plate need not be the rightmost: z has batch shape (B, 1) under a plate at dim -2."""

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            with pyro.plate("features", x.shape[1], dim=-1):
                pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)

    x = torch.randn(7, 4)
    guide = AmortizedMultivariateNormal(model, nn.Linear(4, 3))
    trace = poutine.trace(guide).get_trace(x)
    assert trace.nodes["z"]["value"].shape == (7, 1, 2)
    fit(model, guide, x, steps=3)
    assert log_likelihood(model, guide, x, num_samples=10).log_p.shape == (7,)


def test_bad_input():
    model, x, _, _ = ppca(correlated=False)
    with pytest.raises(ValueError, match="no latent sample site 'y'"):
        AmortizedNormal(model, nn.Linear(5, 3), site="y")(x)
    with pytest.raises(ValueError, match="no latent sample site 'x'"):
        AmortizedNormal(model, nn.Linear(5, 3), site="x")(x)

    def global_model(x):
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w.sum(), 1.0).expand([x.shape[1]]).to_event(1), obs=x)

    with pytest.raises(ValueError, match="not in a plate over the data"):
        AmortizedNormal(global_model, nn.Linear(5, 3), site="w")(x)
    with pytest.raises(ValueError, match=r"features of shape \(B, F\)"):
        AmortizedNormal(model, nn.Flatten(0))(x)  # (B * 5,)
    with pytest.raises(ValueError, match=r"features of shape \(B, F\)"):
        AmortizedNormal(model, nn.Unflatten(1, (5, 1)))(x)  # (B, 5, 1)
    with pytest.raises(TypeError, match="nn.Module"):
        AmortizedNormal(model, lambda x: x)
    with pytest.raises(ValueError, match="flow must be one of"):
        AmortizedFlow(model, nn.Linear(5, 3), flow="maf")
    with pytest.raises(ValueError, match="num_flows"):
        AmortizedFlow(model, nn.Linear(5, 3), num_flows=0)
    with pytest.raises(ValueError, match="init_scale"):
        AmortizedNormal(model, nn.Linear(5, 3), init_scale=0.0)
    guide = AmortizedNormal(model, nn.Linear(5, 3))
    guide(x)
    with pytest.raises(ValueError):  # NaN data: the guide's Normal refuses a NaN location (validation is on)
        guide(torch.full_like(x, float("nan")))


@pytest.mark.parametrize("cls", [AmortizedNormal, AmortizedMultivariateNormal, AmortizedFlow])
def test_heads_follow_the_encoder_dtype_and_device(cls):
    """The heads are built at the first call: they take the encoder output's dtype and device (float64 here; the
    same path puts them on CUDA)."""
    pyro.clear_param_store()
    model, x, exact, _ = ppca(correlated=True, n=8)
    x = x.double()

    def model64(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(-1, 5), 1.0).to_event(1), obs=x)

    guide = cls(model64, nn.Linear(5, 8).double())
    z = guide(x)["z"]
    assert z.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in guide.parameters())
