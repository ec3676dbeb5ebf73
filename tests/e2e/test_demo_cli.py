"""The main job end to end: `nn-neuroimaging demo` with tiny settings, read back from disk."""

import glob
import os
import subprocess
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from nn_neuroimaging_lightning.cli import main


def _accumulate(run_dir):
    ea = EventAccumulator(run_dir, size_guidance={"scalars": 0, "images": 0, "histograms": 0, "tensors": 0})
    ea.Reload()
    return ea


@pytest.mark.timeout(600)
def test_demo_cli_writes_a_tensorboard_run(tmp_path, capsys):
    assert main(["demo", "--max-epochs", "2", "--n-train", "2560", "--n-val", "384", "--log-dir", str(tmp_path), "--no-progress-bar"]) == 0
    out = capsys.readouterr().out
    runs = glob.glob(str(tmp_path / "demo" / "version_*"))
    assert len(runs) == 1
    run = runs[0]
    assert f"writing the run to {os.path.abspath(run)}" in out
    assert "tensorboard --logdir" in out and "| val_acc" in out
    ea = _accumulate(run)
    scalars = set(ea.Tags()["scalars"])
    assert {"train_loss", "val_loss", "val_acc"} <= scalars
    assert any(t.startswith("nn_eeg/anomaly") for t in scalars)
    assert any(t.startswith("nn_eeg/model.conv1/band/gamma") for t in scalars)
    steps = [e.step for e in ea.Scalars("train_loss")]
    assert steps == sorted(steps) and len(steps) >= 1
    assert ea.Tags()["histograms"], "stacked spectra missing"
    assert ea.Tags()["images"], "figures missing"


def test_demo_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("eeg:\n  windw: 12\n")
    with pytest.raises(ValueError, match=r"unknown config key `windw`.*allowed keys: layers, window"):
        main(["demo", "--config", str(bad), "--log-dir", str(tmp_path)])
    bad.write_text("trainer:\n  max_epochs: many\n")
    with pytest.raises(ValueError, match=r"`trainer.max_epochs`"):
        main(["demo", "--config", str(bad), "--log-dir", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        main(["demo", "--config", str(tmp_path / "nope.yaml")])


def test_cli_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--max-epochs", "0"])
    assert "must be a positive int" in capsys.readouterr().err


def test_python_dash_m_is_the_console_script():
    out = subprocess.run([sys.executable, "-m", "nn_neuroimaging_lightning", "--help"], capture_output=True, text=True, check=True)
    assert "demo" in out.stdout and "report" in out.stdout
