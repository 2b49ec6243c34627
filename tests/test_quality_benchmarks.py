"""The quality benchmarks' training options: exact resumption from per-epoch checkpoints, the time budget,
iterate averaging, save/load and the rbms peer, on a tiny random binary data set."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from helpers import benchmark_script, tiny_mnist


@pytest.fixture(scope="module")
def rbm_quality():
    return benchmark_script("rbm_quality")


@pytest.fixture(scope="module")
def dbm_quality():
    return benchmark_script("dbm_quality")


@pytest.fixture
def data(tmp_path):
    return tiny_mnist(tmp_path / "tiny.npz", 200, 60)


RBM_ARGS = ["--hidden", "16", "--batch-size", "50", "--chains", "20", "--threads", "1", "--no-score"]
DBM_ARGS = ["--layers", "12", "8", "--pretrain-epochs", "1", "--batch-size", "50", "--chains", "20", "--threads", "1"]


def _checkpoint(path):
    return torch.load(path, weights_only=False)


def _assert_same_run(a, b):
    """Two checkpoints with bit-identical modules (parameters, offsets, chains, average) and optimizer states."""
    a, b = _checkpoint(a), _checkpoint(b)
    assert a["modules"].keys() == b["modules"].keys()
    for name in a["modules"]:
        sa, sb = a["modules"][name], b["modules"][name]
        assert sa.keys() == sb.keys()
        for key in sa:
            if torch.is_tensor(sa[key]):
                assert torch.equal(sa[key], sb[key]), f"{name}.{key} differs"
    assert a["optim"].keys() == b["optim"].keys()
    for name in a["optim"]:
        ga, gb = a["optim"][name], b["optim"][name]
        assert ga["param_groups"] == gb["param_groups"]
        for key, value in ga["state"][0].items():
            assert torch.equal(value, gb["state"][0][key]), f"optimizer {name}.{key} differs"
    ra, rb = a["extra"]["run"], b["extra"]["run"]
    for key in ("epoch", "planned", "updates", "averaged"):
        assert ra[key] == rb[key], key


def _records(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_rbm_resume_is_exact(rbm_quality, data, tmp_path):
    """3 epochs in one run == 1 epoch, stopped, then resumed to 3: averaging, sweep schedule, linear rate."""
    opts = [*RBM_ARGS, "--data", data, "--epochs", "3", "--average-from", "0.2", "--steps-schedule", "1", "3"]
    opts += ["--schedule", "linear"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    _, _, avg, run = rbm_quality.main([*opts, "--checkpoint", full])
    assert run["epoch"] == 3 and run["updates"] == 12 and run["averaged"] == 10  # steps 3..12 of 12
    rbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    assert _checkpoint(part)["extra"]["run"]["epoch"] == 1
    rbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)
    assert not torch.equal(avg.weight, torch.zeros_like(avg.weight))


def test_rbm_several_averaging_windows_are_each_the_run_with_that_window_alone(rbm_quality, data, tmp_path, capsys):
    """``--average-from 0.5 0.2`` keeps two averages, each bit for bit the one a run with that window alone keeps
    (averaging draws no random numbers); a run stopped and resumed keeps the same; ``--save``/``--load`` score both,
    labelled by their windows; a fraction outside [0, 1) is refused."""
    opts = [*RBM_ARGS, "--data", data, "--epochs", "3"]
    full, part, saved = (str(tmp_path / name) for name in ("full.ckpt", "part.ckpt", "rbm.pt"))
    _, _, avg, run = rbm_quality.main([*opts, "--average-from", "0.5", "0.2", "--checkpoint", full, "--save", saved])
    assert run["averaged_windows"] == [6, 10] and run["averaged"] == 6  # of 12 updates: past 6 and past 2.4
    modules = _checkpoint(full)["modules"]
    for key, fraction in (("avg", "0.5"), ("avg_1", "0.2")):
        _, _, alone, alone_run = rbm_quality.main([*opts, "--average-from", fraction])
        assert alone_run["averaged"] == run["averaged_windows"][key == "avg_1"]
        for name, value in alone.state_dict().items():
            if torch.is_tensor(value):
                assert torch.equal(modules[key][name], value), f"{key}.{name}"
    assert torch.equal(avg.weight, modules["avg"]["weight"])  # the first window's is "the" average
    rbm_quality.main([*opts, "--average-from", "0.5", "0.2", "--checkpoint", part, "--stop-after", "1"])
    rbm_quality.main([*opts, "--average-from", "0.5", "0.2", "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)
    assert _checkpoint(part)["extra"]["run"]["averaged_windows"] == [6, 10]
    capsys.readouterr()
    score = ["--ais-betas", "50", "--ais-chains", "8", "--threads", "1"]
    _, _, loaded, _ = rbm_quality.main(["--data", data, "--load", saved, *score])
    assert torch.equal(loaded.weight, avg.weight)
    lines = [r for r in _records(capsys) if r["event"] == "score"]
    assert [r["model"] for r in lines] == ["raw", "averaged", "averaged_from_0.2"]
    assert [(r["average_from"], r["averaged_updates"]) for r in lines[1:]] == [(0.5, 6), (0.2, 10)]
    assert lines[1]["log_likelihood"] != lines[2]["log_likelihood"]
    with pytest.raises(SystemExit):
        rbm_quality.main([*opts, "--average-from", "0.5", "1.0"])


def test_rbm_max_norm_and_sparsity_target_hold_and_resume_exactly(rbm_quality, data, tmp_path):
    regular = ["--max-norm", "0.2", "--sparsity-targets", "0.1", "--sparsity-costs", "0.01"]
    opts = [*RBM_ARGS, "--data", data, "--epochs", "3", "--average-from", "0.3", *regular]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    rbm, _, avg, _ = rbm_quality.main([*opts, "--checkpoint", full])
    for model in (rbm, avg):
        norms = model.weight.detach().norm(dim=0)
        assert float(norms.max()) <= 0.2 + 1e-5 and float(norms.min()) > 0.19  # it binds at every unit
    assert not torch.isnan(_checkpoint(full)["modules"]["sparsity"]["activation_0"]).any()
    rbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    rbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)


def test_rbm_fast_weights_train_and_resume_exactly(rbm_quality, data, tmp_path):
    """--fast-weights: FPCD chains whose fast weights are checkpointed and resumed bit for bit."""
    opts = [*RBM_ARGS, "--data", data, "--epochs", "3", "--fast-weights", "0.05", "--fast-decay", "0.9"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    _, chains, _, _ = rbm_quality.main([*opts, "--checkpoint", full])
    assert isinstance(chains, rbm_quality.FastPersistentChains)
    assert (chains.fast_decay, chains.fast_lr) == (0.9, 0.05)
    assert chains.fast_weight.abs().max() > 0
    rbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    rbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)
    with pytest.raises(SystemExit):
        rbm_quality.parse_args([*opts, "--parallel-tempering", "3"])


def test_rbm_bias_decay_sets_the_biases_decay_and_resumes_exactly(rbm_quality, data, tmp_path):
    """--bias-decay 0 decays the weights only (per datum, so times the 200 images); without it the biases take
    --weight-decay's; the per-parameter optimizer resumes bit for bit under the per-epoch rate schedule."""
    opts = [*RBM_ARGS, "--data", data, "--epochs", "3", "--weight-decay", "1e-3", "--bias-decay", "0"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    rbm_quality.main([*opts, "--checkpoint", full])
    decay = {k: v["param_groups"][0]["weight_decay"] for k, v in _checkpoint(full)["optim"].items()}
    assert decay == pytest.approx({"rbm.weight": 0.2, "rbm.visible_bias": 0.0, "rbm.hidden_bias": 0.0})
    rbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    rbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)
    rbm_quality.main([*opts[:-2], "--epochs", "1", "--checkpoint", part])
    decays = [v["param_groups"][0]["weight_decay"] for v in _checkpoint(part)["optim"].values()]
    assert decays == pytest.approx([0.2] * 3)
    with pytest.raises(SystemExit):
        rbm_quality.parse_args([*opts, "--bias-decay", "-1"])


def test_adamw_decouples_the_weight_decay_and_resumes_exactly(rbm_quality, dbm_quality, data, tmp_path):
    """--optimizer adamw: the decay is AdamW's, decoupled and not scaled by the data's size (1e-2 stays 1e-2, where
    Adam's L2 per datum is times the 200 images), biases free under --bias-decay 0; one update shrinks a weight by
    exactly lr * WD on top of Adam's step; the RBM run resumes bit for bit, and the DBM takes the option too."""
    opts = [*RBM_ARGS, "--data", data, "--epochs", "3", "--optimizer", "adamw", "--weight-decay", "1e-2"]
    opts += ["--bias-decay", "0"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    rbm_quality.main([*opts, "--checkpoint", full])
    groups = {k: v["param_groups"][0] for k, v in _checkpoint(full)["optim"].items()}
    assert {k: g["weight_decay"] for k, g in groups.items()} == pytest.approx(
        {"rbm.weight": 1e-2, "rbm.visible_bias": 0.0, "rbm.hidden_bias": 0.0}
    )
    assert all(g["decoupled_weight_decay"] for g in groups.values())
    rbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    rbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)

    one = [*RBM_ARGS, "--data", data, "--epochs", "1", "--batch-size", "200", "--optimizer", "adamw"]
    start = rbm_quality.main([*one, "--lr", "0", "--schedule", "linear"])[0].weight.detach()  # the seed's start
    plain = rbm_quality.main([*one, "--lr", "0.01", "--final-lr", "0.01", "--weight-decay", "0"])[0].weight.detach()
    decayed = rbm_quality.main([*one, "--lr", "0.01", "--final-lr", "0.01", "--weight-decay", "0.5"])[0].weight
    assert not torch.equal(plain, start)
    torch.testing.assert_close(decayed.detach() - plain, -0.01 * 0.5 * start, atol=1e-6, rtol=0)

    dbm_ckpt = str(tmp_path / "dbm.ckpt")
    dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "1", "--optimizer", "adamw", "--weight-decay", "1e-2",
                      "--bias-decay", "0", "--no-score", "--checkpoint", dbm_ckpt])  # fmt: skip
    groups = {k: v["param_groups"][0] for k, v in _checkpoint(dbm_ckpt)["optim"].items()}
    assert all(g["decoupled_weight_decay"] for g in groups.values())
    assert {g["weight_decay"] for k, g in groups.items() if "weight" in k} == {1e-2}


def test_resuming_under_another_optimizer_is_refused_and_loses_nothing(rbm_quality, dbm_quality, data, tmp_path):
    """A checkpoint continues only under the --optimizer that wrote it (Adam's and AdamW's states would load into
    each other silently); the refusal names the right option and leaves the file as it was."""
    ckpt = str(tmp_path / "adamw.ckpt")
    opts = [*RBM_ARGS, "--data", data, "--epochs", "2", "--weight-decay", "1e-2", "--checkpoint", ckpt]
    rbm_quality.main([*opts, "--optimizer", "adamw", "--stop-after", "1"])
    before = open(ckpt, "rb").read()
    for other in ("adam", "sgd"):
        with pytest.raises(ValueError, match="written with --optimizer adamw: resume it with --optimizer adamw"):
            rbm_quality.main([*opts, "--optimizer", other, "--resume", ckpt])
    assert open(ckpt, "rb").read() == before
    rbm_quality.main([*opts, "--optimizer", "adamw", "--resume", ckpt])  # the right one continues

    old = str(tmp_path / "old.ckpt")  # a checkpoint from before --optimizer: Adam's
    rbm_quality.main([*RBM_ARGS, "--data", data, "--epochs", "2", "--checkpoint", old, "--stop-after", "1"])
    saved = torch.load(old, weights_only=False)
    del saved["extra"]["config"]["optimizer"]
    torch.save(saved, old)
    with pytest.raises(ValueError, match="written with --optimizer adam:"):
        rbm_quality.main([*RBM_ARGS, "--data", data, "--epochs", "2", "--optimizer", "adamw", "--resume", old])

    dbm_ckpt = str(tmp_path / "dbm.ckpt")
    dbm_opts = [*DBM_ARGS, "--data", data, "--epochs", "2", "--no-score", "--checkpoint", dbm_ckpt]
    dbm_quality.main([*dbm_opts, "--stop-after", "1"])
    with pytest.raises(ValueError, match="written with --optimizer adam: resume it with --optimizer adam "):
        dbm_quality.main([*dbm_opts, "--optimizer", "adamw", "--resume", dbm_ckpt])


def test_dbm_load_reports_how_much_each_layer_is_used(dbm_quality, data, tmp_path, capsys):
    """``--load`` prints a ``layers`` line per model: the weight columns' norm percentiles, the spread of each layer's
    input from below (0 when the weights between them are 0), the dead units, and the mean field's distance from
    its fixed point (0 when the training's sweeps are the fixed point's)."""
    path = str(tmp_path / "dbm.pt")
    dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "2", "--average-from", "0.5", "--no-score",
                      "--save", path])  # fmt: skip
    capsys.readouterr()
    dbm_quality.main(["--data", data, "--threads", "1", "--load", path, "--no-score"])  # the file's sizes
    lines = [r for r in _records(capsys) if r["event"] == "layers"]
    assert [r["model"] for r in lines] == ["raw", "averaged"] and lines[0]["layers"] == [784, 12, 8]
    for r in lines:
        assert len(r["weight_column_norms"]) == len(r["input_sd"]) == len(r["dead_units"]) == 2
        assert all(0 < a <= b <= c for a, b, c in r["weight_column_norms"]) and all(sd > 0 for sd in r["input_sd"])
        assert r["mean_field_max_change"] >= 0

    saved = torch.load(path, weights_only=False)
    saved["dbm"]["weight_1"].zero_()  # no h1-h2 weights: the top layer's input is its bias alone
    torch.save(saved, path)
    dbm_quality.main(["--data", data, "--threads", "1", "--load", path, "--no-score", "--mean-field-iters", "200"])
    raw = next(r for r in _records(capsys) if r["event"] == "layers" and r["model"] == "raw")
    assert raw["weight_column_norms"][1] == [0.0, 0.0, 0.0] and raw["input_sd"][1] == 0.0 and raw["input_sd"][0] > 0
    assert raw["mean_field_max_change"] == 0.0 and raw["mean_field_bound_gain"] == 0.0


def test_rbm_resume_to_more_epochs(rbm_quality, data, tmp_path):
    """A 1-epoch run resumed with --epochs 3 equals a 3-epoch run (rate re-planned from the epoch counter)."""
    opts = [*RBM_ARGS, "--data", data, "--optimizer", "sgd", "--lr", "0.05"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    rbm_quality.main([*opts, "--epochs", "3", "--checkpoint", full])
    rbm_quality.main([*opts, "--epochs", "1", "--checkpoint", part])
    rbm_quality.main([*opts, "--epochs", "3", "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)


def test_rbm_parallel_tempering_resume(rbm_quality, data, tmp_path, capsys):
    opts = [*RBM_ARGS, "--data", data, "--epochs", "2", "--parallel-tempering", "3", "--pt-spacing", "geometric"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    _, chains, _, _ = rbm_quality.main([*opts, "--checkpoint", full])
    assert type(chains).__name__ == "ParallelTempering" and chains.state.shape == (3, 20, 784)
    assert float(chains.betas[0]) == pytest.approx(0.05) and float(chains.betas[-1]) == 1.0
    epochs = [r for r in _records(capsys) if r["event"] == "epoch"]  # the swap rates of both pairs, every epoch
    rates = [round(float(r), 3) for r in chains.swap_rate]
    assert len(epochs) == 2 and epochs[-1]["swap_rate"] == rates and all(0 <= r <= 1 for r in rates)
    assert float(chains.swaps_proposed.sum()) > 0
    rbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    rbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)


def test_rbm_time_budget_stops_and_records(rbm_quality, data, capsys):
    rbm_quality.main([*RBM_ARGS, "--data", data, "--time-budget", "1e-6"])
    epochs = [r for r in _records(capsys) if r["event"] == "epoch"]
    assert len(epochs) == 1 and epochs[0]["planned_epochs"] == 1 and "swap_rate" not in epochs[0]


def test_rbm_time_budget_plans_epochs(rbm_quality, data, capsys):
    _, _, _, run = rbm_quality.main([*RBM_ARGS, "--data", data, "--time-budget", "60", "--epochs", "4"])
    assert run["epoch"] == run["planned"] == 4  # --epochs caps the plan the budget would allow
    rates = [r["lr"] for r in _records(capsys) if r["event"] == "epoch"]
    assert rates[0] == 3e-3 and rates[-1] == pytest.approx(1e-5)


def test_rbm_train_size_is_the_run_on_a_split_of_that_many_images(rbm_quality, data, tmp_path):
    """--train-size 100 trains on the first 100 training images: bit for bit the run on a file that holds only
    those, with half the updates of the full 200; a size outside the split is refused."""
    arrays = dict(np.load(data))
    small = str(tmp_path / "small.npz")
    np.savez(small, train=arrays["train"][:100], valid=arrays["valid"])
    opts = [*RBM_ARGS, "--epochs", "2", "--average-from", "0.5"]
    sub, _, sub_avg, run = rbm_quality.main([*opts, "--data", data, "--train-size", "100"])
    ref, _, ref_avg, _ = rbm_quality.main([*opts, "--data", small])
    assert run["updates"] == 2 * 2  # two minibatches of 50 per epoch
    for a, b in ((sub, ref), (sub_avg, ref_avg)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), name
    for size in ("0", "201"):
        with pytest.raises(SystemExit, match="training split has 200"):
            rbm_quality.main([*opts, "--data", data, "--train-size", size])


def test_rbm_save_load_scores_raw_and_averaged(rbm_quality, data, tmp_path, capsys):
    saved = str(tmp_path / "rbm.pt")
    opts = ["--hidden", "16", "--batch-size", "50", "--chains", "20", "--threads", "1", "--data", data]
    score = ["--ais-betas", "50", "--ais-chains", "8"]
    rbm, _, avg, _ = rbm_quality.main([*opts, "--epochs", "2", "--average-from", "0.5", "--save", saved, *score])
    trained = [r for r in _records(capsys) if r["event"] == "score"]
    assert [r["model"] for r in trained] == ["raw", "averaged"]
    assert trained[0]["epochs"] == 2 and "train_seconds" in trained[0]
    state = torch.load(saved, weights_only=False)
    assert {"rbm", "chains", "avg", "config"} <= set(state)
    assert all(v.dtype == torch.float32 for v in state["rbm"].values() if torch.is_tensor(v) and v.is_floating_point())
    loaded, _, loaded_avg, _ = rbm_quality.main(["--data", data, "--load", saved, "--threads", "1", *score])
    assert torch.equal(loaded.weight, rbm.weight) and torch.equal(loaded_avg.weight, avg.weight)
    rescored = [r for r in _records(capsys) if r["event"] == "score"]
    assert [r["model"] for r in rescored] == ["raw", "averaged"]
    assert rescored[1]["log_likelihood"] == pytest.approx(trained[1]["log_likelihood"], abs=1.0)


@pytest.mark.parametrize("shift, warned", [(0.0, False), (3.0, True), (-3.0, True)])
def test_score_warns_when_forward_and_reverse_ais_disagree(rbm_quality, data, monkeypatch, capsys, shift, warned):
    """A reverse AIS log Z more than AIS_DISAGREEMENT nats from the forward one puts a warning in the score line."""
    import _training

    real_forward, forward = _training.ais_log_partition, {}

    def recording_forward(*args, **kwargs):
        forward["result"] = real_forward(*args, **kwargs)
        return forward["result"]

    def fake_reverse(*args, **kwargs):  # the forward estimate moved by `shift`
        return dataclasses.replace(forward["result"], log_z=forward["result"].log_z + shift, reverse=True)

    monkeypatch.setattr(_training, "ais_log_partition", recording_forward)
    monkeypatch.setattr(_training, "reverse_ais_log_partition", fake_reverse)
    opts = ["--hidden", "8", "--batch-size", "50", "--chains", "10", "--threads", "1", "--data", data]
    rbm_quality.main([*opts, "--epochs", "1", "--ais-betas", "20", "--ais-chains", "4"])
    (score,) = [r for r in _records(capsys) if r["event"] == "score"]
    assert ("warning" in score) == warned
    if warned:
        assert ("missed a mode" in score["warning"]) == (shift < 0)


def test_pt_ladder_reports_swap_rates(rbm_quality, data, tmp_path):
    """A ladder whose two temperatures nearly coincide swaps almost always (the log ratio is
    (beta_hi - beta_lo) times a free-energy difference); a wide one swaps less; the averaged model loads too."""
    saved = str(tmp_path / "rbm.pt")
    opts = [*RBM_ARGS, "--data", data, "--epochs", "2", "--average-from", "0.5", "--save", saved]
    rbm_quality.main(opts)
    pt_ladder = benchmark_script("pt_ladder")
    common = ["--data", data, "--load", saved, "--chains", "20", "--sweeps", "30"]
    near, wide = pt_ladder.main([*common, "--ladder", "linear:2:0.9999", "geometric:4:0.01"])
    assert near["betas"] == [0.9999, 1.0] and near["lowest_swap_rate"] > 0.99
    assert len(wide["swap_rate"]) == 3 and wide["lowest_swap_rate"] < near["lowest_swap_rate"]
    assert wide["betas"][0] == pytest.approx(0.01) and wide["betas"][-1] == 1.0
    (avg,) = pt_ladder.main([*common, "--model", "averaged", "--ladder", "linear:3:0.5"])
    assert len(avg["swap_rate"]) == 2 and all(0 <= r <= 1 for r in avg["swap_rate"])
    for bad in ("linear:1:0.5", "cubic:3:0.5", "geometric:3:0", "linear:3"):
        with pytest.raises(SystemExit):
            pt_ladder.main([*common, "--ladder", bad])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="not an RBM saved by rbm_quality.py"):
        pt_ladder.main(["--data", data, "--load", str(tmp_path / "other.pt"), "--ladder", "linear:2:0.5"])


def test_dbm_resume_is_exact(dbm_quality, data, tmp_path):
    """3 epochs in one run == 1 epoch, stopped, then resumed to 3, with two averaging windows."""
    opts = [*DBM_ARGS, "--data", data, "--epochs", "3", "--average-from", "0.3", "0.6", "--no-score"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    _, _, avg, run = dbm_quality.main([*opts, "--checkpoint", full])
    assert run["averaged_windows"] == [9, 5] and run["averaged"] == 9 and avg is not None  # of 12: past 3.6, 7.2
    averages = _checkpoint(full)["modules"]
    assert not torch.equal(averages["avg"]["weight_0"], averages["avg_1"]["weight_0"])
    dbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    dbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)


def test_dbm_importance_positive_phase_trains_and_resumes_exactly(dbm_quality, data, tmp_path):
    opts = [*DBM_ARGS, "--data", data, "--epochs", "2", "--no-score", "--positive-phase", "importance",
            "--importance-samples", "4"]  # fmt: skip
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    sampled, _, _, _ = dbm_quality.main([*opts, "--checkpoint", full])
    plain, _, _, _ = dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "2", "--no-score"])
    assert not torch.equal(sampled.weight_1, plain.weight_1)  # the option reaches the positive phase
    dbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    dbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)


def test_dbm_autocast_trains_exactly_as_float32_and_resumes_exactly(dbm_quality, data, tmp_path):
    opts = [*DBM_ARGS, "--data", data, "--epochs", "2", "--no-score", "--autocast", "bfloat16"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    dbm, chains, _, _ = dbm_quality.main([*opts, "--checkpoint", full])
    assert chains.state.dtype == torch.float32 and all(p.dtype == torch.float32 for p in dbm.parameters())
    plain, _, _, _ = dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "2", "--no-score"])
    assert torch.equal(plain.weight_0, dbm.weight_0)  # the DBM's SML path ignores autocast, as the RBMs' does
    dbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    dbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)


def test_dbm_max_norm_and_sparsity_target_hold_and_resume_exactly(dbm_quality, data, tmp_path):
    regular = ["--max-norm", "0.2", "--sparsity-targets", "0.2", "0.1", "--sparsity-costs", "0.01"]
    opts = [*DBM_ARGS, "--data", data, "--epochs", "3", "--average-from", "0.3", "--no-score", *regular]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    dbm, _, avg, _ = dbm_quality.main([*opts, "--checkpoint", full])
    for model in (dbm, avg):  # the average of projected iterates is inside the ball too
        for l in range(2):
            norms = getattr(model, f"weight_{l}").detach().norm(dim=0)
            assert float(norms.max()) <= 0.2 + 1e-5
        assert float(model.weight_0.detach().norm(dim=0).min()) > 0.19  # it binds there
    sparsity = _checkpoint(full)["modules"]["sparsity"]
    assert {"activation_0", "activation_1"} <= set(sparsity) and not torch.isnan(sparsity["activation_0"]).any()
    dbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    dbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)


def test_dbm_layer_lr_scale_gives_each_layer_its_rate_and_resumes_exactly(dbm_quality, data, tmp_path):
    """``--layer-lr-scale 2 10``: the first hidden layer's weights and biases at twice the schedule's rate, the
    second's at ten times, the visible biases at the rate itself, in the optimizer state that is checkpointed;
    factors of 1 are the run without the option bit for bit; a stopped run resumes exactly; bad factors refused."""
    opts = [*DBM_ARGS, "--data", data, "--epochs", "2", "--no-score", "--lr", "1e-3", "--final-lr", "1e-4"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    scaled, _, _, _ = dbm_quality.main([*opts, "--layer-lr-scale", "2", "10", "--checkpoint", full])
    rates = {name.split(".")[-1]: state["param_groups"][0]["lr"] for name, state in _checkpoint(full)["optim"].items()}
    expected = {"bias_0": 1e-4, "weight_0": 2e-4, "bias_1": 2e-4, "weight_1": 1e-3, "bias_2": 1e-3}
    assert rates.keys() == expected.keys() and all(math.isclose(rates[k], v) for k, v in expected.items()), rates
    plain, _, _, _ = dbm_quality.main(opts)
    ones, _, _, _ = dbm_quality.main([*opts, "--layer-lr-scale", "1", "1"])
    assert torch.equal(ones.weight_1, plain.weight_1) and torch.equal(ones.bias_0, plain.bias_0)
    assert not torch.equal(scaled.weight_1, plain.weight_1)
    dbm_quality.main([*opts, "--layer-lr-scale", "2", "10", "--checkpoint", part, "--stop-after", "1"])
    dbm_quality.main([*opts, "--layer-lr-scale", "2", "10", "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)
    for bad in (["1"], ["1", "0"], ["1", "inf"]):
        with pytest.raises(SystemExit):
            dbm_quality.parse_args([*opts, "--layer-lr-scale", *bad])


def test_dbm_scores_the_importance_estimate_beside_the_bound(dbm_quality, data, capsys):
    """--is-samples K adds DBM.importance_log_prob (minus the same AIS log Z) to each score line: in expectation
    at least the mean-field bound."""
    score = ["--ais-betas", "50", "--ais-chains", "8", "--is-samples", "20"]
    dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "1", "--average-from", "0.5", "0.25", *score])
    lines = [r for r in _records(capsys) if r["event"] == "score"]
    assert [r["model"] for r in lines] == ["raw", "averaged", "averaged_from_0.25"]
    assert [r["averaged_updates"] for r in lines[1:]] == [2, 3]  # of 4 updates: past 2 and past 1
    for r in lines:
        assert r["importance_log_likelihood_20"] >= r["log_likelihood_bound"] - 0.05
        assert r["importance_log_likelihood_20_seconds"] >= 0
    with pytest.raises(SystemExit):
        dbm_quality.parse_args([*DBM_ARGS, "--data", data, "--is-samples", "-1"])


def test_dbm_dead_units_counts_units_the_data_never_turns_on(dbm_quality, data, tmp_path, capsys):
    from dgm_ppl.energy import DBM, PersistentChains

    torch.manual_seed(0)
    dbm = DBM([784, 12, 8])
    with torch.no_grad():
        dbm.bias_2[:4] = -30.0  # four of the eight top units can never turn on
    chains = PersistentChains(dbm, num_chains=20)
    with torch.no_grad():  # the chains turn two of the four on, the rest off
        h2 = torch.zeros(20, 8)
        h2[:, :2] = 1.0
        chains.state[:, -8:] = h2
    probe = (torch.rand(30, 784) < 0.3).float()
    report = dbm_quality.dead_units(dbm, chains, probe, mean_field_iters=5)
    assert report["dead_units"] == [0.0, 0.5]
    assert report["dead_units_chain_activation"] == [None, 0.5]
    # and each epoch line carries it
    dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "1", "--no-score"])
    (epoch,) = [r for r in _records(capsys) if r.get("event") == "epoch"]
    assert len(epoch["dead_units"]) == 2 and all(0 <= f <= 1 for f in epoch["dead_units"])


def test_dbm_resume_from_saved_file_trains_further(dbm_quality, data, tmp_path, capsys):
    """--resume with a --save file keeps its former meaning: that DBM and chains, a fresh optimizer."""
    saved = str(tmp_path / "dbm.pt")
    dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "1", "--save", saved, "--no-score"])
    before = torch.load(saved, weights_only=False)["dbm"]["weight_0"]
    dbm, _, _, run = dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "1", "--resume", saved, "--no-score"])
    assert not any(r["event"] == "pretrained" for r in _records(capsys)[1:])
    assert run["epoch"] == 1 and not torch.equal(dbm.weight_0.detach(), before)


def test_rbms_peer(rbm_quality, data, tmp_path, capsys):
    pytest.importorskip("rbms")
    saved = str(tmp_path / "peer.pt")
    opts = ["--data", data, "--peer", "rbms", "--hidden", "16", "--batch-size", "50", "--chains", "20"]
    score = ["--threads", "1", "--ais-betas", "50", "--ais-chains", "8"]
    rbm, params = rbm_quality.main([*opts, "--epochs", "2", "--save", saved, *score])
    assert torch.equal(rbm.weight.detach(), params.weight_matrix)
    records = _records(capsys)
    assert any(r["event"] == "peer_copy_check" and r["max_abs_diff"] < 1e-4 for r in records)
    assert [r["model"] for r in records if r["event"] == "score"] == ["rbms"]
    loaded, chains, _, _ = rbm_quality.main(["--data", data, "--load", saved, *score])
    assert chains is None and not loaded.centered and torch.equal(loaded.weight, rbm.weight)
    assert [r["model"] for r in _records(capsys) if r["event"] == "score"] == ["rbms"]


def test_rbm_load_old_save_format(rbm_quality, data, tmp_path):
    """Files written before the averaged model and counters existed still load."""
    saved = str(tmp_path / "rbm.pt")
    rbm_quality.main([*RBM_ARGS, "--data", data, "--epochs", "1", "--save", saved])
    state = torch.load(saved, weights_only=False)
    old = {"rbm": state["rbm"], "chains": state["chains"], "config": {"hidden": 16, "no_center": False, "chains": 20}}
    torch.save(old, saved)
    rbm, _, avg, _ = rbm_quality.main(["--data", data, "--load", saved, "--threads", "1", "--no-score"])
    assert avg is None and torch.equal(rbm.weight, state["rbm"]["weight"])


def test_the_plan_follows_the_median_epoch_so_one_slow_epoch_does_not_swing_it(rbm_quality):
    """``steady_epoch_seconds``: the median of the last 5 epochs' time per unit of an update's cost (1 + sweeps)."""
    steady, run = rbm_quality.steady_epoch_seconds, {}
    assert [steady(run, s, 1) for s in (10.0, 10.0, 10.0)] == [10.0, 10.0, 10.0]
    assert steady(run, 30.0, 1) == 10.0  # another process slowed one epoch: the plan does not move
    assert steady(run, 30.0, 1) == 10.0 and steady(run, 30.0, 1) == 30.0  # a lasting slowdown moves it
    assert run["recent_epoch_units"] == [5.0, 5.0, 15.0, 15.0, 15.0]  # the last 5, per unit of cost (1 + 1 sweep)
    assert steady({}, 12.0, 2) == 12.0 and steady({"recent_epoch_units": [2.0]}, 12.0, 2) == pytest.approx(9.0)


def test_replan_fits_the_budget(rbm_quality):
    from types import SimpleNamespace

    args = SimpleNamespace(time_budget=100.0, epochs=None, steps_schedule=None, steps=1)
    assert rbm_quality.replan(args, 1, 10.0, 9.0, 1) == 11  # 1 done + floor(90 / 9)
    assert rbm_quality.replan(SimpleNamespace(**{**vars(args), "epochs": 5}), 1, 10.0, 9.0, 1) == 5
    assert rbm_quality.replan(args, 1, 95.0, 9.0, 1) == 1  # no further epoch fits
    args.steps_schedule = [1, 9]  # epochs get dearer: an epoch at 1 sweep costs 2 units of 1 s
    planned = rbm_quality.replan(args, 1, 10.0, 2.0, 1)
    cost = sum(1 + rbm_quality.gibbs_steps(args, e, planned) for e in range(1, planned))
    more = sum(1 + rbm_quality.gibbs_steps(args, e, planned + 1) for e in range(1, planned + 1))
    assert cost <= 90 < more


VAE_ARGS = ["--batch-size", "50", "--threads", "1", "--eval-every", "1", "--monitor-points", "20", "--eval-points", "5",
            "--eval-samples", "10", "--no-jit", "--elbo", "trace"]  # fmt: skip


def test_vae_quality_resumes_exactly_and_reloads(data, tmp_path, capsys):
    """3 epochs in one run equal 1 epoch, a kill, and a resumed run to 3 (parameters and Adam state, bit for bit);
    the saved model reloads and scores the same."""
    vae_quality = benchmark_script("vae_quality")
    whole, part = str(tmp_path / "whole.ckpt"), str(tmp_path / "part.ckpt")
    vae_a, guide_a, state_a = vae_quality.main(["--data", data, "--epochs", "3", "--checkpoint", whole, *VAE_ARGS])
    vae_quality.main(["--data", data, "--epochs", "3", "--checkpoint", part, "--stop-after", "1", *VAE_ARGS])
    save = str(tmp_path / "vae.pt")
    vae_b, guide_b, state_b = vae_quality.main(
        ["--data", data, "--epochs", "3", "--checkpoint", part, "--resume", part, "--save", save, *VAE_ARGS]
    )
    assert state_a["epoch"] == state_b["epoch"] == 3 and state_a["history"] == state_b["history"]
    for a, b in ((vae_a, vae_b), (guide_a, guide_b)):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name
    a, b = _checkpoint(whole)["optim"], _checkpoint(part)["optim"]
    assert a.keys() == b.keys()
    for name in a:
        for key, value in a[name]["state"][0].items():
            assert torch.equal(value, b[name]["state"][0][key]), f"optimizer {name}.{key} differs"
    scored = [r for r in _records(capsys) if r.get("event") == "score"]
    vae_c, _, _ = vae_quality.main(["--data", data, "--load", save, *VAE_ARGS])
    loaded = [r for r in _records(capsys) if r.get("event") == "score"][-1]
    assert all(torch.equal(x, y) for x, y in zip(vae_c.state_dict().values(), vae_b.state_dict().values()))
    assert loaded["points"] == scored[-1]["points"] == 5


def test_vae_quality_extends_a_finished_run(data, tmp_path, capsys):
    """``--extend N`` adds a stage of N epochs whose learning rate decays again from ``--lr``; a run that has not
    finished its plan, or an ``--extend`` without ``--resume``, is refused."""
    vae_quality = benchmark_script("vae_quality")
    ckpt = str(tmp_path / "run.ckpt")
    vae_quality.main(["--data", data, "--epochs", "2", "--checkpoint", ckpt, *VAE_ARGS])
    _, _, state = vae_quality.main(
        ["--data", data, "--resume", ckpt, "--extend", "3", "--lr", "5e-4", "--final-lr", "5e-5", "--checkpoint", ckpt,
         *VAE_ARGS]
    )  # fmt: skip
    assert state["epoch"] == state["planned"] == 5
    lrs = [r["lr"] for r in state["history"]]
    assert lrs[:2] == pytest.approx([1e-3, 1e-4]) and lrs[2:] == pytest.approx([5e-4, 5e-4 * 0.1**0.5, 5e-5])
    part = str(tmp_path / "part.ckpt")
    vae_quality.main(["--data", data, "--epochs", "3", "--checkpoint", part, "--stop-after", "1", *VAE_ARGS])
    with pytest.raises(SystemExit, match="stopped at epoch 1 of 3"):
        vae_quality.main(["--data", data, "--resume", part, "--extend", "2", *VAE_ARGS])
    with pytest.raises(SystemExit, match="--extend N"):
        vae_quality.main(["--data", data, "--extend", "2", *VAE_ARGS])
    # a run stopped by its time budget has finished its plan: it can be extended
    budget = str(tmp_path / "budget.ckpt")
    _, _, state = vae_quality.main(
        ["--data", data, "--epochs", "5", "--time-budget", "1e-9", "--checkpoint", budget, *VAE_ARGS]
    )
    assert state["epoch"] == state["planned"] == _checkpoint(budget)["extra"]["planned"] == 1
    _, _, state = vae_quality.main(["--data", data, "--resume", budget, "--extend", "2", *VAE_ARGS])
    assert state["epoch"] == state["planned"] == 3


def test_vae_quality_averages_the_iterates_and_resumes_the_average(data, tmp_path, monkeypatch, capsys):
    """``--average-from 0.5`` of 4 epochs averages every update of epochs 3 and 4: the saved average is the mean of
    those iterates; a kill inside the window and an exact resume give the same average bit for bit; the returned
    modules are the last iterate; ``--load`` scores the last and the averaged model."""
    vae_quality = benchmark_script("vae_quality")
    seen, real_fold = [], vae_quality.fold

    def recording_fold(average, current, count):
        seen.append({name: value.detach().clone() for name, value in current.items()})
        real_fold(average, current, count)

    monkeypatch.setattr(vae_quality, "fold", recording_fold)
    whole, part, save = (str(tmp_path / name) for name in ("whole.ckpt", "part.ckpt", "vae.pt"))
    opts = ["--data", data, "--epochs", "4", "--average-from", "0.5", *VAE_ARGS]
    vae, guide, state = vae_quality.main([*opts, "--checkpoint", whole, "--save", save])
    assert state["averaged"] == len(seen) == 2 * 4  # 2 epochs of 200 / 50 updates
    assert [r.get("averaged") for r in state["history"]] == [None, None, 4, 8]
    for name, value in state["average"].items():
        assert torch.allclose(value, torch.stack([s[name] for s in seen]).mean(0), atol=1e-6), name
    last = vae_quality.parameters(vae, guide)
    assert all(torch.equal(last[name], seen[-1][name]) for name in last)  # not the average
    assert any(not torch.equal(last[name], state["average"][name]) for name in last)
    vae_quality.main([*opts, "--checkpoint", part, "--stop-after", "3"])
    _, _, resumed = vae_quality.main([*opts, "--checkpoint", part, "--resume", part])
    assert resumed["averaged"] == 8
    assert all(torch.equal(resumed["average"][name], state["average"][name]) for name in state["average"])
    capsys.readouterr()
    vae_quality.main(["--data", data, "--load", save, *VAE_ARGS])
    assert [r["model"] for r in _records(capsys) if r["event"] == "score"] == ["loaded", "averaged"]
    with pytest.raises(SystemExit):
        vae_quality.main(["--data", data, "--epochs", "1", "--average-from", "1", *VAE_ARGS])


class _PPCA:
    """z ~ N(0, I_2), x | z ~ N(W z + mu, σ² I_3): log p(x) and the posterior in closed form."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.W, self.mu, self.sigma = torch.randn(3, 2, generator=g), torch.randn(3, generator=g), 0.7
        self.exact = True  # the guide is the exact posterior; False: a shifted, too-wide one

    def model(self, x, num_data):
        import pyro
        import pyro.distributions as dist

        with pyro.plate("data", num_data, subsample_size=x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.mu, self.sigma).to_event(1), obs=x)

    def posterior(self, x):
        m = self.W.T @ self.W + self.sigma**2 * torch.eye(2)
        return (x - self.mu) @ self.W @ torch.linalg.inv(m).T, self.sigma**2 * torch.linalg.inv(m)

    def q(self, x):
        loc, cov = self.posterior(x)
        return (loc, cov) if self.exact else (loc + 0.3, 2.0 * cov)

    def elbo(self, x):
        """E_q log p(x, z) + H(q), in closed form."""
        loc, cov = self.q(x)
        resid = x - loc @ self.W.T - self.mu
        log_lik = -1.5 * math.log(2 * math.pi * self.sigma**2) - (
            resid.pow(2).sum(-1) + torch.trace(self.W @ cov @ self.W.T)
        ) / (2 * self.sigma**2)
        log_prior = -math.log(2 * math.pi) - (loc.pow(2).sum(-1) + torch.trace(cov)) / 2
        entropy = math.log(2 * math.pi * math.e) + torch.logdet(cov) / 2
        return log_lik + log_prior + entropy

    def guide(self, x, num_data):
        import pyro
        import pyro.distributions as dist

        loc, cov = self.q(x)
        with pyro.plate("data", num_data, subsample_size=x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(loc, cov))

    def log_p(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(3)
        return torch.distributions.MultivariateNormal(self.mu, cov).log_prob(x)


def test_vae_monitor_is_the_k_sample_bound_against_ppca():
    """The validation monitor is the mean per image of the k-sample IWAE bound: with the exact posterior as the
    guide every log-weight is log p(x), so it equals the closed-form mean log p(x) for any k (also across uneven
    chunks of images: a missing log k or a per-chunk mean would show); with a wrong guide it rises with k from the
    ELBO (in closed form) towards log p(x)."""
    import pyro

    vae_quality = benchmark_script("vae_quality")
    ppca = _PPCA()
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(1)) * 2
    exact = ppca.log_p(x).mean().item()
    pyro.set_rng_seed(0)
    for k in (1, 7, 3000):  # k = 3000: chunks of 3, 3, 3, 3 images; k = 7: one chunk of 12
        assert vae_quality.monitor(ppca, ppca.guide, x, k) == pytest.approx(exact, abs=1e-4)
    ppca.exact = False
    x = torch.randn(1000, 3, generator=torch.Generator().manual_seed(2)) * 2
    exact, elbo = ppca.log_p(x).mean().item(), ppca.elbo(x).mean().item()
    bounds = [vae_quality.monitor(ppca, ppca.guide, x, k) for k in (1, 10, 1000)]
    assert exact - elbo > 1.0 and bounds[0] == pytest.approx(elbo, abs=0.3)  # Monte Carlo sd about 0.1
    assert bounds[0] < bounds[1] < exact - 0.03 and bounds[2] == pytest.approx(exact, abs=0.02)


def test_vae_quality_monitors_the_training_bound(data, tmp_path, capsys):
    """An IWAE-k run monitors (and ``--keep-best`` keeps) the k-sample bound; resuming with another bound drops
    the best model chosen by the old one, which is not comparable."""
    vae_quality = benchmark_script("vae_quality")
    ckpt = str(tmp_path / "run.ckpt")
    _, _, state = vae_quality.main(["--data", data, "--epochs", "2", "--keep-best", "--checkpoint", ckpt, *VAE_ARGS])
    assert state["monitor_k"] == 1 and state["best"]["epoch"] in (1, 2)
    assert all("valid_elbo" in r for r in state["history"])
    _, _, state = vae_quality.main(
        ["--data", data, "--resume", ckpt, "--extend", "2", "--keep-best", *VAE_ARGS, "--elbo", "iwae3"]
    )
    records = _records(capsys)
    changed = [r for r in records if r["event"] == "monitor_changed"]
    assert len(changed) == 1 and changed[0]["previous_k"] == 1 and changed[0]["k"] == 3
    assert state["monitor_k"] == 3 and state["best"]["epoch"] in (3, 4)
    assert [("valid_iwae3" in r, "valid_elbo" in r) for r in state["history"][2:]] == [(True, False)] * 2
    _, _, state = vae_quality.main(["--data", data, "--epochs", "1", *VAE_ARGS, "--elbo", "iwae3", "--monitor-k", "1"])
    assert "valid_elbo" in state["history"][0]
    with pytest.raises(SystemExit, match="--monitor-k"):
        vae_quality.main(["--data", data, "--epochs", "1", *VAE_ARGS, "--monitor-k", "0"])


def test_dbm_stops_on_a_loss_runaway_and_keeps_the_last_good_epoch(dbm_quality, data, tmp_path, monkeypatch, capsys):
    """A finite runaway of the epoch loss (the chains losing the model) raises before that epoch's files are
    written, so the checkpoint and the save hold the last good epoch; the exact resume still works from it."""
    opts = [*DBM_ARGS, "--data", data, "--epochs", "4", "--no-score"]
    ckpt, saved = str(tmp_path / "dbm.ckpt"), str(tmp_path / "dbm.pt")
    real_train, calls = dbm_quality.train, []

    def runaway(*args, **kwargs):  # the real epoch, its loss tripled from the third epoch on
        (loss,) = real_train(*args, **kwargs)
        calls.append(loss)
        return [loss * (3.0 if len(calls) >= 3 else 1.0)]

    monkeypatch.setattr(dbm_quality, "train", runaway)
    with pytest.raises(RuntimeError, match=r"epoch 2: the loss went .* hold the state after epoch 1; resume"):
        dbm_quality.main([*opts, "--checkpoint", ckpt, "--save", saved])
    records = _records(capsys)
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [0, 1]
    assert records[-1]["event"] == "diverged" and records[-1]["epoch"] == 2
    assert _checkpoint(ckpt)["extra"]["run"]["epoch"] == 2 and _checkpoint(saved)["run"]["epoch"] == 2
    assert _checkpoint(ckpt)["extra"]["run"]["loss"] == pytest.approx(calls[1])
    # the same runaway passes with the check off, and the untouched run resumes from the kept checkpoint
    calls.clear()
    dbm_quality.main([*opts, "--max-loss-change", "0", "--stop-after", "3"])
    monkeypatch.setattr(dbm_quality, "train", real_train)
    _, _, _, run = dbm_quality.main([*opts, "--checkpoint", ckpt, "--resume", ckpt])
    assert run["epoch"] == 4
    with pytest.raises(SystemExit):
        dbm_quality.parse_args(["--data", data, "--max-loss-change", "-1"])


def test_dbm_training_further_checks_its_first_epoch_against_the_file(dbm_quality, data, tmp_path, monkeypatch):
    """Training further from a ``--save`` file (a fresh schedule, at a rate that may be too high) checks the first
    epoch's loss against the file's last: a runaway there raises, writes nothing and leaves the file as it was."""
    opts = [*DBM_ARGS, "--data", data, "--no-score"]
    saved, further = tmp_path / "dbm.pt", tmp_path / "further.pt"
    dbm_quality.main([*opts, "--epochs", "2", "--save", str(saved)])
    before = saved.read_bytes()
    real_train = dbm_quality.train
    monkeypatch.setattr(dbm_quality, "train", lambda *a, **k: [real_train(*a, **k)[0] * 12.0])
    with pytest.raises(RuntimeError, match=r"epoch 0: .*nothing was written, and --resume .*dbm.pt is unchanged"):
        dbm_quality.main([*opts, "--epochs", "2", "--resume", str(saved), "--save", str(further)])
    assert saved.read_bytes() == before and not further.exists()
    monkeypatch.setattr(dbm_quality, "train", real_train)
    _, _, _, run = dbm_quality.main([*opts, "--epochs", "1", "--resume", str(saved), "--save", str(further)])
    assert run["epoch"] == 1 and further.exists()


def test_vae_quality_starts_from_a_saved_model_with_decoupled_weight_decay(data, tmp_path):
    """``--init`` starts from a saved model's parameters; one update with ``--weight-decay W`` differs from the same
    update without it by exactly ``-lr * W * p`` (AdamW's decoupled decay); a resume keeps the run's decay and
    refuses another."""
    vae_quality = benchmark_script("vae_quality")
    save, ckpt = str(tmp_path / "vae.pt"), str(tmp_path / "wd.ckpt")
    vae, guide, _ = vae_quality.main(["--data", data, "--epochs", "1", "--save", save, *VAE_ARGS])
    start = {n: p.detach().clone() for n, p in vae_quality.parameters(vae, guide).items()}
    opts = ["--data", data, "--init", save, "--epochs", "1", "--batch-size", "200", "--lr", "0.01"]
    tail = [a for a in VAE_ARGS if a not in ("--batch-size", "50")]
    plain = vae_quality.parameters(*vae_quality.main([*opts, *tail])[:2])
    decayed = vae_quality.parameters(
        *vae_quality.main([*opts, "--weight-decay", "0.5", "--checkpoint", ckpt, *tail])[:2]
    )
    assert plain.keys() == start.keys()
    for name, p0 in start.items():  # one update of 200 / 200 images: the same Adam step, and the decay on top
        assert not torch.equal(plain[name], p0), name
        assert torch.allclose(decayed[name] - plain[name], -0.01 * 0.5 * p0, atol=1e-6), name
    assert _checkpoint(ckpt)["extra"]["weight_decay"] == 0.5
    with pytest.raises(SystemExit, match="keeps its weight decay"):
        vae_quality.main(["--data", data, "--resume", ckpt, "--extend", "2", "--weight-decay", "0.1", *tail])
    _, _, state = vae_quality.main(["--data", data, "--resume", ckpt, "--extend", "2", *tail])
    assert state["weight_decay"] == 0.5 and state["epoch"] == 3
    with pytest.raises(SystemExit):
        vae_quality.main(["--data", data, "--init", str(tmp_path / "missing.pt"), *tail])
    with pytest.raises(SystemExit):
        vae_quality.main(["--data", data, "--weight-decay", "-1", *tail])


def test_adam_betas_reach_the_optimizer_resume_exactly_and_are_checked(rbm_quality, dbm_quality, data, tmp_path):
    """--adam-betas B1 B2: Adam's moments decay at the given rates in every parameter group of both benchmarks (a
    run with them differs from the default's); a checkpoint resumes bit for bit, and only under the betas that wrote
    it (the loaded state would bring its own back); bad values and --optimizer sgd are refused."""
    opts = [*RBM_ARGS, "--data", data, "--epochs", "3", "--adam-betas", "0.5", "0.99"]
    full, part = str(tmp_path / "full.ckpt"), str(tmp_path / "part.ckpt")
    rbm_quality.main([*opts, "--checkpoint", full])
    groups = [v["param_groups"][0] for v in _checkpoint(full)["optim"].values()]
    assert len(groups) == 3 and all(g["betas"] == (0.5, 0.99) for g in groups)
    default = rbm_quality.main([*RBM_ARGS, "--data", data, "--epochs", "3"])[0].weight
    assert not torch.equal(default, _checkpoint(full)["modules"]["rbm"]["weight"])
    rbm_quality.main([*opts, "--checkpoint", part, "--stop-after", "1"])
    before = open(part, "rb").read()
    with pytest.raises(ValueError, match="written with --adam-betas 0.5 0.99: resume it with them"):
        rbm_quality.main([*opts[:-3], "--checkpoint", part, "--resume", part])
    assert open(part, "rb").read() == before
    rbm_quality.main([*opts, "--checkpoint", part, "--resume", part])
    _assert_same_run(full, part)
    for bad in (["--adam-betas", "1", "0.999"], ["--adam-betas", "0.9", "0.999", "--optimizer", "sgd"]):
        with pytest.raises(SystemExit):
            rbm_quality.parse_args([*RBM_ARGS, "--data", data, *bad])

    dbm_ckpt = str(tmp_path / "dbm.ckpt")
    dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "1", "--no-score", "--optimizer", "adamw",
                      "--adam-betas", "0.5", "0.9", "--checkpoint", dbm_ckpt])  # fmt: skip
    groups = [v["param_groups"][0] for v in _checkpoint(dbm_ckpt)["optim"].values()]
    assert groups and all(g["betas"] == (0.5, 0.9) for g in groups)
    dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "2", "--no-score", "--checkpoint", dbm_ckpt,
                      "--stop-after", "1"])  # fmt: skip
    resume = ["--resume", dbm_ckpt, "--adam-betas", "0.9", "0.999"]  # the default, spelled out, continues
    dbm_quality.main([*DBM_ARGS, "--data", data, "--epochs", "2", "--no-score", "--checkpoint", dbm_ckpt, *resume])


def test_dbm_grows_from_a_saved_rbm(rbm_quality, dbm_quality, data, tmp_path, capsys):
    """--init-rbm: with --epochs 0 and --init-top-std 0 the saved DBM is the file's RBM (averaged or raw) with the
    layer above decoupled, its chains start at the RBM's chains, and a mismatched file or option is refused."""
    rbm_file = str(tmp_path / "rbm.pt")
    rbm, chains, avg, _ = rbm_quality.main([*RBM_ARGS, "--data", data, "--epochs", "2", "--average-from", "0.5",
                                            "--save", rbm_file])  # fmt: skip
    grow = ["--layers", "16", "8", "--batch-size", "50", "--chains", "20", "--threads", "1", "--data", data]
    for which, source in [("averaged", avg), ("raw", rbm)]:
        saved = str(tmp_path / f"dbm_{which}.pt")
        exact = ["--init-rbm-model", which, "--init-top-std", "0", "--epochs", "0", "--no-score", "--save", saved]
        dbm, _, _, run = dbm_quality.main([*grow, "--init-rbm", rbm_file, *exact])
        assert run["epoch"] == 0 and not any(r["event"] == "pretrained" for r in _records(capsys))
        p, q = dbm.params(), source.params()
        assert torch.allclose(p.weights[0], q.weight, atol=1e-5)
        assert torch.allclose(p.biases[0], q.visible_bias, atol=1e-4)
        assert torch.allclose(p.biases[1], q.hidden_bias, atol=1e-4)
        assert torch.equal(p.weights[1], torch.zeros(16, 8)) and torch.equal(p.biases[2], torch.zeros(8))
        file = torch.load(saved, weights_only=False)
        assert torch.equal(file["chains"]["state"][:, :784], chains.state)
    dbm, _, _, run = dbm_quality.main([*grow, "--init-rbm", rbm_file, "--epochs", "1", "--no-score"])
    assert run["epoch"] == 1 and dbm.weight_1.abs().max() > 0
    with pytest.raises(SystemExit, match="--layers must start with 16"):
        dbm_quality.main([*DBM_ARGS, "--data", data, "--init-rbm", rbm_file, "--epochs", "0", "--no-score"])
    for bad in (["--resume", rbm_file], ["--init-top-std", "-1"], ["--epochs", "-1"]):
        with pytest.raises(SystemExit):
            dbm_quality.main([*grow, "--init-rbm", rbm_file, "--no-score", *bad])
    with pytest.raises(SystemExit):  # rbm_quality.py has no untrained score: --epochs 0 is refused, not endless
        rbm_quality.main([*RBM_ARGS, "--data", data, "--epochs", "0"])


def test_dbm_top_rbm_headroom_is_the_dbn_bound_gain(rbm_quality, data, tmp_path, capsys):
    """dbm_top_rbm.py: the bottom RBM's hidden marginal is exact (enumeration over v), the DBN bound
    ``log p_R(v) + E_q[log p_T(h) - log p_R(h)]`` is the exact DBN's ``log p(v)`` minus ``KL(q || p_DBN(h | v))``,
    and a tiny run trains, saves and scores a top RBM on the drawn hidden states."""
    from helpers import all_states, exact_visible_probs

    from dgm_ppl.energy import BernoulliRBM

    top_rbm = benchmark_script("dbm_top_rbm")
    torch.manual_seed(0)
    bottom, top = BernoulliRBM(6, 4), BernoulliRBM(4, 3)
    for m in (bottom, top):
        with torch.no_grad():
            m.weight.normal_(0, 1.0)
            m.visible_bias.normal_(0, 0.5)
            m.hidden_bias.normal_(0, 0.5)
    v, h = all_states(6), all_states(4)
    joint = -bottom.energy(v[:, None, :].expand(-1, 16, -1), h[None].expand(64, -1, -1))  # (v, h)
    log_z_r = torch.logsumexp(joint.flatten(), 0)
    log_prior_r = top_rbm.hidden_log_marginal(bottom, h) - log_z_r
    assert torch.allclose(log_prior_r, torch.logsumexp(joint, 0) - log_z_r, atol=1e-5)
    centered = BernoulliRBM(6, 4, centered=True)
    with torch.no_grad():
        for t in (centered.weight, centered.visible_bias, centered.hidden_bias):
            t.normal_(0, 1.0)
        centered.visible_offset.uniform_(0.2, 0.8)
        centered.hidden_offset.uniform_(0.2, 0.8)
    joint_c = -centered.energy(v[:, None, :].expand(-1, 16, -1), h[None].expand(64, -1, -1))
    assert torch.allclose(top_rbm.hidden_log_marginal(centered, h), torch.logsumexp(joint_c, 0), atol=1e-4)
    probs_t, _ = exact_visible_probs(top)  # p_T(h) over the 16 states of h, in all_states order
    log_p_v_given_h = joint - torch.logsumexp(joint, 0, keepdim=True)  # log p_R(v | h)
    log_p_dbn = torch.logsumexp(log_p_v_given_h + probs_t.log()[None], 1)  # the DBN's exact log p(v)
    q = torch.softmax(joint, 1)  # p_R(h | v)
    log_p_r = torch.logsumexp(joint, 1) - log_z_r
    bound = log_p_r + (q * (probs_t.log() - log_prior_r)[None]).sum(1)
    posterior_dbn = torch.softmax(log_p_v_given_h + probs_t.log()[None], 1)
    kl = (q * (q.log() - posterior_dbn.log())).sum(1)
    assert torch.allclose(bound, log_p_dbn - kl, atol=1e-4) and (kl > 1e-3).any()

    rbm_file = str(tmp_path / "rbm.pt")
    rbm_quality.main([*RBM_ARGS, "--data", data, "--epochs", "2", "--average-from", "0.5", "--save", rbm_file])
    capsys.readouterr()
    saved = str(tmp_path / "top.pt")
    top_rbm.main(["--data", data, "--rbm", rbm_file, "--threads", "1", "--rbm-ais-chains", "8", "--rbm-ais-betas",
                  "100", "--save", saved, "--", "--hidden", "5", "--epochs", "2", "--batch-size", "50", "--chains",
                  "20", "--average-from", "0.5", "--ais-chains", "8", "--ais-betas", "100"])  # fmt: skip
    records = _records(capsys)
    (first,) = [r for r in records if r["event"] == "bottom"]
    tops = [r for r in records if r["event"] == "top"]
    assert [r["model"] for r in tops] == ["raw", "averaged"] and first["hidden_mean"] > 0
    for r in tops:
        assert r["dbn_bound"] == pytest.approx(first["log_likelihood"] + r["headroom"], abs=2e-3)
        assert r["headroom"] == pytest.approx(r["hidden_log_prior"] - first["hidden_log_prior"], abs=2e-3)
    file = torch.load(saved, weights_only=False)
    assert file["rbm"]["weight"].shape == (16, 5) and file["avg"] is not None and file["run"]["epoch"] == 2
    # --fresh-draws: each epoch's draws come from a generator seeded by the epoch, so a resumed run is the same run
    fresh = ["--data", data, "--rbm", rbm_file, "--threads", "1", "--rbm-ais-chains", "4", "--rbm-ais-betas", "20",
             "--fresh-draws", "--", "--hidden", "5", "--batch-size", "50", "--chains", "20", "--no-score"]  # fmt: skip
    whole, half = str(tmp_path / "whole.ckpt"), str(tmp_path / "half.ckpt")
    top_rbm.main([*fresh, "--epochs", "3", "--checkpoint", whole])
    top_rbm.main([*fresh, "--epochs", "3", "--stop-after", "1", "--checkpoint", half])
    top_rbm.main([*fresh, "--epochs", "3", "--resume", half, "--checkpoint", half])
    _assert_same_run(whole, half)


def test_dbm_greedy_top_statistics_are_exact_and_a_tiny_run_scores(rbm_quality, data, tmp_path, capsys):
    """dbm_greedy_top.py: -F(v, h1) with h2 summed out and the prior of h1 with v and h2 summed out match
    enumeration; a tiny run keeps W_0 and the visible bias frozen, moves the top layer, and scores."""
    from helpers import all_states

    from dgm_ppl.energy import DBM

    greedy = benchmark_script("dbm_greedy_top")
    torch.manual_seed(0)
    dbm = DBM([5, 4, 3])
    with torch.no_grad():
        for p in dbm.parameters():
            p.normal_(0, 1.0)
    v, h1, h2 = all_states(5), all_states(4), all_states(3)
    i, j, k = (x.flatten() for x in torch.meshgrid(torch.arange(32), torch.arange(16), torch.arange(8), indexing="ij"))
    neg_e = -dbm.energy([v[i], h1[j], h2[k]]).reshape(32, 16, 8)
    clamped = greedy.clamped_statistic(dbm, v[:, None].expand(-1, 16, -1), h1[None].expand(32, -1, -1))
    assert torch.allclose(clamped, torch.logsumexp(neg_e, 2), atol=1e-4)
    assert torch.allclose(greedy.hidden_prior(dbm, h1), torch.logsumexp(neg_e, (0, 2)), atol=1e-4)

    rbm_file = str(tmp_path / "rbm.pt")
    rbm_quality.main([*RBM_ARGS, "--data", data, "--epochs", "2", "--average-from", "0.5", "--save", rbm_file])
    capsys.readouterr()
    saved = str(tmp_path / "greedy.pt")
    greedy.main(["--data", data, "--rbm", rbm_file, "--top-size", "6", "--time-budget", "0.01", "--lr", "1e-2",
                 "--batch-size", "50", "--chains", "20", "--rbm-ais-betas", "100", "--ais-chains", "8",
                 "--ais-betas", "100", "--save", saved])  # fmt: skip
    records = _records(capsys)
    assert [r["event"] for r in records] == ["bottom", "epoch", "score"]
    score = records[-1]
    assert math.isfinite(score["fixed_q_bound"]) and math.isfinite(score["reverse_ais_log_z"])
    assert score["fixed_q_bound"] == pytest.approx(records[0]["log_likelihood"] + score["headroom"], abs=2e-3)
    assert ("warning" in score) == (abs(score["reverse_ais_log_z"] - score["log_z"]) > 1.0)
    state = torch.load(saved, weights_only=False)["dbm"]
    rbm = torch.load(rbm_file, weights_only=False)["avg"]
    assert torch.allclose(state["weight_0"], rbm["weight"]) and torch.allclose(state["bias_0"], rbm["visible_bias"])
    assert state["weight_1"].shape == (16, 6) and state["weight_1"].abs().max() > 0.05  # moved from sd 0.01
    greedy.main(["--data", data, "--rbm", rbm_file, "--top-size", "6", "--time-budget", "0.01", "--fixed-draws",
                 "--batch-size", "50", "--chains", "20", "--rbm-ais-betas", "50", "--ais-chains", "4",
                 "--ais-betas", "50"])  # fmt: skip
    assert _records(capsys)[-1]["event"] == "score"
