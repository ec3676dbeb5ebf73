"""The matplotlib panel figures on synthetic arrays: PNG size and content, text that fits, layout facts."""

from __future__ import annotations

import enum
import io

import numpy as np
import pytest
import torch
from matplotlib.collections import PathCollection
from matplotlib.colors import BoundaryNorm, LogNorm
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator as ea_mod
from torch.utils.tensorboard import SummaryWriter

from nn_neuroimaging_lightning.panels.figures import (
    LINE_COLOURS,
    PHASE_COLOURS,
    consistency_figure,
    heatmap_figure,
    matrix_figure,
    phase_timeline_figure,
    spectrogram_figure,
    spectrum_figure,
)
from nn_neuroimaging_lightning.panels.rendering import encode_png, release, render
from nn_neuroimaging_lightning.panels.tensorboard import write_figure

BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0), "gamma": (30.0, 100.0)}
FREQS = np.arange(33) * 3.125  # Welch nperseg 64 at 200 Hz nominal
LONG = "encoder.layers.11.attention.output.dense"


class _Phase(enum.Enum):
    TRAIN = "train"
    IDLE = "idle"


def _builders():
    """tag -> (figure builder, expected (width, height) in pixels)."""
    rng = np.random.default_rng(0)
    psd = {"model.conv1": 1.0 / (1.0 + FREQS), "model.fc1": np.r_[0.0, rng.random(32)]}  # DC 0: log-axis gap
    zeta = rng.normal(size=(8, 8, 4))
    traced = rng.random((6, 5))
    traced[0, 1] = np.nan
    phases = [_Phase.TRAIN] * 20 + [_Phase.IDLE] * 2 + ["validate"] * 6 + ["error"]
    power = rng.random((10, 33))
    return {
        "spectrum": (lambda: spectrum_figure(FREQS, psd, BANDS), (640, 480)),
        "spectrogram": (lambda: spectrogram_figure(np.arange(10) * 64, FREQS, power, title="Spectrogram model.conv1"), (640, 440)),
        "phases": (lambda: phase_timeline_figure(phases, np.cumsum(np.ones(29)), {"train": 3.0, "idle": 0.4}), (640, 360)),
        "zeta": (lambda: heatmap_figure(zeta, "model.conv1: zeta (impact of each region)", "RdBu_r", np.abs(zeta) > 1.5,
                                        symmetric=True, colorbar_label="zeta"), (640, 650)),
        "density_fc": (lambda: heatmap_figure(power[0, :4], "model.fc1: density phi", colorbar_label="phi"), (640, 290)),
        "density_tokens": (lambda: heatmap_figure(power[:4, :6], "density", colorbar_label="phi"), (640, 535)),
        "significance": (lambda: heatmap_figure((np.abs(zeta) > 1.5).astype(float), "significant", "Greys",
                                                colorbar_label="significant", categories=("no", "yes")), (640, 650)),
        "tract": (lambda: matrix_figure(traced, "model.conv1 region (source)", "model.conv2 region (target)",
                                        "C(model.conv1 -> model.conv2)"), (640, 560)),
        "consistency": (lambda: consistency_figure(
            {"consistency": [0.6, 0.7, 0.8], "rho": [np.nan, 0.2, 0.5], "joint_anomaly": [False, True, False]},
            steps=[10, 20, 30]), (640, 440)),
    }


def _long_names():
    """Figures with long module names and titles: everything must still fit."""
    return {
        "spectrum": lambda: spectrum_figure(FREQS, {f"{LONG}.{i}": 1.0 / (1.0 + FREQS) ** (1 + i / 4) for i in range(5)}, BANDS,
                                            title=f"Power spectrum per layer of {LONG} and friends"),
        "heatmap": lambda: heatmap_figure(np.ones((3, 3, 8)), f"{LONG}: significant regions (95 % CI excludes 0)",
                                          colorbar_label="phi (mean |a| + lambda log var)"),
        "tract": lambda: matrix_figure(np.ones((40, 70)), f"{LONG} region (source)", f"{LONG}.next region (target)",
                                       f"C({LONG} -> {LONG}.next) [proportional grid across pooling]", log=True),
        "phases": lambda: phase_timeline_figure(["sanity_check", "train", "custom_phase_name"], durations={
            "sanity_check": 1.0, "train": 1e4, "custom_phase_name": 3.0}),
    }


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image)


@pytest.fixture(scope="module")
def rendered():
    """Every builder's figure, drawn once: ``{name: (figure, Rendered)}`` (the figures stay drawn)."""
    out = {}
    for name, (build, _) in _builders().items():
        fig = build()
        out[name] = (fig, render(fig))
    return out


@pytest.mark.parametrize("name", list(_builders()))
def test_every_figure_renders_to_a_png_of_its_size_with_content(name, rendered):
    width, height = _builders()[name][1]
    fig, out = rendered[name]
    assert isinstance(fig, Figure)
    pixels = _decode(out.png)
    assert pixels.shape == (height, width, 3) and out.size == (width, height)
    np.testing.assert_array_equal(pixels, out.rgb)  # the PNG holds exactly the rendered pixels
    ink = pixels.min(axis=2) < 250
    assert 0.05 < ink.mean() < 0.95, name  # not blank, not a solid block
    assert (pixels.max(axis=2) < 60).sum() > 500, name  # dark text: title, ticks, labels
    packed = (pixels[..., 0].astype(np.int32) << 16) | (pixels[..., 1].astype(np.int32) << 8) | pixels[..., 2]
    assert np.unique(packed).size > 30, name  # colours, not a few flat fills


@pytest.mark.parametrize("name", list(_builders()) + [f"long {n}" for n in _long_names()])
def test_text_fits_inside_the_figure_and_reads_at_tensorboard_size(name, rendered):
    if name.startswith("long "):
        fig = _long_names()[name[5:]]()
        width, height = render(fig).size
    else:
        fig, out = rendered[name]
        width, height = out.size
    # everything drawn (titles, tick labels, legends, colour-bar labels) lies inside the image
    box = fig.get_tightbbox(fig.canvas.get_renderer()).transformed(fig.dpi_scale_trans)
    assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, (name, box)
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) >= 4
    for text in texts:  # TensorBoard shows an image ~350 px wide: 13 pt at 100 dpi (18 px) stays ~10 px high
        assert text.get_fontsize() >= 13, (name, text.get_text(), text.get_fontsize())
    title = fig.get_suptitle()
    assert title and all(len(line) <= 60 for line in title.splitlines()) and len(title.splitlines()) <= 2


def test_colour_bars_and_axes_are_labelled_with_units(rendered):
    figs = {name: fig for name, (fig, _) in rendered.items()}
    for name in ("spectrogram", "zeta", "density_fc", "density_tokens", "significance", "tract"):
        bars = [ax for ax in figs[name].axes if ax.get_label() == "<colorbar>"]
        assert len(bars) == 1 and bars[0].get_ylabel(), name
    assert figs["spectrogram"].axes[0].get_ylabel() == "frequency (Hz, nominal)"
    assert figs["spectrogram"].axes[0].get_xlabel() == "step"
    assert figs["spectrum"].axes[0].get_xlabel() == "frequency (Hz, nominal)"
    assert figs["phases"].axes[0].get_xlabel() == "time (s)" and figs["phases"].axes[1].get_xlabel() == "seconds"
    assert figs["zeta"].axes[0].get_xlabel() == "w (region column)" and figs["zeta"].axes[0].get_ylabel() == "h (region row)"
    assert figs["density_tokens"].axes[0].get_ylabel() == "t (token group)"
    assert figs["density_fc"].axes[0].get_xlabel() == "feature group"
    assert figs["tract"].axes[0].get_xlabel() == "model.conv2 region (target)"
    assert figs["consistency"].axes[0].get_xlabel() == "step"


def test_palettes_are_colour_blind_safe():
    okabe_ito = {"#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000"}  # Okabe & Ito 2008
    assert set(LINE_COLOURS) == okabe_ito and LINE_COLOURS[-1] == "#F0E442"  # yellow last (weak on white)
    assert set(PHASE_COLOURS.values()) - {"#BBBBBB"} <= okabe_ito and len(set(PHASE_COLOURS.values())) == len(PHASE_COLOURS)
    lines = spectrum_figure(FREQS, {f"l{i}": FREQS + 1 + i for i in range(9)}).axes[0].get_lines()
    assert [line.get_color() for line in lines[:8]] == list(LINE_COLOURS)
    assert lines[8].get_linestyle() != lines[0].get_linestyle()  # the 9th line: first colour, dashed


# ------------------------------------------------------------------ what each figure shows


def test_spectrum_log_axis_gaps_and_band_names():
    psd = np.r_[0.0, -1.0, np.nan, np.ones(30)]
    fig = spectrum_figure(FREQS, {"conv1": psd}, BANDS)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    y = ax.get_lines()[0].get_ydata()
    assert np.isnan(y[:3]).all() and np.all(y[3:] == 1.0)  # non-positive and NaN power: gaps
    assert [t.get_text() for t in ax.texts] == ["δ", "θ", "α", "β", "γ"]
    assert [t.get_text() for t in fig.legends[0].texts] == ["conv1"]
    nothing = spectrum_figure(FREQS, {"a": np.full(33, np.nan)}, BANDS)
    assert nothing.axes[0].get_yscale() == "linear" and "no positive power" in [t.get_text() for t in nothing.axes[0].texts]


def test_spectrogram_cells_at_their_steps_or_indices():
    power = np.arange(1, 13, dtype=float).reshape(4, 3)  # (T, F)
    fig = spectrogram_figure([0, 10, 20, 30], [0.0, 50.0, 100.0], power)
    mesh = fig.axes[0].collections[0]
    assert isinstance(mesh.norm, LogNorm) and (mesh.norm.vmin, mesh.norm.vmax) == (1.0, 12.0)
    np.testing.assert_array_equal(mesh.get_array().reshape(3, 4), power.T)  # low frequencies at the bottom row
    assert fig.axes[0].get_xlim() == (-5.0, 35.0)  # cell edges halfway between steps
    repeated = spectrogram_figure([5, 5, 5, 9], [0.0, 50.0, 100.0], power)  # validation forwards share a step
    assert repeated.axes[0].get_xlim() == (-0.5, 3.5)
    render(repeated)
    labels = [t.get_text() for t in repeated.axes[0].get_xticklabels() if t.get_text()]
    assert labels and set(labels) <= {"5", "9"}


def test_heatmap_diverging_scale_centred_at_zero_grid_coordinates_and_dots():
    rng = np.random.default_rng(1)
    zeta = rng.normal(size=(4, 4, 4))
    zeta[0, 0, 0] = -3.0  # the largest magnitude: the scale is [-3, 3]
    sig = np.zeros_like(zeta, dtype=bool)
    sig[1, 2, 0] = sig[3, 3, 1] = sig[0, 0, 3] = True
    fig = heatmap_figure(zeta, "zeta", "RdBu_r", sig, symmetric=True, colorbar_label="zeta")
    ax = fig.axes[0]
    mesh = ax.collections[0]  # one quad mesh of cells for all the maps
    assert (mesh.norm.vmin, mesh.norm.vmax) == (-3.0, 3.0) and mesh.cmap.name.startswith("RdBu_r")
    # maps in 2 rows of 2 with a one-cell gap: slice k at row r = k // 2, column q = k % 2
    mosaic = mesh.get_array()
    assert mosaic.shape == (9, 9) and mosaic.mask[4, :].all() and mosaic.mask[:, 4].all()
    for k in range(4):
        r, q = divmod(k, 2)
        np.testing.assert_array_equal(mosaic[5 * r:5 * r + 4, 5 * q:5 * q + 4], zeta[..., k])
    assert [t.get_text() for t in ax.texts] == ["c = 0", "c = 1", "c = 2", "c = 3"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2", "3"] * 2
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "1", "2", "3"] * 2
    dots = next(c for c in ax.collections if isinstance(c, PathCollection)).get_offsets()
    # (x, y) in the mosaic: w + 5 q, h + 5 r (independent of the figure code's loops)
    assert sorted(map(tuple, np.asarray(dots))) == sorted([(2.0, 1.0), (5.0 + 3, 3.0), (5.0 + 0, 5.0 + 0)])
    assert [t.get_text() for t in fig.legends[0].texts] == ["significant (95 % CI excludes 0)"]
    out = render(fig)
    gap_x, gap_y = ax.transData.transform((4.0, 1.0))  # the gap column between c = 0 and c = 1: white
    assert out.rgb[int(round(out.size[1] - gap_y)), int(round(gap_x))].min() == 255
    for x, y in np.asarray(dots):  # each dot's centre pixel is black on its cell
        px, py = ax.transData.transform((x, y))
        assert out.rgb[int(round(out.size[1] - py)), int(round(px))].max() < 60


def test_heatmap_layouts_constant_nan_and_categories():
    wrapped = heatmap_figure(np.zeros((2, 2, 10)), max_cols=4)  # as square as possible: 4 columns, 3 rows
    assert wrapped.axes[0].collections[0].get_array().shape == (3 * 3 - 1, 4 * 3 - 1)
    assert len(wrapped.axes[0].texts) == 10
    strip = heatmap_figure(torch.tensor([1.0, 1.0, 1.0]), "density")
    assert strip.axes[0].get_yticks().size == 0 and strip.axes[0].get_xlabel() == "feature group"
    norm = strip.axes[0].collections[0].norm
    assert (norm.vmin, norm.vmax) == (0.5, 1.5)  # constant: the middle colour
    holes = heatmap_figure(np.array([[np.nan, 1.0], [2.0, 3.0]]), "density")
    grey = [p for p in holes.axes[0].patches if p.get_facecolor()[:3] == (187 / 255,) * 3]
    assert len(grey) == 1 and grey[0].get_zorder() < holes.axes[0].collections[0].get_zorder()  # NaN cells show it
    cats = heatmap_figure(np.array([[0.0, 1.0], [1.0, 1.0]]), "significant", "Greys", categories=("no", "yes"))
    bar = [ax for ax in cats.axes if ax.get_label() == "<colorbar>"][0]
    assert isinstance(cats.axes[0].collections[0].norm, BoundaryNorm)
    assert [t.get_text() for t in bar.get_yticklabels()] == ["no", "yes"]


def test_matrix_marks_untraced_pairs_and_log_scale():
    m = np.ones((3, 4))
    m[0, 0] = m[2, 3] = np.nan
    fig = matrix_figure(m, "source", "target", "C")
    assert [t.get_text() for t in fig.legends[0].texts] == ["not traced"]
    hatched = [c for c in fig.axes[0].collections if c.get_hatch()]
    assert len(hatched) == 1 and np.ma.count(hatched[0].get_array()) == 2  # exactly the two NaN cells
    assert not matrix_figure(np.ones((3, 4)), "source", "target", "C").legends
    log = matrix_figure(np.array([[1.0, 10.0], [100.0, 0.0]]), "a", "b", log=True)
    norm = log.axes[0].collections[0].norm
    assert isinstance(norm, LogNorm) and (norm.vmin, norm.vmax) == (1.0, 100.0)


def test_phase_timeline_runs_and_bars():
    fig = phase_timeline_figure(["train", "train", "validate", "train"],
                                durations={"train": 1.0, "test": 0.0, "validate": 0.5, "error": float("nan")})
    ax, bars = fig.axes
    spans = {}
    for coll in ax.collections:
        colour = tuple(np.round(coll.get_facecolor()[0][:3], 3))
        spans[colour] = sorted((round(p.get_extents().x0, 6), round(p.get_extents().width, 6)) for p in coll.get_paths())
    def rgb(hex_):
        return tuple(np.round([int(hex_[i:i + 2], 16) / 255 for i in (1, 3, 5)], 3))
    assert spans[rgb(PHASE_COLOURS["train"])] == [(0.0, 2.0), (3.0, 1.0)]
    assert spans[rgb(PHASE_COLOURS["validate"])] == [(2.0, 1.0)]
    assert [p.get_width() for p in bars.patches] == [1.0, 0.5]  # phases that took no time: no bar, no label
    assert [t.get_text() for t in bars.get_yticklabels()] == ["train", "validate"]
    assert [t.get_text() for t in fig.legends[0].texts] == ["train", "validate"]


def test_consistency_lines_and_joint_anomaly_marks():
    fig = consistency_figure({"consistency": [0.0, 0.5], "agreement": [1.0, 1.0], "joint_anomaly": [False, True]},
                             steps=[0, 10])
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert lines["consistency"].get_color() == "#000000" and lines["consistency"].get_linewidth() == 3.0
    np.testing.assert_array_equal(lines["consistency"].get_ydata(), [0.0, 0.5])
    joint = lines["joint anomaly"]
    assert list(joint.get_xdata()) == [10, 10] and joint.get_color() == "#D55E00"
    assert ax.get_ylim() == (-1.05, 1.05)
    assert [t.get_text() for t in fig.legends[0].texts] == ["agreement", "consistency", "joint anomaly"]


@pytest.mark.parametrize(
    ("name", "build", "note"),
    [
        ("spectrum empty", lambda: spectrum_figure([], {}), "no positive power"),
        ("spectrum inf/neg", lambda: spectrum_figure(FREQS, {"a": np.r_[np.inf, -1.0, np.ones(31)]}), None),
        ("spectrogram empty", lambda: spectrogram_figure([], FREQS, np.zeros((0, 33))), "no data"),
        ("spectrogram NaN", lambda: spectrogram_figure([0, 1], [0, 1], np.full((2, 2), np.nan)), "no finite power"),
        ("spectrogram constant", lambda: spectrogram_figure([0, 1], [0, 1], np.ones((2, 2)), log=False), None),
        ("phases empty", lambda: phase_timeline_figure([]), "no samples"),
        ("phases one", lambda: phase_timeline_figure(["train"], durations={"train": float("nan")}), "no time"),
        ("heatmap empty", lambda: heatmap_figure(np.zeros((0,))), "no data"),
        ("heatmap no slices", lambda: heatmap_figure(np.zeros((2, 2, 0))), "no data"),
        ("heatmap NaN", lambda: heatmap_figure(np.full((2, 3, 2), np.nan), significance=np.ones((2, 3, 2), bool)), None),
        ("heatmap inf", lambda: heatmap_figure(np.array([[np.inf, 1.0], [-np.inf, 0.0]])), None),
        ("heatmap big", lambda: heatmap_figure(np.random.default_rng(0).random((300, 300))), None),
        ("matrix empty", lambda: matrix_figure(np.zeros((0, 3)), "a", "b"), "no data"),
        ("matrix all NaN", lambda: matrix_figure(np.full((2, 2), np.nan), "a", "b", log=True), "no pair traced"),
        ("matrix constant log", lambda: matrix_figure(np.ones((2, 2)), "a", "b", log=True), None),
        ("consistency empty", lambda: consistency_figure({}), "no data"),
        ("consistency inf", lambda: consistency_figure({"consistency": [np.inf, 5.0, -np.inf]}), None),
    ],
)
def test_degenerate_inputs_draw_without_error(name, build, note):
    fig = build()
    out = render(fig)
    assert out.rgb.dtype == np.uint8 and 0 not in out.rgb.shape and (out.rgb < 128).any(), name
    if note:
        assert note in [t.get_text() for t in fig.findobj(Text)], name


def test_figure_size_follows_figsize_and_dpi():
    assert render(spectrum_figure(FREQS, {"a": FREQS + 1}, figsize=(4, 2), dpi=50)).size == (200, 100)
    assert render(consistency_figure({"consistency": [0.1]}, figsize=(100, 3))).size == (4096, 300)  # clamped
    with pytest.raises(ValueError, match="`figsize` must be a"):
        matrix_figure(np.eye(2), "a", "b", figsize=(0, 3))
    with pytest.raises(ValueError, match="`dpi` must be a positive number"):
        matrix_figure(np.eye(2), "a", "b", dpi=-1)


# ------------------------------------------------------------------ rendering, releasing, writing


def test_render_release_and_no_pyplot_registry():
    import matplotlib.pyplot as plt  # imported by Lightning anyway; used here to look at its registry

    before = plt.get_fignums()
    figs = [build() for build, _ in _builders().values()]
    assert plt.get_fignums() == before  # our figures are never registered with pyplot
    fig = figs[0]
    out = render(fig)
    release(fig)
    assert fig.axes == [] and out.png[:8] == b"\x89PNG\r\n\x1a\n"
    managed = plt.figure()
    release(managed)
    assert not plt.fignum_exists(managed.number)  # a pyplot figure handed to us leaves pyplot's registry
    rgb = np.zeros((4, 5, 3), dtype=np.uint8)
    assert render(rgb).rgb is rgb and _decode(render(rgb).png).shape == (4, 5, 3)
    with pytest.raises(TypeError, match="`fig` must be a matplotlib Figure"):
        render("not a figure")
    with pytest.raises(ValueError, match=r"`rgb` must be a non-empty \(H, W, 3\) uint8 array"):
        encode_png(np.zeros((4, 5), dtype=np.uint8))


def test_write_figure_reads_back_in_tensorboard(tmp_path, rendered):
    writer = SummaryWriter(str(tmp_path))
    sizes = {}
    for name, (build, size) in _builders().items():
        write_figure(writer, f"fig/{name}", build(), 0)  # a figure: rendered and released here
        write_figure(writer, f"fig/{name}", rendered[name][1].rgb, 1)  # an image: encoded here
        sizes[f"fig/{name}"] = size
    writer.close()  # file_writer is None now: the next image goes through add_image
    write_figure(writer, "after_close", np.full((6, 7, 3), 200, dtype=np.uint8), 5)
    writer.close()
    ea = ea_mod.EventAccumulator(str(tmp_path), size_guidance={ea_mod.IMAGES: 0}).Reload()
    assert set(ea.Tags()["images"]) == set(sizes) | {"after_close"}
    for tag, (width, height) in sizes.items():
        images = ea.Images(tag)
        assert [i.step for i in images] == [0, 1] and (images[0].width, images[0].height) == (width, height)
        assert _decode(images[0].encoded_image_string).shape == (height, width, 3)
    assert [(i.step, i.width, i.height) for i in ea.Images("after_close")] == [(5, 7, 6)]


def test_figures_bad_input():
    with pytest.raises(ValueError, match=r"`psd_by_layer\['a'\]` must have shape"):
        spectrum_figure(FREQS, {"a": np.ones(3)})
    with pytest.raises(ValueError, match="`power` must have shape"):
        spectrogram_figure([0, 1], [0, 1, 2], np.ones((3, 2)))
    with pytest.raises(ValueError, match="`cmap` must be a matplotlib colour map name"):
        spectrogram_figure([0], [0], np.ones((1, 1)), cmap="no_such_map")
    with pytest.raises(ValueError, match="`significance` must have the shape of `grid`"):
        heatmap_figure(np.ones((2, 2, 2)), significance=np.ones((2, 2), dtype=bool))
    with pytest.raises(ValueError, match="`grid` must have 1 or 2 or 3 dims"):
        heatmap_figure(np.ones((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="`max_cols` must be a positive int"):
        heatmap_figure(np.ones((2, 2, 2)), max_cols=0)
    with pytest.raises(ValueError, match="`categories` must name at least 2 values"):
        heatmap_figure(np.ones((2, 2)), categories=("yes",))
    with pytest.raises(TypeError, match="`grid` must be array-like of numbers"):
        heatmap_figure({"a": 1})
    with pytest.raises(ValueError, match="`times` must be non-decreasing"):
        phase_timeline_figure(["train", "idle"], [2.0, 1.0])
    with pytest.raises(ValueError, match="`history` series must have the same length"):
        consistency_figure({"consistency": [0.1, 0.2], "rho": [0.3]})
    with pytest.raises(ValueError, match=r"`steps` must have one entry per evaluation \(2\)"):
        consistency_figure({"consistency": [0.1, 0.2]}, steps=[1])


# ------------------------------------------------------------------ drawn again in place (figures.refill)


def _series(kind: str, i: int):
    """The ``i``-th epoch's arguments of one panel kind: new values of another range, the same structure."""
    rng = np.random.default_rng(100 + i)
    scale = 10.0 ** rng.uniform(-3, 3)
    if kind == "zeta":
        z = rng.normal(size=(8, 8, 4)) * scale
        return heatmap_figure, (z, "model.conv1: zeta (impact of each region)", "RdBu_r", np.abs(z) > 1.2 * np.abs(z).mean()), \
            {"symmetric": True, "colorbar_label": "zeta"}
    if kind == "density":
        return heatmap_figure, (rng.random((8, 8, 4)) * scale, "model.conv1: density phi"), {"colorbar_label": "phi"}
    if kind == "strip":
        return heatmap_figure, (rng.random(4) * scale + i, "model.fc1: density phi"), {"colorbar_label": "phi"}
    if kind == "tokens":
        return heatmap_figure, (torch.rand(4, 6, generator=torch.Generator().manual_seed(i)), "density"), {}
    if kind == "holes":
        g = rng.random((3, 3, 2)) * scale
        g[0, 0, 0] = np.nan
        return heatmap_figure, (g, "density"), {}
    if kind == "categories":
        return heatmap_figure, ((rng.random((4, 4)) > 0.5).astype(float), "significant", "Greys"), {"categories": ("no", "yes")}
    if kind == "above":  # the range moves wholly above the last one (matplotlib < 3.10.1 reordered the limits)
        return heatmap_figure, (np.linspace(0, 1, 8).reshape(2, 2, 2) + 10.0 * i, "density"), {}
    if kind == "constant":
        return heatmap_figure, (np.full((2, 2, 2), float(i)), "density"), {}
    if kind == "tract":
        m = rng.random((8, 16)) * scale
        m[0, 1] = np.nan
        return matrix_figure, (m, "model.conv1 region (source)", "model.conv2 region (target)", "C(conv1 -> conv2)"), {}
    if kind == "spectrogram":  # segment centres move on by a window each epoch
        return spectrogram_figure, (np.arange(10) * 32 + 64 * i, FREQS, rng.random((10, 33)) * scale), \
            {"title": "Spectrogram model.conv1"}
    if kind == "spectrogram_shared_steps":  # validation forwards share a step: cells at their index
        t = np.repeat(np.arange(5) * 7 + i, 2)
        power = rng.random((10, 33)) * scale
        power[0, :3] = np.nan
        return spectrogram_figure, (t, FREQS, power), {"log": bool(i >= 0)}
    if kind == "spectrogram_linear":
        return spectrogram_figure, (np.arange(6.0) + i, FREQS[:9], rng.normal(size=(6, 9)) * scale), {"log": False}
    if kind == "spectrum":  # powers over 6 decades: the log axis's decades and its tick widths change
        psd = {f"model.layer{k}": np.r_[0.0, rng.random(32) * scale * 10.0 ** k] for k in range(3)}
        psd["model.layer1"][5] = np.nan
        return spectrum_figure, (FREQS, psd, BANDS), {}
    if kind == "spectrum_no_bands":
        return spectrum_figure, (FREQS, {"a": rng.random(33) * scale}), {"title": "spectrum"}
    if kind == "consistency":  # one more evaluation each epoch, rho undefined at some
        k = 2 + i
        rho = rng.uniform(-1, 1, k)
        rho[0] = np.nan
        return consistency_figure, ({"consistency": rng.uniform(0, 1, k), "rho": rho, "agreement": rng.uniform(0, 1, k),
                                     "coherence": rng.uniform(0, 1, k), "joint_anomaly": [False] * k},), \
            {"steps": list(range(50, 50 * (k + 1), 50))}
    if kind == "consistency_one":  # a single evaluation: the x range is the step +- 0.5
        return consistency_figure, ({"consistency": [rng.uniform()], "rho": [np.nan]},), {"steps": [10 * (i + 1)]}
    if kind == "tract_log":
        return matrix_figure, (rng.random((5, 5)) * scale, "source", "target", "C"), {"log": True}
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["zeta", "density", "above", "strip", "tokens", "holes", "categories", "constant", "tract", "tract_log",
                                  "spectrogram", "spectrogram_shared_steps", "spectrogram_linear", "spectrum", "spectrum_no_bands",
                                  "consistency", "consistency_one"])
def test_a_figure_refilled_with_new_values_has_the_pixels_of_one_built_anew(kind):
    from nn_neuroimaging_lightning.panels.figures import refill

    build, args, kwargs = _series(kind, 0)
    kept = build(*args, **kwargs)
    render(kept)
    def artists(fig):  # what a builder adds (ticks come and go with the colour bar's range)
        return [(len(ax.collections), len(ax.patches), len(ax.texts), len(ax.lines)) for ax in fig.axes], len(fig.legends)

    structure = artists(kept)
    for i in range(1, 5):  # value ranges over 6 decades: colour-bar ticks, their widths and the margins change
        build, args, kwargs = _series(kind, i)
        fresh = build(*args, **kwargs)
        expected = render(fresh).rgb
        release(fresh)
        assert refill(kept, build.__name__, *args, **kwargs)
        np.testing.assert_array_equal(render(kept).rgb, expected)
    assert artists(kept) == structure  # values replaced, no artist added


def test_refill_declines_what_changes_more_than_the_values():
    from nn_neuroimaging_lightning.panels.figures import refill

    z = np.ones((2, 2, 2))
    fig = heatmap_figure(z, "zeta", "RdBu_r", z > 2, symmetric=True)  # no significant cell
    before = render(fig).rgb
    assert not refill(fig, "heatmap_figure", np.ones((2, 2, 3)), "zeta", "RdBu_r", np.ones((2, 2, 3)) > 2, symmetric=True)
    assert not refill(fig, "heatmap_figure", z, "another title", "RdBu_r", z > 2, symmetric=True)
    assert not refill(fig, "heatmap_figure", z, "zeta", "RdBu_r", z > 0, symmetric=True)  # significant cells appear
    holes = z.copy()
    holes[0, 0, 0] = np.nan
    assert not refill(fig, "heatmap_figure", holes, "zeta", "RdBu_r", z > 2, symmetric=True)  # a missing cell appears
    assert not refill(fig, "matrix_figure", np.ones((2, 2)), "a", "b")  # another builder's arguments
    spectrum = spectrum_figure(FREQS, {"a": 1.0 / (1.0 + FREQS)})
    assert not refill(spectrum, "spectrum_figure", FREQS, {"a": FREQS, "b": FREQS})  # another layer
    assert not refill(spectrum, "spectrum_figure", FREQS, {"a": FREQS}, BANDS)  # bands added
    chart = consistency_figure({"consistency": [0.5, 0.6], "joint_anomaly": [False, False]}, steps=[1, 2])
    assert not refill(chart, "consistency_figure", {"consistency": [0.5, 0.6], "joint_anomaly": [False, True]}, steps=[1, 2])
    assert not refill(chart, "consistency_figure", {"consistency": [0.5] * 30, "joint_anomaly": [False] * 30},
                      steps=list(range(30)))  # 30 evaluations: lines without point marks
    assert not refill(phase_timeline_figure(["train"] * 3), "phase_timeline_figure", ["train"] * 4)  # not kept
    assert not refill(fig, "heatmap_figure", z, "zeta", "RdBu_r", np.ones((3, 3), dtype=bool), symmetric=True)  # invalid
    assert not refill(fig, "heatmap_figure", z, no_such_argument=1)
    np.testing.assert_array_equal(render(fig).rgb, before)  # declined: the figure is unchanged
    release(fig)
    assert not refill(fig, "heatmap_figure", z, "zeta", "RdBu_r", z > 2, symmetric=True)  # released: nothing kept
