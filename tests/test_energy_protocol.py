"""The contract between the energy models and the samplers, distribution and partition functions
(issue 16): the models satisfy the protocol, the generic modules use nothing else, and ``energy/``
has no import cycles."""

import ast
import itertools
import math
import warnings
from pathlib import Path

import pytest
import torch

import dgm_ppl.energy as energy
from dgm_ppl.energy import (
    DBM,
    BernoulliRBM,
    DBMPersistentChains,
    EnergyModel,
    FreeEnergyModel,
    GaussianBernoulliRBM,
    PersistentChains,
    exact_log_partition,
)
from dgm_ppl.energy.protocol import AnnealingPath, Enumeration

ENERGY = Path(energy.__file__).parent
GENERIC = ("partition.py", "chains.py", "distribution.py")
MODEL_CLASSES = {"RBM", "BernoulliRBM", "GaussianBernoulliRBM", "DBM", "DBN", "_TiedCopiesRBM", "TiedCopiesRBM"}


def _models():
    torch.manual_seed(0)
    return [
        BernoulliRBM(4, 3, init_std=0.5),
        BernoulliRBM(3, 5, centered=True, init_std=0.5),
        GaussianBernoulliRBM(2, 3, std=0.7, init_std=0.5),
        DBM([3, 2, 2], init_std=0.5),
        DBM([2, 5, 1], centered=True, init_std=0.5),
        DBM([2, 2, 1], gaussian_visible=True, std=0.8, init_std=0.5),
    ]


# ------------------------------------------------------------------------------------ the protocol
@pytest.mark.parametrize("model", _models(), ids=lambda m: repr(m).split("(")[0])
def test_every_model_satisfies_the_protocol(model):
    assert isinstance(model, EnergyModel)
    assert isinstance(model.annealing_path(), AnnealingPath)
    assert isinstance(model.enumeration(), Enumeration)
    if not isinstance(model, DBM):
        assert isinstance(model, FreeEnergyModel)


def test_the_dbm_is_not_a_free_energy_model():
    # its -F(v) needs a sum over all hidden layers: the RBM samplers and distribution do not apply
    assert not isinstance(DBM([3, 2, 2]), FreeEnergyModel)


def test_persistent_chains_are_the_class_the_model_declares():
    rbm, dbm = BernoulliRBM(4, 3), DBM([4, 3, 2])
    assert rbm.chain_class is PersistentChains and dbm.chain_class is DBMPersistentChains
    assert type(PersistentChains(rbm, 5)) is PersistentChains
    assert type(PersistentChains(dbm, 5)) is DBMPersistentChains
    assert type(dbm.persistent_chains(5, steps=2)) is DBMPersistentChains
    assert type(rbm.persistent_chains(5)) is PersistentChains


@pytest.mark.parametrize("model", [BernoulliRBM(5, 3), DBM([5, 4, 3])], ids=["rbm", "dbm"])
def test_persistent_chains_copy_and_pickle_as_their_own_class(model, tmp_path):
    import copy

    chains = PersistentChains(model, num_chains=4)
    twin = copy.deepcopy(chains)
    assert type(twin) is type(chains)
    assert all(torch.equal(a, b) for a, b in zip(twin.state_dict().values(), chains.state_dict().values()))
    torch.save(chains, tmp_path / "chains.pt")
    loaded = torch.load(tmp_path / "chains.pt", weights_only=False)
    assert type(loaded) is type(chains)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), chains.state_dict().values()))


def test_same_verbs_across_models():
    torch.manual_seed(0)
    x = (torch.rand(30, 4) < 0.5).float()
    for model in (BernoulliRBM(4, 3), DBM([4, 3, 2]), energy.DBN([4, 3, 2])):
        assert model.init_from_data(x) is model
        assert model.sample(3, steps=2).shape == (3, 4)
        assert model.check_data(x.numpy(), "x").shape == (30, 4)
    for model in (BernoulliRBM(4, 3), DBM([4, 3, 2])):
        assert model.gibbs(model.random_state(3), steps=2) is not None
        assert model.distribution(model.persistent_chains(5)).batch_shape == ()
    dbm = DBM([4, 3, 2])
    assert dbm.free_energy([x[:5], None, torch.ones(5, 2)]).shape == (5,)
    assert BernoulliRBM(4, 3).energy([x[:5], torch.ones(5, 3)]).shape == (5,)


def test_deprecated_aliases_still_work_and_warn():
    torch.manual_seed(0)
    rbm, dbm, dbn = BernoulliRBM(4, 3), DBM([4, 3, 2]), energy.DBN([4, 3, 2])
    v = (torch.rand(5, 4) < 0.5).float()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.manual_seed(1)
        old = rbm.gibbs_step(v, steps=3)
        torch.manual_seed(1)
        assert torch.equal(old, rbm.gibbs(v, steps=3))
        assert dbm.gibbs_step(dbm.random_state(2), steps=1)[0].shape == (2, 4)
        states = [v, None, torch.zeros(5, 2)]
        torch.testing.assert_close(dbm.free_energy_of(states), dbm.free_energy(states))
        assert dbn.sample(2, gibbs_steps=1).shape == (2, 4)
        assert rbm.random_visible(2).shape == (2, 4)
    assert sum(issubclass(w.category, DeprecationWarning) for w in caught) == 5


def test_centering_offsets_move_through_the_explicit_hook():
    torch.manual_seed(0)
    x = (torch.rand(50, 3) < 0.3).float()
    rbm = BernoulliRBM(3, 4, centered=True, init_std=0.5).init_from_data(x)
    chains = PersistentChains(rbm, 10)
    log_z = float(exact_log_partition(rbm, record=False))
    rbm.distribution(chains).log_prob(x).sum().backward()  # the positive phase defers the move
    assert rbm.pending_hidden_means is not None
    before = rbm.hidden_offset.clone()
    rbm.distribution(chains)  # the next forward applies it
    assert rbm.pending_hidden_means is None and not torch.equal(before, rbm.hidden_offset)
    assert float(exact_log_partition(rbm, record=False)) == pytest.approx(log_z, abs=1e-5)
    # an uncentered model ignores the hook
    plain = BernoulliRBM(3, 4)
    plain.update_offsets(torch.rand(4), defer=True)
    assert plain.pending_hidden_means is None


# ------------------------------------------------------------------ exact log Z against brute force
def _binary(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)


@pytest.mark.parametrize("shape", [(4, 3), (3, 5)])
@pytest.mark.parametrize("centered", [False, True])
def test_exact_log_partition_of_a_bernoulli_rbm(shape, centered):
    torch.manual_seed(1)
    rbm = BernoulliRBM(*shape, centered=centered, init_std=0.7).double()
    with torch.no_grad():
        rbm.visible_bias.normal_()
        rbm.hidden_bias.normal_()
    v, h = _binary(shape[0]), _binary(shape[1])
    vv, hh = v[:, None].expand(-1, len(h), -1), h[None].expand(len(v), -1, -1)
    brute = torch.logsumexp(-rbm.energy(vv, hh).flatten(), 0)
    torch.testing.assert_close(exact_log_partition(rbm), brute.detach())


def test_exact_log_partition_of_a_gaussian_rbm_against_quadrature():
    torch.manual_seed(2)
    rbm = GaussianBernoulliRBM(2, 3, std=torch.tensor([0.7, 1.2]), init_std=0.5).double()
    with torch.no_grad():
        rbm.visible_bias.copy_(torch.tensor([0.3, -0.5]))
        rbm.hidden_bias.normal_()
    grid = torch.linspace(-12.0, 12.0, 1201, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    g1, g2 = torch.meshgrid(grid, grid, indexing="ij")
    v = torch.stack([g1, g2], -1).reshape(-1, 2)
    h = _binary(3)
    with torch.no_grad():
        neg_e = torch.stack([-rbm.energy(v, hk.expand(len(v), -1)) for hk in h])  # (8, grid points)
    brute = torch.logsumexp(neg_e.flatten(), 0) + 2 * math.log(step)
    assert float(exact_log_partition(rbm)) == pytest.approx(float(brute), abs=1e-6)


@pytest.mark.parametrize(
    "sizes, centered", [([3, 2, 2], False), ([2, 5, 1], True), ([2, 2, 3, 2], False)], ids=["odd", "even", "deep"]
)
def test_exact_log_partition_of_a_dbm(sizes, centered):
    torch.manual_seed(3)
    dbm = DBM(sizes, centered=centered, init_std=0.7).double()
    with torch.no_grad():
        for l in range(len(sizes)):
            getattr(dbm, f"bias_{l}").normal_()
    joint = _binary(sum(sizes))
    states = list(joint.split(sizes, -1))
    brute = torch.logsumexp(-dbm.energy(states), 0)
    torch.testing.assert_close(exact_log_partition(dbm), brute.detach())


def test_exact_log_partition_of_a_gaussian_dbm_against_quadrature():
    torch.manual_seed(4)
    dbm = DBM([2, 2, 1], gaussian_visible=True, std=torch.tensor([0.8, 1.1]), init_std=0.5).double()
    with torch.no_grad():
        dbm.bias_0.copy_(torch.tensor([0.4, -0.2]))
        dbm.bias_1.normal_()
        dbm.bias_2.normal_()
    grid = torch.linspace(-12.0, 12.0, 1201, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    g1, g2 = torch.meshgrid(grid, grid, indexing="ij")
    v = torch.stack([g1, g2], -1).reshape(-1, 2)
    hidden = _binary(3)
    with torch.no_grad():
        neg_e = torch.stack([-dbm.energy([v, h[:2].expand(len(v), -1), h[2:].expand(len(v), -1)]) for h in hidden])
    brute = torch.logsumexp(neg_e.flatten(), 0) + 2 * math.log(step)
    assert float(exact_log_partition(dbm)) == pytest.approx(float(brute), abs=1e-6)


def test_exact_log_partition_names_what_it_would_enumerate():
    with pytest.raises(ValueError, match="2\\^25 joint states of the odd layers"):
        exact_log_partition(DBM([30, 25, 30]))


# ------------------------------------------------------------------ source-level checks
def _tree(name: str) -> ast.Module:
    return ast.parse((ENERGY / name).read_text(), filename=name)


@pytest.mark.parametrize("name", GENERIC)
def test_generic_modules_test_no_concrete_model_class(name):
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("isinstance", "issubclass", "type"):
            names = {n.id for arg in node.args[1:] for n in ast.walk(arg) if isinstance(n, ast.Name)}
            assert not names & MODEL_CLASSES, f"{name}:{node.lineno} tests for a model class"


@pytest.mark.parametrize("name", GENERIC)
def test_generic_modules_call_no_private_member_of_another_object(name):
    """Private attributes are reached only on ``self`` (or ``super()``), never on a model or a path."""
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__"):
            base = node.value
            own = (isinstance(base, ast.Name) and base.id in ("self", "cls")) or (
                isinstance(base, ast.Call) and getattr(base.func, "id", None) == "super"
            )
            assert own, f"{name}:{node.lineno} reaches {ast.unparse(node)}"


def _protocol_members() -> set[str]:
    members = set()
    for node in ast.walk(_tree("protocol.py")):
        if isinstance(node, ast.ClassDef) and node.name in (
            "EnergyModel",
            "FreeEnergyModel",
            "HiddenInputModel",
            "FastWeightModel",
        ):
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign):
                    members.add(item.target.id)
    return members


@pytest.mark.parametrize("name", GENERIC)
def test_generic_modules_use_only_protocol_members_of_the_model(name):
    members = _protocol_members()
    for node in ast.walk(_tree(name)):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        is_model = (isinstance(base, ast.Name) and base.id == "model") or (
            isinstance(base, ast.Attribute) and base.attr == "model" and getattr(base.value, "id", None) == "self"
        )
        if is_model:
            assert node.attr in members, f"{name}:{node.lineno} uses model.{node.attr}, not in the protocol"


def test_generic_modules_import_no_model_module():
    for name in GENERIC:
        for node in ast.walk(_tree(name)):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                # regularization: model-free regularizers (torch only), e.g. the distributions' sparsity target
                allowed = ("_ops", "chains", "protocol", "regularization")
                assert node.module in allowed, f"{name} imports .{node.module}"


def _local_imports(name: str) -> set[str]:
    """The modules of ``dgm_ppl.energy`` that ``name`` imports anywhere (also inside functions)."""
    found = set()
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.level == 0 and (node.module or "").startswith("dgm_ppl.energy."):
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("dgm_ppl.energy."):
                    found.add(alias.name.split(".")[2])
    return found


def test_energy_package_has_no_import_cycles():
    modules = {p.stem for p in ENERGY.glob("*.py") if p.stem != "__init__"}
    graph = {m: _local_imports(f"{m}.py") & modules for m in modules}
    state: dict[str, int] = {}

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [])
    assert graph["protocol"] == set() and graph["_ops"] == set()


def test_pretrain_takes_the_same_keywords_on_dbm_and_dbn():
    torch.manual_seed(5)
    x = (torch.rand(60, 6) < 0.4).float()
    common = dict(batch_size=20, lr=1e-2, weight_decay=1e-4, num_chains=10, steps=1, progress=False)
    for model in (DBM([6, 4, 3]), energy.DBN([6, 4, 3])):
        for method in ("pcd", "cd"):
            histories = model.pretrain(x, [1, 2], method=method, **common)
            assert [len(h) for h in histories] == [1, 2]
            assert all(math.isfinite(v) for h in histories for v in h)
        with pytest.raises(ValueError, match="method"):
            model.pretrain(x, 1, method="bogus", **common)


def test_parallel_tempering_refuses_a_model_without_a_free_energy():
    from dgm_ppl.energy import DBM, BoltzmannMachine, ParallelTempering

    for model in (DBM([4, 3, 2]), BoltzmannMachine(4, 1)):
        with pytest.raises(TypeError, match="not a FreeEnergyModel"):
            ParallelTempering(model, num_chains=4)


def test_exact_log_partition_says_where_the_partition_function_is():
    from dgm_ppl.energy import DBN, RNNRBM, ClassificationRBM, ConditionalRBM, ais_log_partition, exact_log_partition

    cases = [
        (ClassificationRBM(3, 2, 2), r"exact_log_partition\(model.joint\)"),
        (DBN([4, 3, 2]), r"model.rbms\[-1\]"),
        (ConditionalRBM(4, 3, 1), "one partition function per input"),
        (RNNRBM(4, 3, 3), "one partition function per input"),
    ]
    for model, match in cases:
        with pytest.raises(TypeError, match=match):
            exact_log_partition(model)
        with pytest.raises(TypeError, match=match):
            ais_log_partition(model, num_chains=2, num_betas=3)
    assert torch.isfinite(exact_log_partition(cases[0][0].joint))
