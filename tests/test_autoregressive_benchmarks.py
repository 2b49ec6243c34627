"""Smoke tests of ``benchmarks/autoregressive_mnist.py`` (exact resumption, the score line, a missing data file) and
``benchmarks/diffusion_modes.py`` (runs and summaries), on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import benchmark_script, tiny_mnist


@pytest.fixture(scope="module")
def arm():
    return benchmark_script("autoregressive_mnist")


@pytest.fixture(scope="module")
def diffusion():
    return benchmark_script("diffusion_modes")


@pytest.fixture
def data(tmp_path):
    return tiny_mnist(tmp_path / "tiny.npz", 120, 40)


def _records(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


SMALL = {
    "nade": ["--model", "nade", "--hidden", "8"],
    "made": ["--model", "made", "--made-hidden", "16", "--num-masks", "3"],
    "fvsbn": ["--model", "fvsbn"],
}


@pytest.mark.parametrize("model", ["nade", "made", "fvsbn"])
def test_trains_and_scores(arm, data, capsys, model):
    arm.main(["--data", data, *SMALL[model], "--epochs", "2", "--batch-size", "40", "--lr", "1e-2"])
    records = _records(capsys)
    epochs = [r for r in records if r["event"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    (score,) = [r for r in records if r["event"] == "score"]
    assert score["model"] == model and score["split"] == "valid" and score["points"] == 40
    assert score["epochs"] == 2 and score["train_points"] == 120
    assert -784 * np.log(2) < score["log_likelihood"] < 0 and np.isfinite(score["train_log_likelihood"])
    assert score["published_test_nll"] == arm.PUBLISHED[model]
    assert ("first_mask_log_likelihood" in score) == (model == "made")


def _same_checkpoints(a, b):
    a, b = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
    for key, value in a["modules"]["ar"].items():
        assert torch.equal(value, b["modules"]["ar"][key]), key
    assert a["optim"].keys() == b["optim"].keys()
    for name, state in a["optim"].items():
        assert state["param_groups"] == b["optim"][name]["param_groups"]
        for key, value in state["state"][0].items():
            assert torch.equal(value, b["optim"][name]["state"][0][key]), f"{name}.{key}"
    ra, rb = a["extra"]["run"], b["extra"]["run"]
    assert (ra["epoch"], ra["planned"], ra["mask_index"]) == (rb["epoch"], rb["planned"], rb["mask_index"])
    assert ra["history"] == rb["history"]


@pytest.mark.parametrize("model", ["made", "nade"])
def test_exact_resume(arm, data, tmp_path, capsys, model):
    args = ["--data", data, *SMALL[model], "--epochs", "3", "--batch-size", "50", "--lr", "1e-2"]
    one, two = str(tmp_path / "one.ckpt"), str(tmp_path / "two.ckpt")
    arm.main([*args, "--checkpoint", one])
    arm.main([*args, "--checkpoint", two, "--stop-after", "1"])
    assert torch.load(two, weights_only=False)["extra"]["run"]["epoch"] == 1
    capsys.readouterr()
    arm.main([*args, "--checkpoint", two, "--resume"])
    records = _records(capsys)
    assert records[0]["event"] == "resumed" and records[0]["epoch"] == 1
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [2, 3]
    _same_checkpoints(one, two)


def test_time_budget_plans_epochs(arm, data, capsys):
    arm.main(["--data", data, *SMALL["fvsbn"], "--time-budget", "0.5", "--epochs", "4", "--batch-size", "60"])
    records = _records(capsys)
    (trained,) = [r for r in records if r["event"] == "trained"]
    assert 1 <= trained["epochs"] <= trained["planned"] <= 4


def test_missing_data_file(arm, tmp_path):
    with pytest.raises(FileNotFoundError, match="no binarized-MNIST file"):
        arm.main(["--data", str(tmp_path / "absent.npz"), "--model", "fvsbn", "--epochs", "1"])


def test_resume_needs_checkpoint(arm, data):
    with pytest.raises(SystemExit):
        arm.main(["--data", data, "--model", "fvsbn", "--resume"])


def test_missing_checkpoint(arm, data, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        arm.main(["--data", data, "--model", "fvsbn", "--checkpoint", str(tmp_path / "none.ckpt"), "--resume"])


def test_diffusion_modes(diffusion, tmp_path, capsys):
    out = tmp_path / "runs.jsonl"
    args = ["--dataset", "ring", "grid", "--seeds", "0", "1", "--steps", "20", "--train-size", "500"]
    args += ["--samples", "200", "--hidden", "16", "--num-steps", "10", "--out", str(out)]
    summaries = diffusion.main(args)
    assert [s["dataset"] for s in summaries] == ["ring", "grid"]
    records = _records(capsys)
    runs = [r for r in records if r["event"] == "run"]
    assert [(r["dataset"], r["seed"]) for r in runs] == [("ring", 0), ("ring", 1), ("grid", 0), ("grid", 1)]
    for r in runs:
        assert 0 <= r["modes"] <= r["num_modes"] and 0 <= r["high_quality"] <= 1 and r["steps_done"] == 20
    ring = summaries[0]
    assert ring["num_modes"] == 8 and ring["runs"] == 2 and "gan_modes_gan" in ring["reference"]
    assert ring["modes"] == pytest.approx(np.mean([r["modes"] for r in runs[:2]]), abs=1e-4)
    assert len(out.read_text().splitlines()) == len(records)


def test_diffusion_time_budget(diffusion, capsys):
    (summary,) = diffusion.main(
        ["--dataset", "ring", "--seeds", "3", "--time-budget", "0.5", "--train-size", "300", "--samples", "50",
         "--hidden", "8", "--num-steps", "5"]
    )  # fmt: skip
    (run,) = [r for r in _records(capsys) if r["event"] == "run"]
    assert run["train_s"] < 5 and run["steps_done"] <= run["planned"]
    assert run["stopped_early"] or run["planned"] < 100_000
