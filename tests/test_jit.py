"""The JIT fast path: dgm_ppl's JIT ELBOs and JIT objectives give the loss and the gradients of their eager
counterparts, with ``num_data`` passed positionally, for the example models and guides."""

import pyro
import pytest
import torch
from helpers import grads
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO

from dgm_ppl.evaluation.likelihood import _log_weights
from dgm_ppl.infer.objectives import (
    IWAE,
    AnnealedELBO,
    FreeBitsELBO,
    JitTrace_ELBO,
    JitTraceGraph_ELBO,
    JitTraceMeanField_ELBO,
    jit_trace,
    linear_warmup,
)
from dgm_ppl.models import CVAE, PPCA, VAE, FactorAnalysis, SigmoidBeliefNet

N, B, X = 50, 8, 10
pytestmark = pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")


def binary(rows: int, cols: int = X, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((rows, cols), 0.4), generator=torch.Generator().manual_seed(seed))


class KeywordNumData:
    """An ELBO called with ``num_data`` as a keyword (how Pyro's own JIT ELBOs need it)."""

    def __init__(self, elbo):
        self.elbo = elbo

    def loss_and_grads(self, model, guide, x, num_data):
        return self.elbo.loss_and_grads(model, guide, x, num_data=num_data)


def assert_same_steps(model, guide, eager, jit, batches, rtol=1e-5):
    """``jit`` (compiled by a first call per shape) gives ``eager``'s loss and gradients on each batch, for the same
    draws."""
    for args in batches:
        for elbo in (eager, jit):
            elbo.loss_and_grads(model, guide, *args)
    grads()
    for seed, args in enumerate(batches):
        pyro.set_rng_seed(seed)
        expected = eager.loss_and_grads(model, guide, *args)
        expected_grads = grads()
        pyro.set_rng_seed(seed)
        actual = jit.loss_and_grads(model, guide, *args)
        actual_grads = grads()
        assert actual == pytest.approx(expected, rel=rtol)
        assert expected_grads.keys() == actual_grads.keys() and expected_grads
        for name, g in expected_grads.items():
            assert torch.allclose(actual_grads[name], g, rtol=rtol, atol=1e-5 * g.abs().max().item()), name


@pytest.mark.parametrize("kind", ["diagonal", "iaf"])
@pytest.mark.parametrize("pair", ["trace", "mean_field"])
def test_vae_under_jit_matches_eager_with_positional_num_data(kind, pair):
    if pair == "mean_field" and kind == "iaf":
        pytest.skip("no closed-form KL for a flow: TraceMeanField_ELBO falls back to Trace_ELBO")
    vae = VAE(X, 3, (6,))
    guide = vae.guide(kind)
    x = binary(N)
    if pair == "trace":
        eager, jit = Trace_ELBO(), JitTrace_ELBO()
    else:  # Pyro's JitTraceMeanField_ELBO draws differently from its eager TraceMeanField_ELBO: compare with it
        eager, jit = KeywordNumData(pyro.infer.JitTraceMeanField_ELBO()), JitTraceMeanField_ELBO()
    # full batches, then a smaller one (a new shape compiles anew, it does not replay the old trace)
    assert_same_steps(vae.model, guide, eager, jit, [(x[:B], N), (x[B : 2 * B], N), (x[:5], N)])


def test_pyros_own_jit_elbo_refuses_positional_num_data_and_ours_trains_like_eager():
    vae = VAE(X, 3, (6,))
    guide = vae.guide()
    x = binary(N)
    with pytest.raises(RuntimeError, match="cannot be traced"):
        pyro.infer.JitTrace_ELBO().loss_and_grads(vae.model, guide, x[:B], N)
    grads()
    start = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    params = {}
    for name, elbo in (("eager", Trace_ELBO()), ("jit", JitTrace_ELBO())):
        elbo.loss_and_grads(vae.model, guide, x[:B], N)  # compiles (the JIT's first call draws more)
        grads()
        with torch.no_grad():
            for k, v in pyro.get_param_store().items():
                v.unconstrained().copy_(start[k])
        svi = SVI(vae.model, guide, pyro.optim.Adam({"lr": 0.05}), elbo)
        pyro.set_rng_seed(0)
        losses = [svi.step(x[i * B : (i + 1) * B], N) for i in range(4)]
        params[name] = ({k: v.detach().clone() for k, v in pyro.get_param_store().items()}, losses)
    assert params["jit"][1] == pytest.approx(params["eager"][1], rel=1e-5)
    moved = 0
    for k, v in params["eager"][0].items():
        assert torch.allclose(params["jit"][0][k], v, atol=1e-5), k
        moved += not torch.equal(v, start[k])
    assert moved  # the steps did change the parameters


def test_cvae_under_jit_matches_eager():
    cvae = CVAE(X, 3, 2, (6,))
    guide = cvae.guide()
    x, y = binary(N), torch.eye(3)[torch.arange(N) % 3]
    assert_same_steps(
        cvae.model, guide, Trace_ELBO(), JitTrace_ELBO(), [(x[:B], y[:B], N), (x[B : 2 * B], y[B : 2 * B], N)]
    )


def test_sigmoid_belief_net_under_jit_trace_graph_matches_eager():
    sbn = SigmoidBeliefNet(X, (4, 3), baseline_hidden=5)
    x = binary(N)
    assert_same_steps(sbn.model, sbn.guide, TraceGraph_ELBO(), JitTraceGraph_ELBO(), [(x[:B], N), (x[B : 2 * B], N)])


@pytest.mark.parametrize("cls", [FactorAnalysis, PPCA])
def test_factor_models_under_jit_match_eager(cls):
    fa = cls(X, 2)
    x = torch.randn(N, X, generator=torch.Generator().manual_seed(2))
    assert_same_steps(fa.model, fa.exact_guide, Trace_ELBO(), JitTrace_ELBO(), [(x[:B], N), (x[B : 2 * B], N)])


def test_annealed_elbo_under_jit_follows_its_schedule_without_recompiling():
    vae = VAE(X, 3, (6,))
    guide = vae.guide()
    x = binary(N)
    eager = AnnealedELBO(Trace_ELBO(), beta=linear_warmup(3))
    jit = AnnealedELBO(JitTrace_ELBO(), beta=linear_warmup(3))
    jit.loss_and_grads(vae.model, guide, x[:B], N)
    grads()
    jit.step = 0
    for step in range(4):  # β = 0, 1/3, 2/3, 1: a β frozen into the trace would give the first step's loss
        pyro.set_rng_seed(step)
        expected = eager.loss_and_grads(vae.model, guide, x[:B], N)
        grads()
        pyro.set_rng_seed(step)
        assert jit.loss_and_grads(vae.model, guide, x[:B], N) == pytest.approx(expected, rel=1e-5)
        grads()
    assert jit.step == eager.step == 4
    compiled = jit.elbo._loss_and_surrogate_loss.compiled
    assert len(compiled) == 1


def test_free_bits_and_iwae_with_jit_match_eager():
    vae = VAE(X, 3, (6,))
    guide = vae.guide()
    x = binary(N)
    batches = [(x[:B], N), (x[B : 2 * B], N), (x[:5], N)]
    assert_same_steps(vae.model, guide, FreeBitsELBO(0.3), FreeBitsELBO(0.3, jit=True), batches)
    iwae = {"max_plate_nesting": 1}
    assert_same_steps(vae.model, guide, IWAE(4, **iwae), IWAE(4, jit=True, **iwae), batches)
    compiled = IWAE(4, jit=True, **iwae)
    compiled.loss(vae.model, guide, x[:B], N)
    pyro.set_rng_seed(5)
    expected = IWAE(4, **iwae).loss(vae.model, guide, x[:B], N)
    pyro.set_rng_seed(5)
    assert compiled.loss(vae.model, guide, x[:B], N) == pytest.approx(expected, rel=1e-5)


def test_log_weights_of_the_likelihood_estimator_compile():
    vae = VAE(X, 3, (6,))
    guide = vae.guide()
    x = binary(B)
    guide(x)
    compiled = jit_trace(lambda m, g, a, k: _log_weights(m, g, a, k, 7, 1, "data"))
    with torch.no_grad():
        compiled(vae.model, guide, (x,), {})
        pyro.set_rng_seed(3)
        expected = _log_weights(vae.model, guide, (x,), {}, 7, 1, "data")
        pyro.set_rng_seed(3)
        actual = compiled(vae.model, guide, (x,), {})
    assert actual.shape == (7, B)
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-4)


def test_jit_refuses_what_it_cannot_compile():
    vae = VAE(X, 3, (6,))
    guide = vae.guide()
    x = binary(N)
    elbo = JitTrace_ELBO()
    with pytest.raises(ValueError, match="neither a tensor .* nor hashable"):
        elbo.loss(vae.model, guide, x[:B], [N])
    elbo.loss(vae.model, guide, x[:B], N)
    other = VAE(X, 3, (6,), name="other")
    with pytest.raises(ValueError, match="one \\(model, guide\\) pair"):
        elbo.loss(other.model, guide, x[:B], N)
    with pytest.raises(ValueError, match="reserved"):
        JitTrace_ELBO().loss(vae.model, guide, x[:B], _dgm_static=1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_jit_objectives_on_cuda():
    vae = VAE(X, 3, (6,)).cuda()
    guide = vae.guide().cuda()
    x = binary(N).cuda()
    assert_same_steps(vae.model, guide, Trace_ELBO(), JitTrace_ELBO(), [(x[:B], N), (x[B : 2 * B], N)], rtol=1e-4)
    annealed = AnnealedELBO(JitTrace_ELBO(), beta=0.5)
    assert torch.isfinite(torch.tensor(annealed.loss_and_grads(vae.model, guide, x[:B], N)))
    iwae = IWAE(3, jit=True, max_plate_nesting=1)
    assert torch.isfinite(torch.tensor(iwae.loss_and_grads(vae.model, guide, x[:B], N)))
