"""Short fits of the demo model for the logger and report tests (not a test module).

:func:`fit_demo`: one epoch of ``DemoClassifier`` on ``DemoDataModule`` synthetic images whose
``model.fc1`` outputs zeros from step 30 on (a dead layer), so NN-EEG records ``collapse`` events and
writes the events table at the validation epoch end; 72 training steps give the spectra their
first window (64 samples).
"""

from __future__ import annotations

from typing import Any, List

import lightning.pytorch as pl
import torch

from helpers import zero_output_hook
from nn_neuroimaging_lightning import NNEEGCallback
from nn_neuroimaging_lightning.demo import DemoClassifier, DemoDataModule

STEPS, BATCH = 72, 8
EEG_IMAGES = {"nn_eeg/spectrum", "nn_eeg/phase_timeline", "nn_eeg/model.conv1/spectrogram"}
EVENT_COLUMNS = ["step", "phase", "layer", "kind", "value"]


def fit_demo(tmp_path, loggers, callbacks=None) -> List[Any]:
    """One epoch of the demo model with a dead ``model.fc1`` from step 30; returns the callbacks.

    Runs with one intra-op thread (restored afterwards): on a shared 2-core machine more threads
    made this fit ~10x slower (52 s against 5 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(tmp_path, loggers, callbacks)
    finally:
        torch.set_num_threads(threads)


def _fit(tmp_path, loggers, callbacks) -> List[Any]:
    pl.seed_everything(0, verbose=False)
    model = DemoClassifier()
    ref: List[Any] = [None]
    handle = zero_output_hook(model.model.fc1, ref, 30)
    callbacks = callbacks if callbacks is not None else [NNEEGCallback()]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=STEPS, limit_val_batches=2, logger=loggers,
        log_every_n_steps=10, num_sanity_val_steps=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(tmp_path), callbacks=callbacks,
    )
    ref[0] = trainer
    try:
        trainer.fit(model, DemoDataModule(n_train=STEPS * BATCH, n_val=2 * BATCH, batch_size=BATCH))
    finally:
        handle.remove()
    assert any(e.kind == "collapse" for e in callbacks[0].events)
    return callbacks


