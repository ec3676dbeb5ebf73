r"""Report of a finished run: ``nn-neuroimaging report RUN_DIR [--html OUT.html]``.

Reads the run's TensorBoard event files with TensorBoard's own ``EventAccumulator`` (scalars, text
panels and, for the HTML page, the latest image of every figure) and the anomaly events in
``events.jsonl``, and summarises them: run summary, band powers per layer, state accuracy, zeta
per layer, tractography, cross-modal consistency and anomalies. Presentation only: no measure is
computed here, only the latest / min / max of what the callbacks logged:

.. math:: \text{latest} = v_{t^*},\ t^* = \max_t t;\qquad \min_t v_t,\ \max_t v_t \text{ over finite } v_t

Two renderings of the same sections: :func:`build_report` gives Markdown (tables and text, no
images); :func:`build_html_report` gives one self-contained HTML page (figures embedded as PNG data
URIs, inline CSS, no script, no external reference: it reads offline and can be mailed as it is).

Rules where the files are silent:

- A run is *monitored* when its event files hold any ``nn_eeg/``, ``nn_fmri/`` or ``cross_modal/``
  tag. The callbacks create ``events.jsonl`` with the first event, so a monitored run without the
  file had **0 events**; a run that is not monitored says "not recorded in this run".
- A run that ended in an exception (an ``exception`` event, phase ``error``, that NN-EEG records in
  ``on_exception``) is marked at the top of the summary with the step and the exception's text.

TensorBoard is imported inside the functions that read a run, so importing this module stays cheap.
"""

from __future__ import annotations

import base64
import glob
import html
import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from nn_neuroimaging_lightning.panels.tensorboard import CROSS_MODAL_KEYS, format_cell, table_text

__all__ = ["build_html_report", "build_report", "EVENT_FILE_PATTERN", "NOT_RECORDED", "write_html_report"]

#: Glob of TensorBoard event files inside a run directory.
EVENT_FILE_PATTERN = "events.out.tfevents.*"
#: What a section says when the run has no data for it.
NOT_RECORDED = "not recorded in this run"

_EVENTS_JSONL = "events.jsonl"  # same name as events.EVENTS_FILENAME
_LIGHTNING_SUFFIX = re.compile(r"_(step|epoch)$")
_TEXT_SUFFIX = "/text_summary"  # torch's SummaryWriter.add_text appends it to the tag
_BAND_TAG = re.compile(r"^nn_eeg/(?P<layer>.+)/band/(?P<band>[^/]+)$")
_ZETA_MAX_TAG = re.compile(r"^nn_fmri/(?P<layer>.+)/zeta_max$")
_ZETA_TOP_TAG = re.compile(r"^nn_fmri/(?P<layer>.+)/zeta_top$")
_TRACT_TAG = re.compile(r"^nn_fmri/tract/(?P<pair>[^/]+)$")
_TRACT_TEXT_TAG = re.compile(r"^nn_fmri/tract/(?P<pair>[^/]+)/pathways$")
_MONITOR_PREFIXES = ("nn_eeg/", "nn_fmri/", "cross_modal/")
_BAND_ORDER = ("delta", "theta", "alpha", "beta", "gamma")
_EVENT_COLUMNS = ("step", "phase", "layer", "kind", "value", "source", "detail")
_MAX_EVENTS_SHOWN = 20  # Markdown
_MAX_EVENTS_HTML = 1000

# (step, wall_time, value), oldest first
_Series = List[Tuple[int, float, float]]


# ------------------------------------------------------------------ what a run holds


@dataclass
class _Image:
    tag: str
    step: int
    png: bytes
    width: int
    height: int


@dataclass
class _Run:
    run_dir: str
    files: List[str]
    scalars: Dict[str, _Series]
    texts: Dict[str, str]
    images: Dict[str, _Image]
    events: List[Dict[str, Any]]
    bad_lines: int
    has_events_file: bool
    monitored: bool = field(init=False)

    def __post_init__(self) -> None:
        tags = list(self.scalars) + list(self.texts) + list(self.images)
        self.monitored = any(t.startswith(_MONITOR_PREFIXES) for t in tags)


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


def _load_images(acc: Any) -> Dict[str, _Image]:
    """The latest image of every image tag (the accumulator keeps one per tag: the last)."""
    images: Dict[str, _Image] = {}
    for tag in sorted(acc.Tags().get("images", [])):
        events = acc.Images(tag)
        if events:
            e = max(events, key=lambda ev: (ev.step, ev.wall_time))
            images[tag] = _Image(tag, int(e.step), bytes(e.encoded_image_string), int(e.width), int(e.height))
    return images


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


def _check_run_dir(run_dir: Any) -> Tuple[str, List[str]]:
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
    return run_dir, files


def _load_run(run_dir: Any, images: bool) -> _Run:
    run_dir, files = _check_run_dir(run_dir)
    from tensorboard.backend.event_processing.event_accumulator import (
        IMAGES,
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    # size_guidance 0 = keep every point (TensorBoard's default samples scalars down to 10,000);
    # images: 1 = the latest per tag (the reservoir always keeps the last item), 0 when not needed
    acc = EventAccumulator(run_dir, size_guidance={SCALARS: 0, TENSORS: 0, IMAGES: 1 if images else 0})
    acc.Reload()
    jsonl = os.path.join(run_dir, _EVENTS_JSONL)
    has_file = os.path.isfile(jsonl)
    events, bad_lines = _read_events(jsonl) if has_file else ([], 0)
    return _Run(os.path.abspath(run_dir), files, _load_scalars(acc), _load_texts(acc),
                _load_images(acc) if images else {}, events, bad_lines, has_file)


# ------------------------------------------------------------------ sections as blocks

# A section is a list of blocks, rendered as Markdown or HTML:
#   ("p", text)                  a paragraph
#   ("alert", text)              a highlighted paragraph (the run ended in an exception)
#   ("table", header, rows)      a table
#   ("md", markdown)             a text panel as the callbacks wrote it (Markdown tables and lines)
#   ("h3", title)                a sub-heading
#   ("figures", [_Image, ...])   figures (HTML only)
_Block = Tuple[Any, ...]


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


def _figures(run: _Run, *patterns: str) -> List[_Block]:
    shown = [img for p in patterns for tag, img in run.images.items() if re.search(p, tag)]  # in pattern order
    return [("figures", shown)] if shown else []


def _exception(run: _Run) -> Optional[Dict[str, Any]]:
    return next((e for e in run.events if e.get("kind") == "exception"), None)


def _summary(run: _Run) -> List[_Block]:
    all_points = [p for points in run.scalars.values() for p in points]
    rows: List[Tuple[str, Any]] = [("run directory", run.run_dir), ("event files", len(run.files))]
    if all_points:
        rows.append(("last step", max(p[0] for p in all_points)))
        wall = [p[1] for p in all_points]
        rows.append(("logged span (s)", max(wall) - min(wall)))
    else:
        rows.append(("last step", NOT_RECORDED))
    if "epoch" in run.scalars:
        rows.append(("epochs", int(_nan_max(run.scalars["epoch"])) + 1))
    for key in ("train_loss", "val_loss", "val_acc"):
        rows.append((key, _latest(run.scalars[key]) if key in run.scalars else NOT_RECORDED))
    rows.append(("anomaly events", len(run.events) if run.has_events_file or run.monitored else NOT_RECORDED))
    blocks: List[_Block] = []
    crash = _exception(run)
    if crash is not None:
        text = f"This run ended in an exception at step {crash.get('step', '?')} (phase {crash.get('phase', 'error')})"
        detail = str(crash.get("detail", "")).strip()
        blocks.append(("alert", text + (f": {detail}" if detail else ".")))
        rows.append(("ended by", f"exception at step {crash.get('step', '?')}"))
    blocks.append(("table", ("measure", "value"), rows))
    return blocks


def _band_powers(run: _Run) -> List[_Block]:
    table: Dict[str, Dict[str, float]] = {}  # layer -> band -> latest
    for tag, points in run.scalars.items():
        match = _BAND_TAG.match(tag)
        if match and points:
            table.setdefault(match["layer"], {})[match["band"]] = _latest(points)
    blocks: List[_Block] = []
    if table:
        bands = sorted({b for row in table.values() for b in row}, key=_band_key)
        rows = [[layer] + [row.get(b, "") for b in bands] for layer, row in table.items()]
        blocks += [("p", "Latest relative band power (fraction of the layer's in-band power) per tapped layer."),
                   ("table", ["layer"] + bands, rows)]
    return blocks + _figures(run, r"^nn_eeg/spectrum$", r"^nn_eeg/.+/spectrogram$", r"^nn_eeg/phase_timeline$")


def _state_accuracy(run: _Run) -> List[_Block]:
    points = run.scalars.get("nn_eeg/state_accuracy")
    if not points:
        return []
    return [("table", ("latest", "max", "step"), [(_latest(points), _nan_max(points), points[-1][0])])]


def _zeta(run: _Run) -> List[_Block]:
    layers: Dict[str, Optional[_Series]] = {}
    for tag, points in run.scalars.items():
        match = _ZETA_MAX_TAG.match(tag)
        if match and points:
            layers[match["layer"]] = points
    tops: Dict[str, str] = {}
    for tag, text in run.texts.items():
        match = _ZETA_TOP_TAG.match(tag)
        if match:
            tops[match["layer"]] = text
            layers.setdefault(match["layer"], None)
    blocks: List[_Block] = []
    if layers:
        rows = [
            (layer, _latest(p), _nan_max(p), p[-1][0]) if p else (layer, NOT_RECORDED, "", "")
            for layer, p in layers.items()
        ]
        blocks.append(("table", ("layer", "zeta_max (latest)", "zeta_max (max)", "step"), rows))
        for layer in layers:
            if layer in tops:
                blocks += [("h3", f"Top regions: {layer}"), ("md", tops[layer].strip())]
    return blocks + _figures(run, r"^nn_fmri/.+/zeta$", r"^nn_fmri/.+/density$")


def _tractography(run: _Run) -> List[_Block]:
    blocks: List[_Block] = []
    pairs = sorted({m["pair"] for m in (_TRACT_TEXT_TAG.match(t) for t in run.texts) if m}
                   | {m["pair"] for m in (_TRACT_TAG.match(t) for t in run.images) if m})
    for pair in pairs:
        blocks.append(("h3", pair.replace("__", " -> ")))
        blocks += _figures(run, rf"^nn_fmri/tract/{re.escape(pair)}$")
        text = run.texts.get(f"nn_fmri/tract/{pair}/pathways")
        if text:
            blocks.append(("md", text.strip()))
    if "nn_fmri/path_strength" in run.texts:
        blocks += [("h3", "Path strength through the network"), ("md", run.texts["nn_fmri/path_strength"].strip())]
    return blocks


def _cross_modal(run: _Run) -> List[_Block]:
    rows = []
    for key in CROSS_MODAL_KEYS:
        points = run.scalars.get(f"cross_modal/{key}")
        if points:
            rows.append((key, _latest(points), _nan_min(points), _nan_max(points), points[-1][0]))
    blocks: List[_Block] = [("table", ("measure", "latest", "min", "max", "step"), rows)] if rows else []
    blocks += _figures(run, r"^cross_modal/consistency_history$")
    if "cross_modal/gamma_vs_zeta" in run.texts:
        blocks += [("h3", "EEG gamma vs fMRI zeta per layer"), ("md", run.texts["cross_modal/gamma_vs_zeta"].strip())]
    return blocks


def _anomalies(run: _Run, max_shown: int) -> List[_Block]:
    if not run.has_events_file:
        if not run.monitored:
            return []
        return [("p", f"0 events (no {_EVENTS_JSONL} in the run directory: the callbacks create it with the first event).")]
    blocks: List[_Block] = []
    if run.bad_lines:
        blocks.append(("p", f"{run.bad_lines} malformed line(s) in {_EVENTS_JSONL} skipped."))
    events = run.events
    if not events:
        return blocks + [("p", f"0 events in {_EVENTS_JSONL}.")]
    by_kind = Counter(str(e.get("kind", "")) for e in events)
    by_layer = Counter(str(e.get("layer", "")) for e in events)
    blocks.append(("p", f"{len(events)} event(s) in {_EVENTS_JSONL}."))
    blocks += [("h3", "By kind"), ("table", ("kind", "count"), by_kind.most_common())]
    blocks += [("h3", "By layer"), ("table", ("layer", "count"), by_layer.most_common())]
    shown = events[:max_shown]
    blocks += [("h3", f"First {len(shown)} events" if len(events) > len(shown) else "Events"),
               ("table", _EVENT_COLUMNS, [[e.get(c, "") for c in _EVENT_COLUMNS] for e in shown])]
    return blocks


def _sections(run: _Run, max_events: int) -> List[Tuple[str, List[_Block]]]:
    return [
        ("Run summary", _summary(run)),
        ("Band powers per layer", _band_powers(run)),
        ("State accuracy (nn_eeg/state_accuracy)", _state_accuracy(run)),
        ("Zeta per layer (nn_fmri)", _zeta(run)),
        ("Tractography (nn_fmri/tract)", _tractography(run)),
        ("Cross-modal consistency", _cross_modal(run)),
        ("Anomalies", _anomalies(run, max_events)),
    ]


def _title(run: _Run) -> str:
    return os.path.basename(os.path.normpath(run.run_dir)) or run.run_dir


# ------------------------------------------------------------------ Markdown


def _markdown(blocks: Sequence[_Block]) -> str:
    parts: List[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "p":
            parts.append(block[1])
        elif kind == "alert":
            parts.append(f"**{block[1]}**")
        elif kind == "table":
            parts.append(table_text(block[2], block[1]))
        elif kind == "md":
            parts.append(block[1])
        elif kind == "h3":
            parts.append(f"### {block[1]}")
    return "\n\n".join(parts)


def build_report(run_dir: Union[str, "os.PathLike[str]"]) -> str:
    r"""Markdown report of a finished run, from its TensorBoard event files and ``events.jsonl``.

    Sections: run summary (last step, epochs, last ``train_loss`` / ``val_loss`` / ``val_acc``, the
    number of anomaly events; a bold line first when the run ended in an exception); latest
    relative band power per layer and band (``nn_eeg/<layer>/band/<band>``); state accuracy
    (latest and max of ``nn_eeg/state_accuracy``); zeta per layer (latest and max of
    ``nn_fmri/<layer>/zeta_max`` and, when logged, the ``nn_fmri/<layer>/zeta_top`` text table
    verbatim); tractography (the ``nn_fmri/tract/<a>__<b>/pathways`` tables and the path
    strength); cross-modal scores (latest, min, max of ``cross_modal/{consistency,rho,agreement,
    coherence}`` and the gamma-vs-zeta table); anomalies (counts by kind and layer, the first 20
    events; "0 events" for a monitored run without ``events.jsonl``, see the module docstring).
    Lightning's ``_step``/``_epoch`` tag suffixes are merged into one series per measure, ordered
    by step. A section with no data says "not recorded in this run". Figures are in the HTML
    report (:func:`build_html_report`).

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
        >>> "| conv1 | 0.25 |" in report, "0 events" in report
        (True, True)
    """
    run = _load_run(run_dir, images=False)
    out = [f"# Run report: {_title(run)}\n"]
    for title, blocks in _sections(run, _MAX_EVENTS_SHOWN):
        body = _markdown(blocks).strip()
        out.append(f"## {title}\n\n{body if body else NOT_RECORDED + '.'}\n")
    return "\n".join(out)


# ------------------------------------------------------------------ HTML

_CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1b1b1b;
       margin: 0 auto; max-width: 1400px; padding: 0 24px 48px; }
h1 { font-size: 26px; margin: 24px 0 4px; } h2 { font-size: 21px; border-bottom: 1px solid #ccc; padding-bottom: 4px;
       margin-top: 36px; } h3 { font-size: 17px; margin: 20px 0 8px; }
.meta { color: #555; margin: 0 0 12px; } nav a { margin-right: 14px; white-space: nowrap; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; } th, td { border: 1px solid #d0d0d0;
       padding: 3px 8px; text-align: left; vertical-align: top; } th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .muted { color: #666; }
.alert { background: #fde8e4; border-left: 5px solid #D55E00; padding: 8px 12px; font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; } figure { margin: 0; } figure img { display: block;
       max-width: 100%; height: auto; border: 1px solid #e2e2e2; } figcaption { font-size: 13px; color: #555; }
"""

_UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _cell_html(value: Any) -> str:
    text = format_cell(value)
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>"


def _table_html(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell_html(c) for c in row) + "</tr>" for row in rows)
    if not rows:
        body = f'<tr><td colspan="{len(header)}" class="muted">(none)</td></tr>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_cells(line: str) -> List[str]:
    cells = _UNESCAPED_PIPE.split(line.strip())[1:-1]
    return [c.strip().replace("\\|", "|").replace("\\\\", "\\") for c in cells]


def _markdown_html(text: str) -> str:
    """A text panel (Markdown tables as :func:`table_text` writes them, and plain lines) as HTML."""
    out: List[str] = []
    for chunk in re.split(r"\n\s*\n", text.strip()):
        lines = [line for line in chunk.splitlines() if line.strip()]
        if lines and all(line.lstrip().startswith("|") for line in lines):
            header = _md_cells(lines[0])
            rows = [_md_cells(line) for line in lines[1:] if not re.fullmatch(r"\|(\s*-+\s*\|)+", line.strip())]
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
            out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif lines:
            out.append("<p>" + "<br>".join(html.escape(line) for line in lines) + "</p>")
    return "\n".join(out)


def _figures_html(images: Sequence[_Image]) -> str:
    items = []
    for img in images:
        data = base64.b64encode(img.png).decode("ascii")
        items.append(
            f'<figure><img src="data:image/png;base64,{data}" width="{img.width}" height="{img.height}" '
            f'alt="{html.escape(img.tag)}"><figcaption>{html.escape(img.tag)} · step {img.step}</figcaption></figure>'
        )
    return '<div class="figures">' + "".join(items) + "</div>"


def _html(blocks: Sequence[_Block]) -> str:
    parts: List[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "alert":
            parts.append(f'<p class="alert">{html.escape(block[1])}</p>')
        elif kind == "table":
            parts.append(_table_html(block[1], block[2]))
        elif kind == "md":
            parts.append(_markdown_html(block[1]))
        elif kind == "h3":
            parts.append(f"<h3>{html.escape(block[1])}</h3>")
        elif kind == "figures":
            parts.append(_figures_html(block[1]))
    return "\n".join(parts)


def build_html_report(run_dir: Union[str, "os.PathLike[str]"]) -> str:
    """One self-contained HTML page of a finished run: the Markdown report's sections plus the figures.

    Every section of :func:`build_report`, with the latest image of each figure the callbacks
    logged next to its numbers (spectrum, spectrograms and phase timeline with the band powers;
    zeta maps (significance as dots) and density maps with the zeta table; tractography matrices with their
    pathways; the consistency history with the cross-modal scores) and the events table (up to
    1,000 events). Figures are embedded as ``data:image/png;base64`` URIs, the style is inline,
    there is no script and no reference outside the page: it reads offline, from a mail or a
    shared drive. Its size is about the figures' PNG bytes times 4/3.

    Args:
        run_dir: The run directory (see :func:`build_report`).

    Returns:
        The HTML document.

    Raises:
        TypeError, FileNotFoundError, NotADirectoryError: as :func:`build_report`.

    Example::

        >>> import tempfile
        >>> from torch.utils.tensorboard import SummaryWriter
        >>> run = tempfile.mkdtemp()
        >>> with SummaryWriter(run) as writer:
        ...     writer.add_scalar("cross_modal/consistency", 0.75, 10)
        >>> page = build_html_report(run)
        >>> page.startswith("<!DOCTYPE html>"), "<script" in page
        (True, False)
    """
    run = _load_run(run_dir, images=True)
    sections = _sections(run, _MAX_EVENTS_HTML)
    name = html.escape(_title(run))
    nav = " ".join(f'<a href="#s{i}">{html.escape(title)}</a>' for i, (title, _) in enumerate(sections))
    body = []
    for i, (title, blocks) in enumerate(sections):
        inner = _html(blocks) if blocks else f'<p class="muted">{NOT_RECORDED}.</p>'
        body.append(f'<section id="s{i}"><h2>{html.escape(title)}</h2>\n{inner}\n</section>')
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Run report: {name}</title>"
        f"<style>{_CSS}</style></head>\n<body>\n<h1>Run report: {name}</h1>\n"
        f'<p class="meta">{html.escape(run.run_dir)} · {len(run.images)} figures · nn_neuroimaging_lightning</p>\n'
        f"<nav>{nav}</nav>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def write_html_report(run_dir: Union[str, "os.PathLike[str]"], out: Union[str, "os.PathLike[str]"]) -> str:
    """Write :func:`build_html_report` of ``run_dir`` to ``out`` (parent folders created); returns its absolute path."""
    page = build_html_report(run_dir)
    path = os.path.abspath(os.fspath(out))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path
