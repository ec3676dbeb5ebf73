"""Panel figures: matplotlib's object-oriented API on the Agg backend (presentation only).

Every function takes plain arrays (numpy, torch tensors, lists) that were computed elsewhere and
returns a :class:`matplotlib.figure.Figure`; nothing is measured here. Each takes keyword-only
``title``, ``figsize`` (inches; times ``dpi`` the image size in pixels) and ``dpi`` (pixels per
inch), and returns its figure unrendered. No ``pyplot``: a figure is
not registered anywhere, so it is released as soon as the caller drops it (:class:`PanelSink`
renders it once on a ``FigureCanvasAgg`` and clears it). Render one yourself with
:func:`nn_neuroimaging_lightning.panels.rendering.render`.

Sizes are chosen for TensorBoard, which shows an image scaled to its card (about 350 px wide by
default): figures are 640 px wide or more (``figsize`` in inches times ``dpi``, default 100) with
text of 13-17 pt (18-24 px), so tick values and labels stay about 10-13 px high on the card and
read naturally at full size (the HTML report, "show actual image size").

Colours: Okabe-Ito (colour-blind safe) for lines and phases, perceptually uniform maps (viridis
for densities, magma for spectrograms and tractography), a diverging map centred at 0 for signed
scores (``symmetric=True``, e.g. ``RdBu_r`` for zeta). Long module names are shortened from the
left (``...layers.11.mlp``) and titles wrap onto a second line.

Degenerate input never raises: an empty series, a grid or matrix with no cell, or values that are
all NaN / infinite give the panel's axes with a "no data" note; NaN entries are gaps in lines and
grey cells in maps; a constant map gets the middle colour of its map (scale ``value ± 0.5``).
"""

from __future__ import annotations

import enum
import inspect
import math
from dataclasses import dataclass
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullLocator

__all__ = [
    "LINE_COLOURS",
    "PHASE_COLOURS",
    "consistency_figure",
    "heatmap_figure",
    "matrix_figure",
    "phase_timeline_figure",
    "refill",
    "spectrogram_figure",
    "spectrum_figure",
]

#: Okabe & Ito's colour-blind-safe palette, in the order lines get it (yellow last: weak on white).
LINE_COLOURS = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
_LINE_STYLES = ("-", "--", "-.", ":")  # after the 8 colours, lines differ by dash pattern too

#: Colour per lifecycle phase (SPEC §2 labels), Okabe-Ito; unknown labels get colours from a fallback cycle.
PHASE_COLOURS = {
    "train": "#0072B2",
    "validate": "#009E73",
    "test": "#CC79A7",
    "predict": "#56B4E9",
    "sanity_check": "#E69F00",
    "idle": "#BBBBBB",
    "error": "#D55E00",
}
_FALLBACK = ("#F0E442", "#000000", "#882255", "#44AA99", "#999933", "#AA4499")

#: Short labels for the EEG bands above a spectrum (narrow low bands have room for one glyph).
_BAND_GLYPHS = {"delta": "δ", "theta": "θ", "alpha": "α", "beta": "β", "gamma": "γ"}

# font sizes in points (at the default 100 dpi: 1 pt = 1.39 px)
_TITLE, _LABEL, _TICK, _SMALL = 17, 15, 14, 13
_INK, _MUTED, _BAD = "#000000", "#555555", "#BBBBBB"
_DPI = 100
_MAX_PX = 4096  # per side: bounds the canvas memory (4096 x 4096 x 4 bytes = 64 MiB at most)
_CHAR_EM = 0.62  # average glyph width of DejaVu Sans, in font sizes (for wrapping and shortening)


# ------------------------------------------------------------------ drawn again in place

_REFILL = "_nn_neuroimaging_refill"  # the figure attribute :func:`refill` reads


def _keep(fig: Figure, builder: Any, key: tuple, fill: Any, plan_of: Any) -> None:
    """Let :func:`refill` redraw ``fig`` of ``builder``: ``plan_of`` takes the builder's arguments by
    name (its defaults applied) and plans its figure; ``fill(plan)`` puts the plan's values into
    ``fig`` when the plan's ``key`` equals ``key``."""
    setattr(fig, _REFILL, (builder, key, fill, plan_of))


def refill(fig: Figure, builder: str, *args: Any, **kwargs: Any) -> bool:
    """Make ``fig`` show ``builder(*args, **kwargs)`` in place; ``False`` (``fig`` unchanged) when it cannot.

    A figure of :func:`heatmap_figure`, :func:`matrix_figure`, :func:`spectrogram_figure`,
    :func:`spectrum_figure` or :func:`consistency_figure` keeps its artists and takes new values (a
    spectrogram: new cells at new times; the consistency chart: one more evaluation), when
    everything else is the same as when it was built (shape, title, labels, colour map, layers,
    whether any cell is missing or significant (a matrix: which are missing), which steps are
    joint anomalies ...; the phase timeline
    is always built anew): the renderer process draws a tag's figure of the next validation epoch this
    way (:mod:`~nn_neuroimaging_lightning.panels.worker`). Rendered, it has the pixels of a figure
    built anew from the same arguments (``tests/panels/test_figures.py``), at about half the cost
    (``benchmarks/overhead_clients.py --figures``): no figure, axes or colour bar is created again
    and nothing is released.

    Invalid arguments give ``False`` too: built anew, the builder raises its own error.

    Example::

        >>> fig = heatmap_figure(np.zeros((2, 2)), "phi")
        >>> refill(fig, "heatmap_figure", np.ones((2, 2)), "phi"), refill(fig, "heatmap_figure", np.ones((3, 2)), "phi")
        (True, False)
    """
    kept = getattr(fig, _REFILL, None)
    if kept is None or kept[0].__name__ != builder:
        return False
    build, key, fill, plan_of = kept
    try:
        bound = inspect.signature(build).bind(*args, **kwargs)  # the builder's own defaults, written once
        bound.apply_defaults()
        plan = plan_of(**bound.arguments)
    except Exception:  # invalid arguments: built anew, the builder raises its own error (named after it)
        return False
    if plan.key != key:
        return False
    fill(plan)
    return True


# ------------------------------------------------------------------ helpers (layout only)


def _np(x: Any, name: str, ndim: int | tuple[int, ...] | None = None) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
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


def _size(figsize: Any, dpi: Any) -> tuple[float, float]:
    """``figsize`` as ``(width, height)`` inches, checked with ``dpi`` (each side at most 4096 px)."""
    try:
        w_in, h_in = (float(v) for v in figsize)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`figsize` must be a (width, height) pair of positive numbers, got {figsize!r}.") from err
    if not (w_in > 0 and h_in > 0 and math.isfinite(w_in) and math.isfinite(h_in)):
        raise ValueError(f"`figsize` must be a (width, height) pair of positive numbers, got {figsize!r}.")
    if isinstance(dpi, bool) or not isinstance(dpi, (int, float, np.number)) or not dpi > 0 or not math.isfinite(dpi):
        raise ValueError(f"`dpi` must be a positive number, got {dpi!r}.")
    return min(w_in, _MAX_PX / dpi), min(h_in, _MAX_PX / dpi)


def _figure(figsize: Any, dpi: Any) -> Figure:
    """A white figure, ``figsize`` inches at ``dpi`` (each side at most 4096 px), laid out by :func:`_layout`."""
    return Figure(figsize=_size(figsize, dpi), dpi=dpi, facecolor="white")


def _set_limits(mappable: Any, lo: float, hi: float) -> None:
    """``mappable``'s colour limits set to ``(lo, hi)`` at once, then one "changed" (its colour bar follows).

    ``set_clim`` set ``vmin`` and ``vmax`` one after the other before matplotlib 3.10.1 (issue
    #29522), and a colour bar redrawn in between reordered and kept limits like ``(old vmax, new
    vmax)`` when the range moved above the old one."""
    norm = mappable.norm
    with norm.callbacks.blocked(signal="changed"):
        norm.vmin, norm.vmax = lo, hi
    norm.callbacks.process("changed")


# Fixed margins (decision, issue 17): matplotlib's constrained layout measured every text twice
# more before drawing it (about 40 % of a panel's render time). The margins are computed here
# instead from what the figure holds: title lines, tick-label lengths (the axis's own locator and
# formatter, no text drawn), axis labels, legend rows and a colour bar, in inches from the font
# sizes, so the axes get the rest of the figure and no text leaves it.
_PAD_IN = 0.1  # figure edge to the outermost text
_EM_W = 0.66  # widest common glyph width of tick labels (digits 0.64, minus 0.84), in font sizes
_CB_W_IN, _CB_GAP_IN = 0.22, 0.12  # colour bar width, gap between the axes and the bar


def _pt(points: float) -> float:
    return points / 72.0


def _tick_chars(axis: Any) -> int:
    """Characters of the longest tick label ``axis`` will draw (0 with no visible tick)."""
    lo, hi = sorted(axis.get_view_interval())
    span = (hi - lo) * 1e-9
    locs = [v for v in axis.get_major_locator()() if lo - span <= v <= hi + span]
    labels = axis.get_major_formatter().format_ticks(locs) if locs else []
    return max((len(t) for t in labels), default=0)


def _side_in(axis: Any, label_pt: float = _LABEL) -> float:
    """Inches of tick labels and the axis label beside an axis (y axes: label widths; x: heights)."""
    chars = _tick_chars(axis)
    vertical = axis.axis_name == "y"
    ticks = _pt(4 + 3.5) + (_pt(chars * _EM_W * _TICK) if vertical else _pt(_TICK * 1.2)) if chars else 0.0
    label = _pt(4 + label_pt * 1.25) if axis.get_label_text() else 0.0
    return ticks + label


def _legend_in(rows: int) -> float:
    return _pt(rows * _SMALL * 1.55 + _SMALL * 0.9) if rows else 0.0


def _legend(fig: Figure, rows: int, **kwargs: Any) -> int:
    """A figure legend under the axes, on the figure's bottom edge; returns its rows for :func:`_layout`."""
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, _PAD_IN / fig.get_figheight() * 0.5), **kwargs)
    return rows


def _title_in(fig: Figure) -> float:
    title = fig.get_suptitle()
    if not title:
        return 0.0
    return _pt(_TITLE * 1.25 * len(title.splitlines())) + 0.06


def _layout(fig: Figure, ax: Any, *, bar: Any = None, legend_rows: int = 0, top_extra_in: float = 0.0,
            right_in: float | None = None, left_in: float | None = None) -> None:
    """Place ``ax`` (and its colour bar ``bar`` on its right) in the figure with fixed margins.

    The margins hold the suptitle, ``top_extra_in`` more above the axes (band names, map titles),
    the x tick labels, x label and ``legend_rows`` legend rows below, the y tick labels and y label
    on the left, and the colour bar with its tick labels and label on the right. An axes with a
    fixed aspect (maps) shrinks inside its box; the colour bar then follows the drawn map.
    """
    w_in, h_in = fig.get_figwidth(), fig.get_figheight()
    top = _PAD_IN + _title_in(fig) + top_extra_in + _pt(_TICK * 0.6)  # half the top y tick label
    bottom = _PAD_IN + _side_in(ax.xaxis) + _legend_in(legend_rows)
    left = _PAD_IN + max(_side_in(ax.yaxis), 0.15) if left_in is None else left_in  # 0.15: half an x tick label
    if bar is not None:
        right = _PAD_IN + _CB_GAP_IN + _CB_W_IN + _side_in(bar.ax.yaxis) if right_in is None else right_in
    else:
        right = 0.25 if right_in is None else right_in  # half of the last x tick label
    left, bottom = min(left, 0.45 * w_in), min(bottom, 0.45 * h_in)
    width, height = max(w_in - left - right, 0.2 * w_in), max(h_in - bottom - top, 0.2 * h_in)
    ax.set_position([left / w_in, bottom / h_in, width / w_in, height / h_in])
    if bar is not None:
        ax.apply_aspect()  # the drawn box of a fixed-aspect map, inside the position above
        box = ax.get_position(original=False)
        bar.ax.set_position([box.x1 + _CB_GAP_IN / w_in, box.y0 + 0.025 * box.height, _CB_W_IN / w_in, 0.95 * box.height])


def _colorbar(fig: Figure, mappable: Any) -> Any:
    """A colour bar on its own axes (placed by :func:`_layout`)."""
    return fig.colorbar(mappable, cax=fig.add_axes((0.9, 0.1, 0.02, 0.8), label="<colorbar>"))  # matplotlib's name for it


def _chars(width_px: float, size_pt: float, dpi: float) -> int:
    """About how many characters of ``size_pt`` text fit in ``width_px``."""
    return max(int(width_px / (_CHAR_EM * size_pt * dpi / 72.0)), 4)


def _short(name: Any, max_chars: int) -> str:
    """``name`` cut from the left to ``max_chars`` (the end of a module name tells layers apart)."""
    text = _label(name)
    return text if len(text) <= max_chars else "…" + text[-(max_chars - 1):]


def _wrap(text: str, max_chars: int, max_lines: int = 2) -> str:
    """Word-wrap ``text`` at ``max_chars`` per line; over-long words lose their middle; ``max_lines`` at most."""
    lines: list[str] = []
    line = ""
    for word in str(text).split():
        word = _elide(word, max_chars)
        if line and len(line) + 1 + len(word) > max_chars:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        lines = lines[: max_lines - 1] + [_short_tail(" ".join(lines[max_lines - 1:]), max_chars)]
    return "\n".join(lines)


def _short_tail(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _elide(text: str, max_chars: int) -> str:
    """``text`` without its middle when too long: an axis label keeps its start and its unit / role."""
    if len(text) <= max_chars:
        return text
    tail = (max_chars - 1) // 2 + (max_chars - 1) % 2
    return text[: max_chars - 1 - tail] + "…" + text[-tail:]


def _title(fig: Figure, title: str) -> None:
    if title:
        width_px = fig.get_figwidth() * fig.dpi
        fig.suptitle(_wrap(title, _chars(width_px * 0.96, _TITLE, fig.dpi)), fontsize=_TITLE,
                     y=1.0 - _PAD_IN / fig.get_figheight(), va="top")


def _style(ax: Any) -> None:
    ax.tick_params(labelsize=_TICK, length=4, width=1)
    for spine in ax.spines.values():
        spine.set_color(_MUTED)


def _no_data(ax: Any, text: str = "no data") -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=_LABEL, color=_MUTED)


def _line_style(i: int) -> tuple[str, str]:
    return LINE_COLOURS[i % len(LINE_COLOURS)], _LINE_STYLES[(i // len(LINE_COLOURS)) % len(_LINE_STYLES)]


def _legend_chars(fig: Figure, ncols: int, handle_em: float = 2.2) -> int:
    """Characters of a legend label that fit when ``ncols`` entries share the figure's width."""
    em = _SMALL * fig.dpi / 72.0
    column = fig.get_figwidth() * fig.dpi / ncols - (handle_em + 0.8 + 1.2) * em  # handle, its gap, column spacing
    return max(int(column / (_CHAR_EM * em)), 6)


def _legend_cols(n: int) -> int:
    """Legend columns under a 640 px figure: 3 at most, and no row with a single entry for 4."""
    return 2 if n in (2, 4) else min(max(n, 1), 3)


def _fmt(v: float) -> str:
    """Short tick label: 3 significant digits, no ``-0``."""
    if not math.isfinite(v):
        return str(v)
    text = f"{v:.3g}"
    return "0" if text in ("-0", "0") else text


def _log_axis(axis: Any) -> None:
    """Decade ticks labelled ``0.01`` ... ``1000``, else ``1e-5`` (full-size digits: superscripts are
    unreadable on a TensorBoard card; no mathtext parsing), no minor ticks."""

    def fmt(v: float, _pos: Any) -> str:
        if not v > 0:
            return ""
        e = math.log10(v)
        if abs(e - round(e)) > 1e-9:
            return ""
        e = int(round(e))
        return f"{10.0 ** e:g}" if -2 <= e <= 3 else f"1e{e}"

    axis.set_major_locator(LogLocator(base=10.0, numticks=6))
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_locator(NullLocator())


def _index_formatter(values: np.ndarray) -> FuncFormatter:
    """Label a tick at cell index ``i`` with ``values[i]`` (no label between or outside cells)."""

    def fmt(x: float, _pos: Any) -> str:
        i = int(round(x))
        return _fmt(float(values[i])) if abs(x - i) < 1e-6 and 0 <= i < values.size else ""

    return FuncFormatter(fmt)


def _change_ticks(values: np.ndarray, most: int = 6) -> list[int]:
    """Indices where ``values`` changes (the first of each run of equal values), at most ``most``."""
    starts = [i for i in range(values.size) if i == 0 or values[i] != values[i - 1]]
    step = math.ceil(len(starts) / most) if starts else 1
    return starts[::step]


def _edges(centres: np.ndarray) -> np.ndarray | None:
    """Cell edges halfway between strictly increasing finite centres, else ``None`` (use cell indices)."""
    if centres.size == 0 or not np.all(np.isfinite(centres)) or (centres.size > 1 and np.any(np.diff(centres) <= 0)):
        return None
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    mid = (centres[1:] + centres[:-1]) / 2
    return np.concatenate([[centres[0] - (mid[0] - centres[0])], mid, [centres[-1] + (centres[-1] - mid[-1])]])


def _cmap(name: str) -> Any:
    try:
        cmap = colormaps[name]
    except KeyError:
        raise ValueError(f"`cmap` must be a matplotlib colour map name (e.g. 'viridis', 'magma', 'RdBu_r'), got {name!r}.") from None
    return cmap.with_extremes(bad=_BAD)


def _limits(values: np.ndarray, symmetric: bool) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if symmetric:
        top = max(abs(lo), abs(hi)) or 1.0
        return -top, top
    return (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)


# ------------------------------------------------------------------ spectrum


def spectrum_figure(
    freqs: Any,
    psd_by_layer: Mapping[str, Any],
    bands: Mapping[str, tuple[float, float]] | None = None,
    *,
    title: str = "Power spectrum per layer",
    figsize: tuple[float, float] = (6.4, 4.8),
    dpi: float = _DPI,
) -> Figure:
    """Power against frequency on a log axis, one line per layer, the bands shaded and named.

    Bands alternate light and darker grey and carry their name above the axes (EEG names as Greek
    letters: δ θ α β γ). Non-positive or non-finite power cannot be drawn on a log axis and is a
    gap; with no drawable point the axes say "no positive power". The legend under the axes names
    the layers (shortened from the left to fit) in their colours and dash patterns.

    Args:
        freqs: ``(F,)`` bin centre frequencies in Hz.
        psd_by_layer: ``{layer: (F,) power}``.
        bands: ``{band: (low_hz, high_hz)}`` to shade, e.g. the EEG bands; ``None`` for none.
        title, figsize, dpi: The title, the size in inches and the pixels per inch (module docstring).

    Returns:
        The figure (not rendered).

    Raises:
        ValueError: If a spectrum's length differs from ``freqs``.

    Example::

        >>> f = np.linspace(0, 100, 33)
        >>> fig = spectrum_figure(f, {"conv1": 1 / (1 + f)}, {"delta": (0.5, 4), "gamma": (30, 100)})
        >>> [int(v) for v in fig.get_size_inches() * fig.dpi], fig.axes[0].get_yscale()
        ([640, 480], 'log')
    """
    plan = _spectrum_plan(freqs, psd_by_layer, bands, title, figsize, dpi)
    f, series, drawable = plan.f, plan.series, plan.drawable
    fig = _figure(figsize, dpi)
    _title(fig, title)
    ax = fig.add_subplot()
    _style(ax)
    finite_f = f[np.isfinite(f)]
    lo_f, hi_f = (float(finite_f.min()), float(finite_f.max())) if finite_f.size else (0.0, 1.0)
    if hi_f <= lo_f:
        lo_f, hi_f = lo_f - 0.5, hi_f + 0.5
    ax.set_xlim(lo_f, hi_f)
    for i, (name, (lo_hz, hi_hz)) in enumerate((bands or {}).items()):
        a, b = max(float(lo_hz), lo_f), min(float(hi_hz), hi_f)
        if b <= a:
            continue
        ax.axvspan(a, b, color="#000000", alpha=0.05 if i % 2 == 0 else 0.12, lw=0)
        glyph = _BAND_GLYPHS.get(str(name), str(name))
        ax.text((a + b) / 2, 1.01, glyph, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=_LABEL, color=_INK)
    max_chars = _legend_chars(fig, _legend_cols(len(series)))
    lines = []
    for i, (name, p) in enumerate(series.items()):
        colour, dash = _line_style(i)
        lines += ax.plot(f, p, color=colour, ls=dash, lw=2.2, label=_short(name, max_chars))
    if drawable:
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
    else:
        _no_data(ax, "no positive power")
        ax.set_yticks([])
    ax.grid(True, which="major", color="#DDDDDD", lw=0.8)
    ax.set_xlabel("frequency (Hz, nominal)", fontsize=_LABEL)
    ax.set_ylabel("power spectral density", fontsize=_LABEL)
    rows = 0
    if series:
        ncols = _legend_cols(len(series))
        rows = _legend(fig, math.ceil(len(series) / ncols), ncols=ncols, fontsize=_SMALL, frameon=False,
                       handlelength=2.2, columnspacing=1.2)
    place = dict(legend_rows=rows, top_extra_in=_pt(_LABEL * 1.3) if bands else 0.0)
    _layout(fig, ax, **place)

    def fill(new: _SpectrumPlan) -> None:  # the same frequencies, layers and bands, new powers (see `refill`)
        for line, p in zip(lines, new.series.values()):
            line.set_ydata(p)
        ax.relim()  # the data limits of the lines (and the bands' x extent), as when they were plotted
        ax.autoscale_view()
        _layout(fig, ax, **place)

    _keep(fig, spectrum_figure, plan.key, fill, _spectrum_plan)
    return fig


@dataclass(frozen=True)
class _SpectrumPlan:
    """What :func:`spectrum_figure` draws, from its arguments: ``key`` is everything but the powers."""

    key: tuple
    f: Any  # (F,) frequencies
    series: dict  # layer -> (F,) power, NaN gaps where it cannot be drawn on a log axis
    drawable: bool


def _spectrum_plan(freqs: Any, psd_by_layer: Mapping[str, Any], bands: Any, title: str, figsize: Any, dpi: float) -> _SpectrumPlan:
    f = _np(freqs, "freqs", 1)
    series = {}
    for layer, psd in psd_by_layer.items():
        p = _np(psd, f"psd_by_layer[{layer!r}]", 1)
        if p.shape != f.shape:
            raise ValueError(f"`psd_by_layer[{layer!r}]` must have shape {f.shape} like `freqs`, got {p.shape}.")
        series[_label(layer)] = np.where(np.isfinite(p) & (p > 0), p, np.nan)  # gaps on the log axis
    finite_f = f[np.isfinite(f)]
    drawable = finite_f.size > 0 and any(np.isfinite(v).any() for v in series.values())
    band_items = tuple((str(k), float(a), float(b)) for k, (a, b) in (bands or {}).items())
    key = (f.tobytes(), tuple(series), band_items, bool(bands), str(title), _size(figsize, dpi), dpi, drawable)
    return _SpectrumPlan(key, f, series, drawable)


def spectrogram_figure(
    times: Any,
    freqs: Any,
    power: Any,
    *,
    log: bool = True,
    title: str = "Spectrogram",
    time_label: str = "step",
    cmap: str = "magma",
    figsize: tuple[float, float] = (6.4, 4.4),
    dpi: float = _DPI,
) -> Figure:
    """Power over time and frequency as a colour map (log colour scale by default).

    One cell per (time, frequency) bin, low frequencies at the bottom. Cells sit at their real
    time / frequency when those increase strictly, else at their index with ticks labelled by the
    value (validation forwards share one step). The colour bar is labelled with the quantity and
    its scale. Non-finite (and, with ``log``, non-positive) power is grey; no cell gives "no data".

    Args:
        times: ``(T,)`` time of each spectrum (step or seconds).
        freqs: ``(F,)`` frequencies in Hz.
        power: ``(T, F)`` power.
        log: Log colour scale (non-positive power shown as missing).
        title: Figure title.
        time_label: x-axis label.
        cmap: Colour map name (perceptually uniform: ``magma``, ``viridis``, ...).
        figsize, dpi: The size in inches and the pixels per inch (module docstring).

    Returns:
        The figure (not rendered).

    Raises:
        ValueError: If ``power`` is not ``(len(times), len(freqs))``, or ``cmap`` is unknown.

    Example::

        >>> fig = spectrogram_figure(np.arange(4), np.linspace(0, 100, 5), np.ones((4, 5)))
        >>> [int(v) for v in fig.get_size_inches() * fig.dpi]
        [640, 440]
    """
    plan = _spectrogram_plan(times, freqs, power, log, title, time_label, cmap, figsize, dpi)
    fig = _figure(figsize, dpi)
    _title(fig, title)
    ax = fig.add_subplot()
    _style(ax)
    ax.set_xlabel(time_label, fontsize=_LABEL)
    ax.set_ylabel("frequency (Hz, nominal)", fontsize=_LABEL)
    if plan.shown is None:
        _no_data(ax)
        _layout(fig, ax)
        return fig
    colours = _cmap(cmap)
    held: dict[str, Any] = {}

    def put(new: _SpectrogramPlan) -> None:  # the cells, their axes and the colour bar; again for new values (`refill`)
        if "mesh" in held:
            held["mesh"].remove()
        norm = LogNorm(*new.limits) if log else Normalize(*new.limits)
        mesh = held["mesh"] = ax.pcolormesh(new.x, new.y, new.shown, cmap=colours, norm=norm, shading="flat", rasterized=True)
        ax.set_xlim(new.x[0], new.x[-1])  # where autoscaling puts a mesh's edges; explicit: a removed mesh leaves its limits
        ax.set_ylim(new.y[0], new.y[-1])
        for axis, uniform, values in ((ax.xaxis, new.t_cells, new.t), (ax.yaxis, new.f_cells, new.f)):
            if not uniform:  # cells at their index: ticks where the value changes, labelled with it
                axis.set_major_locator(FixedLocator(_change_ticks(values)))
                axis.set_major_formatter(_index_formatter(values))
            else:
                axis.set_major_locator(MaxNLocator(nbins=6))
        if "bar" in held:
            held["bar"].update_normal(mesh)
        else:
            held["bar"] = _colorbar(fig, mesh)
        if log:  # again after new values: the colour bar resets its locator and formatter with a new norm
            _log_axis(held["bar"].ax.yaxis)

    put(plan)
    bar = held["bar"]
    bar.set_label("power spectral density" + (" (log scale)" if log else ""), fontsize=_LABEL)
    bar.ax.tick_params(labelsize=_TICK)
    if plan.no_valid:
        _no_data(ax, "no finite power")
    _layout(fig, ax, bar=bar)

    def fill(new: _SpectrogramPlan) -> None:
        put(new)
        _layout(fig, ax, bar=bar)

    _keep(fig, spectrogram_figure, plan.key, fill, _spectrogram_plan)
    return fig


@dataclass(frozen=True)
class _SpectrogramPlan:
    """What :func:`spectrogram_figure` draws, from its arguments: ``key`` is everything but the values."""

    key: tuple
    shown: Any = None  # masked (F, T) power, None for no cell
    t: Any = None
    f: Any = None
    x: Any = None  # (T + 1,) and (F + 1,) cell edges
    y: Any = None
    t_cells: bool = False  # True: cells at their times (strictly increasing), else at their index
    f_cells: bool = False
    limits: tuple = (1.0, 10.0)
    no_valid: bool = False


def _spectrogram_plan(times: Any, freqs: Any, power: Any, log: bool, title: str, time_label: str, cmap: str, figsize: Any,
                      dpi: float) -> _SpectrogramPlan:
    t = _np(times, "times", 1)
    f = _np(freqs, "freqs", 1)
    p = _np(power, "power", 2)
    if p.shape != (t.size, f.size):
        raise ValueError(f"`power` must have shape (len(times), len(freqs)) = {(t.size, f.size)}, got {p.shape}.")
    _cmap(cmap)  # a known name, before anything is drawn
    base = (p.shape, bool(log), str(title), str(time_label), cmap, _size(figsize, dpi), dpi)
    if p.size == 0:
        return _SpectrogramPlan(key=base + (None,))
    ok = np.isfinite(p) & (p > 0) if log else np.isfinite(p)
    shown = np.ma.masked_array(np.where(ok, p, 1.0), mask=~ok).T  # (F, T)
    valid = p[ok]
    lo, hi = (float(valid.min()), float(valid.max())) if valid.size else (1.0, 10.0)
    limits = (lo, hi if hi > lo else lo * 10) if log else _limits(valid, False)
    t_edges, f_edges = _edges(t), _edges(f)
    x = t_edges if t_edges is not None else np.arange(t.size + 1) - 0.5
    y = f_edges if f_edges is not None else np.arange(f.size + 1) - 0.5
    return _SpectrogramPlan(key=base + (t_edges is not None, f_edges is not None, not valid.size), shown=shown, t=t, f=f,
                            x=x, y=y, t_cells=t_edges is not None, f_cells=f_edges is not None, limits=limits,
                            no_valid=not valid.size)


# ------------------------------------------------------------------ phases


def phase_timeline_figure(
    phases: Sequence[Any],
    times: Any = None,
    durations: Mapping[Any, float] | None = None,
    *,
    title: str = "Lifecycle phases",
    figsize: tuple[float, float] = (6.4, 3.6),
    dpi: float = _DPI,
) -> Figure:
    """Phase of each recent sample as a coloured timeline, and time spent per phase as bars.

    One block per run of identical labels (one collection per phase, however many samples); the
    legend under the timeline names the phases present. With ``durations`` a bar chart on the
    right shows the seconds of each phase that took time, the value written after its bar (zero,
    negative or non-finite durations are left out). No sample gives "no samples".

    Args:
        phases: ``(N,)`` phase label per sample (strings or ``Phase`` enum members), oldest first.
        times: ``(N,)`` optional non-decreasing time of each sample (wall-clock seconds, or steps);
            default: the sample index. Each sample spans until the next one's time; idle gaps
            therefore show at their real length when wall-clock times are given.
        durations: ``{phase: seconds}`` total time per phase; adds a bar chart when given.
        title, figsize, dpi: The title, the size in inches and the pixels per inch (module docstring).

    Returns:
        The figure (not rendered).

    Raises:
        ValueError: If ``times`` does not match ``phases`` or decreases.

    Example::

        >>> fig = phase_timeline_figure(["train"] * 5 + ["validate"] * 3, durations={"train": 2.0, "validate": 0.5})
        >>> [ax.get_title() for ax in fig.axes]
        ['', 'time per phase']
    """
    labels = [_label(p) for p in phases]
    n = len(labels)
    x = np.arange(n, dtype=np.float64) if times is None else _np(times, "times", 1)
    if x.shape != (n,):
        raise ValueError(f"`times` must have one entry per phase ({n}), got shape {x.shape}.")
    if n > 1 and np.any(np.diff(x) < 0):
        raise ValueError("`times` must be non-decreasing.")
    names = list(PHASE_COLOURS)
    for name in list(dict.fromkeys(labels)) + [_label(k) for k in (durations or {})]:
        if name not in names:
            names.append(name)
    extra = [name for name in names if name not in PHASE_COLOURS]
    colours = {**PHASE_COLOURS, **{name: _FALLBACK[i % len(_FALLBACK)] for i, name in enumerate(extra)}}
    fig = _figure(figsize, dpi)
    _title(fig, title)
    ax = fig.add_axes((0.1, 0.1, 0.8, 0.8))  # placed at the end, with the bars beside it
    bars = fig.add_axes((0.7, 0.1, 0.2, 0.8)) if durations else None
    _style(ax)
    ax.set_yticks([])
    ax.set_xlabel("sample" if times is None else "time (s)", fontsize=_LABEL)
    finite = n > 0 and bool(np.all(np.isfinite(x)))
    present = list(dict.fromkeys(labels))
    if finite:
        step = float(np.median(np.diff(x))) if n > 1 else 1.0
        ends = np.append(x[1:], x[-1] + (step if step > 0 else 1.0))  # (N,) each sample until the next
        change = np.flatnonzero([labels[i] != labels[i - 1] for i in range(1, n)]) + 1
        starts, stops = np.r_[0, change], np.r_[change, n]  # runs of identical labels
        runs: dict[str, list[tuple[float, float]]] = {}
        for a, b in zip(starts, stops):
            runs.setdefault(labels[a], []).append((float(x[a]), float(ends[b - 1] - x[a])))
        for name, spans in runs.items():
            ax.broken_barh(spans, (0.0, 1.0), facecolors=colours[name], lw=0)
        ax.set_xlim(float(x[0]), float(ends[-1]))
        ax.set_ylim(0.0, 1.0)
    else:
        _no_data(ax, "no samples")
    rows = 0
    if present:
        handles = [Patch(facecolor=colours[p], label=p) for p in present]
        rows = _legend(fig, math.ceil(len(present) / 4), handles=handles, ncols=min(len(present), 4), fontsize=_SMALL,
                       frameon=False, handlelength=1.2, columnspacing=1.0)
    if bars is not None:
        pairs = [(_label(k), float(v)) for k, v in durations.items()]
        pairs = [(k, v) for k, v in pairs if math.isfinite(v) and v > 0]  # phases that took time
        keys, vals = [k for k, _ in pairs], np.array([v for _, v in pairs], dtype=np.float64)
        pos = np.arange(len(keys))
        drawn = bars.barh(pos, vals, color=[colours[k] for k in keys], height=0.7)
        bars.bar_label(drawn, labels=[_fmt(v) for v in vals], padding=3, fontsize=_SMALL)
        bars.set_yticks(pos, [_short(k, 12) for k in keys])
        bars.invert_yaxis()
        if not keys:
            _no_data(bars, "no time")
        bars.set_title("time per phase", fontsize=_LABEL)
        bars.set_xlabel("seconds", fontsize=_LABEL)
        _style(bars)
        bars.xaxis.set_major_locator(MaxNLocator(nbins=3))
        bars.set_xlim(0.0, float(vals.max()) * 1.45 if keys else 1.0)  # room for the value labels
        for side in ("top", "right"):
            bars.spines[side].set_visible(False)
    if bars is None:
        _layout(fig, ax, legend_rows=rows)
        return fig
    # the timeline and the bars side by side (widths 2.4 : 1), the bars' phase names between them
    w_in, h_in = fig.get_figwidth(), fig.get_figheight()
    top = _PAD_IN + _title_in(fig) + _pt(_LABEL * 1.4)  # the bars' title
    bottom = _PAD_IN + max(_side_in(ax.xaxis), _side_in(bars.xaxis)) + _legend_in(rows)
    left, right, gap = _PAD_IN + max(_side_in(ax.yaxis), 0.15), 0.3, 0.3 + _side_in(bars.yaxis)
    avail = max(w_in - left - right - gap, 0.3 * w_in)
    height = max(h_in - top - bottom, 0.2 * h_in)
    w_ax = avail * 2.4 / 3.4
    ax.set_position([left / w_in, bottom / h_in, w_ax / w_in, height / h_in])
    bars.set_position([(left + w_ax + gap) / w_in, bottom / h_in, (avail - w_ax) / w_in, height / h_in])
    return fig


# ------------------------------------------------------------------ grids


def heatmap_figure(
    grid: Any,
    title: str = "",
    cmap: str = "viridis",
    significance: Any = None,
    *,
    symmetric: bool = False,
    colorbar_label: str = "",
    max_cols: int = 4,
    categories: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = _DPI,
) -> Figure:
    """Grid-shaped values (density, zeta) as heatmaps with one shared, labelled colour bar.

    Layouts (SPEC §3 grids), every cell at its grid coordinates (tick labels are region indices,
    the same coordinates as the ``zeta_top`` table):

    - ``(g_h, g_w, g_c)``: one map per channel group, titled ``c = k``, rows ``h`` (top to
      bottom) by columns ``w`` (left to right), laid out as square as possible with at most
      ``max_cols`` maps per row, one colour scale;
    - ``(g_t, g_d)``: one map, rows ``t`` (time/token group), columns ``d`` (hidden group);
    - ``(g_c,)``: one strip of feature groups.

    The maps share one axes (a mosaic with a one-cell gap between maps: one set of ticks, one
    draw), each outlined. Cells where ``significance`` is True carry a black dot with a white ring
    (visible on any colour), named in a legend under the maps. NaN cells are grey.
    ``symmetric=True`` centres the scale on 0 (``vmin = -vmax``) for signed scores: use a diverging
    map (``RdBu_r``).

    Args:
        grid: The values.
        title: Figure title.
        cmap: Colour map name (``"viridis"``, ``"magma"``, ``"Greys"``; ``"RdBu_r"`` with
            ``symmetric=True`` for zeta scores).
        significance: Optional bool array of the same shape as ``grid``.
        symmetric: Centre the colour scale on 0.
        colorbar_label: Label of the colour bar (the quantity, e.g. ``"zeta"``).
        max_cols: Most maps per row for 3-D grids.
        categories: Names of the values ``0, 1, ...`` when the grid holds category codes (e.g.
            ``("no", "yes")`` for a significance map): one colour per category and a colour bar
            that names them instead of a continuous scale.
        figsize: Size in inches; default 6.4 in wide, the height following the rows of maps.
        dpi: Pixels per inch.

    Returns:
        The figure (not rendered).

    Raises:
        ValueError: If ``grid`` is not 1-, 2- or 3-D, ``significance`` has another shape, ``cmap``
            is unknown, ``max_cols`` is not a positive int or ``categories`` names fewer than 2.

    Example::

        >>> g = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
        >>> fig = heatmap_figure(g, "density", significance=g > 20)
        >>> [t.get_text() for t in fig.axes[0].texts]  # 4 channel groups in 2 rows of 2
        ['c = 0', 'c = 1', 'c = 2', 'c = 3']
    """
    plan = _heatmap_plan(grid, title, cmap, significance, symmetric, colorbar_label, max_cols, categories, figsize, dpi)
    fig = _figure(plan.figsize, dpi)
    _title(fig, title)
    ax = fig.add_subplot()
    _style(ax)
    if plan.empty:
        ax.set_xticks([])
        ax.set_yticks([])
        _no_data(ax)
        _layout(fig, ax)
        return fig
    n, cols, origins = len(plan.names), plan.cols, plan.origins
    g_rows, g_cols = plan.cell
    height, width = plan.mosaic.shape
    colours = _cmap(cmap)
    if categories is not None:
        colours = colours.resampled(len(categories))
        norm = BoundaryNorm(np.arange(len(categories) + 1) - 0.5, len(categories))
    else:
        norm = Normalize(*plan.limits)
    # cells as a quad mesh (no image resampling: drawing costs the cells, not the pixels); masked
    # cells (gaps, NaN) are not drawn: a grey patch under each map shows its NaN cells
    image = ax.pcolormesh(np.arange(width + 1) - 0.5, np.arange(height + 1) - 0.5, np.ma.masked_invalid(plan.mosaic),
                          cmap=colours.with_extremes(bad=(0.0, 0.0, 0.0, 0.0)), norm=norm)
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)  # row 0 at the top, as the grid's h index
    if plan.ndim == 3:
        ax.set_aspect("equal")
    if plan.holes:
        for y0, x0 in origins:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), g_cols, g_rows, facecolor=_BAD, lw=0, zorder=0.5))
    for spine in ax.spines.values():
        spine.set_visible(n == 1)
    for k, (y0, x0) in enumerate(origins):
        if n > 1:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), g_cols, g_rows, fill=False, edgecolor=_MUTED, lw=1))
        if plan.names[k]:
            ax.text(x0 + (g_cols - 1) / 2, y0 - 0.6, plan.names[k], ha="center", va="bottom", fontsize=_LABEL)
    x_idx, y_idx = _tick_cells(g_cols), _tick_cells(g_rows)
    ax.set_xticks([x0 + j for _, x0 in origins[:cols] for j in x_idx], [str(j) for _ in origins[:cols] for j in x_idx])
    if plan.ndim == 1:
        ax.set_yticks([])
    else:
        ax.set_yticks([y0 + i for y0, x0 in origins if x0 == 0 for i in y_idx],
                      [str(i) for y0, x0 in origins if x0 == 0 for i in y_idx])
    ax.set_xlabel(plan.col_label, fontsize=_LABEL)
    if plan.row_label:
        ax.set_ylabel(plan.row_label, fontsize=_LABEL)
    dots = None
    if plan.dots is not None:
        dots = ax.scatter(plan.dots[:, 0], plan.dots[:, 1], s=_dot_size(fig, width, height, plan.ndim), c=_INK,
                          edgecolors="white", linewidths=1.2, zorder=3)
    bar = _colorbar(fig, image)
    bar.set_label(colorbar_label, fontsize=_LABEL)
    bar.ax.tick_params(labelsize=_TICK)

    def bar_ticks() -> None:  # again after new values: the colour bar resets its locator when its mappable changes
        if categories is not None:
            bar.set_ticks(np.arange(len(categories)), labels=[str(c) for c in categories])
            bar.ax.tick_params(length=0)
        else:
            bar.ax.yaxis.set_major_locator(MaxNLocator(nbins=3 if plan.ndim == 1 else 5))

    bar_ticks()
    dot = None
    if plan.has_mask:
        dot = Line2D([], [], ls="", marker="o", markersize=9, markerfacecolor=_INK, markeredgecolor="white",
                     label="significant (95 % CI excludes 0)")
    rows = _legend(fig, 1, handles=[dot], fontsize=_SMALL, frameon=False, handletextpad=0.3) if plan.has_mask else 0
    place = dict(bar=bar, legend_rows=rows, top_extra_in=_pt(_LABEL * 1.3) if any(plan.names) else 0.0)
    _layout(fig, ax, **place)

    def fill(new: _HeatmapPlan) -> None:  # the same structure, new values (see `refill`)
        image.set_array(np.ma.masked_invalid(new.mosaic))
        if categories is None:
            _set_limits(image, *new.limits)
        if dots is not None:
            dots.set_offsets(new.dots)
        bar_ticks()
        _layout(fig, ax, **place)

    _keep(fig, heatmap_figure, plan.key, fill, _heatmap_plan)
    return fig


@dataclass(frozen=True)
class _HeatmapPlan:
    """What :func:`heatmap_figure` draws, from its arguments: ``key`` is everything but the values."""

    key: tuple
    figsize: tuple
    empty: bool
    ndim: int = 0
    names: tuple = ()
    row_label: str = ""
    col_label: str = ""
    cols: int = 1
    cell: tuple = (0, 0)
    origins: tuple = ()
    mosaic: Any = None
    limits: tuple = (0.0, 1.0)
    holes: bool = False
    has_mask: bool = False
    dots: Any = None  # (K, 2) x, y of the significant cells, or None for none


def _heatmap_plan(grid: Any, title: str, cmap: str, significance: Any, symmetric: bool, colorbar_label: str,
                  max_cols: int, categories: Sequence[str] | None, figsize: Any, dpi: float) -> _HeatmapPlan:
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
    _cmap(cmap)  # a known name, before anything is drawn
    if categories is not None and (isinstance(categories, str) or len(categories) < 2):
        raise ValueError(f"`categories` must name at least 2 values, got {categories!r}.")
    if values.ndim == 3:
        slices = [values[..., k] for k in range(values.shape[2])]
        masks = [mask[..., k] for k in range(values.shape[2])] if mask is not None else None
        names, row_label, col_label = tuple(f"c = {k}" for k in range(values.shape[2])), "h (region row)", "w (region column)"
    elif values.ndim == 2:
        slices, masks = [values], ([mask] if mask is not None else None)
        names, row_label, col_label = ("",), "t (token group)", "d (hidden group)"
    else:
        slices, masks = [values[None, :]], ([mask[None, :]] if mask is not None else None)
        names, row_label, col_label = ("",), "", "feature group"
    n = len(slices)
    cols = max(min(math.ceil(math.sqrt(n)), max_cols, n), 1)
    rows = max(math.ceil(n / cols), 1)
    g_rows, g_cols = slices[0].shape if n else (0, 0)
    if figsize is None:
        if values.ndim == 1:
            figsize = (6.4, 2.9)
        else:  # the mosaic's aspect, within 6.4 x [3.6, 9] inches
            mosaic_aspect = (rows * (g_rows + 1)) / max(cols * (g_cols + 1), 1) if values.ndim == 3 else 0.75
            figsize = (6.4, float(np.clip(1.9 + 4.6 * mosaic_aspect, 3.6, 9.0)))
    cats = None if categories is None else tuple(str(c) for c in categories)
    base = (values.shape, str(title), cmap, bool(symmetric), str(colorbar_label), max_cols, cats, _size(figsize, dpi), dpi,
            mask is not None)
    if n == 0 or values.size == 0:
        return _HeatmapPlan(key=base + (True,), figsize=figsize, empty=True)
    gap = 1 if n > 1 else 0
    height, width = rows * g_rows + (rows - 1) * gap, cols * g_cols + (cols - 1) * gap
    mosaic = np.full((height, width), np.nan)  # (rows of maps, columns of maps) with gaps
    is_cell = np.zeros((height, width), dtype=bool)
    origins = []
    for k in range(n):
        r, q = divmod(k, cols)
        y0, x0 = r * (g_rows + gap), q * (g_cols + gap)
        mosaic[y0:y0 + g_rows, x0:x0 + g_cols] = slices[k]
        is_cell[y0:y0 + g_rows, x0:x0 + g_cols] = True
        origins.append((y0, x0))
    holes = not np.isfinite(mosaic[is_cell]).all()
    dots = None
    if masks is not None and any(m.any() for m in masks):
        dots = np.array([(x0 + j, y0 + i) for k, (y0, x0) in enumerate(origins) for i, j in zip(*np.nonzero(masks[k]))],
                        dtype=np.float64)
    return _HeatmapPlan(key=base + (False, holes, dots is not None), figsize=figsize, empty=False, ndim=values.ndim,
                        names=names, row_label=row_label, col_label=col_label, cols=cols, cell=(g_rows, g_cols),
                        origins=tuple(origins), mosaic=mosaic, limits=_limits(values, symmetric), holes=holes,
                        has_mask=mask is not None, dots=dots)


def _tick_cells(count: int) -> list[int]:
    """Cell indices to label along one side of a map: every cell up to 5, else about 4 evenly spaced."""
    step = 1 if count <= 5 else math.ceil(count / 4)
    return list(range(0, count, step))


def _dot_size(fig: Figure, width_cells: int, height_cells: int, ndim: int) -> float:
    """Marker area (pt²) of a significance dot: about a third of a cell's side, 4 to 14 pt across."""
    map_w_pt = fig.get_figwidth() * 72.0 * 0.8  # the colour bar and labels take the rest
    map_h_pt = fig.get_figheight() * 72.0 * 0.7
    cell = min(map_w_pt / max(width_cells, 1), map_h_pt / max(height_cells, 1)) if ndim > 1 else map_w_pt / max(width_cells, 1)
    return float(np.clip(cell * 0.36, 4.0, 14.0)) ** 2


def matrix_figure(
    matrix: Any,
    row_label: str,
    col_label: str,
    title: str = "",
    *,
    cmap: str = "magma",
    log: bool = False,
    colorbar_label: str = "connection strength",
    figsize: tuple[float, float] = (6.4, 5.6),
    dpi: float = _DPI,
) -> Figure:
    """A 2-D matrix (tractography: source regions x target regions) with a labelled colour bar.

    Rows are source regions (index from the top), columns target regions. NaN entries (pairs that
    could not be traced) are grey with a hatch, named "not traced" in a legend under the matrix. A
    matrix with no cell gives "no data".

    Args:
        matrix: ``(A, B)`` values, NaN where not traced.
        row_label: y-axis label (e.g. ``"conv1 region (source)"``).
        col_label: x-axis label (e.g. ``"conv2 region (target)"``).
        title: Figure title.
        cmap: Colour map name (perceptually uniform by default).
        log: Log colour scale (non-positive values shown at the smallest positive value's colour).
        colorbar_label: Label of the colour bar.
        figsize, dpi: The size in inches and the pixels per inch (module docstring).

    Returns:
        The figure (not rendered).

    Raises:
        ValueError: If ``matrix`` is not 2-D or ``cmap`` is unknown.

    Example::

        >>> fig = matrix_figure(np.eye(3), "source", "target", "C(A->B)")
        >>> fig.axes[0].get_xlabel(), fig.axes[1].get_ylabel()
        ('target', 'connection strength')
    """
    plan = _matrix_plan(matrix, row_label, col_label, title, cmap, log, colorbar_label, figsize, dpi)
    fig = _figure(figsize, dpi)
    _title(fig, title)
    ax = fig.add_subplot()
    _style(ax)
    width_chars = _chars(fig.get_figwidth() * fig.dpi * 0.75, _LABEL, fig.dpi)
    ax.set_xlabel(_elide(col_label, width_chars), fontsize=_LABEL)
    ax.set_ylabel(_elide(row_label, _chars(fig.get_figheight() * fig.dpi * 0.75, _LABEL, fig.dpi)), fontsize=_LABEL)
    if plan.shown is None:
        _no_data(ax)
        _layout(fig, ax)
        return fig
    a, b = plan.shown.shape
    norm = LogNorm(*plan.limits) if plan.log_norm else Normalize(*plan.limits)
    image = ax.pcolormesh(np.arange(b + 1) - 0.5, np.arange(a + 1) - 0.5, plan.shown, cmap=_cmap(cmap), norm=norm)
    ax.set_xlim(-0.5, b - 0.5)
    ax.set_ylim(a - 0.5, -0.5)  # source region 0 at the top
    ax.xaxis.set_major_locator(MaxNLocator(nbins=min(b, 6), integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=min(a, 6), integer=True))
    rows = 0
    untraced = np.ma.getmaskarray(plan.shown)
    if untraced.any():
        ax.pcolor(np.arange(b + 1) - 0.5, np.arange(a + 1) - 0.5, np.ma.masked_array(np.zeros(untraced.shape), mask=~untraced),
                  hatch="///", facecolor="none", edgecolor="#666666", lw=0)
        swatch = Patch(facecolor=_BAD, edgecolor="#666666", hatch="///", label="not traced")
        rows = _legend(fig, 1, handles=[swatch], fontsize=_SMALL, frameon=False)
    bar = _colorbar(fig, image)
    if log:
        _log_axis(bar.ax.yaxis)
    bar.set_label(colorbar_label + (" (log scale)" if log else ""), fontsize=_LABEL)
    bar.ax.tick_params(labelsize=_TICK)
    if plan.none_traced:
        _no_data(ax, "no pair traced")
    _layout(fig, ax, bar=bar, legend_rows=rows)

    def fill(new: _MatrixPlan) -> None:  # the same structure, new values (see `refill`)
        image.set_array(new.shown)
        _set_limits(image, *new.limits)
        if log:  # again: the colour bar resets its locator and formatter when its mappable changes
            _log_axis(bar.ax.yaxis)
        _layout(fig, ax, bar=bar, legend_rows=rows)

    _keep(fig, matrix_figure, plan.key, fill, _matrix_plan)
    return fig


@dataclass(frozen=True)
class _MatrixPlan:
    """What :func:`matrix_figure` draws, from its arguments: ``key`` is everything but the values."""

    key: tuple
    shown: Any = None  # masked (A, B) values (masked: not traced), None for no cell
    limits: tuple = (0.0, 1.0)
    log_norm: bool = False
    none_traced: bool = False


def _matrix_plan(matrix: Any, row_label: str, col_label: str, title: str, cmap: str, log: bool, colorbar_label: str,
                 figsize: Any, dpi: float) -> _MatrixPlan:
    m = _np(matrix, "matrix", 2)
    _cmap(cmap)  # a known name, before anything is drawn
    untraced = ~np.isfinite(m)
    finite = m[~untraced]
    base = (m.shape, str(row_label), str(col_label), str(title), cmap, bool(log), str(colorbar_label), _size(figsize, dpi), dpi)
    if m.size == 0:
        return _MatrixPlan(key=base + (None,))
    log_norm = bool(log and np.any(finite > 0))
    if log_norm:
        floor = float(finite[finite > 0].min())
        shown = np.ma.masked_array(np.maximum(np.where(untraced, floor, m), floor), mask=untraced)
        top = float(finite.max())
        limits = (floor, top if top > floor else floor * 10)
    else:
        shown = np.ma.masked_array(np.where(untraced, 0.0, m), mask=untraced)
        limits = _limits(m, False)
    return _MatrixPlan(key=base + (np.packbits(untraced).tobytes(), log_norm, not finite.size), shown=shown,
                       limits=limits, log_norm=log_norm, none_traced=not finite.size)


# ------------------------------------------------------------------ cross-modal


@dataclass(frozen=True)
class _ConsistencyPlan:
    """What :func:`consistency_figure` draws, from its arguments: ``key`` is everything but the scores and steps."""

    key: tuple
    series: dict  # score name -> (n,) values
    x: Any  # (n,) step (or index) of each evaluation
    flags: Any  # (n,) joint anomaly, or None
    n: int
    steps: Any  # the steps given (``steps`` or ``history["step"]``), None for evaluation indices


def _consistency_plan(history: Mapping[str, Sequence[float]], steps: Any, title: str, figsize: Any,
                      dpi: float) -> _ConsistencyPlan:
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
    flagged = () if flags is None else tuple(float(v) for v in x[flags & np.isfinite(x)])
    key = (tuple(series), steps is None, n == 0, n < 30, flagged, bool(np.isfinite(x).any()), str(title), _size(figsize, dpi), dpi)
    return _ConsistencyPlan(key, series, x, flags, n, steps)



def consistency_figure(
    history: Mapping[str, Sequence[float]],
    steps: Any = None,
    *,
    title: str = "Cross-modal consistency",
    figsize: tuple[float, float] = (6.4, 4.4),
    dpi: float = _DPI,
) -> Figure:
    """Consistency and its components over evaluations.

    Every key of ``history`` is drawn as a line (``consistency`` black and thick, the others in
    Okabe-Ito colours and distinct dash patterns, with point marks when fewer than 30
    evaluations); a ``"step"`` key, or ``steps``, gives the x-axis; a ``"joint_anomaly"`` key
    (truthy entries) draws vermillion vertical lines, named in the legend. NaN entries (rho
    undefined) are gaps. The y-axis spans ``[-1, 1]`` because rho does.

    Args:
        history: ``{"consistency": [...], "rho": [...], "agreement": [...], "coherence": [...]}``.
        steps: Optional x values, one per entry.
        title, figsize, dpi: The title, the size in inches and the pixels per inch (module docstring).

    Returns:
        The figure (not rendered).

    Raises:
        ValueError: If series lengths differ.

    Example::

        >>> fig = consistency_figure({"consistency": [0.5, 0.7], "rho": [0.1, float("nan")]})
        >>> fig.legends[0].texts[0].get_text(), fig.legends[0].texts[1].get_text()
        ('rho', 'consistency')
    """
    plan = _consistency_plan(history, steps, title, figsize, dpi)
    series, x, flags, n, steps = plan.series, plan.x, plan.flags, plan.n, plan.steps
    fig = _figure(figsize, dpi)
    _title(fig, title)
    ax = fig.add_subplot()
    _style(ax)
    ax.set_ylim(-1.05, 1.05)
    ax.set_yticks([-1.0, -0.5, 0.0, 0.5, 1.0])
    ax.axhline(0.0, color="#999999", lw=1)
    ax.grid(True, color="#E5E5E5", lw=0.8)
    ax.set_xlabel("step" if steps is not None else "evaluation", fontsize=_LABEL)
    ax.set_ylabel("score", fontsize=_LABEL)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))

    def x_limits(x: np.ndarray) -> None:
        fx = x[np.isfinite(x)]
        if fx.size and fx.max() > fx.min():
            pad = 0.03 * (fx.max() - fx.min())
            ax.set_xlim(fx.min() - pad, fx.max() + pad)
        elif fx.size:
            ax.set_xlim(fx[0] - 0.5, fx[0] + 0.5)

    x_limits(x)
    marks = "o" if n < 30 else None
    others = [k for k in series if k != "consistency"]
    lines = {}
    for i, name in enumerate(others):  # consistency drawn last, on top
        colour, _ = _line_style(i)
        lines[name], = ax.plot(x, series[name], color=colour, ls=_LINE_STYLES[(i + 1) % len(_LINE_STYLES)], lw=2.0,
                               marker=marks, markersize=5, label=_short(name, _legend_chars(fig, 3, 2.4)))
    if "consistency" in series:
        lines["consistency"], = ax.plot(x, series["consistency"], color=_INK, lw=3.0, marker=marks, markersize=6,
                                        label="consistency")
    if flags is not None and flags.any():
        for k, xi in enumerate(x[flags & np.isfinite(x)]):
            ax.axvline(xi, color="#D55E00", lw=2.0, ls=(0, (2, 1.5)), label="joint anomaly" if k == 0 else None)
    if n == 0:
        _no_data(ax)
    handles, labels = ax.get_legend_handles_labels()
    rows = 0
    if handles:
        ncols = _legend_cols(len(handles))
        rows = _legend(fig, math.ceil(len(handles) / ncols), handles=handles, labels=labels, ncols=ncols,
                       fontsize=_SMALL, frameon=False, handlelength=2.4, columnspacing=1.2)

    def fill(new: _ConsistencyPlan) -> None:  # the same series, marks and flagged steps, new scores (see `refill`)
        for name, line in lines.items():
            line.set_data(new.x, new.series[name])
        x_limits(new.x)
        ax.relim()  # only where no x limit was set (no finite step): the lines' own extent
        ax.autoscale_view()
        _layout(fig, ax, legend_rows=rows)

    _keep(fig, consistency_figure, plan.key, fill, _consistency_plan)
    _layout(fig, ax, legend_rows=rows)
    return fig
