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
    assert eeg._cadence_ref and all(v > 0 for v in eeg._cadence_ref)
    assert [e for e in eeg.events if e.kind == "state_mismatch"] == []  # a healthy run: none

    state = eeg.state_dict()
    saved_count = float(state["classifier"]["count"].sum())
    assert state["cadence_ref"] == list(eeg._cadence_ref) and state["classifier"]["window_features"] == 1
    eeg2 = NNEEGCallback()
    eeg2.load_state_dict(state)  # applied at setup, once the layers are known
    seen2 = _recording(eeg2)
    restored: list = []

    class Capture(Callback):
        def on_train_start(self, trainer, pl_module):  # noqa: ANN001
            restored.append((list(eeg2._cadence_ref), eeg2._cpu_time.copy()))

    fast_trainer(tmp_path, [eeg2, Capture()], max_epochs=1).fit(model)
    assert restored[0][0] == state["cadence_ref"]
    np.testing.assert_array_equal(restored[0][1], state["cpu_time"].numpy())  # the saved clock, as saved
    assert float(eeg2.classifier.count.sum()) > saved_count  # calibration goes on from the checkpoint
    assert float(state["classifier"]["count"].sum()) == saved_count  # the saved state is not mutated
    assert seen2 and all(f.shape[1] == 3 * per_layer + 1 for f, _ in seen2)
