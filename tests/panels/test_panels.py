import enum
import re
import time

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

from nn_neuroimaging_lightning.panels.figures import (
    consistency_figure,
    heatmap_figure,
    matrix_figure,
    phase_timeline_figure,
    spectrogram_figure,
    spectrum_figure,
)
from nn_neuroimaging_lightning.panels.figures import PHASE_COLOURS
from nn_neuroimaging_lightning.panels.raster import colorize, colormap, hex_to_rgb
from nn_neuroimaging_lightning.panels.tensorboard import (
    band_layout,
    figure_to_array,
    merge_layouts,
    safe_tag,
    table_text,
    write_custom_scalars,
    write_figure,
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


# ------------------------------------------------------------------ figures


class _Phase(enum.Enum):
    TRAIN = "train"
    VALIDATE = "validate"
    IDLE = "idle"


def _figure_builders():
    rng = np.random.default_rng(0)
    psd = {"conv1": 1.0 / (1.0 + FREQS), "fc": np.r_[0.0, rng.random(32)]}  # DC 0: log-axis gap
    zeta = rng.normal(size=(8, 8, 4))
    traced = rng.random((6, 5))
    traced[0, 1] = np.nan
    phases = [_Phase.TRAIN] * 20 + [_Phase.IDLE] * 2 + ["validate"] * 6 + ["error"]
    power = rng.random((10, 33))
    return {
        "nn_eeg/spectrum": lambda: spectrum_figure(FREQS, psd, BANDS),
        "nn_eeg/conv1/spectrogram": lambda: spectrogram_figure(np.arange(10), FREQS, power),
        "nn_eeg/phases": lambda: phase_timeline_figure(
            phases, np.cumsum(np.ones(29)), {"train": 3.0, "idle": 0.4}
        ),
        "nn_fmri/conv1/zeta": lambda: heatmap_figure(zeta, "zeta", "RdBu_r", np.abs(zeta) > 1.5, symmetric=True),
        "nn_fmri/fc/density": lambda: heatmap_figure(power[0, :4], "density"),
        "nn_fmri/lstm/density": lambda: heatmap_figure(power[:4, :6], "density"),
        "nn_fmri/tractography/conv1-conv2": lambda: matrix_figure(traced, "conv1 region", "conv2 region", "C(A->B)"),
        "cross_modal/history": lambda: consistency_figure(
            {"consistency": [0.6, 0.7, 0.8], "rho": [np.nan, 0.2, 0.5], "joint_anomaly": [False, True, False]},
            steps=[10, 20, 30],
        ),
    }


def _all_figures():
    return {tag: build() for tag, build in _figure_builders().items()}


def test_every_figure_written_and_read_back(tmp_path):
    writer = SummaryWriter(str(tmp_path))
    sizes = {}
    for step in range(2):
        for tag, img in _all_figures().items():
            assert isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
            assert 48 <= img.shape[0] <= 2000 and 48 <= img.shape[1] <= 2000  # bounded size
            assert len(np.unique(img.reshape(-1, 3), axis=0)) > 5  # not blank
            sizes[tag] = (img.shape[1], img.shape[0])
            write_figure(writer, tag, img, step)
    writer.add_image("via_add_image", spectrogram_figure([0, 1], [0, 50, 100], np.ones((2, 3))), 0, dataformats="HWC")
    writer.close()
    ea = _accumulator(tmp_path)
    assert set(ea.Tags()["images"]) == set(sizes) | {"via_add_image"}
    for tag, (width, height) in sizes.items():
        images = ea.Images(tag)
        assert [i.step for i in images] == [0, 1]
        assert (images[0].width, images[0].height) == (width, height)
        assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(ea.Images("via_add_image")) == 1


def test_figure_size_follows_figsize_and_dpi():
    assert spectrum_figure(FREQS, {"a": FREQS + 1}).shape == (280, 480, 3)  # 6 x 3.5 in at 80 dpi
    assert spectrum_figure(FREQS, {"a": FREQS + 1}, figsize=(4, 2), dpi=50).shape == (100, 200, 3)
    assert consistency_figure({"consistency": [0.1]}, figsize=(1e6, 0.01)).shape == (48, 4096, 3)  # clamped
    with pytest.raises(ValueError, match="`figsize` must be a"):
        matrix_figure(np.eye(2), "a", "b", figsize=(0, 3))
    with pytest.raises(ValueError, match="`dpi` must be a positive number"):
        matrix_figure(np.eye(2), "a", "b", dpi=-1)


def _runs(row):
    """(start, end, colour) of the runs of identical pixels in an (W, 3) row."""
    change = np.flatnonzero(np.any(row[1:] != row[:-1], axis=1)) + 1
    starts = np.r_[0, change]
    ends = np.r_[change, len(row)]
    return [(a, b, tuple(int(v) for v in row[a])) for a, b in zip(starts, ends)]


def test_heatmap_slices_side_by_side_with_shared_scale():
    # slice k constant = k: every slice is one flat block in the colour of k on the shared [0, 3] scale
    g_h, g_w, g_c = 8, 8, 4
    grid = np.broadcast_to(np.arange(g_c, dtype=float), (g_h, g_w, g_c)).copy()
    img = heatmap_figure(grid, "zeta", colorbar_label="zeta")
    expected = [tuple(int(v) for v in colorize([k], 0.0, 3.0, "viridis")[0]) for k in range(g_c)]
    ys = [y for y in range(img.shape[0]) if all(any(r[2] == col and r[1] - r[0] >= 20 for r in _runs(img[y]))
                                                for col in expected)]
    assert len(ys) >= 4 * g_h  # rows crossing all 4 slices (cells are blocks of several pixels)
    blocks = [r for r in _runs(img[ys[len(ys) // 2]]) if r[2] in expected and r[1] - r[0] >= 8]
    assert [b[2] for b in blocks] == expected  # left to right: c = 0, 1, 2, 3
    widths = {b[1] - b[0] for b in blocks}
    assert len(widths) == 1 and widths.pop() % g_w == 0  # equal slices, whole-pixel cells
    # the colour bar: a vertical gradient from the top colour of viridis to the bottom one
    lut = colormap("viridis")
    right = img[:, blocks[-1][1] + 2:]  # right of the slices
    both = np.flatnonzero(np.all(right == lut[-1], axis=2).any(axis=0) & np.all(right == lut[0], axis=2).any(axis=0))
    assert both.size >= 8  # columns holding both ends of the map: the bar
    column = right[:, both[0]]
    top = np.flatnonzero(np.all(column == lut[-1], axis=1)).min()
    bottom = np.flatnonzero(np.all(column == lut[0], axis=1)).max()
    assert bottom - top > 100
    index = [int(np.flatnonzero(np.all(lut == px, axis=1))[0]) for px in column[top:bottom + 1]]
    assert index == sorted(index, reverse=True)  # highest value at the top, monotone downwards


def test_heatmap_significance_dots_and_cells():
    grid = np.zeros((4, 4, 2))
    grid[..., 1] = 1.0  # slice 1 at the top of the scale: black dots; slice 0 at the bottom: white dots
    mask = np.zeros_like(grid, dtype=bool)
    mask[1, 2, 0] = mask[3, 3, 1] = mask[0, 0, 1] = True
    img = heatmap_figure(grid, "zeta", significance=mask, colorbar_label="zeta")
    plain = heatmap_figure(grid, "zeta", significance=np.zeros_like(mask), colorbar_label="zeta")
    low, high = colorize([0.0, 1.0], 0.0, 1.0, "viridis")
    # locate the cells from the dot-free image: slice 0 is the block of `low`, slice 1 of `high`
    def cell_box(colour):
        ys, xs = np.nonzero(np.all(plain[:, :-40] == colour, axis=2))  # left of the colour bar
        return ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    centres, radii = [], []
    for colour, dots, dot_colour in ((low, [(1, 2)], (255, 255, 255)), (high, [(3, 3), (0, 0)], (0, 0, 0))):
        y0, y1, x0, x1 = cell_box(colour)
        ch, cw = (y1 - y0) / 4, (x1 - x0) / 4
        centres += [(y0 + (i + 0.5) * ch, x0 + (j + 0.5) * cw) for i, j in dots]
        radii.append(min(ch, cw) / 2)
        assert ch == int(ch) and cw == int(cw)  # whole-pixel cells
        for i in range(4):
            for j in range(4):
                centre = img[int(y0 + (i + 0.5) * ch), int(x0 + (j + 0.5) * cw)]
                if (i, j) in dots:
                    assert tuple(centre) == dot_colour
                else:
                    assert tuple(centre) == tuple(colour)
    # dots only where significant: the two images differ only inside those 3 cells
    ys, xs = np.nonzero(np.any(img != plain, axis=2))
    near = np.min([np.hypot(ys - cy, xs - cx) for cy, cx in centres], axis=0)
    assert ys.size >= 3 * 5 and np.all(near <= min(radii))  # dots inside their cells, nothing else changed


def test_heatmap_layouts_and_scale():
    two = heatmap_figure(torch.ones(3, 5), "tokens")  # (g_t, g_d): one map
    one = heatmap_figure(np.array([-1.0, 3.0]), "z", "RdBu_r", symmetric=True)  # strip, scale [-3, 3]
    blue = tuple(int(v) for v in colorize([-1.0], -3.0, 3.0, "RdBu_r")[0])
    red = tuple(int(v) for v in colorize([3.0], -3.0, 3.0, "RdBu_r")[0])
    assert np.all(one == blue, axis=2).sum() > 50 and np.all(one == red, axis=2).sum() > 50
    assert red == tuple(colormap("RdBu_r")[-1]) and blue[2] > blue[0]  # diverging: high red, low blue
    mid = tuple(int(v) for v in colorize([1.0], 1.0, 1.0)[0])  # constant grid: the middle colour
    assert np.all(two == mid, axis=2).sum() > 100
    wrapped = heatmap_figure(np.zeros((2, 2, 10)), max_cols=4)
    assert wrapped.shape == (round((0.9 + 2.0 * 3) * 80), round((1.2 + 2.0 * 4) * 80), 3)  # 3 rows of 4


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("spectrum all NaN", lambda: spectrum_figure(FREQS, {"a": np.full(33, np.nan)}, BANDS)),
        ("spectrum empty", lambda: spectrum_figure([], {})),
        ("spectrum inf/neg", lambda: spectrum_figure(FREQS, {"a": np.r_[np.inf, -1.0, np.ones(31)]})),
        ("spectrogram empty", lambda: spectrogram_figure([], FREQS, np.zeros((0, 33)))),
        ("spectrogram NaN", lambda: spectrogram_figure([0, 1], [0, 1], np.full((2, 2), np.nan))),
        ("spectrogram constant", lambda: spectrogram_figure([0, 1], [0, 1], np.ones((2, 2)), log=False)),
        ("phases empty", lambda: phase_timeline_figure([])),
        ("phases one", lambda: phase_timeline_figure(["train"], durations={"train": float("nan")})),
        ("heatmap empty", lambda: heatmap_figure(np.zeros((0,)))),
        ("heatmap no slices", lambda: heatmap_figure(np.zeros((2, 2, 0)))),
        ("heatmap NaN", lambda: heatmap_figure(np.full((2, 3, 2), np.nan), significance=np.ones((2, 3, 2), bool))),
        ("heatmap inf", lambda: heatmap_figure(np.array([[np.inf, 1.0], [-np.inf, 0.0]]))),
        ("heatmap big", lambda: heatmap_figure(np.random.default_rng(0).random((300, 300)))),
        ("matrix empty", lambda: matrix_figure(np.zeros((0, 3)), "a", "b")),
        ("matrix all NaN", lambda: matrix_figure(np.full((2, 2), np.nan), "a", "b", log=True)),
        ("matrix constant log", lambda: matrix_figure(np.ones((2, 2)), "a", "b", log=True)),
        ("consistency empty", lambda: consistency_figure({})),
        ("consistency inf", lambda: consistency_figure({"consistency": [np.inf, 5.0, -np.inf]})),
    ],
)
def test_degenerate_inputs_draw_without_error(name, build):
    img = build()
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and 0 not in img.shape
    assert (img < 128).any(), name  # at least the frame / note / title ink


def test_empty_panels_say_no_data():
    ink = heatmap_figure(np.zeros((0,))) < 200
    plain = heatmap_figure(np.zeros((1,)), significance=None)
    assert ink.any() and not np.array_equal(heatmap_figure(np.zeros((0,))), plain)


def test_matrix_marks_untraced_pairs():
    m = np.ones((3, 4))
    m[0, 0] = m[2, 3] = np.nan
    img = matrix_figure(m, "source", "target", "C")
    traced = matrix_figure(np.ones((3, 4)), "source", "target", "C")
    hatch_bg, hatch_ink = np.array([221, 221, 221]), np.array([119, 119, 119])
    assert np.all(img == hatch_bg, axis=2).sum() > 200  # the two untraced cells (and the legend swatch)
    assert np.all(img == hatch_ink, axis=2).sum() > 20
    assert not np.all(traced == hatch_bg, axis=2).any()  # no hatch, no legend without untraced pairs
    # constant finite matrix on [1, 2]: its cells take the lowest colour of magma
    assert np.all(img == colormap("magma")[0], axis=2).sum() > 1000


def test_phase_timeline_runs():
    img = phase_timeline_figure(["train", "train", "validate", "train"], durations={"train": 1.0, "validate": 0.5})
    train, validate = hex_to_rgb(PHASE_COLOURS["train"]), hex_to_rgb(PHASE_COLOURS["validate"])
    row = img[img.shape[0] // 2, : img.shape[1] * 3 // 4]  # through the timeline
    runs = [r for r in _runs(row) if r[2] in (train, validate) and r[1] - r[0] > 5]
    assert [r[2] for r in runs] == [train, validate, train]  # runs: train, validate, train
    w = [r[1] - r[0] for r in runs]
    assert abs(w[0] - 2 * w[1]) <= 2 and abs(w[1] - w[2]) <= 2  # 2 samples, 1, 1
    # bars: train's bar twice as long as validate's
    right = img[:, img.shape[1] * 3 // 4:]
    bar_len = {}
    for name, colour in (("train", train), ("validate", validate)):
        hit = np.all(right == colour, axis=2)
        bar_len[name] = hit.sum(axis=1).max()
    assert abs(bar_len["train"] - 2 * bar_len["validate"]) <= 2


def test_consistency_lines_and_marks():
    img = consistency_figure({"consistency": [0.0, 0.0], "joint_anomaly": [False, True]}, steps=[0, 10])
    black_rows = np.flatnonzero((np.all(img == 0, axis=2)).sum(axis=1) > img.shape[1] // 2)
    assert len(black_rows) == 2 and black_rows[1] - black_rows[0] == 1  # consistency at 0: 2 px wide
    red = np.all(img == hex_to_rgb("#d62728"), axis=2) | (
        (img[..., 0] > 200) & (img[..., 1] < 120) & (img[..., 2] < 120))
    assert red.sum(axis=0).max() > 50  # the joint anomaly: a vertical red line


def test_figure_render_time():
    timings = {}
    for tag, build in _figure_builders().items():
        start = time.perf_counter()
        figure_to_array(build())
        timings[tag] = (time.perf_counter() - start) * 1e3
    print("ms per figure (build + render):", {k: round(v, 1) for k, v in timings.items()})
    assert max(timings.values()) < 1000


# ------------------------------------------------------------------ text tables


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
    with pytest.raises(ValueError, match=r"`psd_by_layer\['a'\]` must have shape"):
        spectrum_figure(FREQS, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="`power` must have shape"):
        spectrogram_figure([0, 1], [0, 1, 2], np.ones((3, 2)))
    with pytest.raises(ValueError, match="`significance` must have the shape of `grid`"):
        heatmap_figure(np.ones((2, 2, 2)), significance=np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="`grid` must have 1 or 2 or 3 dims"):
        heatmap_figure(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="`times` must be non-decreasing"):
        phase_timeline_figure(["train", "idle"], [2.0, 1.0])
    with pytest.raises(ValueError, match="`history` series must have the same length"):
        consistency_figure({"consistency": [0.1, 0.2], "rho": [0.3]})
    with pytest.raises(ValueError, match=r"`rows\[0\]` must have 2 cells"):
        table_text([(1, 2, 3)], ["a", "b"])
    with pytest.raises(ValueError, match="`header` must be a non-empty sequence"):
        table_text([], [])
