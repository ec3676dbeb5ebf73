"""The demo's models: the paper's 33,194-parameter CNN, its LightningModule, and small benchmarks.

Every layer is a named submodule so monitoring taps can address it (``model.conv1``,
``model.fc2``, ``model.blocks.0`` …) and every activation a monitor may want is the output of a
module, not of a functional call.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchmetrics.classification import MulticlassAccuracy

from nn_neuroimaging_lightning._validation import check_float, check_int


class ReferenceCNN(nn.Module):
    """The paper's reference CNN for 32×32×3 images: exactly 33,194 parameters with 10 classes.

    ``conv1`` (3→16, k5) → ``relu1`` → ``pool1`` (max 2) → ``conv2`` (16→32, k5) → ``relu2`` →
    ``pool2`` (adaptive avg 3×3) → ``flatten`` → ``fc1`` (288→64) → ``relu3`` → ``fc2`` (64→classes).

    Args:
        num_classes: number of output logits.
        in_channels: input channels.

    Example::

        >>> m = ReferenceCNN()
        >>> sum(p.numel() for p in m.parameters())
        33194
        >>> tuple(m(torch.zeros(2, 3, 32, 32)).shape)
        (2, 10)
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        check_int("num_classes", num_classes, minimum=1)
        check_int("in_channels", in_channels, minimum=1)
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.AdaptiveAvgPool2d(3)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 3 * 3, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))  # (B, 16, 14, 14)
        x = self.pool2(self.relu2(self.conv2(x)))  # (B, 32, 3, 3)
        x = self.relu3(self.fc1(self.flatten(x)))  # (B, 64)
        return self.fc2(x)  # (B, classes)


class DropoutMLP(nn.Module):
    """A small MLP with BatchNorm1d and Dropout (train/eval behaviour differs), for benchmarks.

    ``flatten`` → ``fc1`` → ``bn1`` → ``relu1`` → ``drop1`` → ``fc2`` → ``relu2`` → ``drop2`` → ``fc3``.

    Args:
        in_features: flattened input size (3·32·32 for the demo images).
        hidden: width of the hidden layers.
        num_classes: number of output logits.
        p: dropout probability.

    Example::

        >>> m = DropoutMLP(in_features=12, hidden=8, num_classes=3).eval()
        >>> tuple(m(torch.zeros(4, 3, 2, 2)).shape)
        (4, 3)
    """

    def __init__(
        self, in_features: int = 3 * 32 * 32, hidden: int = 128, num_classes: int = 10, p: float = 0.2
    ) -> None:
        super().__init__()
        check_int("in_features", in_features, minimum=1)
        check_int("hidden", hidden, minimum=1)
        check_int("num_classes", num_classes, minimum=1)
        check_float("p", p, minimum=0.0, maximum=1.0)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.relu1 = nn.ReLU()
        self.drop1 = nn.Dropout(p)
        self.fc2 = nn.Linear(hidden, hidden)
        self.relu2 = nn.ReLU()
        self.drop2 = nn.Dropout(p)
        self.fc3 = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop1(self.relu1(self.bn1(self.fc1(self.flatten(x)))))  # (B, hidden)
        x = self.drop2(self.relu2(self.fc2(x)))  # (B, hidden)
        return self.fc3(x)  # (B, classes)


class EncoderBlock(nn.Module):
    """Pre-norm Transformer encoder block with named parts; every output is ``(B, T, D)``.

    Written out instead of ``nn.TransformerEncoderLayer`` so that no fused fast path skips the
    submodules' forward hooks in eval mode.

    Args:
        d_model: token width ``D``.
        nhead: attention heads (must divide ``d_model``).
        dim_ff: hidden width of the feed-forward part.
        dropout: dropout probability.
    """

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, dim_ff)
        self.act = nn.GELU()
        self.ff2 = nn.Linear(dim_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)  # (B, T, D)
        x = x + self.drop(self.attn(h, h, h, need_weights=False)[0])  # (B, T, D)
        return x + self.drop(self.ff2(self.act(self.ff1(self.norm2(x)))))  # (B, T, D)


class TinyTransformer(nn.Module):
    """A tiny Transformer classifier over token sequences, for benchmarks with ``(B, T, D)`` activations.

    ``embed`` (tokens) + ``pos`` (learned positions) → ``blocks.0`` … ``blocks.{L-1}`` → ``norm`` →
    mean over tokens → ``head``.

    Args:
        vocab: vocabulary size.
        seq_len: maximum sequence length ``T``.
        num_classes: number of output logits.
        d_model: token width ``D``.
        nhead: attention heads.
        num_layers: encoder blocks.
        dim_ff: feed-forward width.
        dropout: dropout probability.

    Example::

        >>> m = TinyTransformer(vocab=16, seq_len=8, num_classes=4)
        >>> tuple(m(torch.zeros(2, 8, dtype=torch.long)).shape)
        (2, 4)
    """

    def __init__(
        self,
        vocab: int = 32,
        seq_len: int = 16,
        num_classes: int = 4,
        d_model: int = 32,
        nhead: int = 4,
        num_layers: int = 2,
        dim_ff: int = 64,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("vocab", vocab), ("seq_len", seq_len), ("num_classes", num_classes),
                            ("d_model", d_model), ("nhead", nhead), ("num_layers", num_layers), ("dim_ff", dim_ff)):
            check_int(name, value, minimum=1)
        check_float("dropout", dropout, minimum=0.0, maximum=1.0)
        if d_model % nhead:
            raise ValueError(f"`nhead` must divide `d_model`={d_model}, got {nhead!r}.")
        self.seq_len = seq_len
        self.embed = nn.Embedding(vocab, d_model)
        self.pos = nn.Parameter(torch.randn(seq_len, d_model) / math.sqrt(d_model))
        self.blocks = nn.ModuleList(EncoderBlock(d_model, nhead, dim_ff, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        t = tokens.shape[1]
        if t > self.seq_len:
            raise ValueError(
                f"`tokens` must have at most seq_len={self.seq_len} positions, got shape {tuple(tokens.shape)}."
            )
        x = self.embed(tokens) + self.pos[:t]  # (B, T, D)
        for block in self.blocks:
            x = block(x)  # (B, T, D)
        return self.head(self.norm(x).mean(dim=1))  # (B, classes)


class SyntheticTokens(Dataset):
    """Random token sequences whose label is a known function of the tokens at ``key_positions``.

    .. math::
        y = \\Big(\\sum_{p \\in \\text{key\\_positions}} t_p\\Big) \\bmod C

    Tokens are uniform in ``[0, vocab)``; all other positions are noise. Generated up front from a
    ``torch.Generator`` seeded with ``seed``.

    Args:
        n: number of sequences.
        seq_len: tokens per sequence.
        vocab: vocabulary size.
        num_classes: number of classes ``C``.
        seed: seed of the generator.
        key_positions: positions that decide the label; default ``(1,)``.

    Raises:
        TypeError, ValueError: an argument has the wrong type or range.

    Example::

        >>> ds = SyntheticTokens(8, seq_len=6, vocab=10, num_classes=3, seed=0, key_positions=(0, 4))
        >>> t, y = ds[0]
        >>> int(y) == (int(t[0]) + int(t[4])) % 3
        True
    """

    def __init__(
        self,
        n: int,
        seq_len: int = 16,
        vocab: int = 32,
        num_classes: int = 4,
        seed: int = 0,
        key_positions: Optional[Sequence[int]] = None,
    ) -> None:
        self.n = check_int("n", n, minimum=1)
        self.seq_len = check_int("seq_len", seq_len, minimum=1)
        self.vocab = check_int("vocab", vocab, minimum=2)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        check_int("seed", seed, minimum=0)
        key_positions = (1 % seq_len,) if key_positions is None else tuple(key_positions)
        if not key_positions or any(
            isinstance(p, bool) or not isinstance(p, int) or not 0 <= p < seq_len for p in key_positions
        ):
            raise ValueError(
                f"`key_positions` must be a non-empty sequence of ints in [0, {seq_len}), got {key_positions!r}."
            )
        self.key_positions = key_positions
        g = torch.Generator().manual_seed(seed)
        self.tokens = torch.randint(0, vocab, (n, seq_len), generator=g)  # (N, T) int64
        self.labels = self.tokens[:, list(key_positions)].sum(dim=1) % num_classes  # (N,) int64

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.tokens[index], self.labels[index]


class DemoClassifier(pl.LightningModule):
    """LightningModule around a classifier (default :class:`ReferenceCNN`) trained with cross-entropy.

    Logs ``train_loss`` (every step), ``val_loss`` and ``val_acc`` (per epoch), ``test_loss`` and
    ``test_acc``. The model is the ``model`` attribute, so its layers are ``model.conv1`` … in
    ``named_modules()``.

    .. math::
        \\mathcal{L} = -\\frac{1}{B}\\sum_i \\log \\mathrm{softmax}(f(x_i))_{y_i}

    Args:
        model: the network; ``None`` builds ``ReferenceCNN(num_classes)``.
        lr: Adam learning rate.
        num_classes: number of classes, for the accuracy metrics.

    Raises:
        TypeError, ValueError: ``model`` is not an ``nn.Module`` or ``lr``/``num_classes`` is out of range.

    Example::

        >>> m = DemoClassifier()
        >>> tuple(m(torch.zeros(1, 3, 32, 32)).shape), "model.conv1" in dict(m.named_modules())
        ((1, 10), True)
    """

    def __init__(self, model: Optional[nn.Module] = None, lr: float = 1e-3, num_classes: int = 10) -> None:
        super().__init__()
        self.lr = check_float("lr", lr, minimum=0.0, strict_min=True)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"`model` must be a torch.nn.Module or None, got {model!r} ({type(model).__name__}).")
        self.save_hyperparameters(ignore=["model"])
        self.model = ReferenceCNN(num_classes) if model is None else model
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: Any, stage: str, accuracy: Any) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        accuracy(logits, y)
        self.log(f"{stage}_loss", loss, prog_bar=stage == "val")
        self.log(f"{stage}_acc", accuracy, prog_bar=stage == "val")
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._evaluate(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x)  # (B, classes) logits

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)
