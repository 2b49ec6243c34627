"""Data-parallel training (:mod:`dgm_ppl.distributed`) on 2 CPU processes with gloo.

One spawn of 2 processes runs every case of ``distributed_workers.py`` (process start-up dominates the cost);
the tests below check its results against each other and against the same computation in this one process.
"""

from __future__ import annotations

import os
import socket
import time

import distributed_workers as workers
import pyro
import pytest
import torch
import torch.multiprocessing as mp

from dgm_ppl import distributed, load_checkpoint
from dgm_ppl.energy import BernoulliRBM, PersistentChains
from dgm_ppl.infer import train

WORLD = 2
TIMEOUT = 240  # seconds: a hang fails the test instead of blocking CI


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    context = mp.start_processes(
        workers.run, args=(WORLD, str(out / "init"), str(out)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT
    try:
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} processes did not finish within {TIMEOUT} s (a hang)")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    for r, result in enumerate(results):
        assert "crash" not in result, f"rank {r} crashed:\n{result['crash']}"
    return results, out


@pytest.mark.parametrize("case", sorted(workers.CASES))
def test_one_step_on_two_ranks_equals_one_process_on_the_union(ranks, case):
    results, _ = ranks
    pyro.clear_param_store()
    single = workers.CASES[case](slice(None), 1)
    for r in range(WORLD):
        got = results[r][case]["state"]
        assert got.keys() == single["state"].keys()
        for name, value in single["state"].items():
            assert torch.allclose(got[name], value, rtol=1e-5, atol=1e-6), (case, r, name)
    if "loss" in single:  # the reported loss is the ranks' mean: an estimate of the same full-data loss
        assert results[0][case]["loss"] == results[1][case]["loss"]


def test_distributed_svi_registers_the_shutdown_for_a_group_made_by_torch(ranks):
    results, _ = ranks
    assert all(result["shutdown_at_exit"] for result in results)


def test_ranks_hold_bit_identical_parameters_after_training(ranks):
    results, _ = ranks
    first, second = results[0]["train"], results[1]["train"]
    for key in ("rbm", "rbm_eval", "pyro_module", "vae", "vae_jit", "gan"):
        assert first[key] == second[key], key
    assert first["rbm_losses"] == second["rbm_losses"]
    assert first["chains"] != second["chains"]  # each rank keeps its own persistent chains


def test_checkpoint_on_two_ranks_resumes_exactly_on_two(ranks):
    results, _ = ranks
    for r in range(WORLD):
        ckpt = results[r]["checkpoint"]
        assert ckpt["resumed"] == ckpt["first"]
        assert ckpt["extra"] == {"epoch": 1}


def test_checkpoint_of_two_ranks_refuses_one_process(ranks):
    _, out = ranks
    path = out / "ckpt.pt"
    rbm = BernoulliRBM(workers.D, workers.H, name="rbm")
    chains = PersistentChains(rbm, num_chains=10)
    before = distributed.param_checksum({"rbm": rbm, "chains": chains})
    with pytest.raises(ValueError, match="written by 2 processes"):
        distributed.load_checkpoint(path, {"rbm": rbm}, local={"chains": chains})
    with pytest.raises(ValueError, match="written by 2 processes"):
        load_checkpoint(path, {"rbm": rbm})
    assert distributed.param_checksum({"rbm": rbm, "chains": chains}) == before


def test_a_failing_rank_stops_every_rank(ranks):
    results, _ = ranks
    failed, other = results[1]["fault"], results[0]["fault"]
    assert failed["error"] == "ValueError"
    assert other["error"] == "DistributedError"
    assert "rank 1" in other["message"] and "ValueError" in other["message"]
    assert failed["unchanged"] and other["unchanged"]
    for result in (failed, other):
        assert "len(data) differs between the ranks (10 to 11)" in result["size_error"]


def test_init_registers_a_shutdown_at_exit_and_destroy_ends_the_group(monkeypatch):
    """Launched as torchrun would (one rank here), the group is made, a shutdown is registered for exit, and
    destroy_process_group ends the group; further calls do nothing."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    registered = []
    monkeypatch.setattr(distributed.atexit, "register", registered.append)
    monkeypatch.setattr(distributed, "_SHUTDOWN_REGISTERED", False)
    assert distributed.init_process_group("gloo", timeout=30) == (0, 1)
    try:
        assert registered == [distributed.destroy_process_group]
        assert torch.distributed.is_initialized()
    finally:
        distributed.destroy_process_group(settle=0.0)
    assert not torch.distributed.is_initialized()
    distributed.destroy_process_group()  # nothing to end: no error


def test_single_process_is_plain_svi(tmp_path):
    """Without a process group DistributedSVI is SVI, and its checkpoints say how many ranks wrote them."""
    assert distributed.get_world_size() == 1 and distributed.get_rank() == 0
    assert distributed.init_process_group() == (0, 1) or "WORLD_SIZE" in os.environ
    x = workers.data(20)
    rbm = workers.rbm_setup()
    chains = PersistentChains(rbm, num_chains=4)
    svi = distributed.DistributedSVI(
        workers.rbm_model(rbm, chains, 20), lambda b: None, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO()
    )
    loss = svi.step(x[:5])
    assert isinstance(loss, float)
    path = tmp_path / "one.pt"
    distributed.save_checkpoint(path, {"rbm": rbm}, svi.optim, local={"chains": chains})
    state = rbm.state_dict()
    svi.step(x[5:10])
    distributed.load_checkpoint(path, {"rbm": rbm}, svi.optim, local={"chains": chains})
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(rbm.state_dict()[k], v)
    with pytest.raises(ValueError, match="not a checkpoint of dgm_ppl.distributed"):
        torch.save({"x": 1}, tmp_path / "other.pt")
        distributed.load_checkpoint(tmp_path / "other.pt", {"rbm": rbm})


def test_train_max_steps_stops_mid_epoch():
    calls = []

    class Counting:
        def step(self, batch):
            calls.append(len(batch))
            return float(len(batch))

    history = train(Counting(), torch.zeros(20, 3), epochs=5, batch_size=4, max_steps=7)
    assert calls == [4] * 7  # 5 steps of the first epoch, 2 of the second
    assert len(history) == 2 and history[1] == pytest.approx(4 / 20)
    with pytest.raises(ValueError, match="max_steps"):
        train(Counting(), torch.zeros(20, 3), max_steps=0)
