"""The Lightning callbacks: thin layers that guard, delegate to the functional core, and log."""

from nn_neuroimaging_lightning.events import AnomalyEvent
from nn_neuroimaging_lightning.callbacks.cross_modal import CROSS_MODAL_ANOMALY_KINDS, CrossModalCallback
from nn_neuroimaging_lightning.callbacks.eeg import EEG_ANOMALY_KINDS, NNEEGCallback
from nn_neuroimaging_lightning.callbacks.fmri import FMRI_ANOMALY_KINDS, NNfMRICallback, TractInfo
from nn_neuroimaging_lightning.phases import Phase, PhaseTracker

__all__ = [
    "AnomalyEvent",
    "CROSS_MODAL_ANOMALY_KINDS",
    "CrossModalCallback",
    "EEG_ANOMALY_KINDS",
    "FMRI_ANOMALY_KINDS",
    "NNEEGCallback",
    "NNfMRICallback",
    "Phase",
    "PhaseTracker",
    "TractInfo",
]
