"""matplotlib figures for the TensorBoard panels (presentation only, no measure computed here).

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (no global figure
registry, no interactive backend), small by default (``figsize`` around 6 x 3.5 in, ``dpi=80``) so
that rendering stays in the tens of milliseconds. Write them with
:func:`nn_neuroimaging_lightning.panels.tensorboard.write_figure` or
``writer.add_figure(tag, fig, step, close=True)``. matplotlib is imported inside the functions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

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

_DPI = 80


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


def _figure(figsize: tuple[float, float], dpi: int) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=dpi, layout="constrained")


def _label(value: Any) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value)


def spectrum_figure(
    freqs: Any,
    psd_by_layer: Mapping[str, Any],
    bands: Mapping[str, tuple[float, float]] | None = None,
    *,
    title: str = "Power spectrum per layer",
    figsize: tuple[float, float] = (6.0, 3.5),
    dpi: int = _DPI,
) -> Any:
    """Log-power against frequency, one line per layer, band regions shaded and named.

    Non-positive or non-finite power cannot be drawn on a log axis and is left as a gap.

    Args:
        freqs: ``(F,)`` bin centre frequencies in Hz.
        psd_by_layer: ``{layer: (F,) power}``.
        bands: ``{band: (low_hz, high_hz)}`` to shade, e.g. the EEG bands; ``None`` for none.
        title: Figure title.
        figsize: Size in inches.
        dpi: Resolution.

    Returns:
        The figure.

    Raises:
        ValueError: If a spectrum's length differs from ``freqs``.

    Example::

        >>> import numpy as np
        >>> f = np.linspace(0, 100, 33)
        >>> fig = spectrum_figure(f, {"conv1": 1 / (1 + f)}, {"delta": (0.5, 4), "gamma": (30, 100)})
        >>> len(fig.axes[0].lines)
        1
    """
    f = _np(freqs, "freqs", 1)
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    if bands:
        import matplotlib.colors as mcolors

        shades = list(mcolors.TABLEAU_COLORS.values())
        for i, (name, (lo, hi)) in enumerate(bands.items()):
            ax.axvspan(lo, hi, color=shades[i % len(shades)], alpha=0.12, lw=0)
            ax.text((lo + hi) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7)
    for layer, psd in psd_by_layer.items():
        p = _np(psd, f"psd_by_layer[{layer!r}]", 1)
        if p.shape != f.shape:
            raise ValueError(f"`psd_by_layer[{layer!r}]` must have shape {f.shape} like `freqs`, got {p.shape}.")
        p = np.where(np.isfinite(p) & (p > 0), p, np.nan)
        ax.plot(f, p, lw=1.2, label=str(layer))
    if np.any([np.isfinite(line.get_ydata()).any() for line in ax.lines]):
        ax.set_yscale("log")
    if f.size:
        ax.set_xlim(f.min(), f.max())
    ax.set_xlabel("frequency (Hz, nominal)")
    ax.set_ylabel("power spectral density")
    ax.set_title(title, fontsize=10, pad=12 if bands else 6)
    if psd_by_layer:
        ax.legend(fontsize=7, ncol=max(1, len(psd_by_layer) // 8), loc="best")
    ax.grid(True, which="major", alpha=0.3)
    return fig


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
) -> Any:
    """Power over time and frequency as a colour map (``log10`` power by default).

    Args:
        times: ``(T,)`` time of each spectrum (step or seconds).
        freqs: ``(F,)`` frequencies in Hz.
        power: ``(T, F)`` power.
        log: Colour by ``log10`` power (non-positive power shown as missing).
        title: Figure title.
        time_label: x-axis label.
        cmap: Colour map name.
        figsize: Size in inches.
        dpi: Resolution.

    Returns:
        The figure.

    Raises:
        ValueError: If ``power`` is not ``(len(times), len(freqs))``.

    Example::

        >>> import numpy as np
        >>> fig = spectrogram_figure(np.arange(4), np.linspace(0, 100, 5), np.ones((4, 5)))
        >>> fig.axes[0].get_ylabel()
        'frequency (Hz, nominal)'
    """
    t = _np(times, "times", 1)
    f = _np(freqs, "freqs", 1)
    p = _np(power, "power", 2)
    if p.shape != (t.size, f.size):
        raise ValueError(f"`power` must have shape (len(times), len(freqs)) = {(t.size, f.size)}, got {p.shape}.")
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(np.isfinite(p) & (p > 0), np.log10(np.where(p > 0, p, 1.0)), np.nan)
    else:
        p = np.where(np.isfinite(p), p, np.nan)
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(t, f, np.ma.masked_invalid(p.T), shading="nearest", cmap=cmap)
    fig.colorbar(mesh, ax=ax, label="log10 power" if log else "power")
    ax.set_xlabel(time_label)
    ax.set_ylabel("frequency (Hz, nominal)")
    ax.set_title(title, fontsize=10)
    return fig


def phase_timeline_figure(
    phases: Sequence[Any],
    times: Any = None,
    durations: Mapping[Any, float] | None = None,
    *,
    title: str = "Lifecycle phases",
    figsize: tuple[float, float] = (6.0, 3.0),
    dpi: int = _DPI,
) -> Any:
    """Phase of each recent sample as a coloured timeline, and time spent per phase as bars.

    Args:
        phases: ``(N,)`` phase label per sample (strings or ``Phase`` enum members), oldest first.
        times: ``(N,)`` optional non-decreasing time of each sample (wall-clock seconds, or steps);
            default: the sample index. Each sample spans until the next one's time; idle gaps
            therefore show at their real length when wall-clock times are given.
        durations: ``{phase: seconds}`` total time per phase; adds a bar chart when given.
        title: Figure title.
        figsize: Size in inches.
        dpi: Resolution.

    Returns:
        The figure.

    Raises:
        ValueError: If ``times`` does not match ``phases`` or decreases.

    Example::

        >>> fig = phase_timeline_figure(["train"] * 5 + ["validate"] * 3, durations={"train": 2.0, "validate": 0.5})
        >>> len(fig.axes)
        2
    """
    from matplotlib.patches import Patch

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
    colours = {
        name: PHASE_COLOURS.get(name, _FALLBACK[i % len(_FALLBACK)]) for i, name in enumerate(names)
    }
    fig = _figure(figsize, dpi)
    if durations:
        ax, ax_bar = fig.subplots(1, 2, width_ratios=(3, 1))
    else:
        ax, ax_bar = fig.add_subplot(), None
    # one bar per run of identical labels: O(runs) artists, not O(samples)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and labels[j + 1] == labels[i]:
            j += 1
        ax.broken_barh([(x[i], ends[j] - x[i])], (0, 1), color=colours[labels[i]])
        i = j + 1
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    if n:
        ax.set_xlim(x[0], ends[-1])
    ax.set_xlabel("sample" if times is None else "time")
    ax.set_title(title, fontsize=10)
    present = list(dict.fromkeys(labels))
    ax.legend(handles=[Patch(color=colours[p], label=p) for p in present], fontsize=7, loc="upper left",
              ncol=max(1, len(present)), bbox_to_anchor=(0, -0.25))
    if ax_bar is not None:
        keys = [_label(k) for k in durations]
        vals = [float(v) for v in durations.values()]
        ax_bar.barh(keys, vals, color=[colours[k] for k in keys])
        ax_bar.set_xlabel("seconds")
        ax_bar.tick_params(axis="y", labelsize=7)
        ax_bar.set_title("time per phase", fontsize=9)
    return fig


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
) -> Any:
    """Grid-shaped values (density, zeta) as heatmaps with one shared colour bar.

    Layouts (SPEC §3 grids):

    - ``(g_h, g_w, g_c)``: the ``g_c`` channel-group slices side by side (wrapping after
      ``max_cols``), each ``g_h`` rows (``h``) by ``g_w`` columns (``w``), one colour scale;
    - ``(g_t, g_d)``: one map, rows ``t`` (time/token), columns ``d`` (hidden);
    - ``(g_c,)``: one strip of feature groups.

    Cells where ``significance`` is True get a dot (black or white, whichever contrasts); NaN
    cells are grey.

    Args:
        grid: The values.
        title: Figure title.
        cmap: Colour map name (e.g. ``"RdBu_r"`` with ``symmetric=True`` for zeta scores).
        significance: Optional bool array of the same shape as ``grid``.
        symmetric: Centre the colour scale on 0 (``vmin = -vmax``).
        colorbar_label: Label of the colour bar.
        max_cols: Slices per row for 3-D grids.
        figsize: Size in inches; default scales with the number of slices.
        dpi: Resolution.

    Returns:
        The figure.

    Raises:
        ValueError: If ``grid`` is not 1-, 2- or 3-D, or ``significance`` has another shape.

    Example::

        >>> import numpy as np
        >>> g = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
        >>> fig = heatmap_figure(g, "density", significance=g > 20)
        >>> len(fig.axes)  # 4 slices + 1 colour bar
        5
    """
    import matplotlib
    from matplotlib.colors import Normalize

    values = _np(grid, "grid", (1, 2, 3))
    mask = None
    if significance is not None:
        mask = np.asarray(
            significance.detach().cpu().numpy() if hasattr(significance, "detach") else significance, dtype=bool
        )
        if mask.shape != values.shape:
            raise ValueError(f"`significance` must have the shape of `grid` {values.shape}, got {mask.shape}.")
    if values.ndim == 3:
        slices = [values[..., c] for c in range(values.shape[2])]
        masks = [mask[..., c] for c in range(values.shape[2])] if mask is not None else None
        names, row_label, col_label = [f"c = {c}" for c in range(values.shape[2])], "h", "w"
    elif values.ndim == 2:
        slices, masks = [values], ([mask] if mask is not None else None)
        names, row_label, col_label = [""], "t", "d"
    else:
        slices, masks = [values[None, :]], ([mask[None, :]] if mask is not None else None)
        names, row_label, col_label = [""], "", "feature group"
    n = len(slices)
    if not isinstance(max_cols, int) or max_cols < 1:
        raise ValueError(f"`max_cols` must be a positive int, got {max_cols!r}.")
    cols = min(n, max_cols)
    rows = -(-n // cols)
    if figsize is None:
        figsize = (min(1.2 + 2.0 * cols, 14.0), 0.9 + 2.0 * rows if values.ndim > 1 else 1.8)
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if symmetric:
        vmax = max(abs(vmin), abs(vmax)) or 1.0
        vmin = -vmax
    elif vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    norm = Normalize(vmin=vmin, vmax=vmax)
    colormap = matplotlib.colormaps[cmap].with_extremes(bad="#bbbbbb")
    fig = _figure(figsize, dpi)
    # shared axes: tick labels only on the outer edge (fewer text artists, faster layout)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharex=True, sharey=True)).ravel()
    image = None
    for k, ax in enumerate(axes):
        if k >= n:
            ax.set_axis_off()
            continue
        data = slices[k]
        image = ax.imshow(np.ma.masked_invalid(data), cmap=colormap, norm=norm, aspect="auto",
                          interpolation="nearest")
        if masks is not None and masks[k].any():
            r, c = np.nonzero(masks[k])
            dark = norm(np.nan_to_num(data[r, c], nan=vmin)) > 0.5
            ax.scatter(c, r, s=10, c=np.where(dark, "black", "white"), marker="o", linewidths=0)
        if names[k]:
            ax.set_title(names[k], fontsize=8)
        if k + cols >= n:  # nothing below this one
            ax.set_xlabel(col_label, fontsize=8)
        if k % cols == 0 and row_label:
            ax.set_ylabel(row_label, fontsize=8)
        if values.ndim == 1:
            ax.set_yticks([])
        ax.tick_params(labelsize=7)
    label = colorbar_label + (" (dot: significant)" if mask is not None else "")
    fig.colorbar(image, ax=list(axes[:n]), label=label, shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


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
) -> Any:
    """A 2-D matrix (tractography: source regions x target regions) with a colour bar.

    NaN entries (pairs that could not be traced) are hatched grey and named in the legend.

    Args:
        matrix: ``(A, B)`` values, NaN where not traced.
        row_label: y-axis label (e.g. ``"conv1 region (source)"``).
        col_label: x-axis label (e.g. ``"conv2 region (target)"``).
        title: Figure title.
        cmap: Colour map name.
        log: Colour by ``log10`` (non-positive values shown as 0's colour floor).
        colorbar_label: Label of the colour bar.
        figsize: Size in inches.
        dpi: Resolution.

    Returns:
        The figure.

    Example::

        >>> import numpy as np
        >>> fig = matrix_figure(np.eye(3), "source", "target", "C(A->B)")
        >>> fig.axes[0].get_xlabel()
        'target'
    """
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Patch, Rectangle

    m = _np(matrix, "matrix", 2)
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    untraced = ~np.isfinite(m)
    finite = m[~untraced]
    if log and np.any(finite > 0):
        pos = finite[finite > 0]
        norm = LogNorm(vmin=float(pos.min()), vmax=float(pos.max()) if pos.max() > pos.min() else float(pos.min()) * 10)
        shown = np.where(untraced, np.nan, np.maximum(m, pos.min()))
    else:
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
        shown = m
    ax.set_facecolor("#dddddd")
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    if untraced.any():
        r, c = np.nonzero(untraced)
        for ri, ci in zip(r, c):
            ax.add_patch(Rectangle((ci - 0.5, ri - 0.5), 1, 1, fill=False, hatch="///", lw=0, color="#777777"))
        ax.legend(handles=[Patch(facecolor="#dddddd", hatch="///", edgecolor="#777777", label="not traced")],
                  fontsize=7, loc="upper right")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def consistency_figure(
    history: Mapping[str, Sequence[float]],
    steps: Any = None,
    *,
    title: str = "Cross-modal consistency",
    figsize: tuple[float, float] = (6.0, 3.0),
    dpi: int = _DPI,
) -> Any:
    """Consistency and its components over evaluations.

    Every key of ``history`` is drawn as a line (``consistency`` bold); a ``"step"`` key, or
    ``steps``, gives the x-axis; a ``"joint_anomaly"`` key (truthy entries) draws red vertical
    marks. NaN entries (rho undefined) are gaps. The y-axis spans ``[-1, 1]`` because rho does.

    Args:
        history: ``{"consistency": [...], "rho": [...], "agreement": [...], "coherence": [...]}``.
        steps: Optional x values, one per entry.
        title: Figure title.
        figsize: Size in inches.
        dpi: Resolution.

    Returns:
        The figure.

    Raises:
        ValueError: If series lengths differ.

    Example::

        >>> fig = consistency_figure({"consistency": [0.5, 0.7], "rho": [0.1, float("nan")]})
        >>> fig.axes[0].get_legend_handles_labels()[1]
        ['consistency', 'rho']
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
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    for key, y in series.items():
        bold = key == "consistency"
        ax.plot(x, y, lw=2.0 if bold else 1.0, marker="o" if n < 30 else None, ms=3, label=key,
                color="black" if bold else None, zorder=3 if bold else 2)
    joint = history.get("joint_anomaly")
    if joint is not None:
        flags = np.asarray(joint, dtype=bool)
        if flags.shape != x.shape:
            raise ValueError(f"`history['joint_anomaly']` must have {n} entries, got shape {flags.shape}.")
        for xi in x[flags]:
            ax.axvline(xi, color="#d62728", lw=1, alpha=0.7)
    ax.axhline(0.0, color="grey", lw=0.5)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("step" if steps is not None else "evaluation")
    ax.set_title(title, fontsize=10)
    if series:
        ax.legend(fontsize=7, loc="lower left", ncol=len(series))
    ax.grid(True, alpha=0.3)
    return fig
