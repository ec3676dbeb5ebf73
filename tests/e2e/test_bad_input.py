"""SPEC §6 "Bad input gets a clear error": every constructor argument and YAML key, and the functional core.

Part 1 is ONE table over every constructor argument of the three callbacks: each bad value must
raise ``TypeError``/``ValueError`` whose message names the argument in backticks, shows the value
and says what is allowed. A coverage check fails when a new argument has no row. Part 2 does the
same for every YAML key (through ``from_config``), plus unknown keys. Part 3 covers the checks that
need a model (a selection matching nothing, a grid larger than the layer, a band the EEG lacks).
Part 4 fuzzes the functional core with NaN, Inf, empty, constant and huge inputs (hypothesis).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import warnings
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from scipy import signal as sps

from helpers import MLPModule, fast_trainer
from nn_neuroimaging_lightning import config as C
from nn_neuroimaging_lightning.callbacks.cross_modal import CrossModalCallback
from nn_neuroimaging_lightning.callbacks.eeg import NNEEGCallback
from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback
from nn_neuroimaging_lightning.functional.anomalies import detect
from nn_neuroimaging_lightning.functional.consistency import consistency, spearman
from nn_neuroimaging_lightning.functional.grid import grid_partition, region_density, region_sums
from nn_neuroimaging_lightning.functional.shapley import exact_shapley, shapley_zeta
from nn_neuroimaging_lightning.functional.spectral import DEFAULT_BANDS, band_powers, welch_psd
from nn_neuroimaging_lightning.functional.states import window_features
from nn_neuroimaging_lightning.functional.tractography import path_strength, pathway_efficiency, top_pathways

EEG, FMRI, XM = NNEEGCallback, NNfMRICallback, CrossModalCallback
NOT_CALLABLE = 42

# (class, argument, bad value, exception, extra fragments that must appear in the message)
# Every message must also contain "`argument`" and repr(value) (or the value's str for floats).
ROWS: List[Tuple[type, str, Any, type, Tuple[str, ...]]] = [
    # ---- NNEEGCallback
    (EEG, "layers", 3.5, TypeError, ("name glob",)),
    (EEG, "layers", [], TypeError, ("non-empty list",)),
    (EEG, "layers", ["net.*", 7], TypeError, ("module type",)),
    (EEG, "layers", "re:(", ValueError, ("invalid regex",)),
    (EEG, "window", "128", TypeError, ("int",)),
    (EEG, "window", 1, ValueError, ("[2, inf]",)),
    (EEG, "fs", "fast", TypeError, ("number",)),
    (EEG, "fs", 0.0, ValueError, ("(0.0, inf]",)),
    (EEG, "fs", float("nan"), ValueError, ("finite",)),
    (EEG, "nperseg", 64.0, TypeError, ("int",)),
    (EEG, "nperseg", 1, ValueError, ("[2, inf]",)),
    (EEG, "nperseg", 256, ValueError, ("`window`", "must not exceed")),  # a window shorter than the segment
    (EEG, "noverlap", 64, ValueError, ("[0, 63]",)),
    (EEG, "noverlap", -1, ValueError, ("[0, 63]",)),
    (EEG, "bands", 5, ValueError, ("mapping",)),
    (EEG, "bands", {}, ValueError, ("non-empty mapping",)),
    (EEG, "state_window", 2, ValueError, ("[4, 128]",)),
    (EEG, "state_window", 129, ValueError, ("[4, 128]",)),
    (EEG, "stop_on", ("nan_loss",), ValueError, ("non_finite", "explosion")),
    (EEG, "stop_on", 3, TypeError, ("non_finite",)),
    (EEG, "explosion_z", -1.0, ValueError, ("(0.0, inf]",)),
    (EEG, "collapse_ratio", 1.5, ValueError, ("[0.0, 1.0]",)),
    (EEG, "spectral_shift_threshold", 0.0, ValueError, ("(0.0, 1.0]",)),
    (EEG, "state_confidence", 2.0, ValueError, ("[0.0, 1.0]",)),
    (EEG, "min_history", 1, ValueError, ("[2, 127]",)),
    (EEG, "min_history", 128, ValueError, ("[2, 127]",)),
    (EEG, "idle_threshold", -0.1, ValueError, ("(0.0, inf]",)),
    (EEG, "idle_max_samples", 129, ValueError, ("[0, 128]",)),
    (EEG, "analysis_every_n_steps", 0, ValueError, ("[1, inf]",)),
    (EEG, "output_selector", NOT_CALLABLE, TypeError, ("callable",)),
    (EEG, "panels", "yes", TypeError, ("bool",)),
    (EEG, "max_events", 0, ValueError, ("[1, inf]",)),
    (EEG, "flag_history", 0, ValueError, ("[1, inf]",)),
    (EEG, "log_anomaly_every_step", 1, TypeError, ("bool",)),
    # ---- NNfMRICallback
    (FMRI, "layers", {"net.0": 1}, TypeError, ("name glob",)),
    (FMRI, "grid", (8, 0, 4), ValueError, ("positive",)),
    (FMRI, "grid", (1, 2, 3, 4), ValueError, ("(g_h, g_w, g_c)",)),
    (FMRI, "grid", "8x8", ValueError, ("positive",)),
    (FMRI, "lam", float("inf"), ValueError, ("finite",)),
    (FMRI, "eps", 0.0, ValueError, ("positive",)),
    (FMRI, "check_every_n_steps", 0, ValueError, ("[1, inf]",)),
    (FMRI, "density_samples", 0, ValueError, ("[1, inf]",)),
    (FMRI, "min_history", 0, ValueError, ("[1, inf]",)),
    (FMRI, "zeta_every_n_epochs", 0, ValueError, ("[1, inf]",)),
    (FMRI, "zeta_layers", 12, TypeError, ("name glob",)),
    (FMRI, "zeta_grid", (2, 0, 4), ValueError, ("positive",)),
    (FMRI, "zeta_fraction", 1.5, ValueError, ("[0.0, 1.0]",)),
    (FMRI, "zeta_budget", 2, ValueError, ("[4, inf]",)),
    (FMRI, "zeta_time_fraction", 1.5, ValueError, ("(0.0, 1.0]",)),
    (FMRI, "zeta_window", 0, ValueError, ("[1, inf]",)),
    (FMRI, "probe_size", 0, ValueError, ("[1, inf]",)),
    (FMRI, "baseline", "median", ValueError, ("'zero'", "'mean'")),
    (FMRI, "metric", "f1", ValueError, ("'auto'", "'accuracy'")),
    (FMRI, "value_fn", NOT_CALLABLE, TypeError, ("callable",)),
    (FMRI, "antithetic", "no", TypeError, ("bool",)),
    (FMRI, "truncation_tol", -0.1, ValueError, ("[0.0, inf]",)),
    (FMRI, "confidence", 1.0, ValueError, ("(0, 1)",)),
    (FMRI, "zeta_max_batch", 0, ValueError, ("[1, inf]",)),
    (FMRI, "zeta_max_bytes", 0, ValueError, ("[1, inf]",)),
    (FMRI, "tractography", "off", TypeError, ("bool",)),
    (FMRI, "top_k", 0, ValueError, ("[1, inf]",)),
    (FMRI, "dead_ratio", -0.5, ValueError, ("[0.0, 1.0]",)),
    (FMRI, "saturation_ratio", 1.0, ValueError, ("(1.0, inf]",)),
    (FMRI, "zeta_concentration", 0.0, ValueError, ("(0.0, 1.0]",)),
    (FMRI, "stop_on", ["dead"], ValueError, ("dead_region",)),
    (FMRI, "output_selector", NOT_CALLABLE, TypeError, ("callable",)),
    (FMRI, "label_selector", NOT_CALLABLE, TypeError, ("callable",)),
    (FMRI, "batch_split", NOT_CALLABLE, TypeError, ("callable",)),
    (FMRI, "strict", "yes", TypeError, ("bool",)),
    (FMRI, "panels", 1, TypeError, ("bool",)),
    (FMRI, "max_events", -3, ValueError, ("[1, inf]",)),
    (FMRI, "flag_history", 0, ValueError, ("[1, inf]",)),
    (FMRI, "seed", -1, ValueError, ("[0, inf]",)),
    # ---- CrossModalCallback
    (XM, "band", "", ValueError, ("EEG band",)),
    (XM, "band", 7, ValueError, ("EEG band",)),
    (XM, "history", 0, ValueError, ("[1, inf]",)),
    (XM, "joint_window", -1, ValueError, ("[0, inf]",)),
    (XM, "stop_on", ("both",), ValueError, ("joint",)),
    (XM, "panels", None, TypeError, ("bool",)),
    (XM, "max_events", 0, ValueError, ("[1, inf]",)),
]


def _shows_value(msg: str, value: Any) -> bool:
    if isinstance(value, float):
        return repr(value) in msg or str(value) in msg
    if repr(value) in msg:
        return True
    # a sequence whose offending elements are listed one by one
    return isinstance(value, (list, tuple)) and bool(value) and all(repr(v) in msg for v in value)


def test_table_covers_every_constructor_argument() -> None:
    for cls in (EEG, FMRI, XM):
        params = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
        covered = {arg for c, arg, *_ in ROWS if c is cls}
        assert set(params) - covered == set(), f"{cls.__name__}: arguments without a bad-input row"


@pytest.mark.parametrize(("cls", "arg", "value", "exc", "fragments"), ROWS,
                         ids=[f"{c.__name__}-{a}-{v!r}" for c, a, v, *_ in ROWS])
def test_bad_constructor_argument_gets_a_clear_error(cls: type, arg: str, value: Any, exc: type, fragments: Tuple[str, ...]) -> None:
    with pytest.raises(exc) as info:
        cls(**{arg: value})
    msg = str(info.value)
    if arg == "bands" and isinstance(value, dict):
        assert "`bands`" in msg and "{}" in msg
    else:
        assert f"`{arg}`" in msg, f"argument not named: {msg}"
        assert _shows_value(msg, value), f"value {value!r} not shown: {msg}"
    for frag in fragments:
        assert frag in msg, f"{frag!r} (what is allowed) missing from: {msg}"


@pytest.mark.parametrize(("bands", "fragments"), [
    ({"delta": (0.5, 1.0)}, ("`delta`", "no frequency bin", "resolution 3.125")),  # empty band
    ({"ultra": (120.0, 150.0)}, ("`ultra`", "Nyquist", "100")),
    ({"alpha": (13.0, 8.0)}, ("`alpha`", "lo < hi")),
    ({"alpha": "8-13"}, ("`alpha`", "two numbers", "'8-13'")),
    ({"alpha": (-1.0, 8.0)}, ("`alpha`", "lo >= 0")),
])
def test_bad_bands(bands: Dict[str, Any], fragments: Tuple[str, ...]) -> None:
    with pytest.raises(ValueError) as info:
        NNEEGCallback(bands=bands)
    for frag in fragments:
        assert frag in str(info.value), str(info.value)


# ------------------------------------------------------------------------------- YAML keys
def _wrong_yaml_value(field: dataclasses.Field) -> Any:
    t = str(field.type)
    if "List" in t or "Dict" in t:
        return 12345
    if t in ("int", "float") or "int" in t or "float" in t:
        return "not-a-number"
    if t == "bool":
        return "maybe"
    if t == "str":
        return "no-such-choice"
    return 3.25  # Any: layers / zeta_layers


YAML_ROWS = [(name, cfg, f.name, _wrong_yaml_value(f))
             for name, cfg in (("NNEEGCallback", C.EEGConfig), ("NNfMRICallback", C.FMRIConfig), ("CrossModalCallback", C.CrossModalConfig))
             for f in dataclasses.fields(cfg)]
_CLASSES = {"NNEEGCallback": EEG, "NNfMRICallback": FMRI, "CrossModalCallback": XM}


@pytest.mark.parametrize(("cls_name", "cfg", "key", "value"), YAML_ROWS, ids=[f"{r[0]}-{r[2]}" for r in YAML_ROWS])
def test_bad_yaml_value_names_the_key(tmp_path, cls_name: str, cfg: type, key: str, value: Any) -> None:
    path = tmp_path / "cb.yaml"
    path.write_text(f"{key}: {value!r}\n" if isinstance(value, str) else f"{key}: {value}\n", encoding="utf-8")
    cls = _CLASSES[cls_name]
    if cls is XM and key == "band":
        pytest.skip("any string is a well-formed band name; it is checked against the EEG bands in setup (below)")
    with pytest.raises((ValueError, TypeError)) as info:
        cls.from_config(str(path))
    msg = str(info.value)
    assert f"`{key}`" in msg, msg
    assert str(value) in msg, msg


@pytest.mark.parametrize(("cls", "cfg"), [(EEG, C.EEGConfig), (FMRI, C.FMRIConfig), (XM, C.CrossModalConfig)])
def test_unknown_yaml_key_lists_the_allowed_keys(tmp_path, cls: type, cfg: type) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("windw: 64\n", encoding="utf-8")
    with pytest.raises(ValueError) as info:
        cls.from_config(str(path))
    msg = str(info.value)
    assert "`windw`" in msg and "64" in msg and str(path) in msg
    for f in dataclasses.fields(cfg):
        assert f.name in msg
    assert set(f.name for f in dataclasses.fields(cfg)) | set(C.python_only(cls)) == set(
        n for n in inspect.signature(cls.__init__).parameters if n != "self"), "YAML keys and constructor arguments differ"


def test_yaml_shipped_configs_build() -> None:
    assert NNEEGCallback.from_config("configs/eeg.yaml").stop_on == ("non_finite", "explosion")
    assert NNfMRICallback.from_config("configs/fmri.yaml").grid == (8, 8, 4)
    assert CrossModalCallback.from_config("configs/cross_modal.yaml").band == "gamma"


# ------------------------------------------------------------------------------- needs a model
def _fit(tmp_path, callbacks, **kw) -> Any:
    model = MLPModule(n=64)
    trainer = fast_trainer(tmp_path, callbacks, max_epochs=kw.pop("max_epochs", 1), **kw)
    trainer.fit(model)
    return trainer


@pytest.mark.parametrize(("make", "arg"), [
    (lambda: [NNEEGCallback(layers="encoder.*")], "layers"),
    (lambda: [NNfMRICallback(layers=["re:conv[0-9]"])], "layers"),
    (lambda: [NNfMRICallback(zeta_layers=torch.nn.Conv2d)], "zeta_layers"),
])
def test_selection_matching_nothing_lists_available_names(tmp_path, make, arg: str) -> None:
    with pytest.raises(ValueError) as info:
        _fit(tmp_path, make())
    msg = str(info.value)
    assert f"`{arg}`" in msg and "matches no module" in msg
    for name in ("net.0 (Linear)", "net.2 (Linear)", "net.4 (Linear)", "net.1 (ReLU)"):
        assert name in msg, msg


def test_grid_larger_than_the_layer_is_clamped_with_exactly_one_warning(tmp_path) -> None:
    fmri = NNfMRICallback(grid=(2, 2, 64), zeta_time_fraction=None, zeta_budget=8, probe_size=8, check_every_n_steps=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(tmp_path, [fmri], max_epochs=2)
    clamped = [w for w in caught if "clamped" in str(w.message)]
    assert len(clamped) == 1, [str(w.message) for w in clamped]
    msg = str(clamped[0].message)
    assert "`grid`=(2, 2, 64)" in msg and "net.0" in msg and "net.4" in msg
    # Clamped, not dropped: every unit still belongs to one region (32, 32 and 4 features).
    assert {k: tuple(v.shape) for k, v in fmri.density.items()} == {"net.0": (32,), "net.2": (32,), "net.4": (4,)}
    assert fmri.zeta and all(tuple(z.scores.shape) == ({"net.4": 4}.get(k, 32),) for k, z in fmri.zeta.items())


def test_cross_modal_band_missing_in_eeg_and_missing_partners(tmp_path) -> None:
    with pytest.raises(ValueError) as info:
        _fit(tmp_path, [NNEEGCallback(), NNfMRICallback(), CrossModalCallback(band="mu")])
    assert "`band`='mu'" in str(info.value) and "gamma" in str(info.value)
    with pytest.raises(MisconfigurationException) as info:
        _fit(tmp_path, [NNEEGCallback(), CrossModalCallback()])
    assert "NNfMRICallback" in str(info.value) and "trainer.callbacks" in str(info.value)


# ------------------------------------------------------------------------------- fuzzing the core
SPECIAL = st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, 1e150, -1e150, 1e-300])
FINITE = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _series(n: int) -> st.SearchStrategy:
    """A float64 series of length n: random finite, constant, or with special values sprinkled in."""
    plain = st.lists(FINITE, min_size=n, max_size=n)
    const = st.builds(lambda v: [v] * n, st.one_of(FINITE, st.just(1e150)))
    spiked = st.builds(lambda xs, i, v: xs[:i] + [v] + xs[i + 1:], plain, st.integers(0, n - 1), SPECIAL)
    return st.one_of(plain, const, spiked)


@FUZZ
@given(st.integers(64, 130).flatmap(lambda n: st.tuples(_series(n), _series(n))))
def test_fuzz_welch_psd_matches_scipy_and_isolates_non_finite_rows(rows) -> None:
    x = torch.tensor(rows, dtype=torch.float64)  # (2, N)
    freqs, psd = welch_psd(x)
    assert freqs.shape == (33,) and psd.shape == (2, 33)
    for i in range(2):
        row = x[i].numpy()
        if np.isfinite(row).all():
            _, ref = sps.welch(row, fs=200.0, nperseg=64, noverlap=32, window="hann", detrend="constant")
            scale = max(np.abs(ref).max(), np.abs(row).max() ** 2 * 1e-12, 1e-300)
            np.testing.assert_allclose(psd[i].numpy(), ref, rtol=1e-6, atol=1e-9 * scale)
            assert (psd[i] >= 0).all()
            if (row == row[0]).all():
                assert psd[i].abs().max() <= 1e-20 * max(row[0] ** 2, 1.0)  # constant: no power
        # A non-finite row never contaminates the other row: the row alone gives the same spectrum
        # as in the batch, NaN where the batch has NaN. Not bitwise: the batched and the single-row
        # rfft/reductions may take different kernels, and with rows like [1e150] * n beside zeros
        # the last bits differ (found by hypothesis); 1e-12 relative to the row's scale is far
        # below anything a contamination would produce (NaN, inf or an O(1) change).
        alone = welch_psd(x[i : i + 1])[1][0]
        assert torch.equal(torch.isnan(alone), torch.isnan(psd[i]))
        scale = float(torch.nan_to_num(alone, nan=0.0, posinf=0.0, neginf=0.0).abs().max()) or 1.0
        torch.testing.assert_close(alone, psd[i], rtol=1e-12, atol=1e-12 * scale, equal_nan=True)


def test_welch_psd_empty_and_short_inputs() -> None:
    freqs, psd = welch_psd(torch.zeros(0, 128))
    assert psd.shape == (0, 33) and freqs.shape == (33,)
    with pytest.raises(ValueError, match="`nperseg`"):
        welch_psd(torch.zeros(3, 10))
    with pytest.raises(ValueError, match="`nperseg`"):
        welch_psd(torch.zeros(0))


@FUZZ
@given(st.lists(st.one_of(st.floats(0, 1e150), st.just(0.0)), min_size=33, max_size=33))
def test_fuzz_band_powers_relative_is_a_distribution_or_zero(values) -> None:
    freqs = torch.arange(33, dtype=torch.float64) * 200.0 / 64
    psd = torch.tensor(values, dtype=torch.float64)
    rel = band_powers(freqs, psd, relative=True)
    absolute = band_powers(freqs, psd)
    assert rel.shape == (5,) and torch.isfinite(rel).all() and (rel >= 0).all() and (rel <= 1).all()
    if absolute.sum() > 0:
        assert abs(float(rel.sum()) - 1.0) < 1e-9
    else:
        assert torch.equal(rel, torch.zeros(5, dtype=torch.float64))  # silent: 0, never NaN


@FUZZ
@given(st.integers(4, 70).flatmap(lambda w: st.tuples(_series(w), _series(w))))
def test_fuzz_window_features_are_finite_for_any_input(rows) -> None:
    x = torch.tensor(rows, dtype=torch.float64)  # (layers=2, W)
    f = window_features(x).view(2, -1)
    assert f.shape == (2, 6 + len(DEFAULT_BANDS))
    assert torch.isfinite(f).all()  # documented: finite for any input
    expected_share = (~torch.isfinite(x)).double().mean(dim=1)
    torch.testing.assert_close(f[:, 4], expected_share)  # non-finite share column
    assert ((f[:, 6:] >= 0) & (f[:, 6:] <= 1)).all()


def test_window_features_too_short() -> None:
    with pytest.raises(ValueError, match="at least 4 samples"):
        window_features(torch.ones(2, 3))


@FUZZ
@given(_series(6), st.lists(st.one_of(FINITE.map(abs), SPECIAL), min_size=3, max_size=3))
def test_fuzz_detect_never_crashes_and_flags_non_finite(history_row, values) -> None:
    v = torch.tensor(values, dtype=torch.float64)
    h = torch.tensor([history_row] * 3, dtype=torch.float64)  # (3, 6)
    flags, measures = detect(v, h)
    assert flags.shape == (4, 3) and flags.dtype == torch.bool and measures.shape == (4, 3)
    assert torch.equal(flags[0], ~torch.isfinite(v))
    assert not flags[3].any()  # no powers given: no spectral shift


@FUZZ
@given(st.integers(0, 3), st.lists(st.one_of(FINITE, SPECIAL), min_size=3 * 6, max_size=3 * 6))
def test_fuzz_region_sums_and_density(batch, flat) -> None:
    a = torch.tensor(flat[: batch * 6], dtype=torch.float64).reshape(batch, 6)  # (B, 6) in 3 regions
    index = grid_partition(a.shape, (3,))
    sums = region_sums(a, index, 3)  # (3, 3)
    assert sums.shape == (3, 3) and sums.dtype == torch.float32
    # independent reference: brute force per region in float64
    for r in range(3):
        units = a[:, index == r]
        ref = torch.stack([units.abs().sum(), units.sum(), units.square().sum()]).float()
        if units.numel() == 0:
            assert torch.equal(sums[r], torch.zeros(3))  # empty batch: zero sums
        elif torch.isfinite(units).all() and units.abs().max() < 1e6:
            torch.testing.assert_close(sums[r], ref, rtol=1e-5, atol=1e-3)
            assert torch.isfinite(sums[r]).all()
        elif not torch.isfinite(units).all() or units.abs().max() > 1e38:
            assert not torch.isfinite(sums[r]).all()  # beyond float32: visible, not silently dropped
    counts = torch.full((3,), batch * 2)
    phi = region_density(sums, counts)
    if batch == 0:
        assert torch.isnan(phi).all()  # documented: a region with no element gives NaN
    else:
        for r in range(3):
            if torch.isfinite(sums[r]).all():
                assert not torch.isnan(phi[r])


@FUZZ
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.one_of(FINITE, st.sampled_from([1e12, -1e12, 0.0])),
                                                                          min_size=2 ** n, max_size=2 ** n))))
def test_fuzz_shapley_on_tiny_games(game) -> None:
    n, table = game
    values = torch.tensor(table, dtype=torch.float64)
    weights = 2 ** torch.arange(n)

    def value_fn(masks: torch.Tensor) -> torch.Tensor:  # (K, n) bool -> (K,)
        return values[(masks.long() * weights).sum(1)]

    phi = exact_shapley(value_fn, n)
    total = float(values[-1] - values[0])
    assert abs(float(phi.sum()) - total) <= 1e-9 * max(1.0, abs(total), float(values.abs().max()))  # efficiency
    # brute force over all orders (independent reference)
    ref = torch.zeros(n, dtype=torch.float64)
    for order in itertools.permutations(range(n)):
        code = 0
        for p in order:
            ref[p] += values[code | (1 << p)] - values[code]
            code |= 1 << p
    ref /= math.factorial(n)
    torch.testing.assert_close(phi, ref, rtol=1e-9, atol=1e-9 * float(values.abs().max() + 1))
    if n >= 2:
        res = shapley_zeta(value_fn, n, n_permutations=4, generator=torch.Generator().manual_seed(0))
        assert res.scores.shape == (n,) and torch.isfinite(res.scores).all()
        assert abs(float(res.scores.sum()) - total) <= 1e-6 * max(1.0, abs(total), float(values.abs().max()))


def test_shapley_nan_game_does_not_crash() -> None:
    res = exact_shapley(lambda m: torch.where(m.all(1), float("nan"), m.double().sum(1)), 3)
    assert res.shape == (3,) and torch.isnan(res).all()  # a NaN value propagates, visibly


@FUZZ
@given(st.one_of(st.floats(-1, 1), SPECIAL), st.one_of(st.floats(0, 1), SPECIAL), st.one_of(st.floats(0, 1), SPECIAL))
def test_fuzz_consistency_is_in_unit_interval_or_nan_for_an_undefined_term(rho, agreement, coherence) -> None:
    c = consistency(torch.tensor(rho), torch.tensor(agreement), torch.tensor(coherence))
    if any(math.isnan(v) for v in (rho, agreement, coherence)):  # issue 13: undefined is NaN, not 0.5
        assert torch.isnan(c)
        return
    assert torch.isfinite(c) and 0.0 <= float(c) <= 1.0
    if -1 <= rho <= 1 and 0 <= agreement <= 1 and 0 <= coherence <= 1:
        assert abs(float(c) - ((rho + 1) / 2 + agreement + coherence) / 3) < 1e-6


def test_spearman_undefined_cases_are_nan() -> None:
    assert torch.isnan(spearman(torch.ones(5), torch.arange(5.0)))  # constant
    assert torch.isnan(spearman(torch.tensor([1.0, float("nan"), 3.0]), torch.arange(3.0)))
    assert torch.isnan(spearman(torch.zeros(0), torch.zeros(0)))  # empty: fewer than 3 layers


@FUZZ
@given(st.integers(1, 4), st.integers(1, 4), st.lists(st.one_of(st.floats(0, 1e150), st.just(0.0)), min_size=16, max_size=16))
def test_fuzz_tractography_summaries(rows, cols, flat) -> None:
    c = torch.tensor(flat[: rows * cols], dtype=torch.float64).reshape(rows, cols)
    eff = pathway_efficiency(c)
    if c.sum() > 0:
        assert torch.isfinite(eff) and -1e-9 <= float(eff) <= 1 + 1e-9
    else:
        assert torch.isnan(eff)  # documented: no strength, no distribution
    src, dst, val = top_pathways(c, 3)
    k = min(3, rows * cols)
    assert src.shape == (k,) and torch.equal(val, c[src, dst]) and (val[:-1] >= val[1:]).all()
    assert float(val[0]) == float(c.max())
    res = path_strength([c, c.T])
    assert torch.isfinite(res.strength) and 0.0 <= float(res.strength) <= 1.0 + 1e-9
    assert res.path.shape == (3,)
    with pytest.raises(ValueError, match="`k`"):
        top_pathways(c, 0)
    with pytest.raises(ValueError, match="`c`"):
        pathway_efficiency(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="`chain`"):
        path_strength([])
