"""Per-datum importance-sampled log-likelihood against the closed-form marginal of PPCA."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from dgm_ppl.evaluation import LogLikelihoodEstimate, log_likelihood

D, K, N = 5, 2, 40


@pytest.fixture
def ppca():
    """PPCA x = W z + mu + sigma eps, its exact posterior q*(z|x) and exact marginal log p(x)."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(D, K, generator=g, dtype=torch.float64)
    mu = torch.randn(D, generator=g, dtype=torch.float64)
    sigma = 0.5
    z = torch.randn(N, K, generator=g, dtype=torch.float64)
    x = z @ W.T + mu + sigma * torch.randn(N, D, generator=g, dtype=torch.float64)
    M = W.T @ W + sigma**2 * torch.eye(K, dtype=torch.float64)
    post_cov = sigma**2 * torch.linalg.inv(M)
    post_mean = (x - mu) @ W @ torch.linalg.inv(M)  # M^{-1} W^T (x - mu), row-wise
    exact = dist.MultivariateNormal(mu, W @ W.T + sigma**2 * torch.eye(D, dtype=torch.float64)).log_prob(x)

    def model(x, shift=None):
        loc = mu if shift is None else mu + shift
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(K, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ W.T + loc, sigma).to_event(1), obs=x)

    def guide_for(offset=0.0, inflate=1.0, full=True):
        def guide(x, shift=None):
            xc = x - mu if shift is None else x - mu - shift
            mean = xc @ W @ torch.linalg.inv(M) + offset
            with pyro.plate("data", x.shape[0]):
                if full:
                    q = dist.MultivariateNormal(mean, covariance_matrix=inflate**2 * post_cov)
                else:
                    q = dist.Normal(mean, inflate * post_cov.diagonal().sqrt()).to_event(1)
                pyro.sample("z", q)

        return guide

    return dict(model=model, guide_for=guide_for, x=x, exact=exact, post_mean=post_mean)


def test_exact_posterior_guide_gives_exact_marginal(ppca):
    """With q = p(z|x) every weight equals p(x): zero variance, ESS = S, the exact value to rounding."""
    est = log_likelihood(ppca["model"], ppca["guide_for"](), ppca["x"], num_samples=64)
    assert isinstance(est, LogLikelihoodEstimate) and est.log_p.shape == (N,) and est.plate == "data"
    torch.testing.assert_close(est.log_p, ppca["exact"], atol=1e-9, rtol=0)
    torch.testing.assert_close(est.ess, torch.full((N,), 64.0, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch_size,particle_batch_size", [(None, 5000), (7, 300)])
def test_importance_sampling_matches_ppca_marginal(ppca, batch_size, particle_batch_size):
    """A shifted, inflated diagonal guide: within 0.02 nats per datum of the closed form with 5,000 samples."""
    guide = ppca["guide_for"](offset=0.1, inflate=1.2, full=False)
    est = log_likelihood(
        ppca["model"],
        guide,
        ppca["x"],
        num_samples=5000,
        batch_size=batch_size,
        particle_batch_size=particle_batch_size,
        pareto_k=True,
    )
    error = (est.log_p - ppca["exact"]).abs()
    assert error.max() < 0.02, error.max()
    assert (est.log_p - ppca["exact"]).mean().abs() < 0.005  # no bias beyond Monte Carlo error
    assert ((est.ess > 100) & (est.ess < 5000)).all()
    assert est.pareto_k.shape == (N,) and (est.pareto_k < 0.7).all()


def test_bound_tightens_with_samples_and_diagnostics_flag_a_bad_guide(ppca):
    """IWAE: E log p̂_S increases with S towards log p(x); a too-narrow guide gets high k̂ and low ESS."""
    guide = ppca["guide_for"](offset=0.8, inflate=0.6, full=False)
    means = []
    for s in (1, 5, 50, 500):
        pyro.set_rng_seed(0)
        means.append(log_likelihood(ppca["model"], guide, ppca["x"], num_samples=s).log_p.mean().item())
    assert means[0] < means[1] < means[2] < means[3] < ppca["exact"].mean().item() + 0.01, means
    assert ppca["exact"].mean().item() - means[0] > 0.5  # the one-sample ELBO is far off
    est = log_likelihood(ppca["model"], guide, ppca["x"], num_samples=500, pareto_k=True)
    assert est.pareto_k.median() > 0.7 and est.ess.median() < 100


def test_tensor_arguments_are_batched_with_the_data(ppca):
    """A second per-datum argument (a CVAE's label) is cut into the same batches as x."""
    shift = torch.linspace(-1, 1, N, dtype=torch.float64)[:, None].expand(N, D)
    x = ppca["x"] + shift
    est = log_likelihood(ppca["model"], ppca["guide_for"](), x, shift, num_samples=8, batch_size=9)
    torch.testing.assert_close(est.log_p, ppca["exact"], atol=1e-9, rtol=0)
    est = log_likelihood(ppca["model"], ppca["guide_for"](), x, num_samples=8, batch_size=9, shift=shift)
    torch.testing.assert_close(est.log_p, ppca["exact"], atol=1e-9, rtol=0)


def test_several_local_sites_and_nested_plates():
    """Two local latents and a nested plate: per-datum weights sum over the inner plate, exactly."""
    x = torch.randn(6, 4, dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
            with pyro.plate("features", x.shape[1], dim=-1):
                b = pyro.sample("b", dist.Normal(a, 1.0))
                pyro.sample("x", dist.Normal(b, 1.0), obs=x)

    def guide(x):  # the prior as proposal
        with pyro.plate("data", x.shape[0], dim=-2):
            a = pyro.sample("a", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
            with pyro.plate("features", x.shape[1], dim=-1):
                pyro.sample("b", dist.Normal(a, 1.0))

    cov = torch.ones(4, 4, dtype=torch.float64) + 2 * torch.eye(4, dtype=torch.float64)  # a + (b - a) + noise
    exact = dist.MultivariateNormal(torch.zeros(4, dtype=torch.float64), cov).log_prob(x)
    est = log_likelihood(model, guide, x, num_samples=20000, particle_batch_size=5000)
    assert est.log_p.shape == (6,)
    assert (est.log_p - exact).abs().max() < 0.05


def test_bad_input(ppca):
    model, guide, x = ppca["model"], ppca["guide_for"](), ppca["x"]
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="num_samples"):
            log_likelihood(model, guide, x, num_samples=bad)
    with pytest.raises(ValueError, match="batch_size"):
        log_likelihood(model, guide, x, batch_size=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        log_likelihood(model, guide, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="first argument"):
        log_likelihood(model, guide)

    def global_model(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(w, 1.0).expand([D]).to_event(1), obs=x)

    def global_guide(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'w' is outside the data plate"):
        log_likelihood(global_model, global_guide, x, num_samples=4)

    def unplated(x):
        pyro.sample("x", dist.Normal(0.0, 1.0).expand(x.shape).to_event(2), obs=x)

    with pytest.raises(ValueError, match="one plate of size"):
        log_likelihood(unplated, lambda x: None, x, num_samples=4)
    with pytest.raises(ValueError, match="does not sample the model's latent site 'z'"):
        log_likelihood(model, lambda x, shift=None: None, x, num_samples=4)
    with pytest.raises(ValueError, match="plate 'nope'"):
        log_likelihood(model, guide, x, num_samples=4, plate="nope")
