"""SPEC §6 "LightningCLI with the callbacks configured in YAML": class_path / init_args, a short fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("jsonargparse")
from lightning.pytorch.cli import LightningCLI  # noqa: E402

from nn_neuroimaging_lightning.callbacks.cross_modal import CrossModalCallback  # noqa: E402
from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback  # noqa: E402
from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback  # noqa: E402
from nn_neuroimaging_lightning.demo import DemoClassifier, DemoDataModule  # noqa: E402

CONFIG = Path(__file__).with_name("cli_callbacks.yaml")


def test_lightning_cli_builds_the_callbacks_from_yaml_and_fits(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cli = LightningCLI(
        DemoClassifier, DemoDataModule, run=True, save_config_kwargs={"overwrite": True},
        args=["fit", "--config", str(CONFIG), "--trainer.default_root_dir", str(tmp_path),
              "--trainer.logger.init_args.save_dir", str(tmp_path / "logs")],
    )
    trainer = cli.trainer
    found = {type(cb): cb for cb in trainer.callbacks}
    eeg, fmri, xm = found[NNEEGCallback], found[NNfMRICallback], found[CrossModalCallback]

    # The callbacks got the YAML values (every one differs from its default).
    assert eeg.layer_selection == ["model.conv1", "model.fc1", "model.fc2"]
    assert (eeg.window, eeg.nperseg, eeg.stop_on, eeg.explosion_z, eeg.state_window, eeg.analysis_every_n_steps) == (
        96, 64, ("non_finite",), 7.5, 8, 16)
    assert eeg.bands == {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "gamma": (30.0, 100.0)}
    assert (fmri.grid, fmri.zeta_selection, fmri.zeta_budget, fmri.zeta_time_fraction, fmri.probe_size, fmri.top_k,
            fmri.baseline, fmri.check_every_n_steps) == ((2, 2, 2), "model.fc1", 16, None, 16, 3, "mean", 2)
    assert (xm.band, xm.history, xm.joint_window) == ("theta", 16, 20)
    assert cli.model.lr == 0.002

    # The short fit ran with them: 2560 / 32 = 80 steps, the selected layers tapped, zeta on fc1 only.
    assert trainer.global_step == 80 and trainer.current_epoch == 1
    assert eeg.layers == ["model.conv1", "model.fc1", "model.fc2"]
    assert eeg.signal("model.fc1").shape == (80 + 2,)  # 80 training + 2 validation forwards (window 96)
    assert fmri.zeta_layers == ["model.fc1"] and set(fmri.zeta) == {"model.fc1"}
    assert tuple(fmri.zeta["model.fc1"].scores.shape) == (2,)  # (B, F) layer: g_c = 2 groups
    assert tuple(fmri.density["model.conv1"].shape) == (2, 2, 2)
    # zeta on fc1 only: rho over one layer is undefined, so consistency is NaN (issue 13 changed the
    # rule; it was 0.833 with a neutral rho) and the score says why.
    assert xm.consistency is not None and math.isnan(xm.consistency)
    assert xm.scores[-1]["undefined"]["rho"].startswith("fewer than 3 layers (1 layer(s)")
    # Band powers go to the logger directly (one `log_metrics` call per analysis): read them back.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "logs" / "cli" / "version_0"), size_guidance={"scalars": 0})
    acc.Reload()
    band_keys = [k for k in acc.Tags()["scalars"] if "/band/" in k]
    assert len(band_keys) == 3 * 3 and all(k.split("/band/")[1] in ("delta", "theta", "gamma") for k in band_keys)

    # Written where the YAML (as overridden) says, resolved config saved beside it.
    log_dir = tmp_path / "logs" / "cli" / "version_0"
    assert (log_dir / "config.yaml").is_file()
    saved = (log_dir / "config.yaml").read_text(encoding="utf-8")
    assert "nn_neuroimaging_lightning.NNEEGCallback" in saved and "explosion_z: 7.5" in saved
    for line in (log_dir / "events.jsonl").read_text(encoding="utf-8").splitlines() if (log_dir / "events.jsonl").exists() else []:
        json.loads(line)
    assert list(tmp_path.glob("*")) and not (tmp_path / "lightning_logs").exists()
    assert torch.isfinite(eeg.signal("model.conv1")).all()
