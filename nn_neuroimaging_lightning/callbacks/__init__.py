"""The Lightning callbacks: thin layers that guard, delegate to the functional core, and log."""

from nn_neuroimaging_lightning.callbacks._base import AnomalyEvent
from nn_neuroimaging_lightning.callbacks.eeg import EEG_ANOMALY_KINDS, NNEEGCallback
from nn_neuroimaging_lightning.callbacks.phases import Phase, PhaseTracker

__all__ = ["AnomalyEvent", "EEG_ANOMALY_KINDS", "NNEEGCallback", "Phase", "PhaseTracker"]
