"""Watch a network while it trains, the way EEG and fMRI watch a brain: PyTorch Lightning callbacks.

The public names are imported on first use (PEP 562), so that a process that only needs a
submodule (the figure renderer, :mod:`nn_neuroimaging_lightning.panels.worker`) does not import
torch and Lightning.

Example::

    >>> from lightning.pytorch import Trainer
    >>> from nn_neuroimaging_lightning import NNEEGCallback
    >>> trainer = Trainer(callbacks=[NNEEGCallback()], logger=False, enable_progress_bar=False)
"""

from importlib import import_module
from typing import Any, List

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "AnomalyEvent": "nn_neuroimaging_lightning.callbacks",
    "CrossModalCallback": "nn_neuroimaging_lightning.callbacks",
    "NNEEGCallback": "nn_neuroimaging_lightning.callbacks",
    "NNfMRICallback": "nn_neuroimaging_lightning.callbacks",
    "Phase": "nn_neuroimaging_lightning.callbacks",
    "Monitor": "nn_neuroimaging_lightning.monitor",
}

__all__ = ["AnomalyEvent", "CrossModalCallback", "Monitor", "NNEEGCallback", "NNfMRICallback", "Phase", "functional", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "functional":
        return import_module("nn_neuroimaging_lightning.functional")
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nn_neuroimaging_lightning' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(__all__))
