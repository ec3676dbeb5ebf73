import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nn_neuroimaging_lightning.functional.anomalies import (
    ABS_FLOOR,
    ANOMALY_KINDS,
    COLLAPSE_RATIO,
    EXPLOSION_Z,
    MAD_SCALE,
    MIN_SCALE,
    collapse,
    detect,
    explosion,
    non_finite,
    robust_zscore,
    spectral_distance,
    spectral_shift,
)


def _ref_z(v, hist, min_scale=MIN_SCALE):
    """numpy reference: median/MAD of log history over finite entries."""
    h = np.log(np.asarray(hist, dtype=np.float64) + 1e-12)
    h = h[np.isfinite(np.asarray(hist, dtype=np.float64))]
    if h.size == 0 or not np.isfinite(v):
        return 0.0
    med = np.median(h)
    scale = max(MAD_SCALE * np.median(np.abs(h - med)), min_scale)
    return (math.log(v + 1e-12) - med) / scale


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.integers(0, 40), st.integers(0, 10_000))
def test_robust_zscore_matches_numpy(layers, w, seed):
    rng = np.random.default_rng(seed)
    hist = rng.lognormal(size=(layers, w))
    hist[rng.random((layers, w)) < 0.2] = np.nan
    values = rng.lognormal(size=layers) * 3
    z = robust_zscore(torch.from_numpy(values), torch.from_numpy(hist))
    ref = [_ref_z(values[i], hist[i]) for i in range(layers)]
    np.testing.assert_allclose(z.numpy(), ref, rtol=1e-9, atol=1e-9)


def test_robust_zscore_valid_mask_and_floor():
    hist = torch.tensor([[1.0, 1.0, 1.0, 1000.0, 1000.0]])
    valid = torch.tensor([[True, True, True, False, False]])
    z = robust_zscore(torch.tensor([2.0]), hist, valid)
    assert z.item() == pytest.approx(math.log(2.0) / MIN_SCALE)  # constant history: the scale floor
    z2 = robust_zscore(torch.tensor([2.0]), hist, valid, min_scale=1.0)
    assert z2.item() == pytest.approx(math.log(2.0))


def test_explosion_known_answer():
    hist = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    flag, z = explosion(torch.tensor([8.0, 1.0]), hist, threshold=1.3)
    # layer 0: logs 0, ln2, ln4 -> median ln2, MAD ln2 -> z = (ln8 - ln2) / (1.4826 ln2) = 2/1.4826
    assert z.tolist() == pytest.approx([2 / 1.4826, 0.0], abs=1e-6)
    assert flag.tolist() == [True, False]


def test_non_finite():
    flag, val = non_finite(torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([False, False, True]))
    assert flag.tolist() == [False, True, True] and val.tolist() == [0.0, 1.0, 1.0]


def test_collapse_known_answers():
    flag, ratio = collapse(
        torch.tensor([0.5, 0.005, 0.0, float("nan"), 1e-9, 3.0]),
        torch.tensor([1.0, 1.0, 1.0, 1.0, float("nan"), 0.0]),
        rel_floor=1e-2,
    )
    assert flag.tolist() == [False, True, True, False, True, False]
    assert ratio.tolist() == pytest.approx([0.5, 0.005, 0.0, 0.0, 1e-9, 3.0])


def test_spectral_distance_against_formula():
    p = torch.tensor([[0.2, 0.3, 0.5], [1.0, 1.0, 2.0], [0.0, 0.0, 0.0], [float("nan"), 1.0, 1.0]])
    q = torch.tensor([0.5, 0.3, 0.2])
    d = spectral_distance(p, q)
    pn = np.array([[0.2, 0.3, 0.5], [0.25, 0.25, 0.5]])
    ref = np.sqrt(1 - np.sqrt(pn * q.numpy()).sum(-1))
    np.testing.assert_allclose(d[:2].numpy(), ref, rtol=1e-6)
    assert d[2:].tolist() == [0.0, 0.0]
    flag, _ = spectral_shift(p, q, threshold=0.15)
    assert flag.tolist() == [bool(ref[0] > 0.15), bool(ref[1] > 0.15), False, False]
    assert spectral_distance(torch.eye(2), torch.eye(2).flip(0)).tolist() == [1.0, 1.0]


def test_detect_stack_order_and_values():
    hist = torch.ones(4, 16)
    values = torch.tensor([1.0, 100.0, 0.0, float("inf")])
    powers = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [1.0, 0.0]])
    flags, vals = detect(values, hist, powers=powers, baseline_powers=torch.tensor([0.5, 0.5]), shift_threshold=0.3)
    assert flags.shape == (len(ANOMALY_KINDS), 4)
    assert flags.int().tolist() == [
        [0, 0, 0, 1],  # non_finite
        [0, 1, 0, 0],  # explosion
        [0, 0, 1, 0],  # collapse
        [0, 0, 0, 1],  # spectral_shift (Hellinger 0.54 > 0.3)
    ]
    assert vals[1, 1].item() == pytest.approx(math.log(100.0) / MIN_SCALE, rel=1e-5)
    assert vals[2].tolist() == pytest.approx([1.0, 100.0, 0.0, 0.0])


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 4),
    st.integers(0, 12),
    st.lists(st.sampled_from([0.0, 1.0, 1e-30, 1e30, float("nan"), float("inf"), -float("inf"), -1.0]), min_size=1, max_size=8),
    st.integers(0, 1000),
)
def test_fuzz_never_crashes_and_is_nan_free(layers, w, pool, seed):
    g = torch.Generator().manual_seed(seed)
    choice = torch.tensor(pool, dtype=torch.float32)
    values = choice[torch.randint(0, len(pool), (layers,), generator=g)]
    hist = choice[torch.randint(0, len(pool), (layers, w), generator=g)]
    powers = choice[torch.randint(0, len(pool), (layers, 3), generator=g)]
    valid = torch.rand(layers, w, generator=g) > 0.3
    flags, vals = detect(values, hist, valid, powers, powers.flip(0))
    assert flags.shape == (4, layers) and vals.shape == (4, layers)
    assert not torch.isnan(vals).any()
    assert torch.equal(flags[0], ~torch.isfinite(values))
    # non-finite values are only reported by non_finite
    assert not (flags[1:3] & ~torch.isfinite(values)).any()


@pytest.mark.parametrize(
    ("fn", "args", "match"),
    [
        (robust_zscore, (torch.ones(2), torch.ones(3, 4)), r"`values` must be \(L,\) and `history` \(L, W\)"),
        (robust_zscore, (torch.ones(2), torch.ones(2, 4), torch.ones(2, 3, dtype=torch.bool)), r"`valid` must be"),
        (collapse, (torch.ones(2), torch.ones(3)), r"`values` and `baseline` must both be"),
        (spectral_distance, (torch.ones(2, 3), torch.ones(4)), r"`powers` must be \(L, B\)"),
        (non_finite, (torch.ones(2), torch.ones(3, dtype=torch.bool)), r"`flags` must be"),
    ],
)
def test_bad_shapes(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_bad_scalars():
    with pytest.raises(ValueError, match="`min_scale` must be a positive number"):
        robust_zscore(torch.ones(1), torch.ones(1, 2), min_scale=0)
    with pytest.raises(ValueError, match="`threshold` must be in"):
        spectral_shift(torch.ones(1, 2), torch.ones(2), threshold=2.0)
    with pytest.raises(ValueError, match="`rel_floor` must be a non-negative"):
        collapse(torch.ones(1), torch.ones(1), rel_floor=-1.0)
    with pytest.raises(TypeError, match="`values` must be a torch.Tensor"):
        non_finite([1.0])


def test_robust_baseline_matches_numpy_masked_medians():
    """Median and MAD of log-activity and the median level over valid, finite entries, vs numpy."""
    from nn_neuroimaging_lightning.functional.anomalies import robust_baseline

    rng = np.random.default_rng(0)
    for trial in range(200):
        layers, w = int(rng.integers(1, 6)), int(rng.integers(0, 40))
        h = rng.lognormal(0.0, 1.0, (layers, w)).astype(np.float32)
        if w and trial % 3 == 0:
            h[rng.random((layers, w)) < 0.2] = np.nan
        if w and trial % 7 == 0:
            h[0, :] = np.inf  # a layer with no finite history
        valid = rng.random((layers, w)) < 0.8 if trial % 2 else None
        med, scale, level, k = robust_baseline(torch.from_numpy(h), None if valid is None else torch.from_numpy(valid))
        ok = np.isfinite(h) if valid is None else np.isfinite(h) & valid
        for i in range(layers):
            v = h[i][ok[i]].astype(np.float64)
            assert int(k[i]) == len(v)
            if not len(v):
                assert float(med[i]) == float(level[i]) == 0.0 and float(scale[i]) == pytest.approx(MIN_SCALE)
                continue
            lg = np.log(np.maximum(v, 0.0) + 1e-12)
            assert float(med[i]) == pytest.approx(np.median(lg), rel=1e-5, abs=1e-6)
            assert float(scale[i]) == pytest.approx(max(1.4826 * np.median(np.abs(lg - np.median(lg))), MIN_SCALE), rel=1e-5, abs=1e-6)
            assert float(level[i]) == pytest.approx(np.median(v), rel=1e-5, abs=1e-6)


def test_judge_matches_detect_reference():
    """`baseline_coefficients` + `judge` against a numpy reference of z > z* and x <= max(r b, a)."""
    from nn_neuroimaging_lightning.functional.anomalies import baseline_coefficients, judge, judge_score_host

    rng = np.random.default_rng(3)
    for _ in range(50):
        hist = rng.lognormal(0.0, 0.3, (5, 32))
        x = rng.lognormal(0.0, 0.3, 5) * rng.choice([1e-5, 1.0, 1e3], 5)
        coeffs = baseline_coefficients(torch.from_numpy(hist), min_count=16)[:3]
        exploded, collapsed, e, c = judge(torch.from_numpy(x), coeffs)
        z_ref = np.array([_ref_z(x[i], hist[i]) for i in range(5)])
        level = np.median(hist, axis=1)
        assert exploded.tolist() == (z_ref > EXPLOSION_Z).tolist()
        assert collapsed.tolist() == (x <= np.maximum(COLLAPSE_RATIO * level, ABS_FLOOR)).tolist()
        host = judge_score_host(x.tolist(), *(t.tolist() for t in coeffs))
        assert host == pytest.approx(float(torch.maximum(e, c).max()), rel=1e-9)
