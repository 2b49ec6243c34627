"""The tutorials run end to end (shortened) and write their reports, models and figures."""

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tutorial(script: str, *args: str) -> dict:
    """Run ``tutorials/<script>`` with ``args`` and return the JSON report it prints."""
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tutorials", script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    return json.loads(out[: out.rindex("}") + 1])


def test_quickstart_runs(tmp_path):
    report = run_tutorial(
        "quickstart_rbm.py",
        "--epochs",
        "3",
        "--hidden",
        "12",
        "--ais-betas",
        "500",
        "--no-progress",
        "--out",
        str(tmp_path),
    )
    assert abs(report["log_z_ais"] - report["log_z_exact"]) < 0.2
    assert -40 < report["test_log_likelihood_exact"] < -15
    assert (tmp_path / "quickstart_rbm.png").stat().st_size > 1000
    assert (tmp_path / "quickstart_rbm.pt").exists()


def test_dbm_digits_runs(tmp_path):
    report = run_tutorial(
        "dbm_digits.py",
        "--epochs",
        "3",
        "--pretrain-epochs",
        "2",
        "--finetune-epochs",
        "2",
        "--ais-betas",
        "500",
        "--no-progress",
        "--out",
        str(tmp_path),
    )
    assert abs(report["log_z_ais"] - report["log_z_exact"]) < 0.2
    assert -40 < report["test_log_likelihood_exact"] < -15
    assert report["test_log_likelihood_bound_exact"] <= report["test_log_likelihood_exact"] + 1e-3
    for stage in report["mean_field"].values():  # coordinate ascent: the bound never decreases
        assert stage["smallest_per_datum_change"] > -1e-3
        assert stage["smallest_gap"] > -1e-3
    assert set(report["classifier_test_accuracy"]) == {"dbn_pretrained", "random_init"}
    assert (tmp_path / "dbm_digits.png").stat().st_size > 1000


def test_learning_by_comparison_runs(tmp_path):
    report = run_tutorial(
        "learning_by_comparison.py",
        "--steps",
        "480",
        "--digit-epochs",
        "6",
        "--no-progress",
        "--out",
        str(tmp_path),
    )
    ring = report["mixture"]
    assert ring["real_data"]["modes"] == 8 and ring["real_data"]["high_quality"] > 0.95
    assert ring["real_data"]["mmd_test_p_value"] > 0.01  # two samples of real data: no rejection
    for name in ("nonsaturating_gan", "wgan_gp", "mmd"):
        scores = ring[name]
        assert set(scores) >= {"modes", "high_quality", "reverse_kl", "mmd2_held_out", "mmd_test_p_value"}
        assert 6 <= scores["modes"] <= scores["num_modes"] == 8, (name, scores)  # no mode collapse, even short
        assert 0.02 < scores["high_quality"] < ring["real_data"]["high_quality"], (name, scores)
        assert 0 <= scores["reverse_kl"] < 0.2, (name, scores)
        assert math.isfinite(scores["mmd2_held_out"]) and 0 < scores["mmd_test_p_value"] <= 1
    digits = report["digits"]
    reference = digits["real_train_digits"]["mmd2_test"]
    for name in ("gan", "mmd"):
        scores = digits[name]
        assert reference < scores["mmd2_test"] < 0.3, (name, scores)  # learned something (one epoch: ~0.47)
        assert scores["fraction_copied"] < 0.5, (name, scores)
        assert 0.8 < scores["memorization_ratio"] < 4, (name, scores)
    assert math.isfinite(report["total_seconds"])
    assert (tmp_path / "learning_by_comparison.png").stat().st_size > 1000
