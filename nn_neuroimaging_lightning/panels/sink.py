"""Where rich panels go: one :class:`PanelSink` fans figures, tables and spectra out to the loggers.

The callbacks never talk to a logger's experiment object themselves: each holds the sink of its
trainer's loggers (``MonitorCallback._panels``: ``None`` when no logger takes panels, or off rank
zero) and hands it values that are already computed. Each supported logger gets a small writer that
knows how that logger stores an image, a table, a text and a spectrum, through its public API:

==================  ============================  ======================  ===========================
logger              figures                       tables / text           spectra, layout
==================  ============================  ======================  ===========================
TensorBoardLogger   image summaries (PNG)         Markdown text panels    stacked histogram; custom
                                                                          scalars layout
WandbLogger         ``log_image``                 ``log_table`` /         ``wandb.Histogram`` /
                                                  ``log_text``            (none)
MLFlowLogger        ``log_image(key=, step=)``    CSV / Markdown          (none)
                    (MLflow's image step slider)  artifacts under
                                                  ``panels/<tag>/``
CSVLogger           ``<log_dir>/panels/<tag>/     ``step_<step>.csv`` /   one CSV per spectrum tag:
                    step_<step>.png``             ``.md`` beside them     a row per step
==================  ============================  ======================  ===========================

A figure is rendered once (:func:`~nn_neuroimaging_lightning.panels.rendering.render`) for all
writers and released. A :class:`~nn_neuroimaging_lightning.panels.worker.Drawing` (what the
callbacks hand over) is drawn by the renderer process instead and written when its pixels come
back, under its own step; :meth:`PanelSink.wait` waits for those still being drawn (the callbacks
call it at ``teardown`` and on an exception). Several loggers each get their share; a logger without a writer gets the
scalars Lightning sends it and nothing else (one notice per logger class). A writer whose logger
raises (a full disk, a closed run) is dropped with one warning naming the logger and the error: a
panel never ends the user's fit.

Example::

    >>> import tempfile
    >>> from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    >>> root = tempfile.mkdtemp()
    >>> sink = PanelSink([TensorBoardLogger(root, name="tb"), CSVLogger(root, name="csv")])
    >>> bool(sink), sink.kinds
    (True, ['TensorBoardLogger', 'CSVLogger'])
    >>> sink.table("nn_eeg/events", ("step", "kind"), [(3, "explosion")], step=3)
    >>> sink.flush()
    >>> open(f"{root}/csv/version_0/panels/nn_eeg/events/step_000003.csv").read().splitlines()
    ['step,kind', '3,explosion']
"""

from __future__ import annotations

import collections
import csv
import enum
import io
import os
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Set

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from nn_neuroimaging_lightning.panels.rendering import Rendered, release, render
from nn_neuroimaging_lightning.panels.worker import WAIT_S, Drawing, FigureWorker, _drawn, draw, shared_worker
from nn_neuroimaging_lightning.panels.tensorboard import (
    safe_tag,
    table_text,
    write_custom_scalars,
    write_figure,
    write_stacked_spectrum,
)

__all__ = [
    "CSVPanels",
    "MLflowPanels",
    "PanelSink",
    "SUPPORTED_LOGGERS",
    "TensorBoardPanels",
    "WandbPanels",
    "plain_cell",
]

#: Loggers that get panels (class names in ``lightning.pytorch.loggers``).
SUPPORTED_LOGGERS = ("TensorBoardLogger", "WandbLogger", "MLFlowLogger", "CSVLogger")

_noticed_skipped: Set[str] = set()  # logger classes already named in a "scalars only" notice
_noticed_inline: Set[str] = set()  # reasons already given for drawing figures in the training thread


def plain_cell(value: Any) -> Any:
    """A table cell as a plain Python value (int, float, bool, str) for JSON / CSV writers.

    Tensors and numpy scalars become Python numbers (a tensor with several elements a list),
    enums their value, anything else its ``str``.

    Example::

        >>> plain_cell(np.float32(0.5)), plain_cell(np.int64(3)), plain_cell((1, 2))
        (0.5, 3, '(1, 2)')
    """
    if hasattr(value, "detach"):
        value = value.detach().cpu()
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _step_name(step: int) -> str:
    return f"step_{int(step):06d}"


def _csv_text(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    out.writerow([str(h) for h in header])
    out.writerows([[plain_cell(c) for c in row] for row in rows])
    return buf.getvalue()


class TensorBoardPanels:
    """Panels for a ``TensorBoardLogger``: images, Markdown text, stacked-spectrum histograms, layout."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._layout_written = False

    @property
    def writer(self) -> Any:
        return self.logger.experiment

    def figure(self, tag: str, image: Rendered, step: int) -> None:
        write_figure(self.writer, tag, image.rgb, step, png=image.png)

    def table(self, tag: str, header: Sequence[str], rows: Sequence[Sequence[Any]], step: int, note: str = "") -> None:
        text = table_text(rows, header)
        self.writer.add_text(tag, text + (f"\n\n{note}" if note else ""), int(step))

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, int(step))

    def spectrum(self, tag: str, freqs: np.ndarray, psd: np.ndarray, step: int) -> None:
        write_stacked_spectrum(self.writer, tag, freqs, psd, step)

    def layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        # One layout per run (TensorBoard's custom-scalars plugin reads one): kept on this object,
        # not on the user's SummaryWriter.
        if not self._layout_written:
            self._layout_written = write_custom_scalars(self.writer, layout)

    def flush(self) -> None:
        self.writer.flush()


class WandbPanels:
    """Panels for a ``WandbLogger``: ``log_image``, ``log_table`` / ``log_text``, ``wandb.Histogram``.

    Every value is logged with ``step`` (Lightning's ``WandbLogger`` records it as
    ``trainer/global_step``, its x-axis). A table's ``note`` becomes a one-cell text table
    ``<tag>/note``. Spectra are W&B histograms whose bin weights are the powers (drawn over steps
    like TensorBoard's stacked spectra); there is no custom-scalars layout.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def figure(self, tag: str, image: Rendered, step: int) -> None:
        self.logger.log_image(key=tag, images=[image.rgb], step=int(step))

    def table(self, tag: str, header: Sequence[str], rows: Sequence[Sequence[Any]], step: int, note: str = "") -> None:
        data = [[plain_cell(c) for c in row] for row in rows]
        self.logger.log_table(key=tag, columns=[str(h) for h in header], data=data, step=int(step))
        if note:
            self.text(f"{tag}/note", note, step)

    def text(self, tag: str, text: str, step: int) -> None:
        self.logger.log_text(key=tag, columns=["text"], data=[[text]], step=int(step))

    def spectrum(self, tag: str, freqs: np.ndarray, psd: np.ndarray, step: int) -> None:
        import wandb

        p = np.where(np.isfinite(psd) & (psd > 0), psd, 0.0)  # (F,) bin weights
        if not p.sum() > 0:
            return
        half = np.diff(freqs) / 2 if freqs.size > 1 else np.array([0.5])
        edges = np.concatenate([[freqs[0] - half[0]], freqs[:-1] + half, [freqs[-1] + half[-1]]])  # (F + 1,)
        self.logger.log_metrics({tag: wandb.Histogram(np_histogram=(p.tolist(), edges.tolist()))}, step=int(step))

    def layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        pass

    def flush(self) -> None:
        pass


class MLflowPanels:
    """Panels for an ``MLFlowLogger``: images with ``MlflowClient.log_image(key=tag, step=step)``,
    tables as CSV and text as Markdown artifacts ``panels/<tag>/step_<step>.csv`` / ``.md``.

    Images logged with a key and a step are what MLflow's UI shows with a step slider (artifacts
    under ``images/``). A table's ``note`` goes to ``step_<step>_note.md`` beside it. Spectra and
    the layout have no MLflow counterpart (the spectrum figure carries the spectra).
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    @property
    def client(self) -> Any:
        return self.logger.experiment

    def _path(self, tag: str, step: int, suffix: str) -> str:
        return "/".join(("panels", safe_tag(tag), _step_name(step) + suffix))

    def figure(self, tag: str, image: Rendered, step: int) -> None:
        self.client.log_image(self.logger.run_id, image.rgb, key=safe_tag(tag), step=int(step))

    def table(self, tag: str, header: Sequence[str], rows: Sequence[Sequence[Any]], step: int, note: str = "") -> None:
        self.client.log_text(self.logger.run_id, _csv_text(header, rows), self._path(tag, step, ".csv"))
        if note:
            self.client.log_text(self.logger.run_id, note, self._path(tag, step, "_note.md"))

    def text(self, tag: str, text: str, step: int) -> None:
        self.client.log_text(self.logger.run_id, text, self._path(tag, step, ".md"))

    def spectrum(self, tag: str, freqs: np.ndarray, psd: np.ndarray, step: int) -> None:
        pass

    def layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        pass

    def flush(self) -> None:
        pass


class CSVPanels:
    """Panels for a ``CSVLogger``: files in its run directory (beside ``metrics.csv``, ``events.jsonl``).

    ``<log_dir>/panels/<tag>/step_<step>.png`` per figure, ``.csv`` per table (``_note.md`` for its
    note), ``.md`` per text, and ``<log_dir>/panels/<tag>.csv`` per spectrum tag with a header of
    frequencies (Hz) and one row of powers per step. Tags go through
    :func:`~nn_neuroimaging_lightning.panels.tensorboard.safe_tag`, so a module name cannot leave
    the run directory.
    """

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    def _file(self, tag: str, name: Optional[str]) -> str:
        parts = safe_tag(tag).split("/")
        if name is None:  # <tag>.csv
            parts[-1] += ".csv"
        else:
            parts.append(name)
        path = os.path.join(os.path.realpath(self.logger.log_dir), "panels", *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def figure(self, tag: str, image: Rendered, step: int) -> None:
        with open(self._file(tag, _step_name(step) + ".png"), "wb") as fh:
            fh.write(image.png)

    def table(self, tag: str, header: Sequence[str], rows: Sequence[Sequence[Any]], step: int, note: str = "") -> None:
        with open(self._file(tag, _step_name(step) + ".csv"), "w", encoding="utf-8", newline="") as fh:
            fh.write(_csv_text(header, rows))
        if note:
            self.text(tag, note, step, suffix="_note.md")

    def text(self, tag: str, text: str, step: int, suffix: str = ".md") -> None:
        with open(self._file(tag, _step_name(step) + suffix), "w", encoding="utf-8") as fh:
            fh.write(text)

    def spectrum(self, tag: str, freqs: np.ndarray, psd: np.ndarray, step: int) -> None:
        path = self._file(tag, None)
        new = not os.path.exists(path)
        with open(path, "a", encoding="utf-8", newline="") as fh:
            out = csv.writer(fh, lineterminator="\n")
            if new:
                out.writerow(["step"] + [f"{f:g} Hz" for f in freqs.tolist()])
            out.writerow([int(step)] + [f"{p:.6g}" for p in psd.tolist()])

    def layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        pass

    def flush(self) -> None:
        pass


def _writer_for(logger: Any) -> Optional[Any]:
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger

    for cls, writer in ((TensorBoardLogger, TensorBoardPanels), (WandbLogger, WandbPanels),
                        (MLFlowLogger, MLflowPanels), (CSVLogger, CSVPanels)):
        if isinstance(logger, cls):
            return writer(logger)
    return None


class PanelSink:
    """Every panel-capable logger of a trainer, behind one interface.

    Figures may be matplotlib figures (rendered once on the Agg canvas and released) or
    ``(H, W, 3)`` uint8 images; tables are a header and rows of cells; spectra are ``(F,)``
    frequencies and powers. Each call goes to every writer.

    Args:
        loggers: the trainer's loggers; those without a panel writer are left out (one notice per
            logger class when some other logger does take panels).
        worker: the renderer of :class:`~nn_neuroimaging_lightning.panels.worker.Drawing` figures
            (default: the process's shared one).
    """

    def __init__(self, loggers: Sequence[Any], worker: Optional[FigureWorker] = None) -> None:
        self._worker = worker
        self._lock = threading.RLock()  # writers are called from the training thread and the renderer's reader
        self._drawn = threading.Condition(self._lock)
        self._pending = 0
        # tag -> [step, image, settled] of its figures not written yet, in the order they were handed in: a
        # figure is written once those before it under its tag are (drawn by the renderer or by `wait`'s thread)
        self._queued: Dict[str, Deque[List[Any]]] = {}
        self._failed_tags: Set[str] = set()
        self.writers: List[Any] = []
        self.skipped: List[str] = []
        for logger in loggers:
            writer = _writer_for(logger)
            if writer is None:
                self.skipped.append(type(logger).__name__)
            else:
                self.writers.append(writer)
        if self.writers:
            for name in dict.fromkeys(self.skipped):
                if name not in _noticed_skipped:
                    _noticed_skipped.add(name)
                    rank_zero_info(f"{name} gets the scalars only: rich panels go to {', '.join(SUPPORTED_LOGGERS)}.")

    def __getstate__(self) -> Dict[str, Any]:
        """A copy (deepcopy, pickle) waits for the figures in flight, then drops the lock and renderer.

        Its figures use the process's shared renderer (``worker=None``) and a fresh lock."""
        if self._pending:
            self.wait()
        state = self.__dict__.copy()
        for key in ("_lock", "_drawn", "_worker"):
            state.pop(key, None)
        state["_pending"], state["_queued"] = 0, {}
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._worker = None
        self._lock = threading.RLock()
        self._drawn = threading.Condition(self._lock)

    def __bool__(self) -> bool:
        return bool(self.writers)

    @property
    def kinds(self) -> List[str]:
        """Class names of the loggers that get panels."""
        return [type(w.logger).__name__ for w in self.writers]

    def _each(self, call: Callable[[Any], None]) -> None:
        with self._lock:
            self._each_locked(call)

    def _each_locked(self, call: Callable[[Any], None]) -> None:
        for w in list(self.writers):
            try:
                call(w)
            except Exception as err:  # a logger's failure must not end the fit: drop its panels
                self.writers.remove(w)
                rank_zero_warn(
                    f"Panels for {type(w.logger).__name__} stopped after an error ({type(err).__name__}: {err}); "
                    "its scalars still go through Lightning."
                )

    @property
    def pending(self) -> int:
        """Figures handed to the renderer process and not yet written."""
        return self._pending

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """Write one figure under ``tag`` (rendered once for all writers, then released).

        ``fig`` is a matplotlib figure, an ``(H, W, 3)`` uint8 image, or a
        :class:`~nn_neuroimaging_lightning.panels.worker.Drawing`: the renderer process draws
        that one and it is written when it comes back (inline where there is no renderer).
        """
        if isinstance(fig, Drawing):
            if not self.writers:
                return
            worker = self._worker or shared_worker()
            slot: List[Any] = [step, None, False, None]
            with self._lock:
                self._pending += 1
                self._queued.setdefault(tag, collections.deque()).append(slot)
            sent = False
            try:
                sent = worker.submit(fig, lambda image, error: self._done(tag, slot, fig, image, error), tag=tag)
            finally:
                if not sent:  # inline below, or an interrupt: not pending
                    with self._lock:
                        self._pending -= 1
                        self._drawn.notify_all()
            if sent:
                return
            image = None
            try:
                self._notice_inline(worker.failed or "the drawing's arguments cannot be sent to the renderer process")
                image = draw(fig)
            finally:
                self._settle(tag, slot, image)
            return
        try:
            image = render(fig) if self.writers else None
        finally:
            release(fig)
        if image is not None:
            self._write_image(tag, image, step)

    def _write_image(self, tag: str, image: Rendered, step: int) -> None:
        self._each(lambda w: w.figure(tag, image, step))

    @staticmethod
    def _notice_inline(why: str) -> None:
        if why not in _noticed_inline:
            _noticed_inline.add(why)
            rank_zero_info(f"Panel figures are drawn in the training thread: {why}.")

    def _settle(self, tag: str, slot: List[Any], image: Optional[Rendered], error: Optional[str] = None) -> None:
        """``slot``'s figure is drawn (``image``; ``None``: not drawn, because of ``error``): write it and the
        drawn ones after it under ``tag``, in the order they were handed in (a failure's one warning too)."""
        with self._lock:
            slot[1], slot[2], slot[3] = image, True, error
            queue = self._queued.get(tag)
            while queue and queue[0][2]:
                step, ready, _, why = queue.popleft()
                if ready is not None:
                    self._each_locked(lambda w: w.figure(tag, ready, step))
                elif why is not None and tag not in self._failed_tags:
                    self._failed_tags.add(tag)
                    rank_zero_warn(f"Panel figure {tag!r} (step {step}) was not drawn: {why}. Later ones are still drawn.")
            if queue is not None and not queue:
                del self._queued[tag]

    def _done(self, tag: str, slot: List[Any], drawing: Drawing, image: Optional[Rendered], error: Optional[str]) -> None:
        # the renderer's reader thread (or the thread of `FigureWorker.help`, or the training thread when the renderer died)
        try:
            if image is None and error is None:  # the renderer ended before drawing it: draw it here
                self._notice_inline((self._worker or shared_worker()).failed or "the renderer process ended")
                image, error = _drawn(drawing)  # a builder's error is a warning: a panel never ends the fit
        finally:
            self._settle(tag, slot, image, error)
            with self._lock:
                self._pending -= 1
                self._drawn.notify_all()

    def wait(self, timeout: float = WAIT_S) -> bool:
        """Wait until every figure handed to the renderer is written, then flush; ``False`` on timeout.

        Meanwhile this thread draws the figures not sent to the renderer yet (:meth:`FigureWorker.help`).

        On a timeout the figures still being drawn are given up with one warning (they would be
        written later if the process still runs; nothing already written is affected).
        """
        deadline = time.monotonic() + timeout
        if self._pending > 0:  # draw what the renderer has not been sent yet (outside the lock: `_done` takes it)
            (self._worker or shared_worker()).help()
        with self._lock:
            while self._pending > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    rank_zero_warn(f"{self._pending} panel figure(s) were still being drawn after {timeout:.0f} s; "
                                   "they are left out.")
                    break
                self._drawn.wait(left)
            done = self._pending == 0
        self.flush()
        return done

    def table(self, tag: str, header: Sequence[str], rows: Sequence[Sequence[Any]], step: int, note: str = "") -> None:
        """Write a table (``note``: a line of text under it).

        Raises:
            ValueError: If ``header`` is empty or a row has another number of cells (checked before
                any writer sees the table).
        """
        if isinstance(header, str) or not header:
            raise ValueError(f"`header` must be a non-empty sequence of column names, got {header!r}.")
        rows = [list(r) for r in rows]
        for i, row in enumerate(rows):
            if len(row) != len(header):
                raise ValueError(f"`rows[{i}]` must have {len(header)} cells like `header`, got {len(row)}.")
        self._each(lambda w: w.table(tag, header, rows, step, note))

    def text(self, tag: str, text: str, step: int) -> None:
        """Write free text (e.g. why a pair was not traced)."""
        self._each(lambda w: w.text(tag, text, step))

    def spectrum(self, tag: str, freqs: Any, psd: Any, step: int) -> None:
        """Write one power spectrum (TensorBoard stacks them over steps as a histogram).

        Raises:
            ValueError: If ``freqs`` and ``psd`` are not 1-D of one length, or ``freqs`` is not
                finite and strictly increasing (checked before any writer sees them).
        """
        f, p = np.asarray(freqs, dtype=np.float64), np.asarray(psd, dtype=np.float64)
        if f.ndim != 1 or p.shape != f.shape or f.size == 0:
            raise ValueError(
                f"`freqs` and `psd` must be 1-D with the same non-zero length, got shapes {f.shape} and {p.shape}."
            )
        if not np.all(np.isfinite(f)) or (f.size > 1 and not np.all(np.diff(f) > 0)):
            raise ValueError(f"`freqs` must be finite and strictly increasing, got {f!r}.")
        self._each(lambda w: w.spectrum(tag, f, p, step))

    def layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        """Declare a custom-scalars layout (written once per writer)."""
        self._each(lambda w: w.layout(layout))

    def flush(self) -> None:
        self._each(lambda w: w.flush())
