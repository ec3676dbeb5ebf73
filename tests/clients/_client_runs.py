"""The client runs of ``tests/clients/``: one short fit per client with all three callbacks at their defaults.

Each run is made once per session (``client_run(name, repeat=0)``) and read by several tests: the
fit test, the tap-name test and the zeta tests look at the same run, so the directory costs one
fit per client (plus one repeat per client for the determinism test).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from nn_neuroimaging_lightning.callbacks import CrossModalCallback, NNEEGCallback, NNfMRICallback
from nn_neuroimaging_lightning.demo.clients import make_client

#: Every run: 1 epoch of 4 training batches of 8 samples, then 1 validation batch (one zeta evaluation).
EPOCHS, STEPS, BATCH = 1, 4, 8

#: Run name -> (client, make_client arguments, Trainer arguments). ``backend="eager"``: dynamo's
#: tracing of the hooks, guards and graph breaks are what is under test; inductor's code generation
#: would only add compile time.
RUNS: Dict[str, Tuple[str, Dict[str, Any], Dict[str, Any]]] = {
    "cnn": ("cnn", {}, {}),
    "resnet": ("resnet", {}, {}),
    "lstm": ("lstm", {}, {}),
    "gpt2": ("gpt2", {}, {}),
    "bert": ("bert", {}, {}),
    "kwargs": ("kwargs", {}, {}),
    "mlp_dropout": ("mlp_dropout", {}, {}),
    "resnet_bf16": ("resnet", {}, {"precision": "bf16-mixed"}),
    "resnet_compiled": ("resnet", {"compile": "model", "compile_kwargs": {"backend": "eager"}}, {}),
}


@dataclass
class ZetaMap:
    scores: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor


@dataclass
class ClientRun:
    name: str
    error: Optional[BaseException]
    global_step: int
    finished: bool
    eeg_layers: List[str]
    fmri_layers: List[str]
    signals: Dict[str, torch.Tensor]  # EEG series per tapped layer at the end of the fit
    first_zeta: Optional[Dict[str, ZetaMap]]  # fmri.zeta at the end of the first training epoch (after its validation)
    warnings: List[str] = field(default_factory=list)


class _FirstEpochZeta(pl.Callback):
    """Copies the fMRI callback's maps once the first epoch (training, then its validation) is over."""

    def __init__(self, fmri: NNfMRICallback) -> None:
        self.fmri = fmri
        self.maps: Optional[Dict[str, ZetaMap]] = None

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.maps = {n: ZetaMap(r.scores.clone(), r.ci_low.clone(), r.ci_high.clone()) for n, r in self.fmri.zeta.items()}


def fit_client(name: str, log_dir: str) -> ClientRun:
    client, make_args, trainer_args = RUNS[name]
    if "compile" in make_args:
        # dynamo's cache is process-wide and does not guard on hooks added after compilation: a graph
        # of the same class compiled earlier in the session without our hooks would be reused
        # (see test_compiled_model_run_before_without_callbacks_is_still_tapped)
        torch._dynamo.reset()
    pl.seed_everything(0, workers=True, verbose=False)
    module, train, val = make_client(client, seed=0, steps_per_epoch=STEPS, batch_size=BATCH, **make_args)
    eeg, fmri, xmodal = NNEEGCallback(), NNfMRICallback(), CrossModalCallback()
    snapshot = _FirstEpochZeta(fmri)
    trainer = pl.Trainer(
        max_epochs=EPOCHS, logger=TensorBoardLogger(log_dir, name=name), callbacks=[eeg, fmri, xmodal, snapshot],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=2,
        **trainer_args,
    )
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            trainer.fit(module, train, val)
        except Exception as err:  # reported by the tests, not raised here: other tests read the run too
            error = err
    signals = {}
    for layer in eeg.layers:
        try:
            signals[layer] = eeg.signal(layer).clone()
        except (RuntimeError, ValueError):
            pass
    return ClientRun(
        name=name, error=error, global_step=trainer.global_step, finished=trainer.state.finished,
        eeg_layers=eeg.layers, fmri_layers=fmri.layers, signals=signals, first_zeta=snapshot.maps,
        warnings=sorted({f"{w.category.__name__}: {w.message}" for w in caught}),
    )
