"""AIS and reverse AIS against the exact log partition function."""

import math

import pytest
import torch
from conftest import random_rbm

from dgm_ppl.datasets import load_digits
from dgm_ppl.energy import (
    BernoulliRBM,
    GaussianBernoulliRBM,
    ais_log_partition,
    ais_schedule,
    average_log_likelihood,
    exact_log_partition,
    reverse_ais_log_partition,
)


def test_schedule_is_salakhutdinov_murray():
    b = ais_schedule()
    assert len(b) == 14501 and b[0] == 0 and b[-1] == 1 and (b.diff() > 0).all()
    steps = b.diff()
    assert steps[:500].allclose(torch.tensor(1e-3, dtype=b.dtype))
    assert steps[500:4500].allclose(torch.tensor(1e-4, dtype=b.dtype))
    assert steps[4500:].allclose(torch.tensor(1e-5, dtype=b.dtype))


@pytest.mark.parametrize("cls", [BernoulliRBM, GaussianBernoulliRBM])
@pytest.mark.parametrize("with_data", [False, True])
def test_ais_matches_exact_log_z(cls, with_data):
    rbm = random_rbm(cls, 12, 10, scale=0.5)
    data = rbm.sample(500, steps=50) if with_data else None
    exact = float(exact_log_partition(rbm, record=False).detach())
    result = ais_log_partition(rbm, num_chains=100, num_betas=3000, data=data)
    assert abs(result.log_z - exact) < 0.05, (result.log_z, exact)
    assert result.stderr < 0.05 and result.log_weights.shape == (100,)
    assert rbm.log_z == result.log_z
    lo, hi = result.interval(3)
    assert lo < result.log_z < hi


def test_ais_on_trained_digits_model_and_reverse_ais_bracket():
    x = load_digits("train")
    rbm = BernoulliRBM(64, 16, centered=True).init_from_data(x)
    with torch.no_grad():
        rbm.weight.normal_(0, 0.5)
    exact = float(exact_log_partition(rbm, record=False).detach())
    fwd = ais_log_partition(rbm, num_chains=200, num_betas=3000, data=x)
    samples = rbm.sample(200, steps=500)
    rev = reverse_ais_log_partition(rbm, samples, num_betas=3000, data=x)
    assert abs(fwd.log_z - exact) < 0.05 and abs(rev.log_z - exact) < 0.05, (fwd.log_z, rev.log_z, exact)
    assert rev.reverse and rev.ess > 10


def test_too_short_a_schedule_is_visibly_worse():
    """The check above can fail: a 10-step schedule misses by much more than 0.05 nats."""
    rbm = random_rbm(BernoulliRBM, 12, 10, scale=1.5)
    exact = float(exact_log_partition(rbm, record=False).detach())
    errors = [abs(ais_log_partition(rbm, 20, 10, record=False).log_z - exact) for _ in range(5)]
    assert max(errors) > 0.05


def test_average_log_likelihood():
    rbm = random_rbm(BernoulliRBM, 8, 6)
    x = torch.bernoulli(torch.full((50, 8), 0.5))
    log_z = exact_log_partition(rbm).detach()
    expected = float((-rbm.free_energy(x) - log_z).mean().detach())
    assert average_log_likelihood(rbm, x, log_z) == pytest.approx(expected, abs=1e-4)
    result = ais_log_partition(rbm, 50, 1000)
    assert average_log_likelihood(rbm, x, result) == pytest.approx(expected - (result.log_z - float(log_z)), abs=1e-4)
    assert math.isfinite(average_log_likelihood(rbm, x, result))


def test_bad_schedules_are_rejected():
    rbm = BernoulliRBM(4, 3)
    with pytest.raises(ValueError, match="schedule"):
        ais_log_partition(rbm, betas=torch.tensor([0.1, 1.0]))
    with pytest.raises(ValueError, match="num_betas"):
        ais_schedule(2)
