"""Panel images for TensorBoard, drawn without matplotlib (presentation only, no measure computed here).

Every function returns an ``(H, W, 3)`` uint8 RGB array drawn by the small numpy raster renderer
:mod:`nn_neuroimaging_lightning.panels.raster` (5 x 7 bitmap font, lookup-table colour maps), with
``H, W = round(figsize[1] * dpi), round(figsize[0] * dpi)`` (each clamped to ``[48, 4096]``).
Nothing is cached between calls, so the training process keeps no renderer state (matplotlib's
font and renderer caches cost ~20 MiB of peak memory, SPEC §8). Write the images with
:func:`nn_neuroimaging_lightning.panels.tensorboard.write_figure`.

Degenerate input never raises: an empty series, a grid or matrix with no cell, or values that are
all NaN / infinite give the panel's frame with a ``NO DATA`` note (or grey cells); NaN entries
are gaps in lines and grey cells in maps; a constant map gets the middle colour of its map.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nn_neuroimaging_lightning.panels.raster import (
    Canvas,
    colorize,
    colormap,
    resample_cells,
    text_width,
)

__all__ = [
    "PHASE_COLOURS",
    "consistency_figure",
    "heatmap_figure",
    "matrix_figure",
    "phase_timeline_figure",
    "spectrogram_figure",
    "spectrum_figure",
]

#: Colour per lifecycle phase (SPEC §2 labels); unknown labels get colours from a fallback cycle.
PHASE_COLOURS = {
    "train": "#1f77b4",
    "validate": "#2ca02c",
    "test": "#9467bd",
    "predict": "#17becf",
    "sanity_check": "#bcbd22",
    "idle": "#c7c7c7",
    "error": "#d62728",
}
_FALLBACK = ("#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#aec7e8", "#98df8a")
#: Line colours, in order (matplotlib's "tab10" cycle).
_CYCLE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
_INK, _MUTED, _GRID, _BAD = (0, 0, 0), (90, 90, 90), (228, 228, 228), (187, 187, 187)
_ROW = 9  # pixel height of one line of scale-1 text, with its gap

_DPI = 80
_MIN_PX, _MAX_PX = 48, 4096


def _np(x: Any, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor without importing torch
        x = x.detach().cpu().float().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be array-like of numbers, got {type(x).__name__}.") from err
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and arr.ndim not in allowed:
        raise ValueError(f"`{name}` must have {' or '.join(map(str, allowed))} dims, got shape {arr.shape}.")
    return arr


def _label(value: Any) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value)


def _canvas(figsize: Any, dpi: Any) -> Canvas:
    try:
        w_in, h_in = (float(v) for v in figsize)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`figsize` must be a (width, height) pair of positive numbers, got {figsize!r}.") from err
    if not (w_in > 0 and h_in > 0 and np.isfinite(w_in) and np.isfinite(h_in)):
        raise ValueError(f"`figsize` must be a (width, height) pair of positive numbers, got {figsize!r}.")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float, np.number)) or not dpi > 0 or not np.isfinite(dpi):
        raise ValueError(f"`dpi` must be a positive number, got {dpi!r}.")
    width = int(np.clip(round(w_in * dpi), _MIN_PX, _MAX_PX))
    height = int(np.clip(round(h_in * dpi), _MIN_PX, _MAX_PX))
    return Canvas(height, width)


def _fmt(v: float) -> str:
    """Short tick label: 3 significant digits, no ``-0``."""
    if not np.isfinite(v):
        return str(v)
    if abs(v) < 1e-300:
        return "0"
    text = f"{v:.3g}"
    return "0" if text in ("-0", "0") else text


def _fit(text: str, max_px: int, scale: int = 1) -> str:
    """``text`` cut (with ``..``) to at most ``max_px`` pixels."""
    text = str(text)
    if text_width(text, scale) <= max_px:
        return text
    n = max((max_px // scale + 1) // 6 - 2, 0)
    return text[:n] + ".." if n else ""


def _title(c: Canvas, title: str, y: int = 3) -> int:
    """Draw a centred title (scale 2 when it fits); returns the first free row below it."""
    if not title:
        return y
    scale = 2 if text_width(title, 2) <= c.width - 8 else 1
    c.text(c.width // 2, y, _fit(title, c.width - 8, scale), _INK, scale, anchor="centre")
    return y + 7 * scale + 5


def _nice_ticks(lo: float, hi: float, n: int = 5) -> np.ndarray:
    """About ``n`` round tick values (steps of 1, 2 or 5 times a power of 10) inside ``[lo, hi]``."""
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        return np.array([lo]) if np.isfinite(lo) else np.zeros(0)
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10.0 ** np.floor(np.log10(raw))
    step = mag * next(m for m in (1.0, 2.0, 5.0, 10.0) if m * mag >= raw * 0.999)
    first = np.ceil(lo / step - 1e-9) * step
    ticks = np.arange(first, hi + step * 1e-9, step)
    return np.where(np.abs(ticks) < step * 1e-9, 0.0, ticks)


class _Axes:
    """A plot area ``[x0, x1) x [y0, y1)`` in pixels with data limits, ticks and labels around it."""

    def __init__(self, c: Canvas, box: tuple[int, int, int, int], xlim: tuple[float, float],
                 ylim: tuple[float, float], xticks: tuple[Sequence[float], Sequence[str]],
                 yticks: tuple[Sequence[float], Sequence[str]], xlabel: str = "", ylabel: str = "") -> None:
        bx0, by0, bx1, by1 = box
        ylabel_w = max((text_width(t) for t in yticks[1]), default=0)
        self.c = c
        self.x0 = bx0 + (_ROW + 1 if ylabel else 0) + ylabel_w + 5
        self.x1 = max(bx1 - 3, self.x0 + 2)
        self.y0 = by0
        self.y1 = max(by1 - (_ROW + 3 if len(xticks[1]) else 3) - (_ROW if xlabel else 0), self.y0 + 2)
        self.xlim = xlim if xlim[1] != xlim[0] else (xlim[0] - 0.5, xlim[0] + 0.5)  # reversed limits flip
        self.ylim = ylim if ylim[1] != ylim[0] else (ylim[0] - 0.5, ylim[0] + 0.5)
        self.xticks, self.yticks = xticks, yticks
        self.xlabel, self.ylabel = xlabel, ylabel

    def px(self, x: Any) -> np.ndarray:
        lo, hi = self.xlim
        return self.x0 + (np.asarray(x, dtype=np.float64) - lo) / (hi - lo) * (self.x1 - self.x0 - 1)

    def py(self, y: Any) -> np.ndarray:
        lo, hi = self.ylim
        return self.y1 - 1 - (np.asarray(y, dtype=np.float64) - lo) / (hi - lo) * (self.y1 - self.y0 - 1)

    def grid(self, colour: Any = _GRID) -> None:
        for t in self.xticks[0]:
            x = float(self.px(t))
            self.c.rect(x, self.y0, x + 1, self.y1, colour)
        for t in self.yticks[0]:
            y = float(self.py(t))
            self.c.rect(self.x0, y, self.x1, y + 1, colour)

    def clip(self) -> None:
        self.c.clip = (self.x0, self.y0, self.x1, self.y1)

    def unclip(self) -> None:
        self.c.clip = None

    def frame(self) -> None:
        c = self.c
        c.clip = None
        c.outline(self.x0 - 1, self.y0 - 1, self.x1 + 1, self.y1 + 1, _MUTED)
        for t, text in zip(*self.xticks):
            x = float(self.px(t))
            if self.x0 - 1 <= x <= self.x1:
                c.rect(x, self.y1 + 1, x + 1, self.y1 + 4, _MUTED)
                c.text(x, self.y1 + 5, text, _INK, anchor="centre")
        for t, text in zip(*self.yticks):
            y = float(self.py(t))
            if self.y0 - 1 <= y <= self.y1:
                c.rect(self.x0 - 4, y, self.x0 - 1, y + 1, _MUTED)
                c.text(self.x0 - 6, y - 3, text, _INK, anchor="right")
        if self.xlabel:
            top = self.y1 + (_ROW + 4 if len(self.xticks[1]) else 4)
            c.text((self.x0 + self.x1) // 2, top, _fit(self.xlabel, c.width - 4), _INK, anchor="centre")
        if self.ylabel:
            text = _fit(self.ylabel, self.y1 - self.y0 + 20)
            c.text(self.x0 - 6 - max((text_width(t) for t in self.yticks[1]), default=0) - 10,
                   (self.y0 + self.y1) // 2, text, _INK, anchor="left", vertical=True)

    def note(self, text: str) -> None:
        self.c.text((self.x0 + self.x1) // 2, (self.y0 + self.y1) // 2 - 3, text, _MUTED, anchor="centre")


def _linear_ticks(lo: float, hi: float, n: int = 5) -> tuple[np.ndarray, list[str]]:
    ticks = _nice_ticks(lo, hi, n)
    return ticks, [_fmt(t) for t in ticks]


def _index_ticks(values: np.ndarray, n: int = 5) -> tuple[np.ndarray, list[str]]:
    """Ticks at about ``n`` evenly spread cell indices, labelled with the cells' ``values``."""
    if values.size == 0:
        return np.zeros(0), []
    idx = np.unique(np.round(np.linspace(0, values.size - 1, min(values.size, n))).astype(int))
    return idx.astype(np.float64), [_fmt(values[i]) for i in idx]


def _colorbar_width(labels: Sequence[str], label: str) -> int:
    return 10 + 5 + max((text_width(t) for t in labels), default=0) + (_ROW + 4 if label else 0) + 6


def _colorbar(c: Canvas, x0: int, y0: int, y1: int, cmap: str, labels: tuple[str, str], label: str) -> None:
    """A vertical colour bar ``[x0, x0 + 10) x [y0, y1)`` (maximum at the top), min/max labels, label."""
    height = max(y1 - y0, 2)
    rows = np.round(np.linspace(255, 0, height)).astype(np.intp)  # both ends of the map shown
    bar = np.repeat(colormap(cmap)[rows][:, None, :], 10, axis=1)  # (height, 10, 3), top = highest value
    c.blit(x0, y0, bar)
    c.outline(x0 - 1, y0 - 1, x0 + 11, y0 + height + 1, _MUTED)
    c.text(x0 + 14, y0, labels[1], _INK)
    c.text(x0 + 14, y0 + height - 7, labels[0], _INK)
    if label:
        right = x0 + 14 + max(text_width(labels[0]), text_width(labels[1])) + 4
        c.text(right, (y0 + y0 + height) // 2, _fit(label, height + 10), _INK, vertical=True)


def _legend_column(c: Canvas, x: int, y0: int, y1: int, names: Sequence[str], colours: Sequence[Any],
                   max_px: int) -> None:
    """One legend entry per row (a short line in the colour, then the name in the colour)."""
    rows = max((y1 - y0) // _ROW, 1)
    shown = len(names) if len(names) <= rows else rows - 1
    for i in range(shown):
        y = y0 + i * _ROW
        c.rect(x, y + 3, x + 8, y + 5, colours[i])
        c.text(x + 11, y, _fit(names[i], max_px - 11), colours[i])
    if shown < len(names):
        c.text(x + 11, y0 + shown * _ROW, f"+{len(names) - shown} more", _MUTED)


def _legend_row(c: Canvas, x0: int, y: int, x1: int, names: Sequence[str], colours: Sequence[Any],
                swatch: bool = True) -> int:
    """Legend entries left to right, wrapping to a new row; returns the row below the last one."""
    x = x0
    for name, colour in zip(names, colours):
        w = text_width(name) + (11 if swatch else 0) + 8
        if x > x0 and x + w > x1:
            x, y = x0, y + _ROW
        if swatch:
            c.rect(x, y, x + 7, y + 7, colour)
        c.text(x + (10 if swatch else 0), y, _fit(name, x1 - x - 10), colour if not swatch else _INK)
        x += w
    return y + _ROW


def spectrum_figure(
    freqs: Any,
    psd_by_layer: Mapping[str, Any],
    bands: Mapping[str, tuple[float, float]] | None = None,
    *,
    title: str = "Power spectrum per layer",
    figsize: tuple[float, float] = (6.0, 3.5),
    dpi: int = _DPI,
) -> np.ndarray:
    """Log-power against frequency, one line per layer, band regions shaded and named.

    The y-axis is ``log10`` power (ticks labelled with the power). Non-positive or non-finite power
    cannot be drawn on a log axis and is left as a gap; with no drawable point at all the axes show
    ``NO POSITIVE POWER``. The legend (the layer names in their line colours) is on the right.

    Args:
        freqs: ``(F,)`` bin centre frequencies in Hz.
        psd_by_layer: ``{layer: (F,) power}``.
        bands: ``{band: (low_hz, high_hz)}`` to shade, e.g. the EEG bands; ``None`` for none.
        title: Figure title.
        figsize: Size in inches (times ``dpi``: the image size in pixels).
        dpi: Pixels per inch.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: If a spectrum's length differs from ``freqs``.

    Example::

        >>> f = np.linspace(0, 100, 33)
        >>> img = spectrum_figure(f, {"conv1": 1 / (1 + f)}, {"delta": (0.5, 4), "gamma": (30, 100)})
        >>> img.shape, img.dtype
        ((280, 480, 3), dtype('uint8'))
    """
    f = _np(freqs, "freqs", 1)
    logs = {}
    for layer, psd in psd_by_layer.items():
        p = _np(psd, f"psd_by_layer[{layer!r}]", 1)
        if p.shape != f.shape:
            raise ValueError(f"`psd_by_layer[{layer!r}]` must have shape {f.shape} like `freqs`, got {p.shape}.")
        with np.errstate(divide="ignore", invalid="ignore"):
            logs[str(layer)] = np.where(np.isfinite(p) & (p > 0), np.log10(np.where(p > 0, p, 1.0)), np.nan)
    c = _canvas(figsize, dpi)
    top = _title(c, title)
    bands = dict(bands or {})
    if bands:
        top += 2 * _ROW
    names = list(logs)
    colours = [_CYCLE[i % len(_CYCLE)] for i in range(len(names))]
    legend_w = min(max((text_width(n) for n in names), default=0) + 16, c.width // 3) if names else 0
    finite_f = f[np.isfinite(f)]
    xlim = (float(finite_f.min()), float(finite_f.max())) if finite_f.size else (0.0, 1.0)
    ys = np.concatenate([v[np.isfinite(v)] for v in logs.values()]) if logs else np.zeros(0)
    drawable = ys.size > 0 and finite_f.size > 0
    if drawable:
        lo, hi = float(ys.min()), float(ys.max())
        pad = 0.05 * (hi - lo) if hi > lo else 0.5
        ylim = (lo - pad, hi + pad)
        decades = np.arange(np.ceil(ylim[0]), np.floor(ylim[1]) + 1)
        yt = decades if 2 <= decades.size <= 8 else _nice_ticks(*ylim, n=5)
        yticks = (yt, [_fmt(10.0**t) for t in yt])
    else:
        ylim, yticks = (0.0, 1.0), (np.zeros(0), [])
    ax = _Axes(c, (2, top, c.width - legend_w - 4, c.height - 2), xlim, ylim, _linear_ticks(*xlim, n=6),
               yticks, "frequency (Hz, nominal)", "power spectral density")
    ax.clip()
    for i, (name, (lo_hz, hi_hz)) in enumerate(bands.items()):
        shade = _CYCLE[i % len(_CYCLE)]
        xa, xb = float(ax.px(max(lo_hz, xlim[0]))), float(ax.px(min(hi_hz, xlim[1])))
        if xb > xa:
            c.rect(xa, ax.y0, max(xb, xa + 1), ax.y1, shade, alpha=0.12)
    ax.grid()
    for name, colour in zip(names, colours):
        c.polyline(ax.px(f), ax.py(logs[name]), colour)
    ax.unclip()
    row_end = [-(10**9), -(10**9)]  # band names above the plot: each in the first of 2 rows it fits
    for i, (name, (lo_hz, hi_hz)) in enumerate(bands.items()):
        centre = float(ax.px((max(lo_hz, xlim[0]) + min(hi_hz, xlim[1])) / 2))
        half = text_width(str(name)) / 2
        centre = min(max(centre, ax.x0 + half), ax.x1 - half)
        row = 0 if centre - half > row_end[0] + 3 else 1
        if ax.x0 - 1 <= centre <= ax.x1 and centre - half > row_end[row] + 3:
            c.text(centre, ax.y0 - 2 * _ROW + row * _ROW, name, _CYCLE[i % len(_CYCLE)], anchor="centre")
            row_end[row] = centre + half
    if not drawable:
        ax.note("NO POSITIVE POWER")
    ax.frame()
    if names:
        _legend_column(c, c.width - legend_w, ax.y0, ax.y1, names, colours, legend_w - 2)
    return c.pixels


def spectrogram_figure(
    times: Any,
    freqs: Any,
    power: Any,
    *,
    log: bool = True,
    title: str = "Spectrogram",
    time_label: str = "step",
    cmap: str = "magma",
    figsize: tuple[float, float] = (6.0, 3.5),
    dpi: int = _DPI,
) -> np.ndarray:
    """Power over time and frequency as a colour map (``log10`` power by default).

    One cell per (time, frequency) bin, low frequencies at the bottom; ticks label cell centres
    with their time / frequency. The colour bar on the right names the minimum and maximum shown.
    Non-finite (and, with ``log``, non-positive) power is grey; no cell at all gives ``NO DATA``.

    Args:
        times: ``(T,)`` time of each spectrum (step or seconds).
        freqs: ``(F,)`` frequencies in Hz.
        power: ``(T, F)`` power.
        log: Colour by ``log10`` power (non-positive power shown as missing).
        title: Figure title.
        time_label: x-axis label.
        cmap: Colour map name (see :data:`nn_neuroimaging_lightning.panels.raster.COLORMAPS`).
        figsize: Size in inches (times ``dpi``: the image size in pixels).
        dpi: Pixels per inch.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: If ``power`` is not ``(len(times), len(freqs))``, or ``cmap`` is unknown.

    Example::

        >>> spectrogram_figure(np.arange(4), np.linspace(0, 100, 5), np.ones((4, 5))).shape
        (280, 480, 3)
    """
    t = _np(times, "times", 1)
    f = _np(freqs, "freqs", 1)
    p = _np(power, "power", 2)
    if p.shape != (t.size, f.size):
        raise ValueError(f"`power` must have shape (len(times), len(freqs)) = {(t.size, f.size)}, got {p.shape}.")
    colormap(cmap)  # validate the name before drawing
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(np.isfinite(p) & (p > 0), np.log10(np.where(p > 0, p, 1.0)), np.nan)
    else:
        p = np.where(np.isfinite(p), p, np.nan)
    c = _canvas(figsize, dpi)
    top = _title(c, title)
    finite = p[np.isfinite(p)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    labels = (_fmt(vmin), _fmt(vmax))
    label = "log10 power" if log else "power"
    cb_w = _colorbar_width(labels, label)
    ax = _Axes(c, (2, top, c.width - cb_w, c.height - 2), (-0.5, max(t.size, 1) - 0.5),
               (-0.5, max(f.size, 1) - 0.5), _index_ticks(t, 5), _index_ticks(f, 5), time_label,
               "frequency (Hz, nominal)")
    if p.size:
        cells = colorize(p.T[::-1], vmin, vmax, cmap, bad=_BAD)  # (F, T, 3), highest frequency on top
        c.blit(ax.x0, ax.y0, resample_cells(cells, ax.y1 - ax.y0, ax.x1 - ax.x0))
    else:
        ax.note("NO DATA")
    ax.frame()
    _colorbar(c, c.width - cb_w + 8, ax.y0, ax.y1, cmap, labels, label)
    return c.pixels


def phase_timeline_figure(
    phases: Sequence[Any],
    times: Any = None,
    durations: Mapping[Any, float] | None = None,
    *,
    title: str = "Lifecycle phases",
    figsize: tuple[float, float] = (6.0, 3.0),
    dpi: int = _DPI,
) -> np.ndarray:
    """Phase of each recent sample as a coloured timeline, and time spent per phase as bars.

    One filled block per run of identical labels; the legend under the timeline names the phases
    present with their colours. With ``durations`` a bar chart on the right (a quarter of the width)
    shows each phase's seconds, the value written after its bar (non-finite or negative: no bar).
    No sample gives the frame with ``NO SAMPLES``.

    Args:
        phases: ``(N,)`` phase label per sample (strings or ``Phase`` enum members), oldest first.
        times: ``(N,)`` optional non-decreasing time of each sample (wall-clock seconds, or steps);
            default: the sample index. Each sample spans until the next one's time; idle gaps
            therefore show at their real length when wall-clock times are given.
        durations: ``{phase: seconds}`` total time per phase; adds a bar chart when given.
        title: Figure title.
        figsize: Size in inches (times ``dpi``: the image size in pixels).
        dpi: Pixels per inch.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: If ``times`` does not match ``phases`` or decreases.

    Example::

        >>> img = phase_timeline_figure(["train"] * 5 + ["validate"] * 3, durations={"train": 2.0, "validate": 0.5})
        >>> img.shape, img[120, 100].tolist()  # inside the timeline: the colour of "train"
        ((240, 480, 3), [31, 119, 180])
    """
    labels = [_label(p) for p in phases]
    n = len(labels)
    x = np.arange(n, dtype=np.float64) if times is None else _np(times, "times", 1)
    if x.shape != (n,):
        raise ValueError(f"`times` must have one entry per phase ({n}), got shape {x.shape}.")
    if n > 1 and np.any(np.diff(x) < 0):
        raise ValueError("`times` must be non-decreasing.")
    step = float(np.median(np.diff(x))) if n > 1 else 1.0
    ends = np.append(x[1:], x[-1] + (step if step > 0 else 1.0)) if n else x
    names = list(PHASE_COLOURS)
    for name in list(dict.fromkeys(labels)) + [_label(k) for k in (durations or {})]:
        if name not in names:
            names.append(name)
    colours = {name: PHASE_COLOURS.get(name, _FALLBACK[i % len(_FALLBACK)]) for i, name in enumerate(names)}
    c = _canvas(figsize, dpi)
    top = _title(c, title)
    split = c.width * 3 // 4 if durations else c.width
    present = list(dict.fromkeys(labels))
    # legend rows under the timeline: measure how many are needed
    legend_rows, xx = 1, 4
    for name in present:
        w = text_width(name) + 19
        if xx > 4 and xx + w > split - 4:
            legend_rows, xx = legend_rows + 1, 4
        xx += w
    finite = n > 0 and np.all(np.isfinite(x)) and np.isfinite(ends[-1])
    xlim = (float(x[0]), float(ends[-1])) if finite else (0.0, 1.0)
    ax = _Axes(c, (2, top, split - 4, c.height - 2 - legend_rows * _ROW - 2), xlim, (0.0, 1.0),
               _linear_ticks(*xlim, n=6), (np.zeros(0), []), "sample" if times is None else "time (s)")
    if finite:
        i = 0
        while i < n:  # one block per run of identical labels: O(runs) rectangles, not O(samples)
            j = i
            while j + 1 < n and labels[j + 1] == labels[i]:
                j += 1
            xa, xb = float(ax.px(x[i])), float(ax.px(ends[j]))
            c.rect(xa, ax.y0, max(xb, xa + 1), ax.y1, colours[labels[i]])
            i = j + 1
    else:
        ax.note("NO SAMPLES")
    ax.frame()
    _legend_row(c, 4, c.height - legend_rows * _ROW - 1, split - 4, present, [colours[p] for p in present])
    if durations:
        keys = [_label(k) for k in durations]
        vals = np.array([float(v) for v in durations.values()], dtype=np.float64)
        ok = np.isfinite(vals) & (vals > 0)
        vmax = float(vals[ok].max()) if ok.any() else 1.0
        c.text((split + c.width) // 2, top, "time per phase", _INK, anchor="centre")
        key_w = min(max(text_width(k) for k in keys) + 4, (c.width - split) // 2)
        value_w = max(text_width(_fmt(v)) for v in vals) + 4
        bx0, bx1 = split + 4 + key_w, c.width - 4 - value_w
        by0, by1 = top + _ROW + 4, c.height - 4 - _ROW
        row_h = max((by1 - by0) // max(len(keys), 1), 1)
        for k, (key, v) in enumerate(zip(keys, vals)):
            y = by0 + k * row_h
            bar_h = max(min(row_h - 3, 14), 1)
            length = (bx1 - bx0) * (v / vmax) if ok[k] else 0.0
            c.rect(bx0, y, bx0 + max(length, 1.0 if ok[k] else 0.0), y + bar_h, colours[key])
            c.text(bx0 - 3, y + (bar_h - 7) // 2, _fit(key, key_w - 3), _INK, anchor="right")
            c.text(bx0 + length + 3, y + (bar_h - 7) // 2, _fmt(v), _MUTED)
        c.rect(bx0 - 1, by0 - 2, bx0, by1, _MUTED)
        c.text((bx0 + bx1) // 2, c.height - 2 - 7, "seconds", _INK, anchor="centre")
    return c.pixels


def _cells_panel(c: Canvas, x0: int, y0: int, box_w: int, box_h: int, rgb: np.ndarray) -> tuple[int, int]:
    """Blit cells ``(R, C, 3)`` at ``(x0, y0)`` in whole-pixel blocks filling at most ``box_w x box_h``.

    Returns the drawn ``(width, height)``: ``C * floor(box_w / C)`` (or ``box_w`` when a cell would be
    narrower than 1 px), and likewise for the height.
    """
    rows, cols = rgb.shape[:2]
    w = cols * (box_w // cols) if box_w >= cols else max(box_w, 1)
    h = rows * (box_h // rows) if box_h >= rows else max(box_h, 1)
    c.blit(x0, y0, resample_cells(rgb, h, w))
    return w, h


def heatmap_figure(
    grid: Any,
    title: str = "",
    cmap: str = "viridis",
    significance: Any = None,
    *,
    symmetric: bool = False,
    colorbar_label: str = "",
    max_cols: int = 8,
    figsize: tuple[float, float] | None = None,
    dpi: int = _DPI,
) -> np.ndarray:
    """Grid-shaped values (density, zeta) as heatmaps with one shared colour bar.

    Layouts (SPEC §3 grids):

    - ``(g_h, g_w, g_c)``: the ``g_c`` channel-group slices side by side (wrapping after
      ``max_cols``), each titled ``C = k``, ``g_h`` rows (``h``, top to bottom) by ``g_w`` columns
      (``w``, left to right), one colour scale;
    - ``(g_t, g_d)``: one map, rows ``t`` (time/token), columns ``d`` (hidden);
    - ``(g_c,)``: one strip of feature groups.

    Each cell is a block of whole pixels (the same size in every slice). Cells where
    ``significance`` is True get a dot, black on light cells and white on dark ones (Rec. 709 luma of
    the cell colour above or below 128); NaN cells are grey. The colour bar on the right names the scale's minimum and
    maximum; its label gets `` (dot: significant)`` when ``significance`` is given. A constant grid
    gets the middle colour (scale ``value ± 0.5``); an all-NaN grid is grey on a ``[0, 1]`` scale;
    a grid with no cell gives ``NO DATA``.

    Args:
        grid: The values.
        title: Figure title.
        cmap: Colour map name (``"viridis"``, ``"magma"``, ``"Greys"``; ``"RdBu_r"`` with
            ``symmetric=True`` for zeta scores).
        significance: Optional bool array of the same shape as ``grid``.
        symmetric: Centre the colour scale on 0 (``vmin = -vmax``).
        colorbar_label: Label of the colour bar.
        max_cols: Slices per row for 3-D grids.
        figsize: Size in inches; default scales with the number of slices.
        dpi: Pixels per inch.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: If ``grid`` is not 1-, 2- or 3-D, ``significance`` has another shape, ``cmap``
            is unknown or ``max_cols`` is not a positive int.

    Example::

        >>> g = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
        >>> heatmap_figure(g, "density", significance=g > 20).shape  # 4 slices in a row
        (232, 736, 3)
    """
    values = _np(grid, "grid", (1, 2, 3))
    mask = None
    if significance is not None:
        mask = np.asarray(
            significance.detach().cpu().numpy() if hasattr(significance, "detach") else significance, dtype=bool
        )
        if mask.shape != values.shape:
            raise ValueError(f"`significance` must have the shape of `grid` {values.shape}, got {mask.shape}.")
    if isinstance(max_cols, bool) or not isinstance(max_cols, int) or max_cols < 1:
        raise ValueError(f"`max_cols` must be a positive int, got {max_cols!r}.")
    colormap(cmap)
    if values.ndim == 3:
        slices = [values[..., k] for k in range(values.shape[2])]
        masks = [mask[..., k] for k in range(values.shape[2])] if mask is not None else None
        names, row_label, col_label = [f"c = {k}" for k in range(values.shape[2])], "h", "w"
    elif values.ndim == 2:
        slices, masks = [values], ([mask] if mask is not None else None)
        names, row_label, col_label = [""], "t", "d"
    else:
        slices, masks = [values[None, :]], ([mask[None, :]] if mask is not None else None)
        names, row_label, col_label = [""], "", "feature group"
    n = len(slices)
    cols = max(min(n, max_cols), 1)
    rows = -(-n // cols) if n else 1
    if figsize is None:
        figsize = (min(1.2 + 2.0 * cols, 14.0), 0.9 + 2.0 * rows if values.ndim > 1 else 1.8)
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if symmetric:
        vmax = max(abs(vmin), abs(vmax)) or 1.0
        vmin = -vmax
    elif vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    c = _canvas(figsize, dpi)
    top = _title(c, title)
    labels = (_fmt(vmin), _fmt(vmax))
    label = colorbar_label + (" (dot: significant)" if mask is not None else "")
    cb_w = _colorbar_width(labels, label)
    g_h, g_w = (slices[0].shape if n else (0, 0))
    ytick_w = text_width(str(max(g_h - 1, 0))) if values.ndim > 1 else 0
    left = 4 + (_ROW + 1 if row_label else 0) + ytick_w + 5
    bottom = c.height - 3 - 2 * _ROW - 3
    gap, name_h = 8, (_ROW + 1 if values.ndim == 3 else 0)
    area_w, area_h = c.width - cb_w - left - 4, bottom - top
    box_w = max((area_w - gap * (cols - 1)) // cols, 1)
    box_h = max((area_h - rows * name_h - gap * (rows - 1)) // rows, 1)
    if values.ndim == 1:
        box_h = min(box_h, 40)
    if values.size == 0:
        c.outline(left - 1, top - 1, left + area_w + 1, bottom + 1, _MUTED)
        c.text(left + area_w // 2, (top + bottom) // 2 - 3, "NO DATA", _MUTED, anchor="centre")
        _colorbar(c, c.width - cb_w + 8, top, bottom, cmap, labels, label)
        return c.pixels
    white, black = np.array([255, 255, 255], np.uint8), np.array([0, 0, 0], np.uint8)
    drawn_bottom = top
    for k in range(n):
        r, q = divmod(k, cols)
        x0 = left + q * (box_w + gap)
        y0 = top + r * (box_h + name_h + gap) + name_h
        if names[k]:
            c.text(x0 + box_w // 2, y0 - name_h, names[k], _INK, anchor="centre")
        rgb = colorize(slices[k], vmin, vmax, cmap, bad=_BAD)  # (g_h, g_w, 3)
        w, h = _cells_panel(c, x0, y0, box_w, box_h, rgb)
        c.outline(x0 - 1, y0 - 1, x0 + w + 1, y0 + h + 1, _MUTED)
        drawn_bottom = max(drawn_bottom, y0 + h)
        if masks is not None and masks[k].any():
            rr, cc = np.nonzero(masks[k])
            luma = rgb[rr, cc].astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])  # (m,) cell lightness
            dot = np.where((luma > 128)[:, None], black, white)  # (m, 3)
            radius = max(min(w / g_w, h / g_h) / 5.0, 1.0)
            c.discs(x0 + (cc + 0.5) * w / g_w - 0.5, y0 + (rr + 0.5) * h / g_h - 0.5, radius, dot)
        if k + cols >= n:  # nothing below: x ticks and label
            for j in sorted({0, g_w - 1}):
                c.text(x0 + (j + 0.5) * w / g_w, y0 + h + 3, str(j), _INK, anchor="centre")
            c.text(x0 + w // 2, y0 + h + 3 + _ROW, col_label, _INK, anchor="centre")
        if q == 0 and values.ndim > 1:
            for i in sorted({0, g_h - 1}):
                c.text(x0 - 4, y0 + (i + 0.5) * h / g_h - 3, str(i), _INK, anchor="right")
            if row_label:
                c.text(x0 - 5 - ytick_w - 10, y0 + h // 2, row_label, _INK, vertical=True)
    _colorbar(c, c.width - cb_w + 8, top + name_h, max(drawn_bottom, top + name_h + 20), cmap, labels, label)
    return c.pixels


def matrix_figure(
    matrix: Any,
    row_label: str,
    col_label: str,
    title: str = "",
    *,
    cmap: str = "magma",
    log: bool = False,
    colorbar_label: str = "connection strength",
    figsize: tuple[float, float] = (4.5, 4.0),
    dpi: int = _DPI,
) -> np.ndarray:
    """A 2-D matrix (tractography: source regions x target regions) with a colour bar.

    NaN entries (pairs that could not be traced) are hatched grey, and a ``NOT TRACED`` legend
    with the hatch appears above the matrix. A matrix with no cell gives ``NO DATA``.

    Args:
        matrix: ``(A, B)`` values, NaN where not traced.
        row_label: y-axis label (e.g. ``"conv1 region (source)"``).
        col_label: x-axis label (e.g. ``"conv2 region (target)"``).
        title: Figure title.
        cmap: Colour map name.
        log: Colour by ``log10`` (non-positive values shown as the smallest positive value's colour).
        colorbar_label: Label of the colour bar.
        figsize: Size in inches (times ``dpi``: the image size in pixels).
        dpi: Pixels per inch.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: If ``matrix`` is not 2-D or ``cmap`` is unknown.

    Example::

        >>> matrix_figure(np.eye(3), "source", "target", "C(A->B)").shape
        (320, 360, 3)
    """
    m = _np(matrix, "matrix", 2)
    colormap(cmap)
    untraced = ~np.isfinite(m)
    finite = m[~untraced]
    if log and np.any(finite > 0):
        pos = finite[finite > 0]
        shown = np.log10(np.where(untraced, np.nan, np.maximum(m, pos.min())))
        lo, hi = float(np.log10(pos.min())), float(np.log10(pos.max()))
        hi = hi if hi > lo else lo + 1.0
        labels = (_fmt(10.0**lo), _fmt(10.0**hi))
    else:
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        hi = hi if hi > lo else lo + 1.0
        shown, labels = m, (_fmt(lo), _fmt(hi))
    c = _canvas(figsize, dpi)
    top = _title(c, title)
    if untraced.any():
        x = c.width - 6 - text_width("not traced") - 12
        _hatch(c, x, top, 9, 9)
        c.outline(x, top, x + 9, top + 9, _MUTED)
        c.text(x + 12, top + 1, "not traced", _INK)
        top += _ROW + 4
    cb_w = _colorbar_width(labels, colorbar_label)
    a, b = m.shape
    ax = _Axes(c, (2, top, c.width - cb_w, c.height - 2), (-0.5, max(b, 1) - 0.5), (max(a, 1) - 0.5, -0.5),
               (np.array(sorted({0, max(b - 1, 0)}), dtype=float), [str(j) for j in sorted({0, max(b - 1, 0)})]),
               (np.array(sorted({0, max(a - 1, 0)}), dtype=float), [str(i) for i in sorted({0, max(a - 1, 0)})]),
               col_label, row_label)
    if m.size:
        rgb = colorize(shown, lo, hi, cmap, bad="#dddddd")  # (A, B, 3)
        w, h = ax.x1 - ax.x0, ax.y1 - ax.y0
        c.blit(ax.x0, ax.y0, resample_cells(rgb, h, w))
        if untraced.any():
            hit = resample_cells(untraced, h, w)  # (h, w) bool
            yy, xx = np.nonzero(hit & (((np.arange(h)[:, None] + np.arange(w)[None, :]) % 6) == 0))
            c.points(xx + ax.x0, yy + ax.y0, "#777777")
    else:
        ax.note("NO DATA")
    ax.frame()
    _colorbar(c, c.width - cb_w + 8, ax.y0, ax.y1, cmap, labels, colorbar_label)
    return c.pixels


def _hatch(c: Canvas, x0: int, y0: int, w: int, h: int) -> None:
    c.rect(x0, y0, x0 + w, y0 + h, "#dddddd")
    yy, xx = np.nonzero(((np.arange(h)[:, None] + np.arange(w)[None, :]) % 6) == 0)
    c.points(xx + x0, yy + y0, "#777777")


def consistency_figure(
    history: Mapping[str, Sequence[float]],
    steps: Any = None,
    *,
    title: str = "Cross-modal consistency",
    figsize: tuple[float, float] = (6.0, 3.0),
    dpi: int = _DPI,
) -> np.ndarray:
    """Consistency and its components over evaluations.

    Every key of ``history`` is drawn as a line (``consistency`` black and 2 px wide, the others in
    the colour cycle, with point marks when fewer than 30 evaluations); a ``"step"`` key, or
    ``steps``, gives the x-axis; a ``"joint_anomaly"`` key (truthy entries) draws red vertical
    marks. NaN entries (rho undefined) are gaps. The y-axis spans ``[-1, 1]`` because rho does.
    The legend under the axes names the series in their colours.

    Args:
        history: ``{"consistency": [...], "rho": [...], "agreement": [...], "coherence": [...]}``.
        steps: Optional x values, one per entry.
        title: Figure title.
        figsize: Size in inches (times ``dpi``: the image size in pixels).
        dpi: Pixels per inch.

    Returns:
        ``(H, W, 3)`` uint8 RGB image.

    Raises:
        ValueError: If series lengths differ.

    Example::

        >>> consistency_figure({"consistency": [0.5, 0.7], "rho": [0.1, float("nan")]}).shape
        (240, 480, 3)
    """
    series = {k: _np(v, f"history[{k!r}]", 1) for k, v in history.items() if k not in ("step", "joint_anomaly")}
    lengths = {len(v) for v in series.values()}
    if len(lengths) > 1:
        raise ValueError(f"`history` series must have the same length, got lengths {sorted(lengths)}.")
    n = lengths.pop() if lengths else 0
    if steps is None:
        steps = history.get("step")
    x = np.arange(n, dtype=np.float64) if steps is None else _np(steps, "steps", 1)
    if x.shape != (n,):
        raise ValueError(f"`steps` must have one entry per evaluation ({n}), got shape {x.shape}.")
    flags = None
    joint = history.get("joint_anomaly")
    if joint is not None:
        flags = np.asarray(joint, dtype=bool)
        if flags.shape != x.shape:
            raise ValueError(f"`history['joint_anomaly']` must have {n} entries, got shape {flags.shape}.")
    c = _canvas(figsize, dpi)
    top = _title(c, title)
    names = list(series)
    colours, k = [], 0
    for name in names:  # like matplotlib: an explicit colour does not advance the cycle
        if name == "consistency":
            colours.append(_INK)
        else:
            colours.append(_CYCLE[k % len(_CYCLE)])
            k += 1
    fx = x[np.isfinite(x)]
    xlim = (float(fx.min()), float(fx.max())) if fx.size else (0.0, 1.0)
    if xlim[1] <= xlim[0]:
        xlim = (xlim[0] - 0.5, xlim[0] + 0.5)
    ax = _Axes(c, (2, top, c.width - 4, c.height - 3 - (_ROW if names else 0)), xlim, (-1.05, 1.05),
               _linear_ticks(*xlim, n=6), _linear_ticks(-1.0, 1.0, 5), "step" if steps is not None else "evaluation")
    ax.clip()
    ax.grid()
    zero = float(ax.py(0.0))
    c.rect(ax.x0, zero, ax.x1, zero + 1, (150, 150, 150))
    if flags is not None:
        for xi in x[flags]:
            if np.isfinite(xi):
                px = float(ax.px(xi))
                c.rect(px, ax.y0, px + 1, ax.y1, "#d62728", alpha=0.7)
    order = [i for i, name in enumerate(names) if name != "consistency"] + [
        i for i, name in enumerate(names) if name == "consistency"]  # consistency on top
    for i in order:
        y = series[names[i]]
        bold = names[i] == "consistency"
        c.polyline(ax.px(x), ax.py(y), colours[i], width=2 if bold else 1)
        if n < 30:
            ok = np.isfinite(x) & np.isfinite(y)
            c.discs(ax.px(x[ok]), ax.py(y[ok]), 1.5, colours[i])
    if n == 0:
        ax.note("NO DATA")
    ax.frame()
    if names:
        _legend_row(c, ax.x0, c.height - _ROW - 1, c.width - 4, names, colours, swatch=False)
    return c.pixels
