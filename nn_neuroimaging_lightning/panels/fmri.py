"""NN-fMRI panels: density heatmaps, zeta maps with their top-regions tables, tractography matrices
with their pathways, and path strengths, from values the callback already computed.

Example::

    >>> import tempfile
    >>> import torch
    >>> from lightning.pytorch.loggers import TensorBoardLogger
    >>> from nn_neuroimaging_lightning.panels.sink import PanelSink
    >>> sink = PanelSink([TensorBoardLogger(tempfile.mkdtemp(), name="")])
    >>> write_density_panels(sink, {"fc1": torch.rand(2, 2, 2)}, step=64)
"""

from __future__ import annotations

from typing import Any, Callable, List, Mapping, Tuple

from nn_neuroimaging_lightning.panels.figures import heatmap_figure, matrix_figure
from nn_neuroimaging_lightning.panels.sink import PanelSink
from nn_neuroimaging_lightning.panels.tensorboard import safe_tag
from nn_neuroimaging_lightning.panels.worker import Drawing

__all__ = ["write_density_panels", "write_zeta_panels"]


def write_density_panels(sink: PanelSink, density: Mapping[str, Any], step: int) -> None:
    """One heatmap of the density ``phi`` per layer (``density``: layer name to its grid)."""
    for name, phi in density.items():
        sink.figure(safe_tag("nn_fmri", name, "density"),
                    Drawing.of(heatmap_figure, phi, f"{name}: density phi", colorbar_label="phi"), step)
    sink.flush()


def write_zeta_panels(sink: PanelSink, step: int, zeta: Mapping[str, Any],
                      zeta_rows: Callable[[str], Tuple[Tuple[str, ...], List[Tuple[Any, ...]]]],
                      tracts: Mapping[Tuple[str, str], Any], path_strength: Mapping[Tuple[str, ...], Any]) -> None:
    """Per layer a zeta heatmap (significant regions marked) and its top-regions table; per traced
    pair its connectivity matrix and pathways table (or why it was not traced); the path strengths.

    Args:
        zeta: layer name to its :class:`~nn_neuroimaging_lightning.functional.shapley.ZetaResult`.
        zeta_rows: a layer's top-regions table (header, rows).
        tracts: ``(source, target)`` to its :class:`~nn_neuroimaging_lightning.fmri.TractInfo`.
        path_strength: layer chain to ``(strength, regions)``.
    """
    for name, res in zeta.items():
        sink.figure(safe_tag("nn_fmri", name, "zeta"),
                    Drawing.of(heatmap_figure, res.scores, f"{name}: zeta (impact of each region)", "RdBu_r", res.significant,
                               symmetric=True, colorbar_label="zeta"), step)
        header, rows = zeta_rows(name)
        sink.table(safe_tag("nn_fmri", name, "zeta_top"), header, rows, step)
    for (a, b), t in tracts.items():
        tag = safe_tag("nn_fmri", "tract", f"{a}__{b}")
        if t.traced:
            title = f"C({a} -> {b})" + (" [proportional grid across pooling]" if t.mapping == "proportional" else "")
            sink.figure(tag, Drawing.of(matrix_figure, t.matrix, f"{a} region (source)", f"{b} region (target)", title), step)
            sink.table(tag + "/pathways", ("source region", "target region", "strength"), [(s, d, v) for s, d, v in t.pathways], step,
                       note=f"mapping: {t.mapping}; sigma: {t.activation}; efficiency: {t.efficiency:.4g}")
        else:
            sink.text(tag + "/pathways", f"not traced: {t.reason}", step)
    if path_strength:
        rows = [(" -> ".join(k), v[0], str(v[1])) for k, v in path_strength.items()]
        sink.table("nn_fmri/path_strength", ("layers", "strength", "regions"), rows, step)
    sink.flush()
