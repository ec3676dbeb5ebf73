"""Panels: presentation of values computed elsewhere (matplotlib figures, writers per logger)."""

from nn_neuroimaging_lightning.panels.figures import (
    LINE_COLOURS,
    PHASE_COLOURS,
    consistency_figure,
    heatmap_figure,
    matrix_figure,
    phase_timeline_figure,
    spectrogram_figure,
    spectrum_figure,
)
from nn_neuroimaging_lightning.panels.rendering import Rendered, encode_png, release, render
from nn_neuroimaging_lightning.panels.tensorboard import (
    CROSS_MODAL_KEYS,
    band_layout,
    merge_layouts,
    safe_tag,
    table_text,
    write_custom_scalars,
    write_figure,
    write_stacked_spectrum,
)

__all__ = [
    "CROSS_MODAL_KEYS",
    "LINE_COLOURS",
    "PHASE_COLOURS",
    "Rendered",
    "band_layout",
    "consistency_figure",
    "encode_png",
    "heatmap_figure",
    "matrix_figure",
    "merge_layouts",
    "phase_timeline_figure",
    "release",
    "render",
    "safe_tag",
    "spectrogram_figure",
    "spectrum_figure",
    "table_text",
    "write_custom_scalars",
    "write_figure",
    "write_stacked_spectrum",
]
