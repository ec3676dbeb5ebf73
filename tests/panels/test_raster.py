"""The numpy raster renderer against hand-worked pixels, and the callbacks' path free of matplotlib."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nn_neuroimaging_lightning.panels.raster import (
    Canvas,
    colorize,
    colormap,
    glyph,
    hex_to_rgb,
    line_pixels,
    resample_cells,
    text_mask,
    text_width,
)

# ------------------------------------------------------------------ colour maps


def test_colormap_anchors_and_reference():
    lut = colormap("viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert lut[0].tolist() == [0x44, 0x01, 0x54] and lut[-1].tolist() == [0xFD, 0xE7, 0x25]  # anchors
    assert colormap("Greys")[0].tolist() == [255, 255, 255] and colormap("Greys")[-1].tolist() == [0, 0, 0]
    assert np.array_equal(colormap("RdBu_r"), colormap("RdBu")[::-1])
    rdbu_r = colormap("RdBu_r")
    assert rdbu_r[0, 2] > rdbu_r[0, 0] and rdbu_r[-1, 0] > rdbu_r[-1, 2]  # blue low, red high
    assert rdbu_r[127:129].min() > 235  # white in the middle
    # independent reference: the published maps (matplotlib's tables), within interpolation error
    mpl = pytest.importorskip("matplotlib")
    for name in ("viridis", "magma", "RdBu_r", "Greys"):
        ref = np.round(mpl.colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255)
        assert np.abs(colormap(name).astype(float) - ref).max() <= 12, name  # 17 anchors: under 5 %
    # perceptual order: viridis lightness (Rec. 709 luma) increases monotonically
    luma = lut.astype(float) @ [0.2126, 0.7152, 0.0722]
    assert np.all(np.diff(luma) >= -0.6)


def test_colormap_bad_name():
    with pytest.raises(ValueError, match="`cmap` must be one of 'viridis'"):
        colormap("jet")


def test_colorize_hand_worked():
    lut = colormap("magma")
    out = colorize([[0.0, 0.5], [1.0, np.nan]], 0.0, 1.0, "magma")
    # i = clip(floor(256 * v), 0, 255): 0 -> 0, 0.5 -> 128, 1 -> 255; NaN -> the bad colour
    assert out.tolist() == [[lut[0].tolist(), lut[128].tolist()], [lut[255].tolist(), [187, 187, 187]]]
    assert colorize([-5.0, 9.0], 0.0, 1.0).tolist() == [colormap("viridis")[0].tolist(), colormap("viridis")[255].tolist()]
    assert colorize([3.0, np.inf], 3.0, 3.0).tolist() == [colormap("viridis")[128].tolist(), [187, 187, 187]]


def test_upscaled_matrix_cells():
    # a 2x2 matrix on [0, 3] upscaled into 3x4-pixel cells: each block one LUT colour (hand-worked indices)
    m = np.array([[0.0, 1.0], [2.0, 3.0]])
    cells = colorize(m, 0.0, 3.0, "Greys")  # (2, 2, 3)
    img = resample_cells(cells, 6, 8)  # (6, 8, 3)
    lut = colormap("Greys")
    expected = {(0, 0): lut[0], (0, 1): lut[85], (1, 0): lut[170], (1, 1): lut[255]}  # floor(256 v / 3)
    for (i, j), colour in expected.items():
        block = img[3 * i:3 * i + 3, 4 * j:4 * j + 4]
        assert np.all(block == colour), (i, j)
    assert resample_cells(np.arange(6).reshape(2, 3), 2, 2).tolist() == [[0, 1], [3, 4]]  # down-sampling
    with pytest.raises(ValueError, match="`cells` must be a non-empty array"):
        resample_cells(np.zeros((0, 3)), 4, 4)


# ------------------------------------------------------------------ lines


@pytest.mark.parametrize(
    ("segment", "pixels"),
    [
        ((0, 0, 4, 0), [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]),
        ((2, 3, 2, 0), [(2, 3), (2, 2), (2, 1), (2, 0)]),
        ((0, 0, 3, 3), [(0, 0), (1, 1), (2, 2), (3, 3)]),
        ((0, 0, 4, 2), [(0, 0), (1, 1), (2, 1), (3, 2), (4, 2)]),  # y = 0, .5, 1, 1.5, 2 rounded half up
        ((1, 1, 1, 1), [(1, 1)]),
    ],
)
def test_line_pixels_hand_worked(segment, pixels):
    xs, ys = line_pixels(*segment)
    assert list(zip(xs.tolist(), ys.tolist())) == pixels


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=4, max_size=4))
def test_line_pixels_connected_and_ends(coords):
    x0, y0, x1, y1 = coords
    xs, ys = line_pixels(x0, y0, x1, y1)
    assert (xs[0], ys[0]) == (np.floor(x0 + 0.5), np.floor(y0 + 0.5))
    assert (xs[-1], ys[-1]) == (np.floor(x1 + 0.5), np.floor(y1 + 0.5))
    assert np.all(np.abs(np.diff(xs)) <= 1) and np.all(np.abs(np.diff(ys)) <= 1)  # 8-connected


def test_canvas_lines_polyline_gap_and_clip():
    c = Canvas(5, 6)
    c.polyline([0, 2, np.nan, 5], [0, 0, 2, 4], "#000000")  # NaN point: no segment to or from it
    ink = np.all(c.pixels == 0, axis=2)
    assert np.argwhere(ink).tolist() == [[0, 0], [0, 1], [0, 2]]
    c = Canvas(4, 4)
    c.clip = (1, 1, 3, 3)
    c.lines(-10, 2, 10, 2, (255, 0, 0))
    assert np.argwhere(np.all(c.pixels == (255, 0, 0), axis=2)).tolist() == [[2, 1], [2, 2]]


def test_canvas_rect_alpha_and_discs():
    c = Canvas(3, 3, background="#000000")
    c.rect(0, 0, 2, 1, (200, 100, 0), alpha=0.5)
    assert c.pixels[0, :2].tolist() == [[100, 50, 0]] * 2 and c.pixels[0, 2].tolist() == [0, 0, 0]
    c = Canvas(7, 7)
    c.discs([3], [3], 1.0, "#000000")  # radius 1: the centre and its 4 neighbours
    assert np.argwhere(np.all(c.pixels == 0, axis=2)).tolist() == [[2, 3], [3, 2], [3, 3], [3, 4], [4, 3]]
    with pytest.raises(ValueError, match="`height` must be a positive int"):
        Canvas(0, 3)
    with pytest.raises(ValueError, match="`colour` must be"):
        hex_to_rgb("#12")


# ------------------------------------------------------------------ font


def test_digit_glyphs_and_text():
    assert glyph("7").astype(int).tolist() == [
        [1, 1, 1, 1, 1],
        [0, 0, 0, 0, 1],
        [0, 0, 0, 1, 0],
        [0, 0, 1, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 1, 0, 0, 0],
    ]
    assert np.array_equal(glyph("e"), glyph("E")) and np.array_equal(glyph("~"), glyph("?"))
    for ch in "0123456789-.+e":
        assert glyph(ch).any() and glyph(ch).shape == (7, 5)
    assert len({glyph(ch).tobytes() for ch in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ-.+"}) == 39  # all distinct
    mask = text_mask("1.5", scale=2)
    assert mask.shape == (14, text_width("1.5", 2)) == (14, 34)
    assert np.array_equal(mask[::2, ::2][:, :5], glyph("1"))
    c = Canvas(9, 20)
    assert c.text(1, 1, "-1") == 11
    assert np.argwhere(np.all(c.pixels == 0, axis=2)[4]).ravel().tolist() == [2, 3, 4, 9]  # row through '-'
    v = Canvas(12, 9)
    v.text(1, 6, "1", vertical=True)  # reads bottom to top: the glyph rotated counter-clockwise
    ink = np.all(v.pixels == 0, axis=2)
    ys, xs = np.nonzero(ink)
    rotated = np.rot90(glyph("1"))  # (5, 7)
    ry, rx = np.nonzero(rotated)
    crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert np.array_equal(crop, rotated[ry.min():ry.max() + 1, rx.min():rx.max() + 1])
    assert xs.min() == 1  # the glyph's top row at x = 1


# ------------------------------------------------------------------ no matplotlib in the callbacks' path

_NO_MPL_FIT = textwrap.dedent(
    """
    import sys, warnings
    warnings.filterwarnings("ignore")
    import matplotlib.figure

    def _refuse(self, *args, **kwargs):
        raise RuntimeError("a matplotlib Figure was created in the callbacks' path")

    matplotlib.figure.Figure.__init__ = _refuse
    import torch
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback
    from nn_neuroimaging_lightning.demo import DemoClassifier, DemoDataModule

    root = sys.argv[1]
    pl.seed_everything(0, verbose=False)
    logger = TensorBoardLogger(root, name="nompl")
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=logger, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=5,
                         callbacks=[NNEEGCallback(), NNfMRICallback(), CrossModalCallback()])
    trainer.fit(DemoClassifier(), DemoDataModule(n_train=1024, n_val=128, batch_size=16))
    logger.experiment.flush()
    images = EventAccumulator(logger.log_dir, size_guidance={"images": 0}).Reload().Tags()["images"]
    print("IMAGES", sorted(images))
    """
)


def test_callbacks_fit_creates_no_matplotlib_figure(tmp_path):
    out = subprocess.run([sys.executable, "-c", _NO_MPL_FIT, str(tmp_path)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(l for l in out.stdout.splitlines() if l.startswith("IMAGES"))
    for tag in ("nn_eeg/spectrum", "nn_eeg/phase_timeline", "cross_modal/consistency_history"):
        assert tag in line
    assert "spectrogram" in line and "nn_fmri/" in line


def test_text_far_outside_the_canvas_is_clipped_not_an_error():
    from nn_neuroimaging_lightning.panels.raster import Canvas

    c = Canvas(50, 20)
    before = c.pixels.copy()
    assert c.text(3e9, 5, "ab", (255, 255, 255)) == 11
    assert c.text(-3e9, 5, "ab", (255, 255, 255), vertical=True) == 11
    assert (c.pixels == before).all()
