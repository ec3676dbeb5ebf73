import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from nn_neuroimaging_lightning.functional.consistency import (
    _agreement_compute,
    _agreement_update,
    _coherence_compute,
    _coherence_update,
    _spearman_compute,
    _spearman_update,
    agreement,
    coherence,
    consistency,
    joint_anomalies,
    spearman,
    spearman_undefined,
)


def _b(*values):
    return torch.tensor(values, dtype=torch.bool)


# ------------------------------------------------------------------ spearman


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([0.1, 0.5, 0.3, 0.9], [1.0, 3.0, 2.0, 8.0]),
        ([1.0, 2.0, 2.0, 3.0, 5.0], [5.0, 1.0, 1.0, 2.0, 2.0]),  # ties on both sides
        ([3.0, 3.0, 1.0], [1.0, 2.0, 3.0]),
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]),
        ([0.0, float("inf"), -float("inf"), 1.0], [1.0, 2.0, 0.0, 3.0]),
    ],
)
def test_spearman_matches_scipy(x, y):
    expected = spearmanr(x, y).statistic
    got = spearman(torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(expected, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(3, 12).flatmap(
        lambda n: st.tuples(
            st.lists(st.integers(-3, 3), min_size=n, max_size=n),  # small range: many ties
            st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=n, max_size=n),
        )
    )
)
def test_spearman_matches_scipy_property(xy):
    x, y = (np.asarray(v, dtype=np.float64) for v in xy)
    got = spearman(torch.from_numpy(x), torch.from_numpy(y)).item()
    if np.all(x == x[0]) or np.all(y == y[0]):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(spearmanr(x, y).statistic, abs=1e-9)


def test_spearman_batched_rows_equal_single():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g)
    y = torch.randn(4, 7, generator=g)
    rho = spearman(x, y)
    assert rho.shape == (4,)
    for i in range(4):
        assert rho[i].item() == pytest.approx(spearmanr(x[i].numpy(), y[i].numpy()).statistic, abs=1e-6)


@pytest.mark.parametrize(
    ("x", "y"),
    [
        ([1.0, 2.0], [2.0, 1.0]),  # fewer than three layers
        ([1.0], [1.0]),
        ([], []),
        ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]),  # constant series
        ([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0]),
    ],
)
def test_spearman_undefined_is_nan(x, y):
    assert torch.isnan(spearman(torch.tensor(x), torch.tensor(y)))


@pytest.mark.parametrize(
    ("x", "y", "reason"),
    [
        ([1.0, 2.0], [2.0, 1.0], "fewer than 3 layers"),
        ([], [], "fewer than 3 layers"),
        ([1.0, float("nan"), 3.0], [1.0, 2.0, 3.0], "a series holds NaN"),
        ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "a series is constant across the layers"),
        ([1.0, 2.0, 3.0], [4.0, 4.0, 4.0], "a series is constant across the layers"),
        ([float("inf")] * 3, [1.0, 2.0, 3.0], "a series is constant across the layers"),
        ([1.0, 2.0, 2.0], [3.0, 1.0, 2.0], None),
    ],
)
def test_spearman_undefined_names_the_rule_and_agrees_with_scipy(x, y, reason):
    # scipy is the independent reference of when rho is undefined: NaN for constant input (with a
    # warning), and a NaN anywhere propagates; with 2 points scipy returns +-1, which we call
    # undefined by rule (two points carry no information), so those rows are checked by rule only.
    import warnings

    tx, ty = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    assert spearman_undefined(tx, ty) == reason
    got = spearman(tx, ty).item()
    assert math.isnan(got) == (reason is not None)
    if len(x) >= 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = spearmanr(x, y).statistic
        assert math.isnan(ref) == math.isnan(got)
        if not math.isnan(ref):
            assert got == pytest.approx(ref, abs=1e-12)


def test_spearman_batched_with_undefined_rows_keeps_the_defined_ones():
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0], [1.0, float("nan"), 0.0, 2.0], [4.0, 1.0, 1.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([[2.0, 1.0, 4.0, 3.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    rho = spearman(x, y)
    assert torch.isnan(rho[1]) and torch.isnan(rho[2])
    for i in (0, 3):
        assert rho[i].item() == pytest.approx(spearmanr(x[i].numpy(), y[i].numpy()).statistic, abs=1e-12)


def test_spearman_update_compute_skips_undefined():
    x = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    rho_sum, n = _spearman_update(x, y)
    assert n.item() == 2
    assert _spearman_compute(rho_sum, n).item() == pytest.approx((1.0 - 0.5) / 2)
    assert torch.isnan(_spearman_compute(torch.tensor(0.0), torch.tensor(0)))


# ------------------------------------------------------------------ agreement / coherence


@pytest.mark.parametrize(
    ("eeg", "fmri", "expected"),
    [
        (_b(True, False, True), _b(True, False, True), 1.0),  # perfect agreement
        (_b(True, False, True), _b(False, True, False), 0.0),  # none
        (_b(True, False, False, True), _b(True, False, True, False), 0.5),
        (_b(False, False), _b(False, False), 1.0),
        (_b(), _b(), math.nan),  # no window: undefined (was 1.0 before issue 13 made undefined NaN)
    ],
)
def test_agreement_known_values(eeg, fmri, expected):
    got = agreement(eeg, fmri).item()
    assert math.isnan(got) if math.isnan(expected) else got == pytest.approx(expected)


def test_agreement_update_compute_pools_counts():
    a1, n1 = _agreement_update(_b(True, False), _b(True, True))
    a2, n2 = _agreement_update(_b(False, False, True), _b(False, False, True))
    assert (a1.item(), n1.item(), a2.item(), n2.item()) == (1, 2, 3, 3)
    assert _agreement_compute(a1 + a2, n1 + n2).item() == pytest.approx(4 / 5)


@pytest.mark.parametrize(
    ("eeg", "fmri", "expected"),
    [
        (_b(True, True, True), _b(False, True, False), 1 / 3),  # one layer shared of 3 flagged
        (_b(True, False, False), _b(False, False, True), 0.0),
        (_b(True, False, True), _b(True, False, True), 1.0),
        (_b(False, False, False), _b(False, False, False), 1.0),  # both flag none
        (_b(True, True, False, False), _b(False, True, True, False), 1 / 3),
        (_b(), _b(), math.nan),  # no layer compared: undefined
    ],
)
def test_coherence_known_values(eeg, fmri, expected):
    got = coherence(eeg, fmri).item()
    assert math.isnan(got) if math.isnan(expected) else got == pytest.approx(expected)
    i, u, n = _coherence_update(eeg, fmri)
    assert n.item() == eeg.numel()
    got = _coherence_compute(i, u, n).item()
    assert math.isnan(got) if math.isnan(expected) else got == pytest.approx(expected)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10).flatmap(lambda n: st.tuples(st.lists(st.booleans(), min_size=n, max_size=n),
                                                       st.lists(st.booleans(), min_size=n, max_size=n))))
def test_coherence_and_joint_against_sets(flags):
    e, f = flags
    set_e = {i for i, v in enumerate(e) if v}
    set_f = {i for i, v in enumerate(f) if v}
    # Over zero layers / windows nothing was compared: NaN (issue 13: undefined is NaN, not 1.0).
    expected = (len(set_e & set_f) / len(set_e | set_f) if set_e | set_f else 1.0) if e else math.nan
    te, tf = torch.tensor(e, dtype=torch.bool), torch.tensor(f, dtype=torch.bool)
    got = coherence(te, tf).item()
    assert math.isnan(got) if not e else got == pytest.approx(expected)
    joint = joint_anomalies(te, tf)
    assert {i for i, v in enumerate(joint.tolist()) if v} == set_e & set_f
    expected_agree = sum(a == b for a, b in zip(e, f)) / len(e) if e else math.nan
    got = agreement(te, tf).item()
    assert math.isnan(got) if not e else got == pytest.approx(expected_agree)


def test_joint_anomalies_known():
    out = joint_anomalies(_b(True, True, False, False), _b(False, True, True, False))
    assert out.dtype == torch.bool
    assert out.tolist() == [False, True, False, False]


# ------------------------------------------------------------------ consistency


@pytest.mark.parametrize(
    ("rho", "agree", "coh", "expected"),
    [
        (1.0, 1.0, 1.0, 1.0),
        (-1.0, 0.0, 0.0, 0.0),
        (0.0, 0.5, 1 / 3, (0.5 + 0.5 + 1 / 3) / 3),
        (0.4, 0.9, 0.2, (0.7 + 0.9 + 0.2) / 3),
        # Issue 13 changed the rule: an undefined term makes the score NaN (it was the neutral
        # rho' = 0.5, giving 0.833 here).
        (float("nan"), 1.0, 1.0, math.nan),
        (0.2, float("nan"), 1.0, math.nan),
        (0.2, 1.0, float("nan"), math.nan),
    ],
)
def test_consistency_known_values(rho, agree, coh, expected):
    for got in (consistency(torch.tensor(rho), torch.tensor(agree), torch.tensor(coh)).item(), consistency(rho, agree, coh).item()):
        assert math.isnan(got) if math.isnan(expected) else got == pytest.approx(expected)


def test_consistency_with_fewer_than_three_layers_is_nan():
    # Was (0.5 + 1 + 1) / 3 = 0.833 with the neutral rho; issue 13: undefined is NaN.
    rho = spearman(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0]))
    score = consistency(rho, agreement(_b(True, False), _b(True, False)), coherence(_b(True, False), _b(True, False)))
    assert torch.isnan(score)


_any_float = st.floats(allow_nan=True, allow_infinity=True, width=32)


@settings(max_examples=100, deadline=None)
@given(_any_float, _any_float, _any_float)
def test_consistency_in_unit_interval_or_nan_exactly_when_a_term_is(rho, agree, coh):
    out = consistency(torch.tensor(rho), torch.tensor(agree), torch.tensor(coh))
    if any(math.isnan(v) for v in (rho, agree, coh)):
        assert torch.isnan(out)
    else:
        assert torch.isfinite(out)
        assert 0.0 <= out.item() <= 1.0


def test_consistency_broadcasts_and_keeps_dtype():
    out = consistency(torch.tensor([1.0, -1.0], dtype=torch.float64), 1.0, torch.tensor(0.0))
    assert out.dtype == torch.float64
    assert out.tolist() == pytest.approx([2 / 3, 1 / 3])


# ------------------------------------------------------------------ bad input


def test_bad_input():
    with pytest.raises(TypeError, match="`eeg_flags` must be a bool tensor"):
        agreement(torch.tensor([1, 0]), _b(True, False))
    with pytest.raises(ValueError, match="`eeg_layers` and `fmri_layers` must have the same shape"):
        coherence(_b(True), _b(True, False))
    with pytest.raises(TypeError, match="`fmri_layers` must be a torch.Tensor"):
        joint_anomalies(_b(True), [True])
    with pytest.raises(ValueError, match="`x` and `y` must have the same shape"):
        spearman(torch.ones(3), torch.ones(4))
    with pytest.raises(TypeError, match="real-valued"):
        spearman(_b(True, False, True), torch.ones(3))
    with pytest.raises(TypeError, match="`agreement` must be a tensor or a real number"):
        consistency(0.0, "high", 1.0)


def test_average_ranks_match_scipy_rankdata_with_ties():
    from scipy.stats import rankdata

    from nn_neuroimaging_lightning.functional.consistency import _average_ranks

    g = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 4, (6, 9), generator=g).to(torch.float64)  # many ties
    np.testing.assert_array_equal(_average_ranks(rows).numpy(), rankdata(rows.numpy(), axis=-1))
