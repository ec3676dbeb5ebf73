"""Markdown report of a finished run: ``nn-neuroimaging report RUN_DIR``.

Reads the run's TensorBoard event files with TensorBoard's own ``EventAccumulator`` (scalars and
text panels) and the anomaly events in ``events.jsonl``, and summarises them as Markdown: run
summary, band powers per layer, state accuracy, zeta per layer, cross-modal consistency and
anomalies. Presentation only: no measure is computed here, only the latest / min / max of what the
callbacks logged. TensorBoard is imported inside :func:`build_report`, so importing this module
stays cheap.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from nn_neuroimaging_lightning.panels.tensorboard import CROSS_MODAL_KEYS, table_text

__all__ = ["build_report", "EVENT_FILE_PATTERN", "NOT_RECORDED"]

#: Glob of TensorBoard event files inside a run directory.
EVENT_FILE_PATTERN = "events.out.tfevents.*"
#: What a section says when the run has no data for it.
NOT_RECORDED = "not recorded in this run"

_EVENTS_JSONL = "events.jsonl"  # same name as callbacks._base.EVENTS_FILENAME (not imported: it pulls torch)
_LIGHTNING_SUFFIX = re.compile(r"_(step|epoch)$")
_TEXT_SUFFIX = "/text_summary"  # torch's SummaryWriter.add_text appends it to the tag
_BAND_TAG = re.compile(r"^nn_eeg/(?P<layer>.+)/band/(?P<band>[^/]+)$")
_ZETA_MAX_TAG = re.compile(r"^nn_fmri/(?P<layer>.+)/zeta_max$")
_ZETA_TOP_TAG = re.compile(r"^nn_fmri/(?P<layer>.+)/zeta_top$")
_BAND_ORDER = ("delta", "theta", "alpha", "beta", "gamma")
_EVENT_COLUMNS = ("step", "phase", "layer", "kind", "value", "source", "detail")
_MAX_EVENTS_SHOWN = 20

# (step, wall_time, value), oldest first
_Series = List[Tuple[int, float, float]]


def _base_tag(tag: str) -> str:
    return _LIGHTNING_SUFFIX.sub("", tag)


def _load_scalars(acc: Any) -> Dict[str, _Series]:
    """Scalars by tag with Lightning's ``_step``/``_epoch`` suffixes merged, ordered by step then time."""
    series: Dict[str, _Series] = {}
    for tag in acc.Tags().get("scalars", []):
        points = series.setdefault(_base_tag(tag), [])
        points.extend((int(e.step), float(e.wall_time), float(e.value)) for e in acc.Scalars(tag))
    for points in series.values():
        points.sort(key=lambda p: (p[0], p[1]))
    return series


def _load_texts(acc: Any) -> Dict[str, str]:
    """Latest text of every text panel, keyed by the tag given to ``add_text``."""
    texts: Dict[str, str] = {}
    for tag in acc.Tags().get("tensors", []):
        try:
            plugin = acc.SummaryMetadata(tag).plugin_data.plugin_name
        except (KeyError, AttributeError):  # pragma: no cover - metadata always present for tensors
            plugin = ""
        if plugin != "text":
            continue
        events = sorted(acc.Tensors(tag), key=lambda e: (e.step, e.wall_time))
        if not events:
            continue
        proto = events[-1].tensor_proto
        if not proto.string_val:
            continue
        key = tag[: -len(_TEXT_SUFFIX)] if tag.endswith(_TEXT_SUFFIX) else tag
        texts[key] = "\n".join(v.decode("utf-8", errors="replace") for v in proto.string_val)
    return texts


def _read_events(path: str) -> Tuple[List[Dict[str, Any]], int]:
    """Anomaly events from ``events.jsonl`` (value ``"nan"``/``"inf"`` strings become floats)."""
    events: List[Dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(event, dict):
                bad += 1
                continue
            value = event.get("value")
            if isinstance(value, str):
                try:
                    event["value"] = float(value)  # "nan", "inf", "-inf"
                except ValueError:
                    pass
            events.append(event)
    return events, bad


def _latest(points: _Series) -> float:
    return points[-1][2]


def _finite(points: _Series) -> List[float]:
    return [v for _, _, v in points if math.isfinite(v)]


def _nan_min(points: _Series) -> float:
    vals = _finite(points)
    return min(vals) if vals else float("nan")


def _nan_max(points: _Series) -> float:
    vals = _finite(points)
    return max(vals) if vals else float("nan")


def _band_key(band: str) -> Tuple[int, str]:
    return (_BAND_ORDER.index(band), "") if band in _BAND_ORDER else (len(_BAND_ORDER), band)


def _section(title: str, body: str) -> str:
    return f"## {title}\n\n{body.strip() if body.strip() else NOT_RECORDED + '.'}\n"


def _summary(run_dir: str, files: Sequence[str], scalars: Mapping[str, _Series], n_events: int) -> str:
    all_points = [p for points in scalars.values() for p in points]
    rows: List[Tuple[str, Any]] = [("run directory", run_dir), ("event files", len(files))]
    if all_points:
        rows.append(("last step", max(p[0] for p in all_points)))
        wall = [p[1] for p in all_points]
        rows.append(("logged span (s)", max(wall) - min(wall)))
    else:
        rows.append(("last step", NOT_RECORDED))
    if "epoch" in scalars:
        rows.append(("epochs", int(_nan_max(scalars["epoch"])) + 1))
    for key in ("train_loss", "val_loss", "val_acc"):
        rows.append((key, _latest(scalars[key]) if key in scalars else NOT_RECORDED))
    rows.append(("anomaly events", n_events))
    return table_text(rows, ("measure", "value"))


def _band_powers(scalars: Mapping[str, _Series]) -> str:
    table: Dict[str, Dict[str, float]] = {}  # layer -> band -> latest
    for tag, points in scalars.items():
        match = _BAND_TAG.match(tag)
        if match and points:
            table.setdefault(match["layer"], {})[match["band"]] = _latest(points)
    if not table:
        return ""
    bands = sorted({b for row in table.values() for b in row}, key=_band_key)
    rows = [[layer] + [row.get(b, "") for b in bands] for layer, row in table.items()]
    return (
        "Latest relative band power (fraction of the layer's in-band power) per tapped layer.\n\n"
        + table_text(rows, ["layer"] + bands)
    )


def _state_accuracy(scalars: Mapping[str, _Series]) -> str:
    points = scalars.get("nn_eeg/state_accuracy")
    if not points:
        return ""
    return table_text([(_latest(points), _nan_max(points), points[-1][0])], ("latest", "max", "step"))


def _zeta(scalars: Mapping[str, _Series], texts: Mapping[str, str]) -> str:
    layers: Dict[str, Optional[_Series]] = {}
    for tag, points in scalars.items():
        match = _ZETA_MAX_TAG.match(tag)
        if match and points:
            layers[match["layer"]] = points
    tops: Dict[str, str] = {}
    for tag, text in texts.items():
        match = _ZETA_TOP_TAG.match(tag)
        if match:
            tops[match["layer"]] = text
            layers.setdefault(match["layer"], None)
    if not layers:
        return ""
    parts: List[str] = []
    rows = [
        (layer, _latest(p), _nan_max(p), p[-1][0]) if p else (layer, NOT_RECORDED, "", "")
        for layer, p in layers.items()
    ]
    parts.append(table_text(rows, ("layer", "zeta_max (latest)", "zeta_max (max)", "step")))
    for layer in layers:
        if layer in tops:
            parts.append(f"### Top regions: {layer}\n\n{tops[layer].strip()}")
    return "\n\n".join(parts)


def _cross_modal(scalars: Mapping[str, _Series]) -> str:
    rows = []
    for key in CROSS_MODAL_KEYS:
        points = scalars.get(f"cross_modal/{key}")
        if points:
            rows.append((key, _latest(points), _nan_min(points), _nan_max(points), points[-1][0]))
    return table_text(rows, ("measure", "latest", "min", "max", "step")) if rows else ""


def _anomalies(events: Sequence[Mapping[str, Any]], bad_lines: int, path: Optional[str]) -> str:
    if path is None:
        return ""
    parts: List[str] = []
    if bad_lines:
        parts.append(f"{bad_lines} malformed line(s) in {_EVENTS_JSONL} skipped.")
    if not events:
        parts.append(f"No anomaly events in {_EVENTS_JSONL}.")
        return "\n\n".join(parts)
    by_kind = Counter(str(e.get("kind", "")) for e in events)
    by_layer = Counter(str(e.get("layer", "")) for e in events)
    parts.append(f"{len(events)} event(s) in {_EVENTS_JSONL}.")
    parts.append("### By kind\n\n" + table_text(by_kind.most_common(), ("kind", "count")))
    parts.append("### By layer\n\n" + table_text(by_layer.most_common(), ("layer", "count")))
    shown = events[:_MAX_EVENTS_SHOWN]
    title = f"### First {len(shown)} events" if len(events) > len(shown) else "### Events"
    parts.append(title + "\n\n" + table_text(shown, _EVENT_COLUMNS))
    return "\n\n".join(parts)


def build_report(run_dir: Union[str, "os.PathLike[str]"]) -> str:
    r"""Markdown report of a finished run, from its TensorBoard event files and ``events.jsonl``.

    Sections: run summary (last step, epochs, last ``train_loss`` / ``val_loss`` / ``val_acc``);
    latest relative band power per layer and band (``nn_eeg/<layer>/band/<band>``); state accuracy
    (latest and max of ``nn_eeg/state_accuracy``); zeta per layer (latest and max of
    ``nn_fmri/<layer>/zeta_max`` and, when logged, the ``nn_fmri/<layer>/zeta_top`` text table
    verbatim); cross-modal scores (latest, min, max of ``cross_modal/{consistency,rho,agreement,
    coherence}``); anomalies (counts by kind and layer, the first 20 events). Lightning's
    ``_step``/``_epoch`` tag suffixes are merged into one series per measure, ordered by step. A
    section with no data says "not recorded in this run". No measure is computed: values are the
    latest logged, and min / max over logged points:

    .. math:: \text{latest} = v_{t^*},\ t^* = \max_t t;\qquad \min_t v_t,\ \max_t v_t \text{ over finite } v_t

    Args:
        run_dir: The run directory, the one holding ``events.out.tfevents.*`` (and ``events.jsonl``
            when anomalies were recorded), e.g. ``runs/demo/version_0``.

    Returns:
        The report as Markdown text.

    Raises:
        TypeError: If ``run_dir`` is not a path.
        FileNotFoundError: If ``run_dir`` does not exist or holds no TensorBoard event file.
        NotADirectoryError: If ``run_dir`` is a file.

    Example::

        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> run = tempfile.mkdtemp()
        >>> with SummaryWriter(run) as writer:
        ...     writer.add_scalar("nn_eeg/conv1/band/gamma_step", 0.25, 10)
        >>> report = build_report(run)
        >>> "| conv1 | 0.25 |" in report
        True
    """
    if not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"`run_dir` must be a path (str or os.PathLike), got {type(run_dir).__name__}.")
    run_dir = os.fspath(run_dir)
    if not os.path.exists(run_dir):
        raise FileNotFoundError(
            f"`run_dir` {run_dir!r} does not exist; expected a run directory holding TensorBoard event "
            f"files ({EVENT_FILE_PATTERN}) and optionally {_EVENTS_JSONL}."
        )
    if not os.path.isdir(run_dir):
        raise NotADirectoryError(f"`run_dir` {run_dir!r} is a file; pass the directory that holds it.")
    files = sorted(glob.glob(os.path.join(glob.escape(run_dir), EVENT_FILE_PATTERN)))
    if not files:
        nested = sorted(
            {os.path.dirname(p) for p in glob.glob(os.path.join(glob.escape(run_dir), "**", EVENT_FILE_PATTERN), recursive=True)}
        )
        hint = f" Runs found below it: {', '.join(nested[:5])}{' ...' if len(nested) > 5 else ''}." if nested else ""
        raise FileNotFoundError(
            f"`run_dir` {run_dir!r} holds no TensorBoard event file ({EVENT_FILE_PATTERN}).{hint}"
        )

    from tensorboard.backend.event_processing.event_accumulator import (
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    # size_guidance 0 = keep every point (TensorBoard's default samples scalars down to 10,000)
    acc = EventAccumulator(run_dir, size_guidance={SCALARS: 0, TENSORS: 0})
    acc.Reload()
    scalars = _load_scalars(acc)
    texts = _load_texts(acc)

    jsonl = os.path.join(run_dir, _EVENTS_JSONL)
    events, bad_lines = _read_events(jsonl) if os.path.isfile(jsonl) else ([], 0)

    name = os.path.basename(os.path.normpath(run_dir)) or run_dir
    sections = [
        f"# Run report: {name}\n",
        _section("Run summary", _summary(os.path.abspath(run_dir), files, scalars, len(events))),
        _section("Band powers per layer", _band_powers(scalars)),
        _section("State accuracy (nn_eeg/state_accuracy)", _state_accuracy(scalars)),
        _section("Zeta per layer (nn_fmri)", _zeta(scalars, texts)),
        _section("Cross-modal consistency", _cross_modal(scalars)),
        _section("Anomalies", _anomalies(events, bad_lines, jsonl if os.path.isfile(jsonl) else None)),
    ]
    return "\n".join(sections)
