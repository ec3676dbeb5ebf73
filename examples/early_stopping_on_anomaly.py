"""Stop a diverging run at the step its activations explode, not at the end of the epoch.

A small MLP regressor is trained with SGD whose learning rate warms up linearly to a peak that is
too high (``--lr``): the run is healthy for a few dozen steps, then the weights grow
exponentially, activations explode and the loss becomes ``inf``/``NaN``. The same seeded run is
trained twice:

1. with ``NNEEGCallback(stop_on=("non_finite", "explosion"))``: the gate sets
   ``trainer.should_stop`` in the step an explosion or a non-finite activation is detected;
2. with only Lightning's ``EarlyStopping(monitor="train_loss", check_finite=True,
   check_on_train_epoch_end=True)``: the loss is checked at the end of each training epoch.

Both stop steps are read from ``trainer.global_step`` (optimizer steps taken) and printed::

    python examples/early_stopping_on_anomaly.py
    python examples/early_stopping_on_anomaly.py --n-train 1024 --max-epochs 2  # tiny
"""

from __future__ import annotations

import argparse
import tempfile

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from nn_neuroimaging_lightning import NNEEGCallback


class WarmupRegressor(pl.LightningModule):
    """MLP regressor trained by SGD with a linear learning-rate warm-up to ``lr`` over ``warmup_steps``."""

    def __init__(self, in_features: int = 16, hidden: int = 64, lr: float = 0.5, warmup_steps: int = 40) -> None:
        super().__init__()
        self.lr, self.warmup_steps = lr, warmup_steps
        self.model = nn.Sequential(
            nn.Linear(in_features, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)  # (B, 1)

    def training_step(self, batch, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        warm = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / self.warmup_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": warm, "interval": "step"}}


class FirstNonFiniteLoss(pl.Callback):
    """Records the index of the first training batch whose loss is not finite (for the printout only)."""

    def __init__(self) -> None:
        self.step: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if self.step is None and not bool(torch.isfinite(loss)):
            self.step = trainer.global_step - 1  # the batch index: global_step counts it already


def make_loader(n: int, batch_size: int, seed: int, in_features: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, in_features, generator=g)  # (n, in_features)
    y = x @ torch.randn(in_features, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)  # (n, 1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def run(callbacks, args: argparse.Namespace, root: str, lr: float, logger=False) -> tuple[int, bool]:
    """Train once; returns ``(trainer.global_step, whether the final loss is finite)``."""
    pl.seed_everything(args.seed, verbose=False)
    model = WarmupRegressor(lr=lr, warmup_steps=args.warmup_steps)
    trainer = pl.Trainer(
        max_epochs=args.max_epochs, callbacks=callbacks, logger=logger, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=root, accelerator="cpu",
        log_every_n_steps=10,
    )
    trainer.fit(model, make_loader(args.n_train, args.batch_size, args.seed))
    loss = trainer.callback_metrics.get("train_loss")
    return trainer.global_step, loss is not None and bool(torch.isfinite(loss))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=0.5, help="peak SGD learning rate (too high on purpose)")
    p.add_argument("--control-lr", type=float, default=0.05, help="peak learning rate of a healthy control run (0: skip it)")
    p.add_argument("--warmup-steps", type=int, default=40, help="linear warm-up steps to the peak")
    p.add_argument("--explosion-z", type=float, default=8.0,
                   help="the gate's explosion threshold (robust z of log-activity; the library default)")
    p.add_argument("--n-train", type=int, default=2048, help="training samples")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default=None, help="where events.jsonl goes (default: a temporary directory)")
    p.add_argument("--tensorboard", action="store_true",
                   help="log the gated run to a TensorBoardLogger under --log-dir (name 'diverging'), panels on")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: intra-op threads only contend
    root = args.log_dir or tempfile.mkdtemp(prefix="nn_eeg_gate_")
    steps_per_epoch = -(-args.n_train // args.batch_size)

    gate = NNEEGCallback(stop_on=("non_finite", "explosion"), explosion_z=args.explosion_z, panels=args.tensorboard)
    tb = False
    if args.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        tb = TensorBoardLogger(root, name="diverging")
    gate_step, _ = run([gate], args, root, args.lr, logger=tb)
    first = next((e for e in gate.events if e.kind in gate.stop_on), None)
    loss_stop = EarlyStopping(monitor="train_loss", check_finite=True, check_on_train_epoch_end=True, patience=args.max_epochs, mode="min")
    nan_probe = FirstNonFiniteLoss()
    loss_step, loss_finite = run([loss_stop, nan_probe], args, root, args.lr)

    print(f"steps per epoch: {steps_per_epoch}")
    if args.control_lr > 0:
        control = NNEEGCallback(stop_on=("non_finite", "explosion"), explosion_z=args.explosion_z, panels=False)
        control_step, control_finite = run([control], args, root, args.control_lr)
        fired = [e for e in control.events if e.kind in control.stop_on]
        print(f"healthy control (peak lr {args.control_lr:g}): {control_step} steps, {len(fired)} gate events "
              f"(other events: {[(e.kind, e.layer) for e in control.events if e.kind not in control.stop_on]}), final loss {'finite' if control_finite else 'non-finite'}")
    if first is None:
        print(f"the gate did not fire; the run trained {gate_step} steps (raise --lr)")
        return 0
    print(f"first gate event: {first.kind} in {first.layer} at batch {first.step} (value {first.value:.3g})")
    if nan_probe.step is not None:
        print(f"the loss first became non-finite at batch {nan_probe.step}")
    print(f"final train_loss of the loss-gated run is {'finite' if loss_finite else 'non-finite'}")
    print(f"gate stopped at step {gate_step}; loss-based EarlyStopping at step {loss_step}; "
          f"{loss_step - gate_step} steps earlier")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
