"""The plain-PyTorch NN-EEG engines (eeg/): no Trainer, each against an independent reference."""

import numpy as np
import pytest
import torch

from nn_neuroimaging_lightning.eeg import SampleRecorder, Spectra, StateWindows, StepDetector
from nn_neuroimaging_lightning.functional import anomalies as FA
from nn_neuroimaging_lightning.functional import spectral as FS
from nn_neuroimaging_lightning.phases import Phase

BANDS = {"low": (0.0, 25.0), "high": (25.0, 50.0)}


def test_detector_verdicts_equal_functional_detect():
    g = torch.Generator().manual_seed(0)
    history = torch.rand(4, 32, generator=g) + 0.5
    det = StepDetector(["a", "b", "c", "d"], min_history=8)
    base = det.baseline(history)
    for x in (torch.tensor([0.7, 1e4, 1e-9, 1.0]), torch.tensor([0.7, 0.8, 0.9, 1.0]), torch.tensor([float("nan"), 1.0, 1.0, 0.0])):
        score, verdict = det.judge(x, base, tag=5)
        flags, values = FA.detect(x, history, min_count=8)  # (4, L): non_finite, explosion, collapse, shift
        expected = flags[:3].numpy()
        if verdict is None:  # a healthy sample on CPU: no verdict, a score below 1
            assert score < 1.0 and not expected.any()
            continue
        np.testing.assert_array_equal(verdict.flags, expected)
        events = det.events(verdict, "train", "error")
        assert [(e.layer, e.kind) for e in events] == [(("a", "b", "c", "d")[l], FA.ANOMALY_KINDS[k]) for k, l in zip(*np.nonzero(expected))]
        for e in events:
            if e.kind == "explosion":
                assert e.value == pytest.approx(float(values[1, "abcd".index(e.layer)]), rel=1e-4)
            assert e.phase == ("error" if e.kind == "non_finite" else "train") and e.step == 5


def test_detector_run_baseline_waits_for_min_history_and_state_round_trip():
    det = StepDetector(["a"], min_history=4, history_size=16)
    rec = SampleRecorder(1, 32, StateWindows(32, 4, 100.0, 4, BANDS), idle_threshold=1.0, idle_max_samples=0)
    scores = []
    for t in range(8):
        x = torch.tensor([1e3 if t in (2, 7) else 1.0])
        rec.commit(x, Phase.VALIDATE, t)
        base = det.run_baseline(x, rec.run, rec.run_len, rec.ring)
        scores.append(det.judge(x, base, tag=t)[0])
    assert max(scores[:5]) < 1.0  # fewer than 4 earlier samples: nothing judged, not even the spike at t=2
    assert scores[7] >= 1.0  # judged against the run's own earlier samples
    for t in range(10):
        det.judge(torch.tensor([2.0]), det.train_baseline(torch.device("cpu")), learn=True)
    clone = StepDetector(["a"], min_history=4, history_size=16)
    clone.load_state_dict(det.state_dict())
    torch.testing.assert_close(clone.history.view(torch.device("cpu")), det.history.view(torch.device("cpu")))


def test_recorder_idle_gap_and_error_windows():
    states = StateWindows(64, 4, 100.0, 4, BANDS)
    rec = SampleRecorder(2, 64, states, idle_threshold=0.25, idle_max_samples=8)
    for t in range(4):
        rec.batch_start(float(t) * 0.1, t)
        rec.commit(torch.ones(2), Phase.TRAIN, t)
        rec.batch_end(float(t) * 0.1 + 0.05)
    assert states.pending == [(4, 0)]  # one training window
    rec.batch_start(0.35 + 2.0, 4)  # a 2 s gap at a 0.1 s cadence: capped at idle_max_samples
    assert rec.ring.count == 12 and list(rec.ring.phases()[-8:]) == [Phase.IDLE.code] * 8
    for t in range(4):
        rec.commit(torch.full((2,), float("nan")), Phase.TRAIN, 5 + t)
        rec.mark_error(rec.ring.total)
    assert list(rec.ring.phases()[-4:]) == [Phase.ERROR.code] * 4 and states.pending[-1] == (16, 3)


def test_spectra_band_powers_equal_functional_and_state_windows_refuse_another_layout():
    ring = SampleRecorder(1, 64, StateWindows(64, 8, 100.0, 32, BANDS), 1.0, 0).ring
    g = torch.Generator().manual_seed(1)
    for t in range(64):
        ring.push(torch.rand(1, generator=g), Phase.TRAIN.code, t)
    sp = Spectra(["a"], 100.0, 32, None, BANDS)
    assert sp.analyse(ring, judge=True, step=64) == []
    freqs, psd = FS.welch_psd(ring.ordered(), fs=100.0, nperseg=32)
    expected = FS.band_powers(freqs, psd, BANDS, relative=True)[0]
    assert sp.band_powers["a"] == pytest.approx(dict(zip(BANDS, expected.tolist())), rel=1e-5)
    saved = StateWindows(64, 8, 100.0, 32, BANDS).state_dict()
    other = StateWindows(64, 8, 100.0, 32, {"all": (0.0, 50.0)})
    assert "num_bands" in other.load_state_dict(saved) and int(other.label_counts.sum()) == 0


def _states_run(loops):
    """Train windows, then inference loops of 4 windows each (``"infer"``: inference-like activity,
    ``"train"``: training-like activity under the validation label); the state_mismatch events per loop."""
    states = StateWindows(64, 8, 100.0, 8, BANDS)
    rec = SampleRecorder(2, 64, states, idle_threshold=1.0, idle_max_samples=0)
    g = torch.Generator().manual_seed(0)
    step = 0

    def window(kind, phase):
        nonlocal step
        for t in range(8):
            x = (1.0 + torch.rand(2, generator=g)) * (1 + (t % 2)) if kind == "train" else 0.2 + 0.01 * torch.rand(2, generator=g)
            rec.commit(x, phase, step)
            step += phase is Phase.TRAIN
        if states.due():
            return states.classify(rec.ring, step, Phase.VALIDATE)
        return []

    states.loop_start()
    for _ in range(8):
        window("train", Phase.TRAIN)
    out = []
    for kind in loops:
        states.loop_start()
        out.append([e for _ in range(4) for e in window(kind, Phase.VALIDATE)])
    return states, out


def test_a_mismatch_needs_a_classifier_trusted_on_earlier_inference_loops():
    # calibrated on loop 1, right on loops 2 and 3 (8 inference windows): its confident calls of loop 4 count
    states, events = _states_run(["infer", "infer", "infer", "train"])
    assert [len(e) for e in events] == [0, 0, 0, 1] and states.record == [8, 8]
    assert events[3][0].kind == "state_mismatch" and events[3][0].value >= 0.95
    # the same confident calls with no record yet (loop 2 is the classifier's first prediction): no alarm,
    # and a loop it got wrong keeps it untrusted
    states, events = _states_run(["infer", "train", "infer", "train"])
    assert [len(e) for e in events] == [0, 0, 0, 0] and states.record[0] == 8 and states.record[1] < 0.9 * 8
    restored = StateWindows(64, 8, 100.0, 8, BANDS)
    restored.load_state_dict(states.state_dict())
    assert restored.record == states.record and not restored.trusted
