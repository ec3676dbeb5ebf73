"""Does zeta find a planted critical region? (NN-fMRI localisation benchmark, target >= 95 %.)

For each seed: 16x16 one-channel images of noise where the label (2 classes) is the sign of a
pattern placed in ONE quadrant (top-left); the other quadrants hold pure noise. A small CNN
(conv 3x3 with padding, so the conv output keeps the image's layout) is trained, then zeta is run
through ``NNfMRICallback`` on the conv layer with the grid (2, 2, 1): four regions, the quadrants,
in the fixed-budget mode (``zeta_budget=66`` rows per evaluation, ``zeta_time_fraction=None``),
and again with the default time budget (5 % of the training time); the scores are the running
estimates over the window of evaluations (all of them here).
A hit is a seed where the planted quadrant (region (h=0, w=0)) ranks first.

Usage::

    .venv/bin/python benchmarks/fmri_localisation.py            # 20 seeds
    .venv/bin/python benchmarks/fmri_localisation.py --quick    # 10 seeds, shorter training
"""

from __future__ import annotations

import argparse
import time
import warnings

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from nn_neuroimaging_lightning.callbacks.fmri import NNfMRICallback


class QuadrantCNN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(8 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).flatten(1))

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def make_data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 2, (n,), generator=g)
    pattern = torch.zeros(8, 8)
    pattern[2:6, 2:6] = 1.0
    x[:, 0, :8, :8] += (2.0 * y.float() - 1.0)[:, None, None] * pattern
    return TensorDataset(x, y)


def one_seed(seed: int, epochs: int, n: int, time_fraction=None) -> tuple[bool, float]:
    pl.seed_everything(seed, verbose=False)
    fmri = NNfMRICallback(layers=["conv"], grid=(2, 2, 1), zeta_budget=None if time_fraction else 66, probe_size=128, tractography=False,
                          panels=False, seed=seed, zeta_time_fraction=time_fraction)
    train = DataLoader(make_data(n, seed), batch_size=64, shuffle=True)
    val = DataLoader(make_data(256, 10_000 + seed), batch_size=128)
    pl.Trainer(logger=False, callbacks=[fmri], max_epochs=epochs, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0).fit(QuadrantCNN(), train, val)
    if "conv" not in fmri.zeta:  # time mode: no sample afforded yet counts as a miss
        return False, float("nan")
    scores = fmri.zeta["conv"].scores.reshape(-1)  # regions (h, w) = (0,0), (0,1), (1,0), (1,1)
    return int(scores.argmax()) == 0, float(scores[0] / scores.abs().sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    seeds, epochs, n = (10, 3, 1024) if args.quick else (20, 5, 2048)
    t0 = time.perf_counter()
    results = [one_seed(s, epochs, n) for s in range(seeds)]
    hits = sum(h for h, _ in results)
    share = sum(s for _, s in results) / seeds
    timed = [one_seed(s, epochs, n, 0.05) for s in range(seeds)]
    hits_t = sum(h for h, _ in timed)
    print(f"\nzeta localisation of a planted quadrant ({seeds} seeds, {epochs} epochs, {n} samples, grid (2, 2, 1))\n")
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| planted quadrant ranked first | {hits}/{seeds} = {100 * hits / seeds:.0f} % | ≥ 95 % |")
    print(f"| mean share of |zeta| on the planted quadrant | {share:.3f} | |")
    print(f"| planted quadrant ranked first, default time budget (`zeta_time_fraction=0.05`) | {hits_t}/{seeds} = {100 * hits_t / seeds:.0f} % | |")
    print(f"| wall time | {time.perf_counter() - t0:.1f} s | |")


if __name__ == "__main__":
    main()
