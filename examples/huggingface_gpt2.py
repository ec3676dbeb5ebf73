"""A Hugging Face model with all three callbacks, written the way its users write it.

A tiny ``GPT2LMHeadModel`` (random weights from a config: nothing is downloaded) trained on dict
batches ``{"input_ids", "attention_mask", "labels"}`` with ``self.model(**batch).loss``; the
LightningModule has no ``forward`` of its own. The callbacks are at their defaults. The script prints
the tapped layers, the layers with a zeta map and the cross-modal consistency, and writes a
TensorBoard run under ``--log-dir``.

    python examples/huggingface_gpt2.py --max-epochs 2
"""

from __future__ import annotations

import argparse
import math

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback


class Tokens(Dataset):
    """Sequences that count up from a random start (mod vocab): a next-token task a tiny model learns."""

    def __init__(self, n: int, seq_len: int = 32, vocab: int = 100, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(1, vocab, (n, 1), generator=g)
        self.ids = 1 + (start + torch.arange(seq_len)) % (vocab - 1)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        ids = self.ids[i]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class LanguageModel(pl.LightningModule):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.model = GPT2LMHeadModel(GPT2Config(vocab_size=100, n_positions=32, n_embd=64, n_layer=2, n_head=2))
        self.lr = lr

    def training_step(self, batch, batch_idx):
        loss = self.model(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.model(**batch).loss)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-epochs", type=int, default=2)
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-val", type=int, default=64)
    parser.add_argument("--log-dir", default="runs")
    args = parser.parse_args()

    pl.seed_everything(0, workers=True, verbose=False)
    eeg, fmri, xm = NNEEGCallback(), NNfMRICallback(), CrossModalCallback()
    trainer = pl.Trainer(
        max_epochs=args.max_epochs, callbacks=[eeg, fmri, xm], logger=TensorBoardLogger(args.log_dir, name="gpt2"),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )
    trainer.fit(
        LanguageModel(),
        DataLoader(Tokens(args.n_train, seed=0), batch_size=16, shuffle=True),
        DataLoader(Tokens(args.n_val, seed=1), batch_size=16),
    )
    print(f"tapped: {eeg.layers}")
    maps = {name: res for name, res in fmri.zeta.items() if torch.isfinite(res.ci_high).all()}
    print(f"zeta maps with finite 95 % intervals: {sorted(maps)} ({len(maps)} of {len(fmri.zeta_layers)})")
    c = xm.consistency
    print(f"cross-modal consistency: {'none yet' if c is None else ('nan' if math.isnan(c) else f'{c:.3f}')}")
    print(f"events: {len(eeg.events) + len(fmri.events) + len(xm.events)}")


if __name__ == "__main__":
    main()
