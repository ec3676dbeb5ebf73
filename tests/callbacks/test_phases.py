"""PhaseTracker: time per phase, idle gaps, transitions, errors, state round trip (hand-worked clocks)."""

from __future__ import annotations

import pytest

from nn_neuroimaging_lightning.phases import Phase, PhaseTracker


def test_codes_round_trip_and_inference_flags():
    for p in Phase:
        assert Phase.from_code(p.code) is p
    assert [p for p in Phase if p.is_inference] == [Phase.VALIDATE, Phase.TEST, Phase.PREDICT, Phase.SANITY_CHECK]


def test_durations_idle_gap_and_transitions():
    tr = PhaseTracker(idle_threshold=0.5)
    assert tr.current is Phase.IDLE
    tr.loop_start(Phase.TRAIN, now=0.0)
    tr.batch_start(now=0.0)
    tr.batch_end(now=1.0)
    assert tr.batch_start(now=1.2) is None  # 0.2 s < threshold: still training
    tr.batch_end(now=2.0)
    assert tr.batch_start(now=5.0) == pytest.approx(3.0)  # a 3 s stall
    tr.batch_end(now=6.0)
    tr.loop_end(now=6.0)
    tr.loop_start(Phase.VALIDATE, now=7.0)
    assert tr.current is Phase.VALIDATE
    tr.loop_end(now=9.0)
    tr.close(now=10.0)
    d = tr.summary()
    assert d["train"] == pytest.approx(3.0) and d["idle"] == pytest.approx(3.0 + 1.0 + 1.0)
    assert d["validate"] == pytest.approx(2.0)
    assert tr.transitions[("train", "idle")] == 2 and tr.transitions[("idle", "train")] == 1
    assert tr.transitions[("idle", "validate")] == 1


def test_error_sticks_until_cleared_and_state_round_trip():
    tr = PhaseTracker()
    tr.loop_start(Phase.TRAIN, now=0.0)
    tr.mark_error(now=1.0)
    assert tr.current is Phase.ERROR
    tr.clear_error(now=2.0)
    assert tr.current is Phase.TRAIN
    tr.close(now=3.0)
    other = PhaseTracker()
    other.load_state_dict(tr.state_dict())
    assert other.summary() == tr.summary() and other.transitions == tr.transitions
    assert other.summary()["error"] == pytest.approx(1.0) and other.summary()["train"] == pytest.approx(2.0)
