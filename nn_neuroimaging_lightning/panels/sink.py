"""Where rich panels go: one :class:`PanelSink` fans figures, tables and spectra out to the loggers.

The callbacks never talk to a logger's experiment object themselves: each holds the sink of its
trainer's loggers (``MonitorCallback._panels``: ``None`` when no logger takes panels, or off rank
zero) and hands it values that are already computed. Each supported logger gets a small writer
(:class:`TensorBoardPanels`, ...) that knows how that logger stores an image, a table and a
spectrum; a logger without a writer gets the scalars Lightning sends it and nothing else (one
notice per callback says so).

Example::

    >>> import tempfile
    >>> from lightning.pytorch.loggers import TensorBoardLogger
    >>> sink = PanelSink([TensorBoardLogger(tempfile.mkdtemp(), name="")])
    >>> bool(sink), sink.kinds
    (True, ['TensorBoardLogger'])
    >>> sink.table("nn_eeg/events", ("step", "kind"), [(3, "explosion")], step=3)
    >>> sink.flush()
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from nn_neuroimaging_lightning.panels.tensorboard import (
    figure_to_array,
    table_text,
    write_custom_scalars,
    write_figure,
    write_stacked_spectrum,
)

__all__ = ["PanelSink", "TensorBoardPanels"]


def _close(fig: Any) -> None:
    """Release a matplotlib figure (arrays need nothing)."""
    if not isinstance(fig, np.ndarray):
        import matplotlib.figure

        if isinstance(fig, matplotlib.figure.Figure):
            fig.clear()


class TensorBoardPanels:
    """Panels for a ``TensorBoardLogger``: images, Markdown text, stacked-spectrum histograms, layout."""

    def __init__(self, logger: Any) -> None:
        self.logger = logger
        self._layout_written = False

    @property
    def writer(self) -> Any:
        return self.logger.experiment

    def figure(self, tag: str, rgb: np.ndarray, step: int) -> None:
        write_figure(self.writer, tag, rgb, step)

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


def _writer_for(logger: Any) -> Optional[Any]:
    from lightning.pytorch.loggers import TensorBoardLogger

    if isinstance(logger, TensorBoardLogger):
        return TensorBoardPanels(logger)
    return None


class PanelSink:
    """Every panel-capable logger of a trainer, behind one interface.

    Figures may be matplotlib figures (rendered once on the Agg canvas and released) or
    ``(H, W, 3)`` uint8 images; tables are a header and rows of cells; spectra are ``(F,)``
    frequencies and powers. Each call goes to every writer.

    Args:
        loggers: the trainer's loggers; those without a panel writer are left out.
    """

    def __init__(self, loggers: Sequence[Any]) -> None:
        self.writers: List[Any] = [w for w in (_writer_for(lg) for lg in loggers) if w is not None]

    def __bool__(self) -> bool:
        return bool(self.writers)

    @property
    def kinds(self) -> List[str]:
        """Class names of the loggers that get panels."""
        return [type(w.logger).__name__ for w in self.writers]

    def figure(self, tag: str, fig: Any, step: int) -> None:
        """Write one figure under ``tag`` (rendered once for all writers, then released)."""
        if not self.writers:
            _close(fig)
            return
        rgb = figure_to_array(fig)
        _close(fig)
        for w in self.writers:
            w.figure(tag, rgb, step)

    def table(self, tag: str, header: Sequence[str], rows: Sequence[Sequence[Any]], step: int, note: str = "") -> None:
        """Write a table (``note``: a line of text under it)."""
        rows = [list(r) for r in rows]
        for w in self.writers:
            w.table(tag, header, rows, step, note)

    def text(self, tag: str, text: str, step: int) -> None:
        """Write free text (e.g. why a pair was not traced)."""
        for w in self.writers:
            w.text(tag, text, step)

    def spectrum(self, tag: str, freqs: Any, psd: Any, step: int) -> None:
        """Write one power spectrum (TensorBoard stacks them over steps as a histogram)."""
        for w in self.writers:
            w.spectrum(tag, np.asarray(freqs, dtype=np.float64), np.asarray(psd, dtype=np.float64), step)

    def layout(self, layout: Mapping[str, Mapping[str, list]]) -> None:
        """Declare a custom-scalars layout (written once per writer)."""
        for w in self.writers:
            w.layout(layout)

    def flush(self) -> None:
        for w in self.writers:
            w.flush()
