"""Example models: the closed forms of factor analysis / PPCA against Bayes' rule and the joint Gaussian, the PPCA
maximum-likelihood fit, exact sigmoid-belief-net marginals and ELBO gradients by enumeration, VAE / CVAE programs
against quadrature, training, bad input."""

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, ReweightedWakeSleep, Trace_ELBO, TraceGraph_ELBO
from torch import nn

from dgm_ppl.datasets import load_digits
from dgm_ppl.evaluation import log_likelihood
from dgm_ppl.guides import AmortizedMultivariateNormal
from dgm_ppl.models import CVAE, GUIDES, PPCA, VAE, FactorAnalysis, SigmoidBeliefNet

F64 = torch.float64


def states(n: int, dtype=torch.float32) -> torch.Tensor:
    """All 2^n binary vectors, (2^n, n)."""
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=dtype)


def elbo_loss(particles: int = 1):
    return Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)


# ---------------------------------------------------------------------------------------------------------------------
# Factor analysis and PPCA: closed forms
# ---------------------------------------------------------------------------------------------------------------------


def random_factor_model(isotropic: bool, d: int = 6, k: int = 2, seed: int = 0):
    """A float64 factor model with O(1) random parameters (per-feature noise unless isotropic), and a data batch."""
    g = torch.Generator().manual_seed(seed)
    model = (PPCA(d, k) if isotropic else FactorAnalysis(d, k)).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(d, k, generator=g, dtype=F64))
        model.loc.copy_(torch.randn(d, generator=g, dtype=F64))
        model.log_noise.copy_(0.4 * torch.randn(model.log_noise.shape, generator=g, dtype=F64) - 0.5)
    x = 2 * torch.randn(7, d, generator=g, dtype=F64)
    return model, x


def joint_gaussian(model):
    """The joint N over (z, x), written from the definition: cov [[I, W^T], [W, W W^T + Psi]], mean [0, mu]."""
    W, k = model.weight.detach(), model.z_dim
    psi = torch.exp(2 * model.log_noise.detach()) * torch.ones(model.x_dim, dtype=F64)
    cov_xx = W @ W.T + torch.diag(psi)
    mean = torch.cat([torch.zeros(k, dtype=F64), model.loc.detach()])
    cov = torch.cat([torch.cat([torch.eye(k, dtype=F64), W.T], 1), torch.cat([W, cov_xx], 1)], 0)
    return mean, cov


@pytest.mark.parametrize("isotropic", [False, True], ids=["fa", "ppca"])
def test_factor_model_program_satisfies_bayes_rule(isotropic):
    """log p(x, z) from the model's trace minus log p(z | x) from ``posterior`` is log p(x) = ``log_marginal`` at
    every z, to rounding."""
    model, x = random_factor_model(isotropic)
    exact = model.log_marginal(x).detach()
    assert exact.shape == (7,)
    joints = []
    for scale in (0.0, 1.0, 3.0, 10.0):
        z = scale * torch.randn(7, 2, dtype=F64)
        trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(x)
        trace.compute_log_prob()
        assert trace.nodes["x"]["is_observed"] and [f.name for f in trace.nodes["z"]["cond_indep_stack"]] == ["data"]
        log_joint = (trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"]).detach()
        joints.append(log_joint)
        identity = log_joint - model.posterior(x).log_prob(z).detach()
        torch.testing.assert_close(identity, exact, atol=1e-9, rtol=0)
    assert (joints[0] - joints[-1]).abs().min() > 1.0  # the joint does vary with z: the identity is not vacuous
    # the joint Gaussian's log density splits the same way
    mean, cov = joint_gaussian(model)
    z = torch.randn(7, 2, dtype=F64)
    log_joint = dist.MultivariateNormal(mean, cov).log_prob(torch.cat([z, x], -1))
    torch.testing.assert_close(log_joint - model.posterior(x).log_prob(z).detach(), exact, atol=1e-9, rtol=0)


@pytest.mark.parametrize("isotropic", [False, True], ids=["fa", "ppca"])
def test_factor_marginal_and_posterior_match_the_joint_gaussian(isotropic):
    """Marginal covariance and the posterior's mean and covariance against Gaussian conditioning (Schur complement);
    ancestral draws of the model program have the marginal's moments."""
    model, x = random_factor_model(isotropic)
    mean, cov = joint_gaussian(model)
    cov_zx, cov_xx = cov[:2, 2:], cov[2:, 2:]
    marginal = model.marginal()
    torch.testing.assert_close(marginal.loc.detach(), mean[2:], atol=1e-12, rtol=0)
    torch.testing.assert_close(marginal.covariance_matrix.detach(), cov_xx, atol=1e-10, rtol=0)
    gain = cov_zx @ torch.linalg.inv(cov_xx)  # (k, d)
    post = model.posterior(x)
    assert post.batch_shape == (7,) and post.event_shape == (2,)
    torch.testing.assert_close(post.mean.detach(), (x - mean[2:]) @ gain.T, atol=1e-9, rtol=0)
    post_cov = torch.eye(2, dtype=F64) - gain @ cov_zx.T
    torch.testing.assert_close(post.covariance_matrix.detach(), post_cov.expand(7, 2, 2), atol=1e-9, rtol=0)
    # the generative direction of the program: x drawn by running the model unconditioned
    with torch.no_grad():
        draws = poutine.uncondition(model.model)(torch.zeros(20000, 6, dtype=F64))
        samples = model.sample(20000)
    for xs in (draws, samples):
        assert xs.shape == (20000, 6)
        torch.testing.assert_close(xs.mean(0), mean[2:], atol=0.06, rtol=0)
        torch.testing.assert_close(torch.cov(xs.T), cov_xx, atol=0.1 + 0.04 * cov_xx.abs().max().item(), rtol=0)


def test_exact_guide_makes_likelihood_elbo_and_gradient_exact():
    """With q = p(z | x) every importance weight is p(x): log_likelihood is exact with 16 samples, the ELBO equals
    log p(x) (scaled by N / B under subsampling), and each reparametrized ELBO gradient is grad log p(x) exactly."""
    model, x = random_factor_model(isotropic=False)
    exact = model.log_marginal(x)
    est = log_likelihood(model.model, model.exact_guide, x, num_samples=16, batch_size=3)
    torch.testing.assert_close(est.log_p, exact.detach(), atol=1e-9, rtol=0)
    torch.testing.assert_close(est.ess, torch.full((7,), 16.0, dtype=F64), atol=1e-6, rtol=0)
    loss = elbo_loss(5).loss(model.model, model.exact_guide, x)
    assert loss == pytest.approx(-exact.sum().item(), rel=1e-10)
    loss = elbo_loss(5).loss(model.model, model.exact_guide, x, num_data=70)
    assert loss == pytest.approx(-10 * exact.sum().item(), rel=1e-10)
    # gradients: the ELBO at the exact posterior is log p(x) as a function of the parameters
    expected = torch.autograd.grad(-exact.sum(), list(model.parameters()))
    model.zero_grad()
    elbo_loss(1).loss_and_grads(model.model, model.exact_guide, x)
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, atol=1e-8, rtol=1e-8)
        assert g.abs().max() > 1e-2


def ppca_data(n: int = 200, d: int = 5, k: int = 2, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, k, generator=g, dtype=dtype)
    mu = torch.randn(d, generator=g, dtype=dtype)
    return torch.randn(n, k, generator=g, dtype=dtype) @ W.T + mu + 0.5 * torch.randn(n, d, generator=g, dtype=dtype)


def mean_log_lik(model, x) -> torch.Tensor:
    return model.log_marginal(x).mean()


def test_ppca_closed_form_fit_is_the_maximum():
    """The closed-form PPCA is a stationary point, beats every nearby perturbation, is invariant to rotating W, and
    gradient ascent on the exact likelihood from a random start climbs to it but not past it."""
    x = ppca_data(dtype=F64)
    fit = PPCA.fit_closed_form(x, 2)
    assert isinstance(fit, PPCA) and fit.weight.dtype == F64 and fit.log_noise.shape == (1,)
    best = mean_log_lik(fit, x)
    for g in torch.autograd.grad(best, list(fit.parameters())):
        assert g.abs().max() < 1e-8
    best = best.item()
    params = list(fit.parameters())
    for _ in range(20):
        probe = PPCA(5, 2).double()
        with torch.no_grad():
            for p, q in zip(probe.parameters(), params):
                p.copy_(q + 0.05 * torch.randn_like(q))
            assert mean_log_lik(probe, x).item() < best
    angle = torch.tensor(0.7, dtype=F64)
    rotation = torch.stack([torch.stack([angle.cos(), -angle.sin()]), torch.stack([angle.sin(), angle.cos()])])
    with torch.no_grad():
        rotated = PPCA.fit_closed_form(x, 2)
        rotated.weight.copy_(fit.weight @ rotation)
        assert mean_log_lik(rotated, x).item() == pytest.approx(best, abs=1e-12)
    climber = PPCA(5, 2).double()
    optim = torch.optim.Adam(climber.parameters(), lr=0.05)
    start = mean_log_lik(climber, x).item()
    for _ in range(500):
        optim.zero_grad()
        (-mean_log_lik(climber, x)).backward()
        optim.step()
    reached = mean_log_lik(climber, x).item()
    assert start < best - 2.0, (start, best)
    assert best - 1e-3 < reached <= best + 1e-9, (reached, best)


def test_ppca_svi_with_an_amortized_full_rank_guide_reaches_the_closed_form_maximum():
    """SVI (Trace_ELBO) on the PPCA program with an amortized full-rank guide: the exact log-likelihood of the learned
    model comes within 0.02 nats per datum of the closed-form maximum (never above it), and the ELBO is tight."""
    x = ppca_data()
    best = mean_log_lik(PPCA.fit_closed_form(x, 2), x).item()
    model = PPCA(5, 2)
    guide = AmortizedMultivariateNormal(model.model, nn.Linear(5, 8))
    start = mean_log_lik(model, x).item()
    svi = SVI(model.model, guide, pyro.optim.Adam({"lr": 0.03}), elbo_loss(4))
    for _ in range(200):
        svi.step(x)
    with torch.no_grad():
        reached = mean_log_lik(model, x).item()
        elbo = -elbo_loss(1000).loss(model.model, guide, x) / len(x)
    assert start < best - 3.0
    assert best - 0.02 < reached < best + 1e-4, (reached, best)
    assert reached - 0.06 < elbo < reached + 0.01, (elbo, reached)


def test_factor_analysis_recovers_heteroscedastic_noise():
    """Maximum likelihood on the exact marginal recovers per-feature noise variances spanning a factor of 40, which
    PPCA (one shared variance) cannot fit as well."""
    g = torch.Generator().manual_seed(3)
    d, k, n = 6, 2, 3000
    W = torch.randn(d, k, generator=g, dtype=F64)
    psi = torch.tensor([0.05, 0.2, 0.5, 1.0, 2.0, 0.1], dtype=F64)
    x = torch.randn(n, k, generator=g, dtype=F64) @ W.T + psi.sqrt() * torch.randn(n, d, generator=g, dtype=F64)
    fa = FactorAnalysis(d, k).double()
    optim = torch.optim.Adam(fa.parameters(), lr=0.05)
    for _ in range(400):
        optim.zero_grad()
        (-mean_log_lik(fa, x)).backward()
        optim.step()
    relative = (fa.noise_variance.detach() / psi - 1).abs()
    assert relative.max() < 0.25, fa.noise_variance
    ppca_best = mean_log_lik(PPCA.fit_closed_form(x, k), x).item()
    assert mean_log_lik(fa, x).item() > ppca_best + 0.1


# ---------------------------------------------------------------------------------------------------------------------
# Sigmoid belief nets
# ---------------------------------------------------------------------------------------------------------------------


def random_sbn(x_dim, latent_dims, scale=1.5, recognition_scale=0.5, **kwargs):
    sbn = SigmoidBeliefNet(x_dim, latent_dims, baseline_hidden=8, **kwargs)
    with torch.no_grad():
        for p in sbn.generative.parameters():
            p.normal_(0, scale)
        for p in sbn.recognition.parameters():
            p.normal_(0, recognition_scale)
    return sbn


def bernoulli_prob(logits, value):
    """prod_j sigma(l_j)^v_j (1 - sigma(l_j))^(1 - v_j), written out."""
    p = torch.sigmoid(logits)
    return (p**value * (1 - p) ** (1 - value)).prod(-1)


def test_sbn_log_marginal_against_enumeration_by_hand():
    """Two latent layers of 2 units, 4 pixels: sum over h2, h1 of p(h2) p(h1 | h2) p(x | h1), written out, for all 16
    x; the marginal sums to 1; chunking the enumeration changes nothing."""
    sbn = random_sbn(4, (2, 2)).double()
    xs = states(4, F64)
    top, (W0, W1) = sbn.generative.top_logits.detach(), sbn.generative.layers
    by_hand = torch.zeros(16, dtype=F64)
    with torch.no_grad():
        for h2 in states(2, F64):
            for h1 in states(2, F64):
                prior = bernoulli_prob(top, h2) * bernoulli_prob(W1(h2), h1)
                by_hand += prior * bernoulli_prob(W0(h1), xs)
    log_p = sbn.log_marginal(xs)
    assert log_p.shape == (16,) and log_p.dtype == F64
    torch.testing.assert_close(log_p, by_hand.log(), atol=1e-12, rtol=0)
    assert log_p.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    assert log_p.max() - log_p.min() > 1.0  # far from uniform
    torch.testing.assert_close(sbn.log_marginal(xs, chunk=3), log_p, atol=1e-12, rtol=0)


def test_sbn_log_marginal_agrees_with_the_model_program():
    """Three latent layers: logsumexp over all 2^7 latent configurations of the model trace's log p(x, h) (the
    program, conditioned) is ``log_marginal``; ancestral samples have the marginal's frequencies."""
    sbn = random_sbn(3, (3, 2, 2)).double()
    xs = states(3, F64)
    log_joints = []
    for config in states(7, F64):
        h1, h2, h3 = (c.expand(8, -1) for c in config.split([3, 2, 2]))
        conditioned = poutine.condition(sbn.model, data={"h1": h1, "h2": h2, "h3": h3})
        trace = poutine.trace(conditioned).get_trace(xs)
        trace.compute_log_prob()
        log_joints.append(sum(trace.nodes[s]["log_prob"] for s in ("h1", "h2", "h3", "x")).detach())
    expected = torch.stack(log_joints).logsumexp(0)
    torch.testing.assert_close(sbn.log_marginal(xs), expected, atol=1e-12, rtol=0)
    # ancestral sampling: unconditioned program and ``sample(mean=False)`` both follow p(x)
    n = 20000
    with torch.no_grad():
        draws = [poutine.uncondition(sbn.model)(torch.zeros(n, 3, dtype=F64)), sbn.sample(n, mean=False)]
    probs = sbn.log_marginal(xs).exp()
    for x in draws:
        index = (x * torch.tensor([4.0, 2.0, 1.0], dtype=F64)).sum(-1).long()
        freq = torch.bincount(index, minlength=8).to(F64) / n
        assert (freq - probs).abs().max() < 4 * (probs * (1 - probs) / n).sqrt().max(), (freq, probs)
    assert ((sbn.sample(5) > 0) & (sbn.sample(5) < 1)).all()


def test_sbn_importance_sampling_matches_the_exact_marginal():
    """log_likelihood with the SBN's (untrained) guide as proposal agrees with the enumerated log p(x) within 4
    standard errors (the delta method's sqrt(1 / ESS)), datum by datum and on average."""
    sbn = random_sbn(8, (3, 2), scale=1.0, recognition_scale=0.2)
    x = sbn.sample(20, mean=False)
    exact = sbn.log_marginal(x)
    est = log_likelihood(sbn.model, sbn.guide, x, num_samples=20000, particle_batch_size=5000)
    assert_agrees(est, exact)
    one = log_likelihood(sbn.model, sbn.guide, x, num_samples=1)  # the one-sample ELBO is far below
    assert (exact - one.log_p).mean() > 0.3


def assert_agrees(est, exact, max_se=0.06):
    """An importance-sampled log p(x) agrees with the exact value within 4 standard errors (the delta method's
    sqrt(1 / ESS)), datum by datum and on average, and the standard errors are small."""
    error, se = est.log_p - exact, est.ess.rsqrt()
    assert se.max() < max_se, se
    assert (error.abs() < 4 * se).all(), (error, se)
    assert error.mean().abs() < 4 * se.pow(2).sum().sqrt() / len(se), (error, se)


def exact_elbo(sbn, x):
    """sum_i sum_{h1, h2} q(h1, h2 | x_i) [log p(x_i, h1, h2) - log q(h1, h2 | x_i)], differentiable, (2, 2) latents."""
    h1, h2 = states(sbn.latent_dims[0]), states(sbn.latent_dims[1])
    (r1, r2), gen = sbn.recognition, sbn.generative
    log_q1 = dist.Bernoulli(logits=r1(x)).log_prob(h1[:, None, :]).sum(-1)  # (S1, B)
    log_q2 = dist.Bernoulli(logits=r2(h1)).log_prob(h2[:, None, :]).sum(-1)  # (S2, S1)
    log_p2 = dist.Bernoulli(logits=gen.top_logits).log_prob(h2).sum(-1)  # (S2,)
    log_p1 = dist.Bernoulli(logits=gen.layers[1](h2)).log_prob(h1[:, None, :]).sum(-1)  # (S1, S2)
    log_px = dist.Bernoulli(logits=gen.layers[0](h1)[:, None, :]).log_prob(x).sum(-1)  # (S1, B)
    log_q = log_q1[:, None, :] + log_q2.T[:, :, None]  # (S1, S2, B)
    log_joint = log_p2[None, :, None] + log_p1[:, :, None] + log_px[:, None, :]
    return (log_q.exp() * (log_joint - log_q)).sum()


@pytest.mark.parametrize("baseline", [False, True], ids=["plain", "baselines"])
def test_sbn_reinforce_gradient_matches_the_exact_elbo_gradient(baseline):
    """TraceGraph_ELBO's score-function gradient (with or without the neural and decaying-average baselines) is an
    unbiased estimate of the exact ELBO gradient, computed by enumerating q: every component of the mean of 20
    estimates of 1000 particles lies within 5.5 standard errors; the standard errors are small against the gradient."""
    sbn = random_sbn(4, (2, 2), scale=1.0, recognition_scale=1.0, baseline=baseline)
    x = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    params = [*sbn.generative.parameters(), *sbn.recognition.parameters()]
    exact_value = exact_elbo(sbn, x)
    exact = torch.cat([g.flatten() for g in torch.autograd.grad(-exact_value, params)])
    elbo = TraceGraph_ELBO(num_particles=1000, vectorize_particles=True, max_plate_nesting=1)
    estimates, losses = [], []
    for _ in range(20):
        sbn.zero_grad()
        losses.append(elbo.loss_and_grads(sbn.model, sbn.guide, x))
        estimates.append(torch.cat([p.grad.flatten() for p in params]))
    estimates = torch.stack(estimates)
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(len(estimates))
    assert ((mean - exact).abs() <= 5.5 * se + 1e-4).all(), torch.stack([exact, mean, se], 1)
    assert se.max() < 0.03 * exact.abs().max()
    n_rec = sum(p.numel() for p in sbn.recognition.parameters())
    assert exact[-n_rec:].abs().max() > 0.3  # the recognition gradient is all score-function, and not small
    assert sum(losses) / len(losses) == pytest.approx(-exact_value.item(), abs=0.05)
    if baseline:
        assert sbn.baselines[0].net[0].weight.grad.abs().sum() > 0  # the baselines are being fit


def prototype_data(n: int = 200, d: int = 12, seed: int = 0):
    """Four random binary prototypes of d pixels, each pixel flipped with probability 0.05."""
    g = torch.Generator().manual_seed(seed)
    prototypes = (torch.rand(4, d, generator=g) < 0.5).float()
    which = torch.randint(0, 4, (n,), generator=g)
    flips = (torch.rand(n, d, generator=g) < 0.05).float()
    return (prototypes[which] + flips) % 2


@pytest.mark.parametrize("method", ["tracegraph", "rws"])
def test_sbn_training_increases_the_exact_log_marginal(method):
    """100 full-batch steps of REINFORCE with baselines, or of reweighted wake-sleep with 5 particles, on prototypes
    with bit flips: the exact mean log p(x) climbs from about -8.7 nats (12 pixels) by more than 3 nats."""
    x = prototype_data()
    sbn = SigmoidBeliefNet(12, (5,), baseline_hidden=16)
    before = sbn.log_marginal(x).mean().item()
    if method == "rws":
        loss = ReweightedWakeSleep(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    else:
        loss = TraceGraph_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(sbn.model, sbn.guide, pyro.optim.Adam({"lr": 0.05}), loss)
    for _ in range(100):
        svi.step(x)
    after = sbn.log_marginal(x).mean().item()
    assert before < -8.0 and after > before + 3.0, (before, after)
    # the recognition model learned too: the 1-sample ELBO is within 1.5 nats of log p(x)
    elbo = log_likelihood(sbn.model, sbn.guide, x, num_samples=1).mean()
    assert after - 1.5 < elbo < after, (elbo, after)


def test_sbn_with_baselines_trains_on_minibatches_of_unequal_size():
    """200 data in minibatches of 64: the last one has 8."""
    x = prototype_data()
    sbn = SigmoidBeliefNet(12, (5,), baseline_hidden=16)
    loss = TraceGraph_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(sbn.model, sbn.guide, pyro.optim.Adam({"lr": 0.05}), loss)
    for start in range(0, 200, 64):
        svi.step(x[start : start + 64], num_data=200)


def test_sbn_bad_input():
    with pytest.raises(ValueError, match="at most 20 latent units, got 21"):
        SigmoidBeliefNet(4, (15, 6)).log_marginal(torch.zeros(2, 4))
    for dims in ((), (3, 0)):
        with pytest.raises(ValueError, match="latent_dims must be a non-empty list"):
            SigmoidBeliefNet(4, dims)
    sbn = SigmoidBeliefNet(4, (2,))
    for bad in (torch.zeros(2, 5), torch.zeros(4), [[0.0] * 4]):
        for fn in (sbn.model, sbn.guide, sbn.log_marginal):
            with pytest.raises(ValueError, match=r"x must be a batch of shape \(B, 4\)"):
                fn(bad)
    with pytest.raises(ValueError, match="smaller than the batch"):
        sbn.model(torch.zeros(5, 4), num_data=3)
    with pytest.raises(ValueError, match="support"):  # Pyro's validation of the observed Bernoulli
        TraceGraph_ELBO().loss(sbn.model, sbn.guide, torch.full((2, 4), 0.5))


def test_sbn_log_marginal_refuses_non_binary_data():
    with pytest.raises(ValueError):
        SigmoidBeliefNet(4, (2,)).log_marginal(torch.full((2, 4), 0.5))


# ---------------------------------------------------------------------------------------------------------------------
# VAE and CVAE
# ---------------------------------------------------------------------------------------------------------------------


def quadrature_log_marginal(log_prior, log_lik, half_width=6.0, points=241):
    """log ∫ p(z) p(x | z) dz for a 2-d z on a grid (Riemann sum; exact to rounding for these smooth integrands).

    log_prior(z): (G, B) for z (G, 1, 2); log_lik(z): (G, B)."""
    axis = torch.linspace(-half_width, half_width, points)
    z = torch.cartesian_prod(axis, axis)[:, None, :]  # (G, 1, 2)
    with torch.no_grad():
        log_f = log_prior(z) + log_lik(z)
    return log_f.logsumexp(0) + 2 * math.log(axis[1] - axis[0])


def random_binary(n, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) < 0.5).float()


def sharpen_decoder(module, factor=3.0):
    """Larger decoder weights, so that the posterior is clearly not the prior."""
    with torch.no_grad():
        for p in module.decoder.parameters():
            p.mul_(factor)


CASES = [(kind, "bernoulli") for kind in GUIDES] + [("diagonal", "normal")]


@pytest.mark.parametrize("kind,likelihood", CASES, ids=[f"{k}-{lik}" for k, lik in CASES])
def test_vae_program_for_each_guide_kind_against_quadrature(kind, likelihood):
    """Shapes and plate of the guide and model traces (scale N / B when subsampled); importance sampling with each guide
    kind through the VAE program equals log ∫ N(z; 0, I) p(x | z) dz computed by quadrature."""
    vae = VAE(10, 2, hidden_dims=(8,), likelihood=likelihood)
    sharpen_decoder(vae, 2.5 if likelihood == "bernoulli" else 1.0)
    x = random_binary(4, 10) if likelihood == "bernoulli" else torch.randn(4, 10)
    guide = vae.guide(kind, init_scale=1.0)
    out = guide(x, num_data=40)
    assert set(out) == {"z"} and out["z"].shape == (4, 2)
    guide_trace = poutine.trace(guide).get_trace(x, num_data=40)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, num_data=40)
    model_trace.compute_log_prob()
    assert [n for n, s in model_trace.nodes.items() if s["type"] == "sample" and n != "data"] == ["z", "x"]
    assert model_trace.nodes["x"]["is_observed"] and torch.equal(model_trace.nodes["x"]["value"], x)
    assert torch.equal(model_trace.nodes["z"]["value"], guide_trace.nodes["z"]["value"])
    for trace, name in ((model_trace, "z"), (model_trace, "x"), (guide_trace, "z")):
        site = trace.nodes[name]
        assert [(f.name, f.size, f.full_size) for f in site["cond_indep_stack"]] == [("data", 4, 40)]
        assert site["scale"] == pytest.approx(10.0)
    site = model_trace.nodes["x"]
    unscaled = site["fn"].log_prob(site["value"])
    assert unscaled.shape == (4,)
    assert site["log_prob_sum"].item() == pytest.approx(10 * unscaled.sum().item(), rel=1e-5)
    if likelihood == "normal":  # the observation noise is the learned per-feature scale
        scale = vae.decoder.log_scale.exp().detach().expand(4, 10)
        torch.testing.assert_close(site["fn"].base_dist.scale.detach(), scale)
    # the density of the program, by importance sampling against quadrature
    exact = quadrature_log_marginal(
        lambda z: dist.Normal(0.0, 1.0).log_prob(z).sum(-1).expand(-1, 4), lambda z: vae.decoder(z).log_prob(x)
    )
    est = log_likelihood(vae.model, guide, x, num_samples=20000, particle_batch_size=5000)
    # untrained planar/radial flows are poor proposals for some seeds (se up to ~0.4): the 4-se agreement is the check
    assert_agrees(est, exact, max_se=0.5 if kind in ("planar", "radial") else 0.1)
    assert est.ess.min() < 0.75 * 20000  # the guide is not the posterior: the weights do vary


@pytest.mark.parametrize("first", [None, 40], ids=["first_without_num_data", "first_with_num_data"])
def test_vae_guide_follows_the_num_data_of_each_call(first):
    vae = VAE(10, 2, hidden_dims=(8,))
    x = random_binary(4, 10)
    guide = vae.guide()
    guide(x, num_data=first)
    for num_data, scale in ((None, 1.0), (40, 10.0)):
        guide_trace = poutine.trace(guide).get_trace(x, num_data=num_data)
        model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x, num_data=num_data)
        assert model_trace.nodes["z"]["scale"] == pytest.approx(scale)
        assert guide_trace.nodes["z"]["scale"] == pytest.approx(scale)


@pytest.fixture(scope="module")
def digits():
    return load_digits("train")


def full_data_loss(model, guide, *args, **kwargs):
    """Negative ELBO per datum on the whole data set, with fixed noise."""
    pyro.set_rng_seed(1)
    with torch.no_grad():
        return elbo_loss(2).loss(model, guide, *args, **kwargs) / len(args[0])


def test_vae_trains_on_digits_and_samples_decodes_reconstructs(digits):
    """90 minibatch steps of SVI (batches of 100 of the 1500 binarized 8x8 digits, num_data=1500) lower the full-data
    loss by 20 nats, to below the entropy of the best independent-pixel model (so the latents are used);
    sample / decode / reconstruct have the right shapes and ranges, and reconstructions resemble their inputs."""
    assert digits.shape == (1500, 64) and set(digits.unique().tolist()) == {0.0, 1.0}
    p = digits.mean(0).clamp(1e-3, 1 - 1e-3)
    independent = -(digits * p.log() + (1 - digits) * (1 - p).log()).sum(1).mean().item()  # about 25.1 nats
    vae = VAE(64, 8, hidden_dims=(64,))
    guide = vae.guide("diagonal")
    guide(digits[:100], num_data=1500)
    before = full_data_loss(vae.model, guide, digits, num_data=1500)
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    order = torch.randperm(1500)
    for step in range(90):
        batch = order[(step % 15) * 100 : (step % 15 + 1) * 100]
        svi.step(digits[batch], num_data=1500)
    after = full_data_loss(vae.model, guide, digits, num_data=1500)
    assert after < before - 20.0 and after < independent - 1.5, (before, after, independent)
    means, draws = vae.sample(7), vae.sample(7, mean=False)
    assert means.shape == draws.shape == (7, 64)
    assert ((means > 0) & (means < 1)).all() and set(draws.unique().tolist()) <= {0.0, 1.0}
    decoded = vae.decode(torch.randn(3, 8))
    assert decoded.shape == (3, 64) and ((decoded > 0) & (decoded < 1)).all()
    recon = vae.reconstruct(digits[:200], guide)
    assert recon.shape == (200, 64) and ((recon >= 0) & (recon <= 1)).all()
    # reconstructions are of their own inputs: closer to them than to the other images
    own = (recon - digits[:200]).abs().mean()
    shuffled = (recon - digits[:200].roll(1, 0)).abs().mean()
    assert own < 0.85 * shuffled, (own, shuffled)


def test_vae_normal_likelihood_on_real_valued_digits():
    """A Normal decoder with a learned per-pixel scale trains on the [0, 1] intensities; draws are real-valued."""
    x = load_digits("train", binarize=False)[:300]
    assert x.min() == 0 and x.max() == 1 and ((x > 0) & (x < 1)).any()
    vae = VAE(64, 4, hidden_dims=(32,), likelihood="normal")
    guide = vae.guide("full_rank")
    guide(x[:2])
    before = full_data_loss(vae.model, guide, x)
    svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(40):
        svi.step(x)
    after = full_data_loss(vae.model, guide, x)
    assert after < before - 20.0, (before, after)
    assert vae.decoder.log_scale.detach().max() < -0.3  # the pixel noise shrank from its initial scale 1
    draws = vae.sample(5, mean=False)
    assert draws.shape == (5, 64) and ((draws < 0) | (draws > 1)).any()


@pytest.mark.parametrize("conditional_prior", [True, False], ids=["learned_prior", "standard_prior"])
def test_cvae_likelihood_against_quadrature(conditional_prior):
    """The guide's encoder sees (x, y); log_likelihood cuts y into batches with x; the importance-sampled log p(x | y)
    equals log ∫ p(z | y) p(x | z, y) dz by quadrature; without a conditional prior p(z | y) = N(0, I)."""
    cvae = CVAE(10, 3, 2, hidden_dims=(8,), conditional_prior=conditional_prior)
    sharpen_decoder(cvae)
    x = random_binary(6, 10)
    y = nn.functional.one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3).float()
    guide = cvae.guide("diagonal", init_scale=1.0)
    assert guide.encoder_args == 2
    assert guide(x, y)["z"].shape == (6, 2)
    # the encoder's features depend on y
    assert not torch.allclose(guide.encoder(x, y), guide.encoder(x, y.roll(1, 0)))
    prior = cvae.prior(y)
    assert prior.batch_shape == (6,) and prior.event_shape == (2,)
    if conditional_prior:
        assert not torch.allclose(prior.mean[0], prior.mean[1])  # labels 0 and 1 get different priors
        torch.testing.assert_close(prior.mean[0], prior.mean[3])
    else:
        assert cvae.prior_net is None
        torch.testing.assert_close(prior.mean, torch.zeros(6, 2))
        torch.testing.assert_close(prior.stddev, torch.ones(6, 2))
    trace = poutine.trace(cvae.model).get_trace(x, y)
    torch.testing.assert_close(trace.nodes["z"]["fn"].mean, prior.mean)

    def exact_for(y):  # log ∫ p(z | y) p(x | z, y) dz on a grid of z (G, 1, 2)
        def log_lik(z):
            return cvae.decoder(torch.cat([z.expand(-1, 6, -1), y.expand(len(z), -1, -1)], -1)).log_prob(x)

        return quadrature_log_marginal(lambda z: cvae.prior(y).log_prob(z), log_lik)

    exact = exact_for(y)
    est = log_likelihood(cvae.model, guide, x, y, num_samples=20000, batch_size=4, particle_batch_size=5000)
    assert est.log_p.shape == (6,)
    assert_agrees(est, exact)
    # the value depends on y: the same x with other labels has another likelihood
    assert (exact_for(y.roll(1, 0)) - exact).abs().max() > 0.1


def test_cvae_trains_on_labelled_digits(digits):
    """A CVAE of the digits given their one-hot labels: 30 SVI steps lower the loss by more than 10 nats; sample(y)
    and reconstruct(x, y, guide) give pixel probabilities, one image per row of y."""
    _, labels = load_digits("train", return_labels=True)
    y = nn.functional.one_hot(labels, 10).float()
    cvae = CVAE(64, 10, 4, hidden_dims=(32,))
    guide = cvae.guide("iaf", num_flows=1)
    guide(digits[:100], y[:100], num_data=1500)
    before = full_data_loss(cvae.model, guide, digits, y, num_data=1500)
    svi = SVI(cvae.model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for step in range(30):
        batch = slice((step % 15) * 100, (step % 15 + 1) * 100)
        svi.step(digits[batch], y[batch], num_data=1500)
    after = full_data_loss(cvae.model, guide, digits, y, num_data=1500)
    assert after < before - 10.0, (before, after)
    samples = cvae.sample(y[:5])
    assert samples.shape == (5, 64) and ((samples > 0) & (samples < 1)).all()
    assert set(cvae.sample(y[:5], mean=False).unique().tolist()) <= {0.0, 1.0}
    recon = cvae.reconstruct(digits[:5], y[:5], guide)
    assert recon.shape == (5, 64) and ((recon >= 0) & (recon <= 1)).all()


# ---------------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------------


def test_vae_and_cvae_bad_input():
    vae = VAE(6, 2, hidden_dims=(4,))
    for bad in (torch.zeros(3, 5), torch.zeros(6), [[0.0] * 6]):
        with pytest.raises(ValueError, match=r"x must be a batch of shape \(B, 6\)"):
            vae.model(bad)
    with pytest.raises(ValueError, match=r"num_data \(2\) is smaller than the batch \(3\)"):
        vae.model(torch.zeros(3, 6), num_data=2)
    with pytest.raises(ValueError, match="kind must be one of"):
        vae.guide("maf")
    for cls, args in ((VAE, (6, 2)), (CVAE, (6, 3, 2))):
        with pytest.raises(ValueError, match="likelihood must be one of"):
            cls(*args, likelihood="poisson")
    guide = vae.guide()
    x = torch.rand(3, 6)  # not binary: Pyro's validation of the Bernoulli observation
    with pytest.raises(ValueError, match="support"):
        elbo_loss().loss(vae.model, guide, x)
    with pytest.raises(ValueError, match="support"):
        log_likelihood(vae.model, guide, x, num_samples=2)

    cvae = CVAE(6, 3, 2, hidden_dims=(4,))
    x, y = torch.zeros(4, 6), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="same batch size, got 4 and 3"):
        cvae.model(x, y[:3])
    with pytest.raises(ValueError, match=r"y must be a batch of shape \(B, 3\)"):
        cvae.model(x, torch.zeros(4, 2))
    with pytest.raises(ValueError, match=r"x must be a batch of shape \(B, 6\)"):
        cvae.model(torch.zeros(4, 5), y)
    with pytest.raises(ValueError, match=r"y must be a batch of shape \(B, 3\)"):
        cvae.sample(torch.zeros(3))


@pytest.mark.parametrize("inference", ["elbo", "log_likelihood"])
def test_cvae_inference_with_y_of_another_batch_size_raises_a_value_error(inference):
    cvae = CVAE(6, 3, 2, hidden_dims=(4,))
    x, y = torch.zeros(4, 6), torch.zeros(4, 3)
    guide = cvae.guide()
    guide(x, y)
    with pytest.raises(ValueError, match="same batch size"):
        if inference == "elbo":
            elbo_loss().loss(cvae.model, guide, x, torch.zeros(5, 3))
        else:  # a y of another length is not cut into batches with x
            log_likelihood(cvae.model, guide, x, torch.zeros(5, 3), num_samples=2)


def test_factor_model_bad_input():
    for z_dim in (0, 7):
        with pytest.raises(ValueError, match=f"need 0 < z_dim <= x_dim, got z_dim={z_dim}, x_dim=6"):
            FactorAnalysis(6, z_dim)
        with pytest.raises(ValueError, match=f"z_dim={z_dim}"):
            PPCA(6, z_dim)
    fa = FactorAnalysis(6, 2)
    for fn in (fa.model, fa.log_marginal, fa.posterior, fa.exact_guide):
        with pytest.raises(ValueError, match=r"x must be a batch of shape \(B, 6\)"):
            fn(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="smaller than the batch"):
        fa.model(torch.zeros(3, 6), num_data=1)
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        PPCA.fit_closed_form(torch.zeros(10), 2)
    for z_dim in (0, 6):
        with pytest.raises(ValueError, match="0 < z_dim < x_dim = 6"):
            PPCA.fit_closed_form(torch.randn(20, 6), z_dim)


def test_train_loop_runs_reweighted_wake_sleep():
    """``dgm_ppl.infer.train`` accepts RWS's pair of losses and reports the model's (wake-theta) loss per datum."""
    from dgm_ppl.infer import train

    pyro.clear_param_store()
    torch.manual_seed(0)
    sbn = SigmoidBeliefNet(8, (3,))
    x = (torch.rand(40, 8) < 0.3).float()
    svi = SVI(sbn.model, sbn.guide, pyro.optim.Adam({"lr": 0.01}), ReweightedWakeSleep(num_particles=4))
    history = train(svi, x, epochs=3, batch_size=10, progress=False, kwargs={"num_data": 40})
    assert len(history) == 3 and all(math.isfinite(h) and 8 * 0.3 < h < 8 * 1.0 for h in history)
