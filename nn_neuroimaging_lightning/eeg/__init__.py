"""NN-EEG engines in plain PyTorch (no Lightning import), used by :class:`~nn_neuroimaging_lightning.NNEEGCallback`.

Each holds its state and has a ``state_dict``: :class:`SampleRecorder` (the ring of samples),
:class:`StepDetector` (the per-step judgement, also :class:`~nn_neuroimaging_lightning.Monitor`'s),
:class:`StateWindows` (state windows and the online classifier) and :class:`Spectra` (Welch analysis,
band powers, spectral shift), wired together for one model by :class:`EEGEngine`. The judgement itself is :mod:`nn_neuroimaging_lightning.functional.anomalies`
(:func:`~nn_neuroimaging_lightning.functional.anomalies.baseline_coefficients`,
:func:`~nn_neuroimaging_lightning.functional.anomalies.judge`).
"""

from nn_neuroimaging_lightning.eeg.detector import Baseline, StepDetector, Verdict
from nn_neuroimaging_lightning.eeg.engine import EEGEngine
from nn_neuroimaging_lightning.eeg.recorder import SampleRecorder, TrainingHistory
from nn_neuroimaging_lightning.eeg.spectra import ShiftBaseline, Spectra
from nn_neuroimaging_lightning.eeg.states import StateWindows

__all__ = ["Baseline", "EEGEngine", "SampleRecorder", "ShiftBaseline", "Spectra", "StateWindows", "StepDetector", "TrainingHistory", "Verdict"]
