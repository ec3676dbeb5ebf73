"""Writing panels to TensorBoard: tags, custom-scalars layout, stacked spectra, figures, tables.

Presentation only: every function receives values that are already computed (numpy arrays,
tensors or Python numbers) and writes them through a ``torch.utils.tensorboard.SummaryWriter``-like
``writer`` — what ``TensorBoardLogger.experiment`` returns — through its public methods and its
public ``file_writer`` attribute. matplotlib is imported inside the functions that need it.
"""

from __future__ import annotations

import enum
import re
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "CROSS_MODAL_KEYS",
    "band_layout",
    "format_cell",
    "merge_layouts",
    "safe_tag",
    "table_text",
    "write_custom_scalars",
    "write_figure",
    "write_stacked_spectrum",
]

#: Scalars the cross-modal callback logs under ``cross_modal/``.
CROSS_MODAL_KEYS = ("consistency", "rho", "agreement", "coherence")

_UNSAFE = re.compile(r"[^A-Za-z0-9_./-]")
#: Writers that got a custom-scalars layout (weak: kept here, not as an attribute on the user's writer).
_LAYOUT_WRITTEN: "weakref.WeakSet[Any]" = weakref.WeakSet()


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be array-like of numbers, got {type(x).__name__}.") from err


def safe_tag(*parts: Any) -> str:
    """Join tag parts with ``/`` into a TensorBoard- and file-system-safe tag.

    Dots are kept (module names such as ``features.0`` stay readable); any character outside
    ``[A-Za-z0-9_./-]`` becomes ``_``; leading/trailing ``/`` of a part, empty parts and runs of
    ``/`` are dropped; a part made only of dots (``.``, ``..``) becomes ``_`` so that no ``..``
    path component can traverse directories.

    Args:
        *parts: Tag components, e.g. ``("nn_eeg", layer_name, "band", "gamma")``; non-strings are
            converted with ``str``.

    Returns:
        The tag, e.g. ``"nn_eeg/features.0/band/gamma"``.

    Raises:
        ValueError: If no non-empty part is given.

    Example::

        >>> safe_tag("nn_eeg", "encoder.layers[0].attn", "band", "gamma")
        'nn_eeg/encoder.layers_0_.attn/band/gamma'
        >>> safe_tag("nn_fmri", "../../etc", "zeta")
        'nn_fmri/_/_/etc/zeta'
    """
    components: list[str] = []
    for part in parts:
        for piece in _UNSAFE.sub("_", str(part)).split("/"):
            if not piece:
                continue
            if set(piece) == {"."}:
                piece = "_"
            components.append(piece)
    if not components:
        raise ValueError(f"`parts` must contain at least one non-empty component, got {parts!r}.")
    return "/".join(components)


def _regex_escape(tag: str) -> str:
    # After safe_tag only "." is a regex metacharacter; re.escape would also escape "-", which is an
    # error in JavaScript's unicode-mode regexes (TensorBoard matches these in the browser).
    return tag.replace(".", r"\.")


def band_layout(
    layer_names: Sequence[str],
    bands: Iterable[str] | Mapping[str, Any],
    *,
    eeg_prefix: str = "nn_eeg",
    cross_modal_prefix: str = "cross_modal",
    cross_modal_keys: Sequence[str] = CROSS_MODAL_KEYS,
) -> dict[str, dict[str, list[Any]]]:
    """Custom-scalars layout: band powers grouped per layer, per band, and the cross-modal scores.

    Three categories (TensorBoard's "Custom Scalars" tab):

    - ``"<eeg_prefix> band power by layer"``: one Multiline chart per layer matching
      ``<eeg_prefix>/<layer>/band/.*`` — all its band powers in one chart;
    - ``"<eeg_prefix> band power by band"``: one chart per band matching
      ``<eeg_prefix>/.*/band/<band>`` — one line per layer, to compare layers;
    - ``"<cross_modal_prefix>"``: a chart for ``consistency`` and one for its components.

    Layer names go through :func:`safe_tag`: the callbacks must log with the same function.
    Regexes are not anchored, so Lightning's ``_step``/``_epoch`` suffixes and logger prefixes match.

    Args:
        layer_names: Module names of the tapped layers.
        bands: Band names (or a mapping band -> edges, whose keys are used).
        eeg_prefix: Tag prefix of the EEG scalars.
        cross_modal_prefix: Tag prefix of the cross-modal scalars.
        cross_modal_keys: Cross-modal scalar names; the first one gets a chart of its own.

    Returns:
        ``{category: {chart title: ["Multiline", [regex, ...]]}}``, the format of
        ``SummaryWriter.add_custom_scalars``.

    Raises:
        TypeError: If ``layer_names`` is a string rather than a sequence of names.

    Example::

        >>> layout = band_layout(["conv1", "fc.0"], ["delta", "gamma"])
        >>> layout["nn_eeg band power by layer"]["fc.0"]
        ['Multiline', ['nn_eeg/fc\\\\.0/band/.*']]
        >>> layout["cross_modal"]["consistency"]
        ['Multiline', ['cross_modal/consistency']]
    """
    if isinstance(layer_names, str) or isinstance(bands, str):
        raise TypeError(
            f"`layer_names` and `bands` must be sequences of names, got {layer_names!r} and {bands!r}."
        )
    by_layer = {
        name: ["Multiline", [_regex_escape(safe_tag(eeg_prefix, name, "band")) + "/.*"]] for name in layer_names
    }
    by_band = {
        band: ["Multiline", [_regex_escape(safe_tag(eeg_prefix)) + "/.*/band/" + _regex_escape(safe_tag(band))]]
        for band in bands
    }
    layout: dict[str, dict[str, list[Any]]] = {}
    if by_layer:
        layout[f"{eeg_prefix} band power by layer"] = by_layer
    if by_band:
        layout[f"{eeg_prefix} band power by band"] = by_band
    keys = [_regex_escape(safe_tag(cross_modal_prefix, k)) for k in cross_modal_keys]
    if keys:
        cm = {cross_modal_keys[0]: ["Multiline", keys[:1]]}
        if len(keys) > 1:
            cm[" / ".join(cross_modal_keys[1:])] = ["Multiline", keys[1:]]
        layout[cross_modal_prefix] = cm
    return layout


def merge_layouts(*layouts: Mapping[str, Mapping[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
    """Merge custom-scalars layouts; later charts with the same category and title win.

    TensorBoard reads one layout per run, so callbacks that each want
    charts should merge them and write once.

    Example::

        >>> merge_layouts({"a": {"x": ["Multiline", ["x"]]}}, {"a": {"y": ["Multiline", ["y"]]}})
        {'a': {'x': ['Multiline', ['x']], 'y': ['Multiline', ['y']]}}
    """
    merged: dict[str, dict[str, list[Any]]] = {}
    for layout in layouts:
        for category, charts in layout.items():
            merged.setdefault(category, {}).update({title: list(c) for title, c in charts.items()})
    return merged


def write_custom_scalars(writer: Any, layout: Mapping[str, Mapping[str, list[Any]]]) -> bool:
    """Write a custom-scalars layout once per writer.

    TensorBoard's custom-scalars plugin reads a single layout per run, so a second call with the
    same writer is a no-op (returns ``False``); merge layouts with :func:`merge_layouts` first.

    Args:
        writer: A ``SummaryWriter``-like object with ``add_custom_scalars``.
        layout: ``{category: {chart title: ["Multiline" | "Margin", [regex, ...]]}}``.

    Returns:
        ``True`` if the layout was written, ``False`` if this writer already had one or the layout
        is empty.
    """
    if not layout or _layout_written(writer):
        return False
    writer.add_custom_scalars({k: dict(v) for k, v in layout.items()})
    try:
        _LAYOUT_WRITTEN.add(writer)
    except TypeError:  # a writer that takes no weak reference: write every time rather than never
        pass
    return True


def _layout_written(writer: Any) -> bool:
    try:
        return writer in _LAYOUT_WRITTEN
    except TypeError:
        return False


def write_stacked_spectrum(
    writer: Any,
    tag: str,
    freqs: Any,
    psd: Any,
    step: int,
    *,
    normalize: bool = False,
) -> bool:
    r"""Write a power spectrum as a histogram, which TensorBoard stacks over steps.

    Each frequency bin is a histogram bucket whose count is its power, so the Histograms tab draws
    one spectrum per step (offset over time) and the Distributions tab its percentiles. Bucket
    edges lie halfway between bin centres (first and last bins extend by half a spacing, not below
    0 Hz). Summary statistics treat power as weights:

    .. math:: n = \sum_k P_k,\quad \Sigma = \sum_k f_k P_k,\quad \Sigma_2 = \sum_k f_k^2 P_k

    and ``min``/``max`` are the outer edges of the first/last bins with positive power (TensorBoard
    drops empty end buckets and uses ``min``/``max`` as the outer edges). Non-finite or negative
    power is written as 0.

    A spectrum with no positive power (a dead layer, all NaN) has nothing to draw: TensorBoard
    converts it to an empty histogram, so it is not written and ``False`` is returned. Tiny powers
    (e.g. 1e-30) are written as they are; ``normalize=True`` writes relative power (fractions of
    the total) instead, so that spectra of very different magnitude stack on one scale.

    Args:
        writer: A ``SummaryWriter``-like object with ``add_histogram_raw``.
        tag: Tag, e.g. ``safe_tag("nn_eeg", layer, "spectrum")``.
        freqs: ``(F,)`` increasing bin centre frequencies in Hz.
        psd: ``(F,)`` power per bin.
        step: Global step.
        normalize: Write power as fractions of the total.

    Returns:
        ``True`` if written, ``False`` if the spectrum had no positive power.

    Raises:
        ValueError: If ``freqs``/``psd`` are not 1-D of the same length, or ``freqs`` is not
            strictly increasing and finite.
    """
    f = _to_numpy(freqs, "freqs")
    p = _to_numpy(psd, "psd")
    if f.ndim != 1 or p.shape != f.shape or f.size == 0:
        raise ValueError(
            f"`freqs` and `psd` must be 1-D with the same non-zero length, got shapes {f.shape} and {p.shape}."
        )
    if not np.all(np.isfinite(f)) or (f.size > 1 and not np.all(np.diff(f) > 0)):
        raise ValueError(f"`freqs` must be finite and strictly increasing, got {f!r}.")
    p = np.where(np.isfinite(p) & (p > 0), p, 0.0)
    total = float(p.sum())
    if not total > 0 or not np.isfinite(total):
        return False
    if normalize:
        p = p / total
        total = float(p.sum())
    half = np.diff(f) / 2 if f.size > 1 else np.array([0.5])
    right = np.concatenate([f[:-1] + half, [f[-1] + half[-1]]])  # (F,) upper edge of each bucket
    left = np.concatenate([[max(f[0] - half[0], 0.0) if f[0] >= 0 else f[0] - half[0]], right[:-1]])
    nonzero = np.flatnonzero(p > 0)
    writer.add_histogram_raw(
        tag,
        min=float(left[nonzero[0]]),
        max=float(right[nonzero[-1]]),
        num=total,
        sum=float((f * p).sum()),
        sum_squares=float((f * f * p).sum()),
        bucket_limits=right.tolist(),
        bucket_counts=p.tolist(),
        global_step=int(step),
    )
    return True


def _file_writer(writer: Any) -> Any:
    """The writer's public ``file_writer`` (``SummaryWriter`` sets it; ``None`` after ``close()``)."""
    return getattr(writer, "file_writer", None)


def write_figure(writer: Any, tag: str, fig: Any, step: int, *, png: bytes | None = None) -> None:
    """Render ``fig`` (a matplotlib figure, or an ``(H, W, 3)`` uint8 image) and write it as an image.

    Like ``writer.add_figure(tag, fig, step, close=True)`` but without pyplot (no interactive
    backend, nothing in pyplot's figure registry; a figure passed here is released afterwards) and
    with little memory: the PNG (``png``, when the caller already encoded the image, else Pillow's)
    goes into an image summary on the writer's public ``file_writer``, whereas ``add_image`` makes
    float32 copies of the image (12 bytes per pixel each). A writer without an open file writer
    gets ``add_image``.

    Example::

        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        >>> d = tempfile.mkdtemp()
        >>> with SummaryWriter(d) as w:
        ...     write_figure(w, "panel", np.zeros((20, 30, 3), dtype=np.uint8), step=2)
        >>> image = EventAccumulator(d).Reload().Images("panel")[0]
        >>> image.step, image.width, image.height
        (2, 30, 20)
    """
    from nn_neuroimaging_lightning.panels.rendering import release, render

    if isinstance(fig, np.ndarray) and png is not None:
        rgb = fig
    else:
        try:
            rendered = render(fig)
        finally:
            release(fig)
        rgb, png = rendered.rgb, rendered.png
    file_writer = _file_writer(writer)
    if file_writer is None:
        writer.add_image(tag, rgb, int(step), dataformats="HWC")
        return
    from tensorboard.compat.proto.summary_pb2 import Summary

    image = Summary.Image(height=rgb.shape[0], width=rgb.shape[1], colorspace=3, encoded_image_string=png)
    file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), int(step))


def format_cell(value: Any) -> str:
    """A table cell as text: floats with 4 significant digits, booleans yes/no, enums by value.

    Example::

        >>> format_cell(7.123456), format_cell(True), format_cell("a|b")
        ('7.123', 'yes', 'a|b')
    """
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    return str(value.value if isinstance(value, enum.Enum) else value)


def _cell(value: Any) -> str:
    text = format_cell(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table_text(rows: Iterable[Sequence[Any] | Mapping[str, Any]], header: Sequence[str]) -> str:
    """Markdown table for ``writer.add_text`` (anomaly events, the gamma-vs-zeta table).

    Floats are shown with 4 significant digits, booleans as yes/no, enums by value; ``|`` and line
    breaks inside cells are escaped. Rows may be sequences (in header order) or mappings (looked up
    by header name, missing keys left blank).

    Args:
        rows: The table rows.
        header: Column names.

    Returns:
        The markdown text; a table with no row gets a ``(none)`` line under it.

    Raises:
        ValueError: If ``header`` is empty or a sequence row has a different length.

    Example::

        >>> print(table_text([(3, "train", "conv1", "explosion", 7.25)], ["step", "phase", "layer", "kind", "value"]))
        | step | phase | layer | kind | value |
        |---|---|---|---|---|
        | 3 | train | conv1 | explosion | 7.25 |
    """
    if isinstance(header, str) or not header:
        raise ValueError(f"`header` must be a non-empty sequence of column names, got {header!r}.")
    header = [str(h) for h in header]
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    n_rows = 0
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):
            cells = [_cell(row[h]) if h in row else "" for h in header]
        else:
            row = list(row)
            if len(row) != len(header):
                raise ValueError(f"`rows[{i}]` must have {len(header)} cells like `header`, got {len(row)}.")
            cells = [_cell(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
        n_rows += 1
    if n_rows == 0:
        lines.append("")
        lines.append("(none)")
    return "\n".join(lines)
