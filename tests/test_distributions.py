"""dgm_ppl.distributions.Bernoulli: the same values, checks and errors as pyro.distributions.Bernoulli."""

import numpy as np
import pyro
import pyro.distributions as pd
import pytest
import torch

from dgm_ppl.distributions import Bernoulli

BAD_VALUES = [0.5, -1.0, 2.0, float("nan"), float("inf"), -float("inf"), 1e-30, 1 - 1e-7]


def _error(make, *args):
    try:
        make(*args)
    except ValueError as e:
        return str(e).split(" of distribution")[0]
    return None


def test_same_log_prob_sample_and_expand():
    torch.manual_seed(0)
    logits = torch.randn(5, 7)
    x = torch.bernoulli(torch.full((5, 7), 0.5))
    ours, theirs = Bernoulli(logits=logits).to_event(1), pd.Bernoulli(logits=logits).to_event(1)
    assert torch.equal(ours.log_prob(x), theirs.log_prob(x))
    assert torch.equal(Bernoulli(probs=logits.sigmoid()).log_prob(x), pd.Bernoulli(probs=logits.sigmoid()).log_prob(x))
    wide = Bernoulli(logits=logits[0]).expand((3, 7))
    assert isinstance(wide, Bernoulli) and wide.batch_shape == (3, 7) and wide._validate_args
    assert torch.equal(wide.log_prob(x[:3]), pd.Bernoulli(logits=logits[0]).expand((3, 7)).log_prob(x[:3]))
    assert Bernoulli(probs=torch.tensor(0.3)).enumerate_support().tolist() == [0.0, 1.0]


@pytest.mark.parametrize("bad", BAD_VALUES)
def test_a_bad_value_gives_pyros_error(bad):
    logits = torch.zeros(4, 6)
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    x[2, 3] = bad
    ours = _error(lambda: Bernoulli(logits=logits).log_prob(x))
    assert ours is not None and ours == _error(lambda: pd.Bernoulli(logits=logits).log_prob(x))
    with pyro.validation_enabled(False):  # no check, as in Pyro
        Bernoulli(logits=logits).log_prob(x)


def test_bad_parameters_and_shapes_give_pyros_errors():
    nan = float("nan")
    cases = [
        lambda D: D(logits=torch.tensor([0.0, nan])),
        lambda D: D(probs=torch.tensor([0.2, 1.5])),
        lambda D: D(probs=torch.tensor([-0.1, 0.5])),
        lambda D: D(probs=torch.tensor([nan, 0.5])),
        lambda D: D(logits=torch.zeros(3, 4)).log_prob(torch.ones(5, 4)),
    ]
    for case in cases:
        ours, theirs = _error(case, Bernoulli), _error(case, pd.Bernoulli)
        assert ours is not None and ours == theirs
    Bernoulli(logits=torch.tensor([float("inf"), -float("inf")]))  # valid logits whose sum is NaN
    Bernoulli(probs=torch.tensor([0.0, 1.0]))
    Bernoulli(logits=torch.tensor([0.0, nan]), validate_args=False)


def test_integer_bool_and_numpy_converted_values():
    d = Bernoulli(logits=torch.zeros(3))
    for value in (
        torch.tensor([0, 1, 1]),
        torch.tensor([False, True, True]),
        torch.tensor([0, 1, 1], dtype=torch.uint8),
    ):
        assert torch.allclose(
            d.log_prob(value.float()), d.log_prob(torch.as_tensor(np.array([0.0, 1.0, 1.0], dtype=np.float32)))
        )
        d._validate_sample(value)
    with pytest.raises(ValueError):
        d._validate_sample(torch.tensor([0, 2, 1], dtype=torch.uint8))


def test_inside_a_vae_step_the_check_catches_non_binary_data():
    from pyro.infer import SVI, Trace_ELBO

    from dgm_ppl.models import VAE

    pyro.clear_param_store()
    vae = VAE(6, 2, (4,))
    svi = SVI(vae.model, vae.guide(), pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    x = torch.bernoulli(torch.full((8, 6), 0.5))
    svi.step(x)
    x[0, 0] = 0.5
    with pytest.raises(ValueError, match="support"):
        svi.step(x)
