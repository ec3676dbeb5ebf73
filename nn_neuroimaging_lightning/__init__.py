"""Watch a network while it trains, the way EEG and fMRI watch a brain: PyTorch Lightning callbacks.

Example::

    >>> from lightning.pytorch import Trainer
    >>> from nn_neuroimaging_lightning import NNEEGCallback
    >>> trainer = Trainer(callbacks=[NNEEGCallback()], logger=False, enable_progress_bar=False)
"""

from nn_neuroimaging_lightning import functional
from nn_neuroimaging_lightning.callbacks import AnomalyEvent, CrossModalCallback, NNEEGCallback, NNfMRICallback, Phase
from nn_neuroimaging_lightning.monitor import Monitor

__version__ = "0.1.0"

__all__ = ["AnomalyEvent", "CrossModalCallback", "Monitor", "NNEEGCallback", "NNfMRICallback", "Phase", "functional", "__version__"]
