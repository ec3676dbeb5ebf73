"""The functional core: pure tensor functions, one place per formula (no Lightning, no I/O).

Example::

    >>> import torch
    >>> from nn_neuroimaging_lightning import functional as F
    >>> freqs, psd = F.welch_psd(torch.randn(3, 128))
    >>> F.band_powers(freqs, psd).shape
    torch.Size([3, 5])
"""

from nn_neuroimaging_lightning.functional import consistency as _consistency_module
from nn_neuroimaging_lightning.functional.anomalies import detect as detect_anomalies
from nn_neuroimaging_lightning.functional.anomalies import robust_zscore, spectral_distance
from nn_neuroimaging_lightning.functional.consistency import agreement, coherence, joint_anomalies, spearman
from nn_neuroimaging_lightning.functional.grid import grid_partition, region_density_from_activation, region_sums, resolve_grid
from nn_neuroimaging_lightning.functional.grid import region_density as region_density_from_sums
from nn_neuroimaging_lightning.functional.shapley import ZetaResult, exact_shapley, merge_zeta, shapley_zeta
from nn_neuroimaging_lightning.functional.spectral import DEFAULT_BANDS, band_powers, check_bands, segment_psd, welch_psd
from nn_neuroimaging_lightning.functional.states import OperationalState, StateClassifier, window_features
from nn_neuroimaging_lightning.functional.tractography import (
    critical_pathways,
    path_strength,
    pathway_efficiency,
    tractography,
)

#: ``consistency(rho, agreement, coherence)``: the cross-modal score in [0, 1].
consistency = _consistency_module.consistency
#: ``region_density(activation, grid, lam, eps)``: grid-shaped phi of one activation (SPEC §9);
#: ``region_density_from_sums`` is the form over accumulated region sums.
region_density = region_density_from_activation

__all__ = [
    "DEFAULT_BANDS",
    "OperationalState",
    "StateClassifier",
    "ZetaResult",
    "agreement",
    "band_powers",
    "check_bands",
    "coherence",
    "consistency",
    "critical_pathways",
    "detect_anomalies",
    "exact_shapley",
    "grid_partition",
    "joint_anomalies",
    "merge_zeta",
    "path_strength",
    "pathway_efficiency",
    "region_density",
    "region_density_from_activation",
    "region_density_from_sums",
    "region_sums",
    "resolve_grid",
    "robust_zscore",
    "segment_psd",
    "shapley_zeta",
    "spearman",
    "spectral_distance",
    "tractography",
    "welch_psd",
    "window_features",
]
