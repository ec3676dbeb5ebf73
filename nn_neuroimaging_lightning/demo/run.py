"""The main job: the reference CNN on the embedded synthetic data, watched by every callback."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, List, Mapping, Optional

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from nn_neuroimaging_lightning import config as C


def build_callbacks(cfg: Mapping[str, Any]) -> List[pl.Callback]:
    """All of the package's callbacks, configured from the demo config's sections."""
    from nn_neuroimaging_lightning import callbacks as CB

    out: List[pl.Callback] = [CB.NNEEGCallback(**cfg["eeg"])]
    if hasattr(CB, "NNfMRICallback"):
        out.append(CB.NNfMRICallback(**cfg["fmri"]))
    if hasattr(CB, "CrossModalCallback"):
        out.append(CB.CrossModalCallback(**cfg["cross_modal"]))
    return out


def run_demo(config: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Train, print where the run is and how to open it, then print a summary.

    Returns:
        ``{"log_dir", "trainer", "model", "callbacks", "seconds", "metrics"}`` for callers and tests.
    """
    from nn_neuroimaging_lightning.demo import DemoClassifier, DemoDataModule

    cfg = C.load_demo(config, overrides)
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)
    # Unset sizes keep the data module's own defaults (synthetic: 6400/2048; CIFAR: the full set).
    data_args = {k: v for k, v in cfg["data"].items() if v is not None or k == "data_dir"}
    datamodule = DemoDataModule(seed=cfg["seed"], **data_args)
    model = DemoClassifier(**cfg["model"])
    callbacks = build_callbacks(cfg)
    logger = TensorBoardLogger(save_dir=cfg["log_dir"], name=cfg["name"])
    trainer_args = {k: v for k, v in cfg["trainer"].items() if v is not None}
    trainer = pl.Trainer(logger=logger, callbacks=callbacks, enable_checkpointing=False, deterministic=True, **trainer_args)
    run_dir = os.path.abspath(logger.log_dir)
    print(f"nn-neuroimaging demo: writing the run to {run_dir}")
    print(f"  open it with:  tensorboard --logdir {os.path.abspath(cfg['log_dir'])}   (then http://localhost:6006)")
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    print(summary_table(trainer, callbacks, metrics, seconds, run_dir))
    return {"log_dir": run_dir, "trainer": trainer, "model": model, "callbacks": callbacks, "seconds": seconds, "metrics": metrics}


def summary_table(trainer: pl.Trainer, callbacks: List[pl.Callback], metrics: Mapping[str, float], seconds: float, run_dir: str) -> str:
    """A short Markdown summary printed at the end of the demo."""
    rows = [
        ("epochs", str(trainer.current_epoch)),
        ("steps", str(trainer.global_step)),
        ("wall time", f"{seconds:.1f} s"),
        ("val_acc", _fmt(metrics.get("val_acc"))),
        ("val_loss", _fmt(metrics.get("val_loss"))),
        ("nn_eeg/state_accuracy", _fmt(metrics.get("nn_eeg/state_accuracy"))),
        ("cross_modal/consistency", _fmt(metrics.get("cross_modal/consistency"))),
        ("anomaly events", str(sum(len(getattr(cb, "events", [])) for cb in callbacks))),
        ("run directory", run_dir),
    ]
    width = max(len(k) for k, _ in rows)
    lines = ["", "| measure".ljust(width + 2) + " | value |", "|" + "-" * (width + 2) + "|-------|"]
    lines += [f"| {k.ljust(width)} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"
