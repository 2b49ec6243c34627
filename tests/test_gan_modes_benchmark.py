"""Smoke test of benchmarks/gan_modes.py: every loss runs a few steps and prints valid JSON lines."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gan_modes.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gan_modes_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(monkeypatch, capsys, *argv):
    module = load_script()
    monkeypatch.setattr(sys, "argv", ["gan_modes.py", *argv])
    module.main()
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_gan_modes_smoke(monkeypatch, capsys):
    common = ["--no-progress", "--threads", "1", "--steps", "5", "--samples", "100", "--train-size", "1000"]
    records = run_main(monkeypatch, capsys, *common, "--seeds", "1", "--eval-every", "2")
    assert records[0]["event"] == "config"
    runs = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    summaries = [r for r in records if r.get("event") == "summary"]
    module = load_script()
    assert len(runs) == len(module.DATASETS) * len(module.LOSSES)
    assert {(s["dataset"], s["loss"]) for s in summaries} == {(d, n) for d in module.DATASETS for n in module.LOSSES}
    for r in runs:
        assert r["steps_done"] == 5 and not r["stopped_early"]
        assert 0 <= r["modes"] <= r["num_modes"] and 0 <= r["high_quality"] <= 1
    for s in summaries:
        assert s["runs"] == 1 and 0 <= s["on_target"] <= 1
    assert any(r.get("event") == "progress" for r in records)


def test_gan_modes_time_budget(monkeypatch, capsys):
    args = ["--no-progress", "--steps", "1000", "--samples", "100", "--train-size", "1000", "--time-budget", "0"]
    records = run_main(monkeypatch, capsys, *args, "--seeds", "1", "--datasets", "ring", "--losses", "gan", "mmd")
    runs = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert len(runs) == 2
    assert all(r["stopped_early"] and r["steps_done"] < 1000 for r in runs)


def test_gan_modes_ema_scores_the_average_and_the_raw_generator(monkeypatch, capsys):
    args = ["--no-progress", "--steps", "5", "--samples", "100", "--train-size", "1000", "--seeds", "1"]
    records = run_main(monkeypatch, capsys, *args, "--datasets", "ring", "--losses", "gan", "--ema", "0.5")
    (run,) = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert run["ema"] == 0.5 and {"raw_modes", "raw_high_quality", "raw_reverse_kl"} <= set(run)


def test_gan_modes_rejection_scores_the_kept_samples(monkeypatch, capsys):
    args = ["--no-progress", "--steps", "5", "--samples", "100", "--train-size", "1000", "--seeds", "2"]
    records = run_main(monkeypatch, capsys, *args, "--datasets", "ring", "--losses", "gan", "--rejection", "0", "2",
                       "--drs-d-steps", "3")  # fmt: skip
    runs = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert len(runs) == 2
    for run in runs:
        assert set(run["drs"]) == {"0", "2"}
        for drs in run["drs"].values():
            assert 0 < drs["acceptance"] <= 1 and 0 <= drs["high_quality"] <= 1 and drs["modes"] <= 8
        # a larger γ rejects more
        assert run["drs"]["2"]["acceptance"] < run["drs"]["0"]["acceptance"]
    (summary,) = [r for r in records if r.get("event") == "summary"]
    assert {"high_quality", "high_quality_std", "on_target", "acceptance"} <= set(summary["drs"]["2"])
    assert set(summary["drs_refit"]) == {"0", "2"} and all(set(r["drs_refit"]) == {"0", "2"} for r in runs)


def test_gan_modes_rejection_records_a_failed_gamma_and_goes_on(monkeypatch, capsys):
    """DRS that gives up at one γ (too few acceptances) is recorded for that γ; the other γ and seeds are scored."""
    import dgm_ppl.infer

    real = dgm_ppl.infer.discriminator_rejection_sampling

    def flaky(*args, gamma=0.0, **kwargs):
        if gamma == 2:
            raise ValueError("1 of 100 samples accepted in 10000 rounds")
        return real(*args, gamma=gamma, **kwargs)

    monkeypatch.setattr(dgm_ppl.infer, "discriminator_rejection_sampling", flaky)  # imported by the script
    args = ["--no-progress", "--steps", "3", "--samples", "50", "--train-size", "500", "--seeds", "2"]
    records = run_main(monkeypatch, capsys, *args, "--datasets", "ring", "--losses", "gan", "--rejection", "0", "2")
    runs = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert len(runs) == 2 and all("accepted in" in r["drs"]["2"]["failed"] for r in runs)
    assert all(0 < r["drs"]["0"]["acceptance"] <= 1 for r in runs)
    (summary,) = [r for r in records if r.get("event") == "summary"]
    assert summary["drs"]["2"]["failed"] == 2 and summary["drs"]["2"]["on_target"] == 0
    assert summary["drs"]["2"]["high_quality"] is None and summary["drs"]["0"]["failed"] == 0


def test_gan_modes_rejection_refuses_a_critic_that_is_not_a_ratio(monkeypatch, capsys):
    args = ["--no-progress", "--steps", "2", "--samples", "50", "--train-size", "500", "--seeds", "1"]
    for bad in (["--losses", "wgan_gp"], ["--losses", "gan", "--kind", "hinge"]):
        with pytest.raises(SystemExit):
            run_main(monkeypatch, capsys, *args, "--datasets", "ring", *bad, "--rejection", "0")
        assert "--rejection needs --losses gan" in capsys.readouterr().err


def test_gan_modes_refits_a_fresh_critic_of_the_given_size(monkeypatch, capsys):
    """--drs-critic W [W ...]: the refit trains a new critic of that size (not the training discriminator) and
    DRS scores with it; its seconds are recorded. Without --drs-d-steps it is refused."""
    module = load_script()
    built = []

    class Recorded(module.Critic):
        def __init__(self, in_features, widths):
            super().__init__(in_features, widths)
            built.append((in_features, widths))

    monkeypatch.setattr(module, "Critic", Recorded)
    args = ["--no-progress", "--steps", "4", "--samples", "50", "--train-size", "500", "--seeds", "1"]
    args += ["--datasets", "grid", "--losses", "gan", "--rejection", "0"]
    monkeypatch.setattr(sys, "argv", ["gan_modes.py", *args, "--drs-d-steps", "3", "--drs-critic", "16", "8"])
    module.main()
    assert built == [(2, [128, 128]), (2, [16, 8])]  # the training discriminator, then the fresh critic
    (run,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"seed"' in x and '"event"' not in x]
    assert isinstance(run["drs_refit_s"], float) and run["drs_refit_s"] >= 0  # a few ms: may round to 0.0
    assert 0 < run["drs_refit"]["0"]["acceptance"] <= 1
    with pytest.raises(SystemExit):
        run_main(monkeypatch, capsys, *args, "--drs-critic", "16", "8")
    assert "--drs-critic needs" in capsys.readouterr().err


def test_gan_speed_runs_every_implementation_on_the_same_trajectory(monkeypatch, capsys):
    """benchmarks/gan_speed.py: every implementation times; SVI with Pyro's or dgm_ppl's Adam and the hand-written
    loop draw the same numbers and do the same arithmetic, so their generators agree exactly."""
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # gan_speed imports gan_modes
    spec = importlib.util.spec_from_file_location("gan_speed_benchmark", SCRIPT.parent / "gan_speed.py")
    gan_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gan_speed)
    argv = ["gan_speed.py", "--sizes", "small", "--chunks", "2", "--chunk", "2", "--warmup", "2"]
    monkeypatch.setattr(sys, "argv", argv)
    gan_speed.main()
    records = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {r["impl"] for r in records if "impl" in r} == set(gan_speed.IMPLS)
    (summary,) = [r for r in records if r.get("event") == "summary"]
    for name in ("svi", "svi_no_validation", "svi_dgm_optim"):
        assert summary[f"{name}_over_raw"] > 0
        assert summary[f"final_sample_diff_{name}_vs_raw"] == 0.0
    assert summary["final_sample_diff_mmd_svi_vs_mmd_raw"] < 1e-3


def test_gan_modes_discriminator_widths_layer_by_layer(monkeypatch, capsys):
    """--d-widths builds the discriminator with those hidden widths (and records them); without it, --d-hidden x
    --d-layers as before."""
    args = ["--no-progress", "--steps", "3", "--samples", "50", "--train-size", "500", "--seeds", "1"]
    records = run_main(monkeypatch, capsys, *args, "--datasets", "ring", "--losses", "gan", "--d-widths", "24", "6")
    (run,) = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert run["d_widths"] == [24, 6]
    module = load_script()
    d = module.Critic(2, [24, 6])
    assert [m.out_features for m in d.net if hasattr(m, "out_features")] == [24, 6, 1]
    records = run_main(monkeypatch, capsys, *args, "--datasets", "ring", "--losses", "gan", "--d-hidden", "16")
    (run,) = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert run["d_widths"] == [16, 16]


def test_gan_modes_resume_reuses_the_finished_runs_of_a_stopped_sweep(monkeypatch, capsys, tmp_path):
    out = tmp_path / "sweep.jsonl"
    args = ["--no-progress", "--steps", "5", "--samples", "100", "--train-size", "1000", "--seeds", "2",
            "--datasets", "ring", "--losses", "gan", "--out", str(out)]  # fmt: skip
    full = run_main(monkeypatch, capsys, *args)
    first, second = [r for r in full if r.get("benchmark") == "gan_modes" and "event" not in r]
    # the sweep stopped during its second run: the file holds the config line, the first run and a cut-off line
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    resumed = run_main(monkeypatch, capsys, *args, "--resume")
    assert [r["seed"] for r in resumed if r.get("event") == "reused"] == [0]
    records = [json.loads(line) for line in out.read_text().splitlines()]  # the cut-off line was dropped
    assert [r["seed"] for r in records if r.get("benchmark") == "gan_modes" and "event" not in r] == [0, 1]
    (rerun,) = [r for r in resumed if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert rerun["seed"] == 1
    for key in ("modes", "high_quality", "reverse_kl", "steps_done"):
        assert rerun[key] == second[key]
    (summary,) = [r for r in resumed if r.get("event") == "summary"]
    (summary_full,) = [r for r in full if r.get("event") == "summary"]
    for key in ("modes", "high_quality", "reverse_kl", "on_target", "runs"):
        assert summary[key] == summary_full[key]
    # other settings: nothing is reused
    other = run_main(monkeypatch, capsys, *args, "--resume", "--steps", "4")
    assert not any(r.get("event") == "reused" for r in other)
    assert sum(r.get("benchmark") == "gan_modes" and "event" not in r for r in other) == 2


def test_gan_modes_resume_needs_out_and_refuses_a_corrupt_file(monkeypatch, capsys, tmp_path):
    args = ["--no-progress", "--steps", "2", "--samples", "100", "--train-size", "1000", "--seeds", "1",
            "--datasets", "ring", "--losses", "gan"]  # fmt: skip
    with pytest.raises(SystemExit):
        run_main(monkeypatch, capsys, *args, "--resume")
    assert "--resume needs --out" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event": "config"\n{"benchmark": "gan_modes"}\n')
    with pytest.raises(ValueError, match="line 1: not a JSON line"):
        run_main(monkeypatch, capsys, *args, "--out", str(bad), "--resume")


def test_gan_modes_autocast_trains_in_bfloat16_and_scores_in_float32(monkeypatch, capsys):
    args = ["--no-progress", "--steps", "3", "--samples", "50", "--train-size", "500", "--seeds", "1"]
    records = run_main(monkeypatch, capsys, *args, "--datasets", "ring", "--losses", "gan", "--autocast", "bfloat16")
    assert records[0]["autocast"] == "bfloat16"
    (run,) = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert run["steps_done"] == 3 and 0 <= run["high_quality"] <= 1
    with pytest.raises(SystemExit):
        run_main(monkeypatch, capsys, *args, "--autocast", "float64")


def test_gan_modes_mixture_latent_and_lazy_r1(monkeypatch, capsys):
    """``--latent-mixture K``: z = μ_k + σ ε, the draws clustered around the K means; ``--r1 --r1-every`` reach
    ``GANLoss``'s lazy R1 penalty."""
    module = load_script()
    torch = module.torch
    torch.manual_seed(0)
    latent = module.MixtureLatent(3, 2, 0.01)
    z = latent(torch.randn(600, 2))
    nearest = torch.cdist(z, latent.means.detach()).min(-1).values
    assert nearest.max() < 0.1  # every draw sits within a few σ of a mean
    args = ["--no-progress", "--steps", "6", "--samples", "100", "--train-size", "1000", "--seeds", "1"]
    records = run_main(
        monkeypatch, capsys, *args, "--datasets", "grid", "--losses", "gan", "--latent-mixture", "5",
        "--latent-scale", "0.2", "--r1", "0.1", "--r1-every", "4",
    )  # fmt: skip
    (run,) = [r for r in records if r.get("benchmark") == "gan_modes" and "event" not in r]
    assert run["latent_mixture"] == 5 and run["latent_scale"] == 0.2
    assert run["r1"] == 0.1 and run["r1_every"] == 4 and run["steps_done"] == 6
