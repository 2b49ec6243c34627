import pyro
import pytest
import torch

# The tests use tiny tensors: one intra-op thread avoids oversubscription (and is faster) on small CI machines.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_state():
    """Each test starts seeded, with an empty param store and Pyro validation on."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    pyro.enable_validation(True)
    yield
    pyro.clear_param_store()


def random_rbm(cls, n_visible, n_hidden, scale=1.0, **kwargs):
    """An RBM with O(1) random parameters, so that its distribution is far from uniform."""
    rbm = cls(n_visible, n_hidden, **kwargs)
    with torch.no_grad():
        rbm.weight.normal_(0, scale)
        rbm.visible_bias.normal_(0, scale)
        rbm.hidden_bias.normal_(0, scale)
    return rbm
