import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam, ClippedAdam

from dgm_ppl.evaluation import mmd_test, mode_coverage
from dgm_ppl.models.denoising import GSN, DenoisingAutoencoder

torch.set_num_threads(1)

M, S, SIGMA = 1.0, 1.0, 1.0  # Gaussian data N(M, S^2), Gaussian corruption of scale SIGMA
A = S**2 / (S**2 + SIGMA**2)  # the Bayes reconstruction E[x | x~] = M + A (x~ - M), Var[x | x~] = A SIGMA^2


def gaussian_data(n: int, seed: int) -> torch.Tensor:
    return M + S * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))


def two_modes(n: int, seed: int) -> torch.Tensor:
    """The equal mixture of N(-2, 0.5^2) and N(2, 0.5^2)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, (n, 1), generator=g) * 4.0 - 2.0 + 0.5 * torch.randn(n, 1, generator=g)


def linear_dae(weight: float, bias: float, scale: float) -> DenoisingAutoencoder:
    dae = DenoisingAutoencoder(1, torch.nn.Linear(1, 1), noise=SIGMA)
    with torch.no_grad():
        dae.net.weight.fill_(weight)
        dae.net.bias.fill_(bias)
        dae.log_scale.fill_(math.log(scale))
    return dae


def test_loss_is_the_reconstruction_log_likelihood():
    dae = linear_dae(0.3, -0.2, 0.8)
    x = gaussian_data(50, 0)
    pyro.set_rng_seed(3)
    loss = Trace_ELBO().loss(dae.model, dae.guide, x)
    pyro.set_rng_seed(3)
    trace = poutine.trace(dae.model).get_trace(x)
    x_tilde = trace.nodes["x_tilde_1"]["value"]
    by_hand = -torch.distributions.Normal(0.3 * x_tilde - 0.2, 0.8).log_prob(x).sum()
    assert loss == pytest.approx(by_hand.item(), rel=1e-6)
    assert not torch.equal(x_tilde, x) and (x_tilde - x).std().item() == pytest.approx(SIGMA, rel=0.3)
    with torch.no_grad():  # subsampling scales the loss by N / B
        pyro.set_rng_seed(3)
        scaled = Trace_ELBO().loss(dae.model, dae.guide, x, 1000)
    assert scaled == pytest.approx(loss * 1000 / 50, rel=1e-6)


def test_linear_dae_learns_the_bayes_reconstruction():
    """Maximum likelihood on (x, x~) pairs reaches E[x | x~] = A x~ + (1 - A) M and Var[x | x~] = A SIGMA^2."""
    x = gaussian_data(20_000, 1)
    dae = linear_dae(0.0, 0.0, 1.0)
    svi = SVI(dae.model, dae.guide, ClippedAdam({"lr": 0.05, "lrd": 0.995}), Trace_ELBO())
    g = torch.Generator().manual_seed(2)
    for _ in range(500):
        svi.step(x[torch.randint(len(x), (1000,), generator=g)], len(x))
    # measured: 0.500, 0.491, 0.707 against 0.5, 0.5, 0.7071
    assert dae.net.weight.item() == pytest.approx(A, abs=0.03)
    assert dae.net.bias.item() == pytest.approx((1 - A) * M, abs=0.04)
    assert dae.log_scale.exp().item() == pytest.approx(math.sqrt(A) * SIGMA, abs=0.03)


def test_chain_of_the_bayes_dae_is_stationary_at_the_data():
    """x' = A (x + SIGMA eps) + (1 - A) M + sqrt(A) SIGMA eta is stationary exactly at N(M, S^2)."""
    dae = linear_dae(A, (1 - A) * M, math.sqrt(A) * SIGMA)
    samples = dae.sample(4000, burn_in=40)
    assert samples.mean().item() == pytest.approx(M, abs=0.06)
    assert samples.var().item() == pytest.approx(S**2, abs=0.08)
    fresh = gaussian_data(1000, 7)
    assert mmd_test(samples[:1000], fresh, generator=torch.Generator().manual_seed(0)).p_value > 0.01
    wrong = linear_dae(A, (1 - A) * M, 0.3 * SIGMA).sample(1000, burn_in=40)  # too small a reconstruction scale
    assert mmd_test(wrong, fresh, generator=torch.Generator().manual_seed(0)).p_value < 0.01
    chain = dae.markov_chain(np.zeros((5, 1)), 3, return_all=True)  # NumPy input is converted
    assert chain.shape == (4, 5, 1) and torch.equal(chain[0], torch.zeros(5, 1))


def test_dae_chain_samples_a_two_mode_mixture():
    """With a large corruption (mixing chain) and a mixture reconstruction, the chain's samples pass a two-sample
    test against fresh data and cover both modes; the untrained DAE's samples fail it."""
    x = two_modes(5000, 1)
    dae = DenoisingAutoencoder(1, hidden_dims=(32, 32), noise=1.0, num_components=3)
    fresh = two_modes(1000, 5)
    untrained = dae.sample(1000, burn_in=50)
    assert mmd_test(untrained, fresh, generator=torch.Generator().manual_seed(0)).p_value < 0.01
    svi = SVI(dae.model, dae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    g = torch.Generator().manual_seed(2)
    for _ in range(700):
        svi.step(x[torch.randint(len(x), (256,), generator=g)], len(x))
    samples = dae.sample(1000, burn_in=200)
    assert mmd_test(samples, fresh, generator=torch.Generator().manual_seed(0)).p_value > 0.01
    coverage = mode_coverage(samples, centers=torch.tensor([[-2.0], [2.0]]), std=0.5)
    assert coverage.modes == 2 and coverage.high_quality > 0.95 and coverage.reverse_kl < 0.02, coverage


def test_walkback_sites_and_training():
    dae = DenoisingAutoencoder(1, hidden_dims=(16,), noise=SIGMA, walkback=3)
    x = gaussian_data(2000, 3)
    trace = poutine.trace(dae.model).get_trace(x[:10])
    sites = [name for name, site in trace.nodes.items() if site["type"] == "sample" and name != "data"]
    assert sites == ["x_tilde_1", "x_1", "x_tilde_2", "x_2", "x_tilde_3", "x_3"]
    for j in (1, 2, 3):
        assert torch.equal(trace.nodes[f"x_{j}"]["value"], x[:10])  # every corruption reconstructs the datum
    # each later corruption starts from the previous reconstruction, not from the datum
    assert not torch.equal(trace.nodes["x_tilde_2"]["fn"].base_dist.loc, x[:10])
    trace.compute_log_prob()
    assert all(not trace.nodes[f"x_tilde_{j}"]["log_prob"].any() for j in (1, 2, 3))  # masked out
    svi = SVI(dae.model, dae.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    g = torch.Generator().manual_seed(2)
    losses = [svi.step(x[torch.randint(len(x), (200,), generator=g)]) for _ in range(300)]
    assert np.mean(losses[-20:]) < 0.97 * np.mean(losses[:5])
    samples = dae.sample(2000, burn_in=50)
    assert samples.mean().item() == pytest.approx(M, abs=0.15) and samples.std().item() == pytest.approx(S, abs=0.15)


def test_binary_dae_and_gsn_train():
    x = (torch.rand(500, 6, generator=torch.Generator().manual_seed(0)) < 0.2).float()
    x[:, 3:] = x[:, :3]  # correlated bits
    for module in (
        DenoisingAutoencoder(6, likelihood="bernoulli", noise=0.1, hidden_dims=(16,)),
        GSN(6, 16, likelihood="bernoulli", noise=0.1, walkback=2),
    ):
        pyro.clear_param_store()
        svi = SVI(module.model, module.guide, Adam({"lr": 2e-2}), Trace_ELBO())
        losses = [svi.step(x[i % 5 * 100 : i % 5 * 100 + 100]) for i in range(100)]
        assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:5]), type(module).__name__
        samples = module.sample(200, burn_in=20)
        assert samples.shape == (200, 6) and set(samples.unique().tolist()) <= {0.0, 1.0}
        assert (samples[:, :3] == samples[:, 3:]).float().mean() > 0.6  # learned the copy structure


def test_gsn_real_valued():
    gsn = GSN(2, 16, noise=0.5, num_components=2)
    x = torch.randn(300, 2)
    assert sorted(n for n, s in poutine.trace(gsn.model).get_trace(x).nodes.items() if s["type"] == "sample") == [
        "data",
        "x_1",
        "x_2",
        "x_3",
        "x_tilde_1",
        "x_tilde_2",
        "x_tilde_3",
    ]
    svi = SVI(gsn.model, gsn.guide, Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x) for _ in range(60)]
    assert losses[-1] < losses[0]
    assert gsn.markov_chain(x[:4], 5, return_all=True).shape == (6, 4, 2)


def test_bad_input():
    dae = DenoisingAutoencoder(2)
    for bad in (torch.tensor([[0.0, float("nan")]]), torch.zeros(3, 5), torch.zeros(2)):
        with pytest.raises(ValueError):
            dae.model(bad)
        with pytest.raises(ValueError):
            dae.markov_chain(bad, 2)
    with pytest.raises(TypeError):
        dae.model("data")
    with pytest.raises(ValueError):
        DenoisingAutoencoder(2, likelihood="bernoulli").model(torch.full((3, 2), 0.5))
    for kwargs in (
        dict(likelihood="poisson"),
        dict(corruption="flip"),
        dict(noise=0.0),
        dict(walkback=0),
        dict(likelihood="bernoulli", noise=1.5),
    ):
        with pytest.raises(ValueError):
            DenoisingAutoencoder(2, **kwargs)
    with pytest.raises(ValueError, match="network returned"):
        DenoisingAutoencoder(2, torch.nn.Linear(2, 3)).model(torch.zeros(4, 2))
    with pytest.raises(ValueError):
        dae.sample(10, burn_in=-1)
    assert dae.model(np.zeros((4, 2))).dtype == torch.get_default_dtype()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda():
    for module in (DenoisingAutoencoder(2, num_components=2, walkback=2), GSN(2, 8)):
        module = module.cuda()
        svi = SVI(module.model, module.guide, Adam({"lr": 1e-3}), Trace_ELBO())
        assert np.isfinite(svi.step(torch.randn(16, 2, device="cuda")))
        assert module.sample(5, burn_in=3).device.type == "cuda"
        assert module.markov_chain(np.zeros((2, 2)), 2).device.type == "cuda"
