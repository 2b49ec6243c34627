"""Semi-amortized guides: refinement closes the amortization gap on PPCA (exact posterior known), both gradient modes
train the encoder, the refined guide is a valid proposal, bad options are refused."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuideList, AutoNormal
from test_guides import elbo_per_datum, ppca
from torch import nn

from dgm_ppl.evaluation import log_likelihood
from dgm_ppl.guides import AmortizedFlow, AmortizedMultivariateNormal, AmortizedNormal


def test_refinement_closes_the_amortization_gap():
    """An untrained encoder is far off (ELBO ~ -46 nats against log p(x) ~ -6.2). 150 refinement steps per datum take
    the diagonal guide to the mean-field optimum (exact minus the analytic mean-field gap, ~ -7.46) and the full-rank
    guide past it, towards log p(x): the remaining gap is the family's, not the encoder's."""
    model, x, exact, mean_field_gap = ppca(correlated=True)
    log_p, mean_field_optimum = exact.mean().item(), exact.mean().item() - mean_field_gap
    results = {}
    for name, cls in (("diagonal", AmortizedNormal), ("full", AmortizedMultivariateNormal)):
        for steps in (0, 150):
            pyro.clear_param_store()
            torch.manual_seed(1)
            guide = cls(model, nn.Linear(5, 8), refine_steps=steps, loc_init="small")
            results[name, steps] = elbo_per_datum(model, guide, x, particles=200)
    assert results["diagonal", 0] < log_p - 20 and results["full", 0] < log_p - 20
    assert mean_field_optimum - 0.4 < results["diagonal", 150] < mean_field_optimum + 0.05
    assert results["full", 150] > mean_field_optimum + 0.5
    assert results["full", 150] < log_p + 0.05


@pytest.mark.parametrize("backprop", [False, True])
def test_refinement_trains_the_encoder(backprop):
    """Both gradient modes reach the encoder; differentiating through the steps (SA-VAE) gives a different gradient
    from the first-order one; training with refinement gets the refined ELBO near the mean-field optimum and improves
    the encoder's own ELBO."""
    model, x, exact, mean_field_gap = ppca(correlated=True)
    grads = {}
    for mode in (False, True):
        pyro.clear_param_store()
        torch.manual_seed(1)
        guide = AmortizedNormal(model, nn.Linear(5, 8), refine_steps=3, refine_backprop=mode, loc_init="small")
        torch.manual_seed(2)
        Trace_ELBO().loss_and_grads(model, guide, x)
        grads[mode] = guide.encoder.weight.grad.clone()
        assert torch.isfinite(grads[mode]).all() and grads[mode].abs().sum() > 0
    assert not torch.allclose(grads[False], grads[True], rtol=1e-3)

    pyro.clear_param_store()
    torch.manual_seed(1)
    guide = AmortizedNormal(
        model, nn.Linear(5, 8), refine_steps=5, refine_lr=0.1, refine_backprop=backprop, loc_init="small"
    )
    guide.refine_steps = 0
    before = elbo_per_datum(model, guide, x, particles=200)
    guide.refine_steps = 5
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.03}), Trace_ELBO())
    for _ in range(120):
        svi.step(x)
    refined = elbo_per_datum(model, guide, x, particles=200)
    guide.refine_steps = 0
    amortized = elbo_per_datum(model, guide, x, particles=200)
    assert refined > exact.mean().item() - mean_field_gap - 1.5
    assert amortized > before + 10


def test_refined_guide_is_a_valid_proposal():
    """Importance sampling with the refined guide (refinement runs under no_grad too) estimates log p(x): better than
    the unrefined encoder's, and within a small error on average."""
    model, x, exact, _ = ppca(correlated=True, n=16)
    errors = {}
    for steps in (0, 100):
        pyro.clear_param_store()
        torch.manual_seed(1)
        guide = AmortizedMultivariateNormal(model, nn.Linear(5, 8), refine_steps=steps, refine_lr=0.1)
        estimate = log_likelihood(model, guide, x, num_samples=1000, progress=False)
        errors[steps] = (estimate.log_p - exact).abs().mean().item()
    assert errors[100] < 0.25 < errors[0]


def test_refinement_with_a_flow_and_a_subsampled_plate():
    """The base Gaussian of a flow guide is refined, also under a subsampled plate (per-datum steps)."""
    _, x, _, _ = ppca(correlated=True, n=16)

    def subsampled(x, num_data=None):
        with pyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ torch.ones(2, 5), 0.5).to_event(1), obs=x)

    elbos = {}
    for steps in (0, 30):
        pyro.clear_param_store()
        torch.manual_seed(1)
        guide = AmortizedFlow(
            subsampled, nn.Linear(5, 8), flow="iaf", refine_steps=steps, refine_lr=0.1, loc_init="small"
        )
        elbo = Trace_ELBO(num_particles=100, vectorize_particles=True, max_plate_nesting=1)
        with torch.no_grad():
            elbos[steps] = -elbo.loss(subsampled, guide, x, 1000) / 1000
    assert elbos[30] > elbos[0] + 5


def test_bad_refinement_options():
    model, x, _, _ = ppca(correlated=True, n=8)
    with pytest.raises(ValueError, match="refine_steps"):
        AmortizedNormal(model, nn.Linear(5, 8), refine_steps=-1)
    with pytest.raises(ValueError, match="refine_lr"):
        AmortizedNormal(model, nn.Linear(5, 8), refine_steps=2, refine_lr=0.0)

    def with_global(x):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(w * z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match=r"must guide every latent site; \['w'\]"):
        AmortizedNormal(with_global, nn.Linear(5, 8), refine_steps=2)(x)
    guide = AutoGuideList(with_global)
    guide.append(AutoNormal(pyro.poutine.block(with_global, hide=["z"])))
    guide.append(AmortizedNormal(pyro.poutine.block(with_global, hide=["w"]), nn.Linear(5, 8), refine_steps=2))
    with pytest.raises(ValueError, match="AutoGuideList"):
        guide(x)
