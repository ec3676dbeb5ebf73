"""Every script in examples/ runs with tiny settings, exits 0 and prints what it promises."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _run(args, cwd, timeout=120):
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.timeout(180)
def test_early_stopping_on_anomaly_stops_before_the_loss_based_stop(tmp_path):
    out = _run([EXAMPLES / "early_stopping_on_anomaly.py", "--n-train", "1024", "--max-epochs", "2", "--log-dir", tmp_path], tmp_path)
    per_epoch = int(re.search(r"steps per epoch: (\d+)", out).group(1))
    assert per_epoch == 32
    m = re.search(r"gate stopped at step (\d+); loss-based EarlyStopping at step (\d+); (-?\d+) steps earlier", out)
    assert m, out
    gate, loss, earlier = map(int, m.groups())
    assert 0 < gate < loss and earlier == loss - gate
    assert loss % per_epoch == 0  # the loss-based stop happens at an epoch end
    first = re.search(r"first gate event: (\w+) in \S+ at batch (\d+)", out)
    assert first.group(1) in ("explosion", "non_finite") and int(first.group(2)) == gate - 1  # stopped in that step
    nan_at = int(re.search(r"the loss first became non-finite at batch (\d+)", out).group(1))
    assert int(first.group(2)) <= nan_at < loss  # the gate fires no later than the NaN; the loss check waits
    assert re.search(r"healthy control \(peak lr 0.05\): 64 steps, 0 gate events", out)  # no false stop
    assert (tmp_path / "events.jsonl").exists()


@pytest.mark.timeout(180)
def test_transformer_tokens_prints_token_by_hidden_grids(tmp_path):
    out = _run([EXAMPLES / "transformer_tokens.py", "--max-epochs", "2", "--n-train", "512", "--n-val", "128",
                "--zeta-budget", "64", "--log-dir", tmp_path], tmp_path)
    assert "fMRI layers: ['model.blocks.0', 'model.blocks.1']" in out
    assert out.count("density grid (16, 4) (tokens x hidden)") == 2
    tops = re.findall(r"top 1: tokens (\d+)-(\d+), hidden (\d+)-(\d+): zeta ([+-][\d.]+)", out)
    assert len(tops) == 2
    for t_lo, t_hi, d_lo, d_hi, _ in tops:
        assert 0 <= int(t_lo) <= int(t_hi) < 16 and int(d_hi) - int(d_lo) == 7  # 32 hidden units in 4 groups
    # block 0 has the key token (position 3) as its most impactful region
    assert re.search(r"model.blocks.0: density grid \(16, 4\) \(tokens x hidden\)\n  top region holds a key position: yes", out)
    # zeta on 2 blocks: rho is undefined, so consistency is NaN (issue 13 changed the rule; it was
    # 0.833 with a neutral rho)
    assert re.search(r"cross-modal consistency: nan\n", out)
    assert list(tmp_path.glob("tokens/version_0/events.out.tfevents.*"))


@pytest.mark.timeout(180)
def test_lightning_cli_builds_the_three_callbacks_from_yaml(tmp_path):
    out = _run([EXAMPLES / "lightning_cli.py", "fit", "--config", EXAMPLES / "lightning_cli.yaml", "--trainer.max_epochs", "1",
                "--data.n_train", "128", "--data.n_val", "64", "--trainer.logger.init_args.save_dir", tmp_path], tmp_path)
    assert "callbacks from YAML: NNEEGCallback, NNfMRICallback, CrossModalCallback" in out
    assert "NNEEGCallback: window=128 stop_on=['non_finite', 'explosion'] layers=['model.conv1', 'model.conv2', 'model.fc1', 'model.fc2']" in out
    assert "NNfMRICallback: grid=(4, 4, 4) density={'model.conv1': (4, 4, 4), 'model.conv2': (4, 4, 4), 'model.fc1': (4,), 'model.fc2': (4,)} zeta layers=['model.fc1']" in out
    assert re.search(r"CrossModalCallback: consistency=", out)
    assert "global_step=4 " in out  # 128 samples / batch 32, one epoch
    assert (tmp_path / "cli_demo" / "version_0" / "config.yaml").exists()


@pytest.mark.timeout(120)
def test_monitor_inference_flags_the_corrupted_and_the_drifted_forwards(tmp_path):
    out = _run([EXAMPLES / "monitor_inference.py", "--train-steps", "5", "--calibrate", "64", "--corrupt-at", "70",
                "--drift-at", "80", "--forwards", "90"], tmp_path)
    layers = "conv1, conv2, fc1, fc2"
    assert f"tapped layers: {layers}; calibrated on forwards 0-63; 90 forwards served" in out
    assert f"forward 70: non_finite in {layers}\n" in out
    assert f"forwards 80-89: explosion in {layers}\n" in out
    assert "flagged non_finite at forward(s) [70]" in out
    assert "drift from forward 80: first flagged at forward 80; 10 of 10 drifted forwards flagged" in out
    assert "events on the healthy stream after calibration: 0" in out


@pytest.mark.timeout(240)
def test_huggingface_gpt2_gets_every_tap_a_zeta_map_and_a_defined_consistency(tmp_path):
    out = _run([EXAMPLES / "huggingface_gpt2.py", "--log-dir", tmp_path], tmp_path, timeout=220)
    taps = ["model.transformer.drop", "model.transformer.h.0", "model.transformer.h.1", "model.lm_head"]
    assert f"tapped: {taps}" in out
    assert "(4 of 4)" in out, out  # every tapped layer has a map with finite 95 % intervals
    c = float(re.search(r"cross-modal consistency: ([\d.]+)", out).group(1))
    assert 0.0 <= c <= 1.0
    assert list(tmp_path.glob("gpt2/version_0/events.out.tfevents.*"))
