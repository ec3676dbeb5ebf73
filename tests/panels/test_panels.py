import enum
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensorboard.backend.event_processing import event_accumulator as ea_mod
from tensorboard.backend.event_processing import plugin_event_accumulator as pea
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

from nn_neuroimaging_lightning.panels.tensorboard import (
    band_layout,
    merge_layouts,
    safe_tag,
    table_text,
    write_custom_scalars,
    write_stacked_spectrum,
)

BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 100.0)}
FREQS = np.arange(33) * 3.125  # Welch nperseg 64 at 200 Hz nominal


def _accumulator(logdir):
    guidance = {ea_mod.IMAGES: 0, ea_mod.HISTOGRAMS: 0, ea_mod.TENSORS: 0, ea_mod.COMPRESSED_HISTOGRAMS: 0}
    return ea_mod.EventAccumulator(str(logdir), size_guidance=guidance).Reload()


def _plugin_accumulator(logdir):
    # What the TensorBoard server itself reads (histograms migrated to (k, 3) [left, right, count] tensors).
    return pea.EventAccumulator(str(logdir), size_guidance={pea.TENSORS: 0}).Reload()


# ------------------------------------------------------------------ safe_tag


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("nn_eeg", "features.0", "band", "gamma"), "nn_eeg/features.0/band/gamma"),
        (("nn_eeg", "encoder.layers[0].self_attn"), "nn_eeg/encoder.layers_0_.self_attn"),
        (("nn_fmri", "../../etc/passwd"), "nn_fmri/_/_/etc/passwd"),
        (("nn_fmri", "a/../b"), "nn_fmri/a/_/b"),
        (("cross_modal", "/abs//path/"), "cross_modal/abs/path"),
        (("nn_eeg", "block 1:conv\\x", 3), "nn_eeg/block_1_conv_x/3"),
        (("nn_eeg", "ünïcode-name"), "nn_eeg/_n_code-name"),
        (("nn_eeg", "."), "nn_eeg/_"),
    ],
)
def test_safe_tag(parts, expected):
    assert safe_tag(*parts) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=4))
def test_safe_tag_is_always_safe(parts):
    try:
        tag = safe_tag(*parts)
    except ValueError:
        assert all(p.strip("/") == "" for p in parts)
        return
    assert re.fullmatch(r"[A-Za-z0-9_./-]+", tag)
    components = tag.split("/")
    assert all(c and set(c) != {"."} for c in components)
    assert not tag.startswith("/") and ".." not in components


def test_safe_tag_bad_input():
    with pytest.raises(ValueError, match="`parts` must contain at least one non-empty component"):
        safe_tag("", "//")


# ------------------------------------------------------------------ custom scalars


def test_band_layout_regexes_match_the_logged_tags():
    layers = ["conv1", "conv10", "features.0"]
    layout = band_layout(layers, BANDS)
    by_layer = layout["nn_eeg band power by layer"]
    assert list(by_layer) == layers
    pattern = by_layer["conv1"][1][0]
    assert by_layer["conv1"][0] == "Multiline"
    assert re.search(pattern, "nn_eeg/conv1/band/gamma")
    assert re.search(pattern, "nn_eeg/conv1/band/gamma_step")  # Lightning's on_step suffix
    assert not re.search(pattern, "nn_eeg/conv10/band/gamma")
    dotted = by_layer["features.0"][1][0]
    assert re.search(dotted, "nn_eeg/features.0/band/alpha")
    assert not re.search(dotted, "nn_eeg/featuresX0/band/alpha")  # '.' is escaped
    by_band = layout["nn_eeg band power by band"]
    assert list(by_band) == list(BANDS)
    assert re.search(by_band["gamma"][1][0], "nn_eeg/features.0/band/gamma")
    assert not re.search(by_band["gamma"][1][0], "nn_eeg/features.0/band/beta")
    assert layout["cross_modal"] == {
        "consistency": ["Multiline", ["cross_modal/consistency"]],
        "rho / agreement / coherence": [
            "Multiline",
            ["cross_modal/rho", "cross_modal/agreement", "cross_modal/coherence"],
        ],
    }


def test_custom_scalars_written_once_and_read_back(tmp_path):
    layout = merge_layouts(band_layout(["conv1", "fc"], BANDS), {"extra": {"loss": ["Multiline", ["loss"]]}})
    writer = SummaryWriter(str(tmp_path))
    assert write_custom_scalars(writer, layout) is True
    assert write_custom_scalars(writer, layout) is False  # once per writer
    writer.close()
    ea = _accumulator(tmp_path)
    events = ea.Tensors("custom_scalars__config__")
    assert len(events) == 1
    assert ea.SummaryMetadata("custom_scalars__config__").plugin_data.plugin_name == "custom_scalars"
    proto = layout_pb2.Layout.FromString(events[0].tensor_proto.string_val[0])
    titles = [c.title for c in proto.category]
    assert titles == ["nn_eeg band power by layer", "nn_eeg band power by band", "cross_modal", "extra"]
    conv1 = proto.category[0].chart[0]
    assert (conv1.title, list(conv1.multiline.tag)) == ("conv1", ["nn_eeg/conv1/band/.*"])
    assert [c.title for c in proto.category[1].chart] == list(BANDS)


# ------------------------------------------------------------------ stacked spectra


def test_stacked_spectrum_buckets_and_stats(tmp_path):
    psd = 1.0 / (1.0 + FREQS)
    writer = SummaryWriter(str(tmp_path))
    for step in range(3):
        assert write_stacked_spectrum(writer, "nn_eeg/conv1/spectrum", FREQS, psd * (step + 1), step)
    writer.close()
    events = _accumulator(tmp_path).Histograms("nn_eeg/conv1/spectrum")
    assert [e.step for e in events] == [0, 1, 2]
    h = events[2].histogram_value
    assert h.num == pytest.approx(3 * psd.sum())
    assert h.sum == pytest.approx(3 * (FREQS * psd).sum())
    assert h.sum_squares == pytest.approx(3 * (FREQS**2 * psd).sum())
    assert (h.min, h.max) == (0.0, pytest.approx(100.0 + 1.5625))
    # edges halfway between bins: 1.5625, 4.6875, ... (hand-worked for a 3.125 Hz grid)
    assert list(h.bucket_limit)[:3] == pytest.approx([1.5625, 4.6875, 7.8125])
    assert list(h.bucket) == pytest.approx(list(3 * psd))
    # as the TensorBoard server sees it: one (left, right, power) row per frequency bin
    buckets = tensor_util.make_ndarray(_plugin_accumulator(tmp_path).Tensors("nn_eeg/conv1/spectrum")[0].tensor_proto)
    assert buckets.shape == (33, 3)
    np.testing.assert_allclose(buckets[:, 0], np.concatenate([[0.0], FREQS[:-1] + 1.5625]), rtol=1e-6)
    np.testing.assert_allclose(buckets[:, 1], FREQS + 1.5625, rtol=1e-6)
    np.testing.assert_allclose(buckets[:, 2], psd, rtol=1e-6)


def test_stacked_spectrum_zero_tiny_and_nonfinite(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    tag = "nn_eeg/dead/spectrum"
    assert write_stacked_spectrum(writer, tag, FREQS, np.zeros(33), 0) is False  # nothing to draw
    assert write_stacked_spectrum(writer, tag, FREQS, np.full(33, np.nan), 1) is False
    assert write_stacked_spectrum(writer, tag, FREQS, np.full(33, 1e-30), 2) is True
    partial = np.zeros(33)
    partial[[3, 5]] = [2.0, 1.0]
    partial[7] = -1.0  # negative and non-finite power are written as 0
    partial[9] = np.inf
    assert write_stacked_spectrum(writer, tag, FREQS, torch.from_numpy(partial), 3) is True
    assert write_stacked_spectrum(writer, tag, FREQS, np.full(33, 1e-60), 4, normalize=True) is True
    writer.close()
    events = _accumulator(tmp_path).Histograms(tag)
    assert [e.step for e in events] == [2, 3, 4]
    assert events[0].histogram_value.num == pytest.approx(33e-30)
    h = events[1].histogram_value
    assert (h.num, h.min, h.max) == (3.0, pytest.approx(3 * 3.125 - 1.5625), pytest.approx(5 * 3.125 + 1.5625))
    assert events[2].histogram_value.num == pytest.approx(1.0)
    served = {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in _plugin_accumulator(tmp_path).Tensors(tag)}
    assert served[2][:, 2] == pytest.approx(np.full(33, 1e-30), rel=1e-5)  # survives float32
    # TensorBoard keeps the non-empty span: buckets 3..5, outer edges from min/max
    np.testing.assert_allclose(served[3], [[7.8125, 10.9375, 2.0], [10.9375, 14.0625, 0.0], [14.0625, 17.1875, 1.0]])
    assert served[4][:, 2].sum() == pytest.approx(1.0, rel=1e-5)


def test_stacked_spectrum_single_bin(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    assert write_stacked_spectrum(writer, "s", [10.0], [4.0], 0)
    writer.close()
    h = _accumulator(tmp_path).Histograms("s")[0].histogram_value
    assert (h.min, h.max, h.num, h.sum) == (9.5, 10.5, 4.0, 40.0)


# ------------------------------------------------------------------ text tables


class _Phase(enum.Enum):
    TRAIN = "train"
    VALIDATE = "validate"


def test_table_text_and_add_text(tmp_path):
    rows = [
        (12, _Phase.TRAIN, "features.0", "explosion", 7.123456),
        {"step": 13, "phase": "validate", "layer": "a|b", "kind": "state\nmismatch", "value": True},
    ]
    text = table_text(rows, ["step", "phase", "layer", "kind", "value"])
    assert text.splitlines() == [
        "| step | phase | layer | kind | value |",
        "|---|---|---|---|---|",
        "| 12 | train | features.0 | explosion | 7.123 |",
        "| 13 | validate | a\\|b | state mismatch | yes |",
    ]
    assert table_text([], ["layer", "gamma", "zeta_max"]).endswith("(none)")
    writer = SummaryWriter(str(tmp_path))
    writer.add_text("nn_eeg/events", text, 5)
    writer.close()
    events = _accumulator(tmp_path).Tensors("nn_eeg/events/text_summary")
    assert [e.step for e in events] == [5]
    assert events[0].tensor_proto.string_val[0].decode() == text


# ------------------------------------------------------------------ bad input


def test_panels_bad_input(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    with pytest.raises(ValueError, match="`freqs` and `psd` must be 1-D with the same non-zero length"):
        write_stacked_spectrum(writer, "s", FREQS, np.ones(5), 0)
    with pytest.raises(ValueError, match="`freqs` must be finite and strictly increasing"):
        write_stacked_spectrum(writer, "s", [0.0, 0.0, 1.0], [1.0, 1.0, 1.0], 0)
    writer.close()
    with pytest.raises(TypeError, match="`layer_names` and `bands` must be sequences of names"):
        band_layout("conv1", BANDS)
    with pytest.raises(ValueError, match=r"`rows\[0\]` must have 2 cells"):
        table_text([(1, 2, 3)], ["a", "b"])
    with pytest.raises(ValueError, match="`header` must be a non-empty sequence"):
        table_text([], [])
