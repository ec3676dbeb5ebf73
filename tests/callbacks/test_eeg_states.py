"""NNEEGCallback's state windows in real Trainer runs: the cadence feature, its reference, checkpoints."""

from __future__ import annotations

from typing import List, Tuple

import numpy as np
import torch
from helpers import MLPModule, fast_trainer
from lightning.pytorch import Callback

from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.functional.states import BASE_FEATURES, OperationalState


def _recording(eeg: NNEEGCallback) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    seen: List[Tuple[torch.Tensor, torch.Tensor]] = []
    update = eeg.classifier.update

    def recording_update(features, labels):  # noqa: ANN001
        seen.append((features.clone(), labels.clone()))
        update(features, labels)

    eeg.classifier.update = recording_update
    return seen


def test_cadence_column_reference_and_checkpoint_round_trip(tmp_path):
    model = MLPModule(n=8 * 64)
    eeg = NNEEGCallback()
    seen = _recording(eeg)
    fast_trainer(tmp_path, [eeg], max_epochs=3).fit(model)
    features = torch.cat([f for f, _ in seen])
    labels = torch.cat([y for _, y in seen])
    per_layer = len(BASE_FEATURES) + len(eeg.bands)
    assert features.shape[1] == 3 * per_layer + 1  # 3 tapped layers, then the window-level cadence
    cadence = features[:, -1]
    train = cadence[labels == OperationalState.TRAINING]
    infer = cadence[labels == OperationalState.INFERENCE]
    assert len(train) >= 8 and len(infer) >= 4
    # No claim on the values here: this toy model's steps cost ~Lightning's per-hook overhead, and
    # its inference windows' cadence varied from -2.5 to +1.2 between runs (the separation is
    # measured on real models in benchmarks/eeg_states.py). Training windows of the first epoch are
    # their own reference until a reference exists: exactly 0.
    assert train[:4].tolist() == [0.0, 0.0, 0.0, 0.0] and torch.isfinite(cadence).all()
    assert eeg._states.cadence_ref and all(v > 0 for v in eeg._states.cadence_ref)
    assert [e for e in eeg.events if e.kind == "state_mismatch"] == []  # a healthy run: none

    state = eeg.state_dict()
    saved_count = float(state["classifier"]["count"].sum())
    assert state["cadence_ref"] == list(eeg._states.cadence_ref) and state["classifier"]["window_features"] == 1
    eeg2 = NNEEGCallback()
    eeg2.load_state_dict(state)  # applied at setup, once the layers are known
    seen2 = _recording(eeg2)
    restored: list = []

    class Capture(Callback):
        def on_train_start(self, trainer, pl_module):  # noqa: ANN001
            restored.append((list(eeg2._states.cadence_ref), eeg2._states.cpu_time.copy()))

    fast_trainer(tmp_path, [eeg2, Capture()], max_epochs=1).fit(model)
    assert restored[0][0] == state["cadence_ref"]
    np.testing.assert_array_equal(restored[0][1], state["cpu_time"].numpy())  # the saved clock, as saved
    assert float(eeg2.classifier.count.sum()) > saved_count  # calibration goes on from the checkpoint
    assert float(state["classifier"]["count"].sum()) == saved_count  # the saved state is not mutated
    assert seen2 and all(f.shape[1] == 3 * per_layer + 1 for f, _ in seen2)


# ------------------------------------------------------------------ state_accuracy defined or explained (issue 13 item 5)
def _fit_states(tmp_path, n_val, epochs=3, **trainer_kwargs):
    import warnings as _w

    from helpers import MLPModule, fast_trainer

    from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback

    class Val(MLPModule):
        def val_dataloader(self):
            from torch.utils.data import DataLoader, TensorDataset

            return DataLoader(TensorDataset(self.x[:n_val], self.y[:n_val]), batch_size=32)

    model = Val(n=max(512, n_val), batch_size=8)
    eeg = NNEEGCallback()
    trainer = fast_trainer(tmp_path, [eeg], max_epochs=epochs, **trainer_kwargs)
    logged = []

    class Seen(__import__("lightning").pytorch.Callback):
        def on_validation_end(self, trainer, pl_module):
            logged.append("nn_eeg/state_accuracy" in trainer.callback_metrics)

    trainer.callbacks.append(Seen())
    with _w.catch_warnings(record=True) as caught:
        _w.simplefilter("always")
        trainer.fit(model)
    notices = [str(w.message) for w in caught if "nn_eeg/state_accuracy" in str(w.message)]
    return logged, notices


def test_short_validation_gives_one_notice_why_state_accuracy_is_undefined(tmp_path):
    logged, notices = _fit_states(tmp_path, n_val=256)  # 8 forwards per loop < state_window 16
    assert logged == [False] * 3
    assert len(notices) == 1 and "8 forward(s), fewer than `state_window`=16" in notices[0]


def test_state_accuracy_logged_at_each_validation_end_once_defined(tmp_path):
    # 32 forwards per validation loop: two inference windows per loop, calibrated after two loops
    logged, notices = _fit_states(tmp_path, n_val=1024, epochs=4, limit_train_batches=32)
    # Defined once the classifier is calibrated (min_count inference windows); before that, one notice says why.
    first = logged.index(True)
    assert all(logged[first:]), logged
    assert len(notices) == (1 if first else 0) and (not notices or "not calibrated yet" in notices[0])
