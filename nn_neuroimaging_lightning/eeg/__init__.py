"""NN-EEG engines in plain PyTorch (no Lightning import), used by :class:`~nn_neuroimaging_lightning.NNEEGCallback`.

The judgement itself is :mod:`nn_neuroimaging_lightning.functional.anomalies`
(:func:`~nn_neuroimaging_lightning.functional.anomalies.baseline_coefficients`,
:func:`~nn_neuroimaging_lightning.functional.anomalies.judge`), shared with :class:`~nn_neuroimaging_lightning.Monitor`.
"""

from nn_neuroimaging_lightning.eeg.detector import Baseline, StepDetector, Verdict
from nn_neuroimaging_lightning.eeg.recorder import TrainingHistory
from nn_neuroimaging_lightning.eeg.spectra import ShiftBaseline, Spectra
from nn_neuroimaging_lightning.eeg.states import StateWindows

__all__ = ["Baseline", "ShiftBaseline", "Spectra", "StateWindows", "StepDetector", "TrainingHistory", "Verdict"]
