"""NN-EEG panels: stacked spectra and band layout per step; spectrum, spectrograms, phase timeline
and the events table per validation epoch, from values the callback already computed.

Nothing is computed here except host copies: the Welch estimate, the spectrogram and the phase
durations come from :mod:`nn_neuroimaging_lightning.eeg` through the callback.

Example::

    >>> import tempfile
    >>> import numpy as np
    >>> from lightning.pytorch.loggers import TensorBoardLogger
    >>> from nn_neuroimaging_lightning.panels.sink import PanelSink
    >>> sink = PanelSink([TensorBoardLogger(tempfile.mkdtemp(), name="")])
    >>> freqs, psd = np.linspace(0, 0.5, 9), np.ones((2, 9))
    >>> write_eeg_step_panels(sink, ["fc1", "fc2"], {"gamma": (0.25, 0.5)}, freqs, psd, step=32)
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

from nn_neuroimaging_lightning.panels.figures import phase_timeline_figure, spectrogram_figure, spectrum_figure
from nn_neuroimaging_lightning.panels.sink import PanelSink
from nn_neuroimaging_lightning.panels.tensorboard import band_layout, safe_tag
from nn_neuroimaging_lightning.panels.worker import Drawing

__all__ = ["EVENT_ROWS", "write_eeg_epoch_panels", "write_eeg_step_panels"]

#: The events table shows the latest this many events (all of them are in ``events.jsonl``).
EVENT_ROWS = 50


def _host(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def write_eeg_step_panels(sink: PanelSink, names: Sequence[str], bands: Mapping[str, Tuple[float, float]],
                          freqs: Any, psd: Any, step: int) -> None:
    """The custom-scalars band layout (once) and one stacked spectrum per layer.

    Args:
        names: the tapped layers, in the rows' order of ``psd``.
        bands: the band edges (names go to the layout).
        freqs: ``(F,)`` frequencies (cycles per sample); ``psd``: ``(len(names), F)`` powers.
    """
    sink.layout(band_layout(list(names), list(bands)))
    f, p = _host(freqs), _host(psd)
    for i, name in enumerate(names):
        sink.spectrum(safe_tag("nn_eeg", name, "spectrum"), f, p[i], step)


def write_eeg_epoch_panels(sink: PanelSink, step: int, events: Sequence[Any], names: Sequence[str],
                           bands: Mapping[str, Tuple[float, float]], latest_psd: Optional[Tuple[Any, Any]] = None,
                           spectrogram: Optional[Tuple[Any, Any, Any]] = None,
                           timeline: Optional[Mapping[str, Any]] = None) -> None:
    """The events table, then (when the ring holds enough samples) the figures.

    Args:
        events: :class:`~nn_neuroimaging_lightning.events.AnomalyEvent` s, oldest first; the latest
            :data:`EVENT_ROWS` go in the table (written even before a spectrum is possible).
        latest_psd: ``(freqs, psd)`` of the latest Welch estimate, ``psd`` ``(len(names), F)``.
        spectrogram: ``(times (S,), freqs (F,), powers (len(names), S, F))``.
        timeline: keyword arguments of
            :func:`~nn_neuroimaging_lightning.panels.figures.phase_timeline_figure` (``phases``,
            ``times``, ``durations``).
    """
    if events:
        rows = [(e.step, e.phase, e.layer, e.kind, f"{e.value:.4g}") for e in list(events)[-EVENT_ROWS:]]
        sink.table("nn_eeg/events", ("step", "phase", "layer", "kind", "value"), rows, step)
    if latest_psd is not None:
        freqs, psd = (_host(t) for t in latest_psd)
        sink.figure("nn_eeg/spectrum", Drawing.of(spectrum_figure, freqs, {n: psd[i] for i, n in enumerate(names)}, bands), step)
    if spectrogram is not None:
        seg_t, seg_f, seg_p = spectrogram
        for i, name in enumerate(names):
            sink.figure(safe_tag("nn_eeg", name, "spectrogram"),
                        Drawing.of(spectrogram_figure, seg_t, seg_f, seg_p[i], title=f"Spectrogram {name}"), step)
    if timeline is not None:
        sink.figure("nn_eeg/phase_timeline", Drawing.of(phase_timeline_figure, **timeline), step)
    sink.flush()
