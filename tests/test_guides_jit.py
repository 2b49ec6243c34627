"""The amortized guides under dgm_ppl's JIT ELBOs: the loss and gradients of the eager ELBO at the same seed, with
``num_data`` passed positionally, no tracer warning raised from the guides' own code, and a clear error for what
cannot be traced (semi-amortized refinement)."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import grads
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from dgm_ppl.guides import AmortizedCategorical, AmortizedFlow, AmortizedMultivariateNormal, AmortizedNormal
from dgm_ppl.infer.objectives import JitTrace_ELBO

N, B, X, Z = 40, 8, 6, 3


def data(rows: int = N) -> torch.Tensor:
    return torch.bernoulli(torch.full((rows, X), 0.4), generator=torch.Generator().manual_seed(1))


def plates(x, num_data=None):
    """The model's data plate: of size num_data, the batch its subsample (as ``dgm_ppl.models`` do)."""
    return pyro.plate("data", num_data or x.shape[0], subsample=torch.arange(x.shape[0]))


class Continuous(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = nn.Linear(Z, X)

    def model(self, x, num_data=None):
        pyro.module("decoder", self.decoder)
        with plates(x, num_data):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([Z]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)


class Discrete(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = nn.Embedding(Z, X)

    def model(self, x, num_data=None):
        pyro.module("decoder", self.decoder)
        with plates(x, num_data):
            y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(Z)))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(y)).to_event(1), obs=x)


GUIDES = {
    "normal": lambda m: AmortizedNormal(m.model, nn.Linear(X, 5), create_plates=plates),
    "multivariate_normal": lambda m: AmortizedMultivariateNormal(m.model, nn.Linear(X, 5), create_plates=plates),
    "iaf": lambda m: AmortizedFlow(m.model, nn.Linear(X, 5), flow="iaf", create_plates=plates),
    "planar": lambda m: AmortizedFlow(m.model, nn.Linear(X, 5), flow="planar", create_plates=plates),
    "radial": lambda m: AmortizedFlow(m.model, nn.Linear(X, 5), flow="radial", create_plates=plates),
    "affine_coupling": lambda m: AmortizedFlow(m.model, nn.Linear(X, 5), flow="affine_coupling", create_plates=plates),
    "categorical": lambda m: AmortizedCategorical(m.model, nn.Linear(X, 5), site="y", create_plates=plates),
}


@pytest.mark.parametrize("kind", list(GUIDES))
def test_guide_under_jit_gives_the_eager_loss_and_gradients(kind):
    torch.manual_seed(0)
    program = Discrete() if kind == "categorical" else Continuous()
    guide = GUIDES[kind](program)
    x = data()
    batches = [x[:B], x[B : 2 * B], x[:5]]  # a new batch size compiles anew
    eager, jit = Trace_ELBO(), JitTrace_ELBO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in batches:  # the first call per shape compiles (and draws more)
            eager.loss_and_grads(program.model, guide, batch, N)
            jit.loss_and_grads(program.model, guide, batch, N)
    ours = [str(w.message) for w in caught if "/dgm_ppl/" in w.filename.replace("\\", "/")]
    assert not ours, ours  # the guides' per-call checks are skipped while tracing
    grads()
    for seed, batch in enumerate(batches):
        pyro.set_rng_seed(seed)
        expected = eager.loss_and_grads(program.model, guide, batch, N)
        expected_grads = grads()
        pyro.set_rng_seed(seed)
        actual = jit.loss_and_grads(program.model, guide, batch, N)
        actual_grads = grads()
        assert actual == pytest.approx(expected, rel=1e-5)
        assert expected_grads and expected_grads.keys() == actual_grads.keys()
        for name, g in expected_grads.items():
            assert torch.allclose(actual_grads[name], g, rtol=1e-4, atol=1e-5 * g.abs().max().item()), name
        assert any(name.startswith("encoder") or "loc" in name or "logits" in name for name in actual_grads)


def test_svi_with_jit_and_positional_num_data_trains_the_guide():
    torch.manual_seed(0)
    program = Continuous()
    guide = GUIDES["normal"](program)
    x = data()
    svi = SVI(program.model, guide, pyro.optim.Adam({"lr": 0.05}), JitTrace_ELBO())
    first = sum(svi.step(x[i : i + B], N) for i in range(0, N, B))
    for _ in range(15):
        last = sum(svi.step(x[i : i + B], N) for i in range(0, N, B))
    assert last < first - 5.0  # the compiled step updates the encoder, the heads and the decoder


def test_refinement_under_jit_raises_a_clear_error():
    torch.manual_seed(0)
    program = Continuous()
    guide = AmortizedNormal(program.model, nn.Linear(X, 5), create_plates=plates, refine_steps=2)
    x = data()
    assert torch.isfinite(torch.tensor(Trace_ELBO().loss_and_grads(program.model, guide, x[:B], N)))
    with pytest.raises(ValueError, match=r"refine_steps > 0\) cannot run under a JIT ELBO: .* use Trace_ELBO"):
        JitTrace_ELBO().loss_and_grads(program.model, guide, x[:B], N)


def test_the_fast_path_samples_what_the_general_path_samples():
    """A guide alone (positional encoder input: the per-call fast path) and the same guide inside an
    ``AmortizedGuideList`` (the general path) draw the same values at the same seed and get the same log-density."""
    torch.manual_seed(0)
    program = Continuous()
    encoder, x = nn.Linear(X, 5), data()
    guide = AmortizedNormal(program.model, encoder, create_plates=plates)
    part = AmortizedNormal(program.model, encoder)  # Pyro's AutoGuideList creates the plates of its parts
    listed = pyro.infer.autoguide.AutoGuideList(program.model, create_plates=plates)
    listed.append(part)
    guide(x[:B], N), listed(x[:B], N)
    part.load_state_dict(guide.state_dict())
    pyro.set_rng_seed(3)
    alone = pyro.poutine.trace(guide).get_trace(x[:B], N)
    pyro.set_rng_seed(3)
    inside = pyro.poutine.trace(listed).get_trace(x[:B], N)
    assert torch.equal(alone.nodes["z"]["value"], inside.nodes["z"]["value"])
    alone.compute_log_prob()
    inside.compute_log_prob()
    assert torch.allclose(alone.nodes["z"]["log_prob"], inside.nodes["z"]["log_prob"])
    assert alone.nodes["z"]["scale"] == inside.nodes["z"]["scale"] == N / B
