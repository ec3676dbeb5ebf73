"""NN-fMRI engines in plain PyTorch (no Lightning import), used by :class:`~nn_neuroimaging_lightning.NNfMRICallback`.

Collectives (broadcast, reduce) and warnings are injected by the caller as callables; each engine
has a ``state_dict`` / ``load_state_dict``.
"""

from nn_neuroimaging_lightning.fmri.density import RegionDensities, region_coords
from nn_neuroimaging_lightning.fmri.probe import ProbeBatch
from nn_neuroimaging_lightning.fmri.tracts import TractInfo, Tractography
from nn_neuroimaging_lightning.fmri.zeta import Collectives, ZetaScheduler

__all__ = ["Collectives", "ProbeBatch", "RegionDensities", "TractInfo", "Tractography", "ZetaScheduler", "region_coords"]
