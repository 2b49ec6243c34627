"""Max-norm and sparsity-target regularizers of Boltzmann-machine training, against their closed forms."""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from dgm_ppl import load_checkpoint, save_checkpoint
from dgm_ppl.energy import DBM, BernoulliRBM, PersistentChains, SparsityTarget, max_norm_
from dgm_ppl.infer import train


def test_max_norm_projects_only_the_long_vectors_and_keeps_their_direction():
    torch.manual_seed(0)
    w = torch.randn(6, 5) * torch.tensor([0.1, 1.0, 2.0, 3.0, 0.5])  # column norms about 0.2 to 7
    before = w.clone()
    out = max_norm_(w, 2.0)
    assert out is w
    norms = before.norm(dim=0)
    long = norms > 2.0
    assert long.any() and (~long).any()
    assert torch.allclose(w.norm(dim=0)[long], torch.full((int(long.sum()),), 2.0))
    assert torch.equal(w[:, ~long], before[:, ~long])
    assert torch.allclose(w[:, long], before[:, long] * (2.0 / norms[long]))
    rows = torch.randn(3, 8) * 5
    max_norm_(rows, 1.0, dim=1)
    assert torch.allclose(rows.norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="positive"):
        max_norm_(w, 0.0)


def test_sparsity_running_activation_is_the_damped_mean_and_resumes_exactly(tmp_path):
    s = SparsityTarget([3, 2], targets=[0.2, 0.1], costs=0.5, damping=0.9)
    m1 = [torch.tensor([0.1, 0.5, 0.9]), torch.tensor([0.3, 0.7])]
    m2 = [torch.tensor([0.3, 0.1, 0.2]), torch.tensor([0.0, 1.0])]
    assert torch.isnan(s.activations()[0]).all()
    q = s.update(m1)
    assert all(torch.equal(a, b) for a, b in zip(q, m1))  # the first batch sets q
    q = s.update(m2)
    for a, b1, b2 in zip(q, m1, m2):
        assert torch.allclose(a, 0.9 * b1 + 0.1 * b2)
    restored = SparsityTarget([3, 2], targets=[0.2, 0.1], costs=0.5, damping=0.9)
    restored.load_state_dict(s.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.activations(), s.activations()))
    x = [torch.randn(3, requires_grad=True), torch.randn(2, requires_grad=True)]
    surrogate = s.surrogate(x)
    assert float(surrogate.detach()) == 0.0
    grads = torch.autograd.grad(surrogate, x)
    assert torch.allclose(grads[0], 0.5 * (q[0] - 0.2))
    assert torch.allclose(grads[1], 0.5 * (q[1] - 0.1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(targets=[0.2], costs=1.0), "one value per"),
        (dict(targets=1.5, costs=1.0), r"\(0, 1\)"),
        (dict(targets=0.1, costs=-1.0), ">= 0"),
        (dict(targets=0.1, costs=1.0, damping=1.0), "damping"),
    ],
)
def test_sparsity_target_refuses_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsityTarget([3, 2], **kwargs)


def test_sparsity_surrogate_needs_an_update_first():
    s = SparsityTarget([3], targets=0.1, costs=1.0)
    with pytest.raises(RuntimeError, match="update"):
        s.surrogate([torch.zeros(3)])
    with pytest.raises(ValueError, match="2 units"):
        SparsityTarget([2], targets=0.1, costs=1.0).update([torch.zeros(3)])


def _model(dbm, chains, n, **kwargs):
    def model(batch):
        pyro.module("dbm", dbm)
        with pyro.plate("data", n, subsample=batch):
            pyro.sample("x", dbm.distribution(chains, **kwargs), obs=batch)

    return model


def _random_model_and_twin_chains(model):
    """``model`` with N(0, 0.7) parameters, 10 random binary rows of 6 units, and two chains in the same state."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.7)
    data = (torch.rand(10, 6) < 0.6).float()
    chains = PersistentChains(model, num_chains=7, steps=1)
    twin = PersistentChains(model, num_chains=7, steps=1)
    twin.load_state_dict(chains.state_dict())
    return model, data, chains, twin


def _grads(dbm, chains, data, **kwargs):
    pyro.clear_param_store()
    loss = Trace_ELBO().loss_and_grads(_model(dbm, chains, len(data), **kwargs), lambda batch: None, data)
    grads = {k: p.grad.clone() for k, p in dbm.named_parameters()}
    dbm.zero_grad()
    dbm.pending_hidden_means = None  # a centered model's offset move would change the next call's parameters
    return loss, grads


@pytest.mark.parametrize("centered", [False, True])
def test_dbm_sparsity_gradient_is_the_closed_form(centered):
    torch.manual_seed(1)
    dbm, data, chains, chains_copy = _random_model_and_twin_chains(DBM([6, 4, 3], centered=centered))
    targets, costs = [0.2, 0.1], [0.3, 0.05]
    sparsity = SparsityTarget([4, 3], targets=targets, costs=costs)
    torch.manual_seed(2)
    loss_plain, plain = _grads(dbm, chains, data)
    torch.manual_seed(2)  # the same Gibbs sweep of the same chains
    loss_sparse, sparse = _grads(dbm, chains_copy, data, sparsity=sparsity)
    assert loss_sparse == pytest.approx(loss_plain, rel=1e-6)  # the surrogate has value 0
    mu1, mu2 = dbm.mean_field(data, num_iters=10, tol=None)
    q1, q2 = sparsity.activations()
    assert torch.allclose(q1, mu1.mean(0), atol=1e-6) and torch.allclose(q2, mu2.mean(0), atol=1e-6)
    d1, d2 = costs[0] * (q1 - targets[0]), costs[1] * (q2 - targets[1])
    n = len(data)  # the loss is -sum over the rows; each row subtracts the surrogate once
    assert torch.allclose(sparse["bias_1"] - plain["bias_1"], n * d1, atol=1e-5)
    assert torch.allclose(sparse["bias_2"] - plain["bias_2"], n * d2, atol=1e-5)
    if not centered:  # in the standard form, the weights' gradients by the unit's total input
        vbar, m1, m2 = data.mean(0), mu1.mean(0), mu2.mean(0)
        assert torch.allclose(sparse["weight_0"] - plain["weight_0"], n * torch.outer(vbar, d1), atol=1e-5)
        expected = n * (torch.outer(d1, m2) + torch.outer(m1, d2))
        assert torch.allclose(sparse["weight_1"] - plain["weight_1"], expected, atol=1e-5)
        assert torch.allclose(sparse["bias_0"], plain["bias_0"])


def test_dbm_sparsity_target_lowers_the_hidden_activations_in_training():
    torch.manual_seed(0)
    prototypes = (torch.rand(4, 12) < 0.5).float()
    x = prototypes[torch.randint(4, (600,))]
    x = (x + (torch.rand(600, 12) < 0.05).float()) % 2
    means = {}
    for label, sparsity in [("plain", None), ("sparse", SparsityTarget([8, 4], targets=0.05, costs=1.0))]:
        torch.manual_seed(0)
        pyro.clear_param_store()
        dbm = DBM([12, 8, 4], centered=True).init_from_data(x)
        chains = PersistentChains(dbm, num_chains=50, steps=1)
        svi = SVI(_model(dbm, chains, len(x), sparsity=sparsity), lambda b: None, pyro.optim.Adam({"lr": 1e-2}),
                  Trace_ELBO())  # fmt: skip
        train(svi, x, epochs=4, batch_size=50, progress=False)
        means[label] = [float(m.mean()) for m in dbm.mean_field(x)]
    for plain, sparse in zip(means["plain"], means["sparse"]):
        assert sparse < plain - 0.15, means  # measured: 0.53 -> 0.26 and 0.50 -> 0.19


def test_dbm_refuses_a_sparsity_target_of_other_layers_and_checkpoints_it(tmp_path):
    dbm = DBM([6, 4, 3])
    chains = PersistentChains(dbm, num_chains=5)
    with pytest.raises(ValueError, match="hidden layers"):
        dbm.distribution(chains, sparsity=SparsityTarget([4], targets=0.1, costs=1.0))
    sparsity = SparsityTarget([4, 3], targets=0.1, costs=1.0)
    sparsity.update([torch.full((4,), 0.3), torch.full((3,), 0.2)])
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"dbm": dbm, "sparsity": sparsity})
    fresh = SparsityTarget([4, 3], targets=0.1, costs=1.0)
    load_checkpoint(path, {"dbm": DBM([6, 4, 3]), "sparsity": fresh})
    assert all(torch.equal(a, b) for a, b in zip(fresh.activations(), sparsity.activations()))


@pytest.mark.parametrize("centered", [False, True])
def test_rbm_sparsity_gradient_is_the_closed_form(centered):
    torch.manual_seed(3)
    rbm, data, chains, twin = _random_model_and_twin_chains(BernoulliRBM(6, 4, centered=centered))
    sparsity = SparsityTarget([4], targets=0.1, costs=0.2)
    torch.manual_seed(4)
    loss_plain, plain = _grads(rbm, chains, data)
    torch.manual_seed(4)
    loss_sparse, sparse = _grads(rbm, twin, data, sparsity=sparsity)
    assert loss_sparse == pytest.approx(loss_plain, rel=1e-6)
    with torch.no_grad():
        probs = torch.sigmoid(rbm.hidden_preactivation(data))
    (q,) = sparsity.activations()
    assert torch.allclose(q, probs.mean(0), atol=1e-6)
    d = 0.2 * (q - 0.1)
    assert torch.allclose(sparse["hidden_bias"] - plain["hidden_bias"], len(data) * d, atol=1e-5)
    if not centered:
        expected = len(data) * torch.outer(data.mean(0), d)
        assert torch.allclose(sparse["weight"] - plain["weight"], expected, atol=1e-5)
        assert torch.allclose(sparse["visible_bias"], plain["visible_bias"])


def test_rbm_sparsity_target_checks_its_layer():
    rbm = BernoulliRBM(6, 4)
    chains = PersistentChains(rbm, num_chains=5)
    with pytest.raises(ValueError, match="hidden layers are \\[4\\]"):
        rbm.distribution(chains, sparsity=SparsityTarget([3], targets=0.1, costs=1.0))


def test_expand_keeps_the_sparsity_target():
    rbm, dbm = BernoulliRBM(6, 4), DBM([6, 4, 3])
    s_rbm, s_dbm = SparsityTarget([4], targets=0.1, costs=1.0), SparsityTarget([4, 3], targets=0.1, costs=1.0)
    d_rbm = rbm.distribution(PersistentChains(rbm, num_chains=5), sparsity=s_rbm)
    d_dbm = dbm.distribution(PersistentChains(dbm, num_chains=5), sparsity=s_dbm)
    assert d_rbm.expand((3,)).sparsity is s_rbm and d_dbm.expand((3,)).sparsity is s_dbm
    assert rbm.distribution(PersistentChains(rbm, num_chains=5)).expand((3,)).sparsity is None


def test_a_sparsity_target_needs_a_model_with_hidden_inputs():
    from dgm_ppl.energy import BoltzmannMachine, EnergyBasedDistribution

    bm = BoltzmannMachine(4, 3)
    chains = PersistentChains(bm, num_chains=5)
    with pytest.raises(TypeError, match="HiddenInputModel"):
        EnergyBasedDistribution(bm, chains, sparsity=SparsityTarget([3], targets=0.1, costs=1.0))
