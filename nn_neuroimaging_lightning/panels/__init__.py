"""TensorBoard panels: presentation of values computed elsewhere (images drawn with numpy, no matplotlib)."""

from nn_neuroimaging_lightning.panels.figures import (
    PHASE_COLOURS,
    consistency_figure,
    heatmap_figure,
    matrix_figure,
    phase_timeline_figure,
    spectrogram_figure,
    spectrum_figure,
)
from nn_neuroimaging_lightning.panels.tensorboard import (
    CROSS_MODAL_KEYS,
    band_layout,
    figure_to_array,
    merge_layouts,
    safe_tag,
    table_text,
    write_custom_scalars,
    write_figure,
    write_stacked_spectrum,
)

__all__ = [
    "CROSS_MODAL_KEYS",
    "PHASE_COLOURS",
    "band_layout",
    "consistency_figure",
    "figure_to_array",
    "heatmap_figure",
    "matrix_figure",
    "merge_layouts",
    "phase_timeline_figure",
    "safe_tag",
    "spectrogram_figure",
    "spectrum_figure",
    "table_text",
    "write_custom_scalars",
    "write_figure",
    "write_stacked_spectrum",
]
