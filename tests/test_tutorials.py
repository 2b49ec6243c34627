"""The quickstart runs end to end (shortened) and writes its report, model and figure."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tutorials", "quickstart_rbm.py"),
            "--epochs",
            "3",
            "--hidden",
            "12",
            "--ais-betas",
            "500",
            "--no-progress",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    report = json.loads(out[: out.rindex("}") + 1])
    assert abs(report["log_z_ais"] - report["log_z_exact"]) < 0.2
    assert -40 < report["test_log_likelihood_exact"] < -15
    assert (tmp_path / "quickstart_rbm.png").stat().st_size > 1000
    assert (tmp_path / "quickstart_rbm.pt").exists()


def test_dbm_digits_runs(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tutorials", "dbm_digits.py"),
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
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    report = json.loads(out[: out.rindex("}") + 1])
    assert abs(report["log_z_ais"] - report["log_z_exact"]) < 0.2
    assert -40 < report["test_log_likelihood_exact"] < -15
    assert report["test_log_likelihood_bound_exact"] <= report["test_log_likelihood_exact"] + 1e-3
    for stage in report["mean_field"].values():  # coordinate ascent: the bound never decreases
        assert stage["smallest_per_datum_change"] > -1e-3
        assert stage["smallest_gap"] > -1e-3
    assert set(report["classifier_test_accuracy"]) == {"dbn_pretrained", "random_init"}
    assert (tmp_path / "dbm_digits.png").stat().st_size > 1000
