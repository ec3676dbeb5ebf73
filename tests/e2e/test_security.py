"""SPEC §6 security rules: no pickle on data files, writes only inside the log directory, YAML via omegaconf."""

from __future__ import annotations

import ast
import glob
import json
import os
import pickle
import re
import uuid
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

import nn_neuroimaging_lightning
from helpers import MLPModule, fast_trainer, zero_output_hook
from nn_neuroimaging_lightning.callbacks.cross_modal import CrossModalCallback
from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback
from nn_neuroimaging_lightning.demo import cifar

PACKAGE_DIR = Path(nn_neuroimaging_lightning.__file__).parent
SAFE_TAG = re.compile(r"^[A-Za-z0-9_.\-]+(/[A-Za-z0-9_.\-]+)*$")


def _records(n: int, labels: Any = None) -> np.ndarray:
    rec = np.random.default_rng(0).integers(0, 256, size=(n, cifar.RECORD_BYTES), dtype=np.uint8)
    rec[:, 0] = np.arange(n) % 10 if labels is None else labels
    return rec


# ------------------------------------------------------------------------------- CIFAR-10 reader
def test_cifar_reader_never_unpickles(tmp_path, monkeypatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the CIFAR-10 reader must not unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(np, "load", refuse)  # np.load(allow_pickle=True) would unpickle too
    monkeypatch.setattr(torch, "load", refuse)
    rec = _records(3)
    rec.tofile(tmp_path / "test_batch.bin")
    images, labels = cifar.read_cifar10_binary(tmp_path, train=False)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(images.numpy().reshape(3, -1), rec[:, 1:])  # R plane, G plane, B plane
    ds = cifar.CIFAR10Binary(tmp_path / "test_batch.bin", normalize=False)
    assert len(ds) == 3 and abs(float(ds[1][0][0, 0, 0]) - rec[1, 1] / 255.0) < 1e-7


def test_cifar_module_source_has_no_pickle() -> None:
    source = Path(cifar.__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal"}
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith(("#", ">>>", "...")))
    for forbidden in ("pickle.load", "allow_pickle=True", "torch.load(", "np.load(", "numpy.load("):
        assert forbidden not in code
    assert "np.fromfile" in code


@pytest.mark.parametrize(("size", "fragments"), [
    (0, ("is empty", "3073")),
    (cifar.RECORD_BYTES * 2 - 5, ("6141 bytes", "truncated", "3073")),
    (cifar.RECORD_BYTES + 1, ("3074 bytes", "not a whole number of records")),
    (cifar.MAX_FILE_BYTES + cifar.RECORD_BYTES, ("30733073 bytes", "more than the 10000 records", "30730000")),
])
def test_cifar_reader_rejects_truncated_and_oversized_files(tmp_path, size: int, fragments: tuple) -> None:
    path = tmp_path / "data_batch_1.bin"
    with open(path, "wb") as fh:
        if size:
            fh.truncate(size)  # sparse: an oversized file costs no disk
    with pytest.raises(ValueError) as info:
        cifar.read_cifar10_binary(path)
    msg = str(info.value)
    assert str(path) in msg
    for frag in fragments:
        assert frag in msg, msg


def test_cifar_reader_rejects_a_pickled_batch_and_bad_labels(tmp_path, monkeypatch) -> None:
    # The Python-version files are pickles: a reader that unpickled them would run their code.
    payload = pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]})
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    (tmp_path / "data_batch_1").write_bytes(payload)
    with pytest.raises(ValueError, match="not a whole number of records"):
        cifar.read_cifar10_binary(tmp_path / "data_batch_1")
    _records(2, labels=[3, 200]).tofile(tmp_path / "bad.bin")
    with pytest.raises(ValueError, match=r"label 200 at record 1.*0\.\.9"):
        cifar.read_cifar10_binary(tmp_path / "bad.bin")


# ------------------------------------------------------------------------------- writes stay inside the log dir
class _EvilNames(MLPModule):
    """MLPModule whose Linear layers are registered under path-like names (torch forbids only '.')."""

    def __init__(self, names: List[str]) -> None:
        super().__init__(n=512)
        self.net = nn.Sequential()
        for name, layer in zip(names, (nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))):
            self.net.add_module(name, layer)


def _all_files(root: Path) -> List[Path]:
    return [Path(d) / f for d, _, files in os.walk(root) for f in files]


def test_events_and_figures_stay_in_the_log_dir_with_path_like_module_names(tmp_path, monkeypatch) -> None:
    tag = uuid.uuid4().hex[:8]
    escape = f"/tmp/nnl_evil_{tag}"  # an absolute path: os.path.join(log_dir, name) would land here
    names = [f"{escape}/ x", "relu a", f"\\\\evil {tag}\\", "~relu", "%2e%2e/out:*?"]  # no "." allowed
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    model = _EvilNames(names)
    trainer_ref: List[Any] = [None]
    zero_output_hook(model.net.get_submodule(names[0]), trainer_ref, step=40)  # a dead layer: collapse events
    eeg = NNEEGCallback(analysis_every_n_steps=16)
    fmri = NNfMRICallback(grid=(2, 2, 4), zeta_time_fraction=None, zeta_budget=16, probe_size=16, check_every_n_steps=8)
    logger = TensorBoardLogger(str(tmp_path / "logs"), name="run", version=0)
    trainer = fast_trainer(tmp_path / "root", [eeg, fmri, CrossModalCallback()], logger=logger, max_epochs=2, log_every_n_steps=8)
    trainer_ref[0] = trainer
    trainer.fit(model)

    log_dir = tmp_path / "logs" / "run" / "version_0"
    assert eeg.layers == [f"net.{names[0]}", f"net.{names[2]}", f"net.{names[4]}"]
    # events were raised for the path-like layer and written to the ONE events file, in the log dir
    events = [json.loads(line) for line in (log_dir / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert any(e["layer"] == f"net.{names[0]}" and e["kind"] == "collapse" for e in events), {e["kind"] for e in events}
    assert fmri.zeta, "zeta panels must have been written"

    # nothing outside the log dir: not the escape path, not the working directory, not the root dir
    assert not os.path.exists(escape) and not glob.glob(f"/tmp/nnl_evil_{tag}*")
    assert not glob.glob(f"/tmp/*evil {tag}*") and not glob.glob(f"{tmp_path.parent}/*evil*")
    assert _all_files(cwd) == []
    outside = [p for p in _all_files(tmp_path) if log_dir not in p.parents]
    assert outside == [], outside
    inside = {p.relative_to(log_dir).as_posix() for p in _all_files(log_dir)}
    assert "events.jsonl" in inside and all(p == "events.jsonl" or p == "hparams.yaml" or p.startswith("events.out.tfevents.")
                                            for p in inside), inside

    # every TensorBoard tag is sanitised: no spaces, backslashes, '..' components or leading '/'
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = [t for kind in ("scalars", "images", "histograms", "tensors") for t in acc.Tags()[kind]]
    assert any("evil" in t for t in tags) and any("band" in t for t in tags) and any("spectrogram" in t for t in tags)
    for t in tags:
        assert SAFE_TAG.match(t), f"unsafe TensorBoard tag {t!r}"
        assert not any(set(part) == {"."} for part in t.split("/")), f"'..' component in tag {t!r}"


# ------------------------------------------------------------------------------- YAML only through omegaconf
def test_package_reads_yaml_only_through_omegaconf(tmp_path, monkeypatch) -> None:
    offenders = []
    for path in PACKAGE_DIR.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] in ("yaml", "ruamel") for a in node.names):
                offenders.append(f"{path}: import {[a.name for a in node.names]}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("yaml", "ruamel"):
                offenders.append(f"{path}: from {node.module} import")
            if isinstance(node, ast.Attribute) and node.attr in ("safe_load", "full_load", "unsafe_load", "load_all") :
                offenders.append(f"{path}: .{node.attr}")
            if (isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name)
                    and node.value.id == "yaml"):
                offenders.append(f"{path}: yaml.load")
    assert offenders == []

    # and the config loader really goes through OmegaConf.load
    from omegaconf import OmegaConf

    calls: List[str] = []
    real = OmegaConf.load
    monkeypatch.setattr(OmegaConf, "load", lambda p: calls.append(str(p)) or real(p))
    path = tmp_path / "eeg.yaml"
    path.write_text("window: 256\nstop_on: [non_finite]\n", encoding="utf-8")
    eeg = NNEEGCallback.from_config(str(path))
    assert calls == [str(path)] and eeg.window == 256 and eeg.stop_on == ("non_finite",)
