"""The three callbacks configured in YAML for LightningCLI (``examples/lightning_cli.yaml``).

Run (tiny settings)::

    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml \\
        --trainer.max_epochs 1 --data.n_train 256 --data.n_val 64

Any callback argument can be overridden on the command line as well, e.g.
``--trainer.callbacks+=nn_neuroimaging_lightning.NNEEGCallback --trainer.callbacks.window=64``, and
``--print_config`` shows the resolved configuration. The script needs ``jsonargparse[signatures]``
(``pip install nn_neuroimaging_lightning[cli]``).
"""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LightningCLI

from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback
from nn_neuroimaging_lightning.demo import DemoClassifier, DemoDataModule


def main(args=None) -> LightningCLI:
    torch.set_num_threads(1)  # a small CNN on CPU: intra-op threads only contend
    cli = LightningCLI(DemoClassifier, DemoDataModule, args=args, save_config_kwargs={"overwrite": True})
    trainer = cli.trainer
    by_type = {type(cb): cb for cb in trainer.callbacks}
    eeg, fmri, xm = by_type.get(NNEEGCallback), by_type.get(NNfMRICallback), by_type.get(CrossModalCallback)
    print(f"callbacks from YAML: {', '.join(type(cb).__name__ for cb in (eeg, fmri, xm) if cb is not None)}")
    if eeg is not None:
        print(f"NNEEGCallback: window={eeg.window} stop_on={list(eeg.stop_on)} layers={eeg.layers} events={len(eeg.events)}")
    if fmri is not None:
        shapes = {name: tuple(d.shape) for name, d in fmri.density.items()}
        print(f"NNfMRICallback: grid={fmri.grid} density={shapes} zeta layers={sorted(fmri.zeta)}")
    if xm is not None:
        print(f"CrossModalCallback: consistency={xm.consistency}")
    print(f"global_step={trainer.global_step} log_dir={trainer.log_dir}")
    return cli


if __name__ == "__main__":
    main()
