"""The client zoo: models nobody here wrote, written the way their users write them, with their data.

Each client is a ``LightningModule`` plus seeded synthetic data that it really learns (nothing is
downloaded), built by one factory, :func:`make_client`. The tests (``tests/clients/``) run every
client for a few steps with all three callbacks; the benchmarks (overhead, alarms, the seed's
claims) run the same clients with 100-step epochs.

=============== ================================================================= ========================
name            model                                                             batch
=============== ================================================================= ========================
``cnn``         :class:`~nn_neuroimaging_lightning.demo.model.DemoClassifier`      ``(images, labels)``
                (the reference CNN) on :class:`SyntheticImages`
``resnet``      :class:`ResNet`: BatchNorm, 3 residual blocks (two with a 1x1 skip  ``(images, labels)``
                conv), 3x32x32 inputs (``image_size=16`` for 16x16)
``lstm``        :class:`LSTMClassifier`: a 2-layer ``nn.LSTM`` over float           ``(sequences, labels)``
                sequences (:class:`SyntheticSequences`), last step -> ``Linear``
``gpt2``        :class:`GPT2Client`: ``GPT2LMHeadModel`` from a tiny ``GPT2Config``  ``dict``: ``input_ids``,
                (2 layers, n_embd 64, random weights) on :class:`MarkovTokens`;    ``attention_mask``,
                ``training_step`` returns ``self.model(**batch).loss``; the        ``labels`` (-100 at pads)
                module defines no ``forward``
``bert``        :class:`BertClient`: ``BertForSequenceClassification`` (2 layers,   ``BatchEncoding``:
                hidden 64) on :class:`KeywordTokens`; ``self.model(**batch).loss`` ``input_ids``,
                                                                                  ``attention_mask``,
                                                                                  ``token_type_ids``,
                                                                                  ``labels``
``kwargs``      :class:`KwargsClient`: ``forward(self, *, image, mask=None)`` on    ``dict``: ``image``,
                :class:`MaskedImages`                                             ``mask``, ``label``
``mlp_dropout`` ``DemoClassifier(DropoutMLP())``: BatchNorm1d and Dropout         ``(images, labels)``
=============== ================================================================= ========================

``transformers`` is imported only by ``gpt2`` and ``bert`` (the ``clients`` or ``dev`` extra).
Precision is the caller's ``Trainer(precision="bf16-mixed")``; ``torch.compile`` is
``make_client(..., compile="model")``: ``self.model = torch.compile(self.model)``, the form users
write. (Compiling the whole ``LightningModule``, ``Trainer.fit(torch.compile(module))``, fails inside
Lightning 2.6 with torch 2.13 without any callback: dynamo cannot trace ``self.log`` in the
compiled ``training_step``; the tap names are the same in that form, see ``tests/clients/``.)
:data:`VARIANTS` names the two ResNet variants of the issues.

The training and validation sets of a client are the two parts of one seeded draw (independent
samples of the same distribution). Determinism: the weights and the data depend only on ``seed`` (the global RNG is left untouched);
dropout and anything else drawn during training come from the global RNG, so call
``lightning.seed_everything(seed)`` before ``fit`` for a repeatable run.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset, default_collate
from torchmetrics.classification import MulticlassAccuracy

from nn_neuroimaging_lightning._validation import check_float, check_int
from nn_neuroimaging_lightning.demo.data import SyntheticImages
from nn_neuroimaging_lightning.demo.model import DemoClassifier, DropoutMLP

#: Every client :func:`make_client` builds, in the order the benchmarks report them.
CLIENTS: Tuple[str, ...] = ("cnn", "resnet", "lstm", "gpt2", "bert", "kwargs", "mlp_dropout")
#: Clients that need ``transformers``.
HF_CLIENTS: Tuple[str, ...] = ("gpt2", "bert")
#: Named variants: ``name -> (client, make_client keyword arguments, Trainer keyword arguments)``.
VARIANTS: Dict[str, Tuple[str, Dict[str, Any], Dict[str, Any]]] = {
    "resnet_bf16": ("resnet", {}, {"precision": "bf16-mixed"}),
    "resnet_compiled": ("resnet", {"compile": "model"}, {}),
}
_DEFAULT_BATCH = {"cnn": 64, "resnet": 32, "lstm": 32, "gpt2": 16, "bert": 32, "kwargs": 32, "mlp_dropout": 64}
_COMPILE_FORMS = (None, "model")
_MASK63 = (1 << 63) - 1


def _stream(seed: int, stream: int) -> torch.Generator:
    # independent generators for the weights, each data set and the shuffle, all from one seed
    return torch.Generator().manual_seed((seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x2545F491) & _MASK63)


def _require_transformers(client: str) -> Any:
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            f"the `{client}` client needs Hugging Face `transformers`, which is not installed: "
            f"pip install 'nn_neuroimaging_lightning[clients]' (after the pinned torch), or pick one of "
            f"{[c for c in CLIENTS if c not in HF_CLIENTS]}."
        ) from err
    return transformers


# ------------------------------------------------------------------------------------- data
class SyntheticSequences(Dataset):
    """Float sequences whose class is a sinusoid of its own frequency and channel direction, in noise.

    .. math::
        x_{t,f} = a\\,\\sin(2\\pi (c + 1) t / T + \\varphi)\\,w_{c,f} + \\sigma\\,\\epsilon_{t,f}

    with class ``c``, a random amplitude ``a`` in [1, 2] and phase ``phi`` per sample, a unit channel
    direction ``w_c`` per class and Gaussian noise ``epsilon``. With the default ``sigma = 1`` the
    LSTM client reaches about 90 % validation accuracy in 100 steps and keeps improving. Generated up
    front from ``torch.Generator(seed)``; the class directions from ``torch.Generator(prototype_seed)``.

    Args:
        n: number of sequences.
        seq_len: time steps ``T``.
        features: channels per step.
        num_classes: number of classes (frequencies 1 .. ``num_classes`` cycles per sequence).
        noise: ``sigma``.
        seed: seed of the samples.
        prototype_seed: seed of the class directions.

    Example::

        >>> ds = SyntheticSequences(8, seq_len=16, features=4, seed=0)
        >>> x, y = ds[0]
        >>> tuple(x.shape), x.dtype, 0 <= int(y) < 4
        ((16, 4), torch.float32, True)
    """

    def __init__(self, n: int, seq_len: int = 32, features: int = 8, num_classes: int = 4, noise: float = 1.0,
                 seed: int = 0, prototype_seed: int = 0) -> None:
        check_int("n", n, minimum=1)
        check_int("seq_len", seq_len, minimum=2)
        check_int("features", features, minimum=1)
        check_int("num_classes", num_classes, minimum=2)
        check_float("noise", noise, minimum=0.0)
        gp = torch.Generator().manual_seed(check_int("prototype_seed", prototype_seed, minimum=0))
        w = torch.randn(num_classes, features, generator=gp)
        w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (C, F)
        g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        self.labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]  # (N,)
        amp = 1.0 + torch.rand(n, 1, 1, generator=g)  # (N, 1, 1)
        phase = 2 * math.pi * torch.rand(n, 1, generator=g)  # (N, 1)
        t = torch.arange(seq_len, dtype=torch.float32) / seq_len  # (T,)
        wave = torch.sin(2 * math.pi * (self.labels[:, None] + 1).float() * t + phase)  # (N, T)
        self.x = amp * wave[:, :, None] * w[self.labels][:, None, :] + noise * torch.randn(n, seq_len, features, generator=g)  # (N, T, F)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        return self.x[index], self.labels[index]


class MarkovTokens(Dataset):
    """Right-padded token sequences from a sparse first-order Markov chain, for causal LM training.

    Token 0 is padding (and GPT-2's eos); every other token has four successors with probabilities
    0.55, 0.25, 0.15, 0.05, so the best achievable loss is the chain's entropy (about 1.1 nats)
    against ``ln(vocab)`` for an untrained model. Lengths are uniform in ``[seq_len // 2, seq_len]``.
    Items are dicts as a Hugging Face collator gives them: ``input_ids`` ``(T,)``,
    ``attention_mask`` ``(T,)`` (1 = token), ``labels`` ``(T,)`` (``input_ids`` with -100 at pads:
    the model shifts them itself).

    Args:
        n: number of sequences.
        seq_len: ``T``.
        vocab: vocabulary size (token 0 included).
        seed: seed of the sequences.
        chain_seed: seed of the transition table (shared by the train and validation sets).

    Example::

        >>> ds = MarkovTokens(4, seq_len=8, vocab=20, seed=0)
        >>> item = ds[0]
        >>> sorted(item), tuple(item["input_ids"].shape)
        (['attention_mask', 'input_ids', 'labels'], (8,))
        >>> bool(((item["labels"] == -100) == (item["attention_mask"] == 0)).all())
        True
    """

    PROBS = (0.55, 0.25, 0.15, 0.05)

    def __init__(self, n: int, seq_len: int = 32, vocab: int = 100, seed: int = 0, chain_seed: int = 0) -> None:
        check_int("n", n, minimum=1)
        check_int("seq_len", seq_len, minimum=2)
        check_int("vocab", vocab, minimum=len(self.PROBS) + 1)
        gc = torch.Generator().manual_seed(check_int("chain_seed", chain_seed, minimum=0))
        table = torch.zeros(vocab, vocab)  # (V, V) transition probabilities; row 0 unused
        for i in range(1, vocab):
            succ = 1 + torch.randperm(vocab - 1, generator=gc)[: len(self.PROBS)]
            table[i, succ] = torch.tensor(self.PROBS)
        table[0, 1:] = 1.0 / (vocab - 1)
        g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        tokens = torch.empty(n, seq_len, dtype=torch.long)
        tokens[:, 0] = torch.randint(1, vocab, (n,), generator=g)
        for t in range(1, seq_len):
            tokens[:, t] = torch.multinomial(table[tokens[:, t - 1]], 1, generator=g).squeeze(1)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)  # (N,)
        self.attention_mask = (torch.arange(seq_len) < lengths[:, None]).long()  # (N, T)
        self.input_ids = tokens * self.attention_mask  # pads are token 0
        self.labels = self.input_ids.masked_fill(self.attention_mask == 0, -100)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index], "labels": self.labels[index]}


class KeywordTokens(Dataset):
    """``[CLS] ... [SEP]`` sequences whose class is the group of the keywords they contain, for BERT.

    Tokens: 0 ``[PAD]``, 1 ``[CLS]``, 2 ``[SEP]``, then ``keywords`` keyword tokens per class, then
    filler. Each sequence holds two keywords of its class at random positions among uniform filler;
    lengths are uniform in ``[seq_len // 2, seq_len]``, right-padded. Items are dicts with
    ``input_ids``, ``attention_mask``, ``token_type_ids`` (zeros) and ``labels`` (a scalar class), as
    a tokenizer plus ``DataCollatorWithPadding`` give them.

    Args:
        n: number of sequences.
        seq_len: ``T``.
        vocab: vocabulary size.
        num_classes: number of classes.
        keywords: keyword tokens per class.
        seed: seed of the generator.

    Example::

        >>> ds = KeywordTokens(4, seq_len=10, vocab=40, num_classes=2, seed=0)
        >>> item = ds[1]
        >>> int(item["input_ids"][0]), sorted(item)
        (1, ['attention_mask', 'input_ids', 'labels', 'token_type_ids'])
    """

    def __init__(self, n: int, seq_len: int = 32, vocab: int = 100, num_classes: int = 4, keywords: int = 4, seed: int = 0) -> None:
        check_int("n", n, minimum=1)
        check_int("seq_len", seq_len, minimum=8)
        check_int("num_classes", num_classes, minimum=2)
        check_int("keywords", keywords, minimum=1)
        first_filler = 3 + num_classes * keywords
        check_int("vocab", vocab, minimum=first_filler + 1)
        g = torch.Generator().manual_seed(check_int("seed", seed, minimum=0))
        self.labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]  # (N,)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)  # (N,) incl. [CLS], [SEP]
        ids = torch.randint(first_filler, vocab, (n, seq_len), generator=g)  # (N, T)
        # two distinct body positions per sequence (body = 1 .. length-2)
        body = (lengths - 2).float()
        u = torch.rand(n, 2, generator=g)
        p0 = 1 + (u[:, 0] * body).long()
        p1 = 1 + ((p0 - 1) + 1 + (u[:, 1] * (body - 1)).long()) % (lengths - 2)
        kw = 3 + self.labels[:, None] * keywords + torch.randint(0, keywords, (n, 2), generator=g)  # (N, 2)
        rows = torch.arange(n)
        ids[rows, p0] = kw[:, 0]
        ids[rows, p1] = kw[:, 1]
        ids[:, 0] = 1
        pos = torch.arange(seq_len)
        ids[pos[None, :] == (lengths[:, None] - 1)] = 2
        self.attention_mask = (pos < lengths[:, None]).long()  # (N, T)
        self.input_ids = ids * self.attention_mask
        self.token_type_ids = torch.zeros_like(self.input_ids)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "token_type_ids": self.token_type_ids[index], "labels": self.labels[index]}


class MaskedImages(Dataset):
    """:class:`SyntheticImages` with an occlusion mask, as dict items ``{"image", "mask", "label"}``.

    The mask ``(1, S, S)`` is ones with one random square of side ``S // 4`` zeroed.

    Example::

        >>> ds = MaskedImages(4, seed=0, image_size=16)
        >>> item = ds[0]
        >>> tuple(item["image"].shape), tuple(item["mask"].shape), int((item["mask"] == 0).sum())
        ((3, 16, 16), (1, 16, 16), 16)
    """

    def __init__(self, n: int, seed: int = 0, image_size: int = 32, prototype_seed: int = 0) -> None:
        self.images = SyntheticImages(n, seed=seed, image_size=image_size, prototype_seed=prototype_seed)
        s, side = image_size, max(1, image_size // 4)
        g = torch.Generator().manual_seed(seed)
        corner = torch.randint(0, s - side + 1, (n, 2), generator=g)  # (N, 2)
        rows = torch.arange(s)
        inside_r = (rows[None, :] >= corner[:, :1]) & (rows[None, :] < corner[:, :1] + side)  # (N, S)
        inside_c = (rows[None, :] >= corner[:, 1:]) & (rows[None, :] < corner[:, 1:] + side)  # (N, S)
        self.masks = (~(inside_r[:, :, None] & inside_c[:, None, :])).float()[:, None]  # (N, 1, S, S)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, Tensor]:
        x, y = self.images[index]
        return {"image": x, "mask": self.masks[index], "label": y}


# ----------------------------------------------------------------------------------- models
class BasicBlock(nn.Module):
    """The CIFAR ResNet basic block: two 3x3 conv + BatchNorm, identity or 1x1-conv shortcut, ReLU after the sum.

    .. math::
        y = \\mathrm{relu}(\\mathrm{bn}_2(\\mathrm{conv}_2(\\mathrm{relu}(\\mathrm{bn}_1(\\mathrm{conv}_1 x)))) + s(x))
    """

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)  # the residual addition
        return F.relu(out)


class ResNet(nn.Module):
    """A small CIFAR-style ResNet, written like the widely copied ``kuangliu/pytorch-cifar`` one.

    ``conv1`` (3x3) -> ``bn1`` -> ReLU -> ``layer1`` (16 ch) -> ``layer2`` (32 ch, stride 2, 1x1 skip
    conv) -> ``layer3`` (64 ch, stride 2, 1x1 skip conv) -> global average pool -> ``linear``. Each
    ``layerN`` is an ``nn.Sequential`` of ``num_blocks[N-1]`` :class:`BasicBlock` (default one each).
    Any input size works (16x16 or 32x32).

    Example::

        >>> m = ResNet()
        >>> tuple(m(torch.zeros(2, 3, 16, 16)).shape), type(m.layer2[0].shortcut[0]).__name__
        ((2, 10), 'Conv2d')
    """

    def __init__(self, num_blocks: Sequence[int] = (1, 1, 1), num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if len(num_blocks) != 3 or not all(isinstance(b, int) and b >= 1 for b in num_blocks):
            raise ValueError(f"`num_blocks` must be three positive ints, got {num_blocks!r}.")
        check_int("width", width, minimum=1)
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], stride=2)
        self.linear = nn.Linear(4 * width, check_int("num_classes", num_classes, minimum=2))

    def _make_layer(self, planes: int, num_blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))  # (B, w, S, S)
        out = self.layer3(self.layer2(self.layer1(out)))  # (B, 4w, S/4, S/4)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 4w)
        return self.linear(out)  # (B, classes)


class LSTMClassifier(nn.Module):
    """``lstm`` (``nn.LSTM``, batch first) -> output at the last step -> ``head`` (``Linear``).

    Example::

        >>> m = LSTMClassifier(features=4, hidden=8, num_classes=3)
        >>> tuple(m(torch.zeros(2, 5, 4)).shape)
        (2, 3)
    """

    def __init__(self, features: int = 8, hidden: int = 64, num_layers: int = 2, num_classes: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=num_layers, batch_first=True, dropout=dropout if num_layers > 1 else 0.0)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)  # (B, T, hidden)
        return self.head(out[:, -1])  # (B, classes)


class GPT2Client(pl.LightningModule):
    """A tiny ``GPT2LMHeadModel`` trained as Hugging Face users write it: no ``forward`` of its own.

    ``training_step`` is ``self.model(**batch).loss`` on dict batches; ``val_loss`` is logged per
    epoch. Random weights from ``GPT2Config(n_layer=2, n_embd=64, n_head=2)``; nothing downloaded.

    Args:
        vocab_size: vocabulary (token 0 is padding and eos).
        n_positions: maximum sequence length.
        lr: AdamW learning rate.
    """

    def __init__(self, vocab_size: int = 100, n_positions: int = 32, lr: float = 1e-3) -> None:
        super().__init__()
        transformers = _require_transformers("gpt2")
        self.save_hyperparameters()
        config = transformers.GPT2Config(vocab_size=vocab_size, n_positions=n_positions, n_embd=64, n_layer=2, n_head=2,
                                         bos_token_id=0, eos_token_id=0, pad_token_id=0)
        self.model = transformers.GPT2LMHeadModel(config)
        self.lr = lr

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model(**batch).loss
        self.log("val_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class BertClient(pl.LightningModule):
    """A tiny ``BertForSequenceClassification`` trained with ``self.model(**batch).loss``.

    Random weights from ``BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
    intermediate_size=128)``; logs ``train_loss``, ``val_loss``, ``val_acc``. The module also has a
    ``forward(**inputs)`` for inference, as many users add, which the steps do not call.

    Args:
        vocab_size: vocabulary size.
        max_position_embeddings: maximum sequence length.
        num_labels: number of classes.
        lr: AdamW learning rate.
    """

    def __init__(self, vocab_size: int = 100, max_position_embeddings: int = 32, num_labels: int = 4, lr: float = 5e-4) -> None:
        super().__init__()
        transformers = _require_transformers("bert")
        self.save_hyperparameters()
        config = transformers.BertConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=128, max_position_embeddings=max_position_embeddings, num_labels=num_labels)
        self.model = transformers.BertForSequenceClassification(config)
        self.val_acc = MulticlassAccuracy(num_classes=num_labels, average="micro")
        self.lr = lr

    def forward(self, **inputs: Tensor) -> Any:
        return self.model(**inputs)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.model(**batch).loss
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        out = self.model(**batch)
        self.val_acc(out.logits, batch["labels"])
        self.log("val_loss", out.loss, prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)
        return out.loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr)


class KwargsClient(pl.LightningModule):
    """A masked-image classifier with a keyword-only ``forward(self, *, image, mask=None)`` and dict batches.

    ``features`` (conv 5x5 -> ReLU -> max pool -> conv 5x5 -> ReLU -> adaptive avg pool 3 ->
    flatten) -> ``classifier``; the image is multiplied by the mask first.

    Example::

        >>> m = KwargsClient()
        >>> tuple(m(image=torch.zeros(2, 3, 16, 16), mask=torch.ones(2, 1, 16, 16)).shape)
        (2, 10)
    """

    def __init__(self, num_classes: int = 10, lr: float = 1e-3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.AdaptiveAvgPool2d(3), nn.Flatten(),
        )
        self.classifier = nn.Linear(32 * 9, num_classes)
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro")
        self.lr = lr

    def forward(self, *, image: Tensor, mask: Optional[Tensor] = None) -> Tensor:
        x = image if mask is None else image * mask  # (B, 3, S, S)
        return self.classifier(self.features(x))  # (B, classes)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss = F.cross_entropy(self(image=batch["image"], mask=batch["mask"]), batch["label"])
        self.log("train_loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(image=batch["image"], mask=batch["mask"])
        loss = F.cross_entropy(logits, batch["label"])
        self.val_acc(logits, batch["label"])
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# ---------------------------------------------------------------------------------- factory
class Client(NamedTuple):
    """What :func:`make_client` returns; unpacks as ``module, train_loader, val_loader``."""

    module: pl.LightningModule
    train_loader: DataLoader
    val_loader: DataLoader


def _batch_encoding_collate(items: List[Dict[str, Tensor]]) -> Any:
    from transformers import BatchEncoding

    return BatchEncoding(default_collate(items))  # what DataCollatorWithPadding hands the model


def _split(full: Dataset, n_train: int, n_val: int) -> Tuple[Dataset, Dataset]:
    # one draw split in two: the synthetic image sets calibrate their normalisation per instance
    return Subset(full, range(n_train)), Subset(full, range(n_train, n_train + n_val))


def _build(name: str, seed: int, n_train: int, n_val: int, image_size: int) -> Tuple[pl.LightningModule, Dataset, Dataset, Optional[Callable]]:
    n = n_train + n_val
    if name in ("cnn", "resnet", "mlp_dropout"):
        train, val = _split(SyntheticImages(n, seed=seed, image_size=image_size, prototype_seed=seed), n_train, n_val)
        if name == "cnn":
            return DemoClassifier(), train, val, None
        if name == "resnet":
            return DemoClassifier(ResNet()), train, val, None
        return DemoClassifier(DropoutMLP(in_features=3 * image_size * image_size)), train, val, None
    if name == "lstm":
        return (DemoClassifier(LSTMClassifier(), lr=3e-3, num_classes=4), *_split(SyntheticSequences(n, seed=seed, prototype_seed=seed), n_train, n_val), None)
    if name == "gpt2":
        return GPT2Client(), *_split(MarkovTokens(n, seed=seed, chain_seed=seed), n_train, n_val), None
    if name == "bert":
        return BertClient(), *_split(KeywordTokens(n, seed=seed), n_train, n_val), _batch_encoding_collate
    return KwargsClient(), *_split(MaskedImages(n, seed=seed, image_size=image_size, prototype_seed=seed), n_train, n_val), None


def make_client(
    name: str,
    *,
    seed: int = 0,
    steps_per_epoch: int = 100,
    val_steps: Optional[int] = None,
    batch_size: Optional[int] = None,
    image_size: int = 32,
    compile: Optional[str] = None,
    compile_kwargs: Optional[Mapping[str, Any]] = None,
) -> Client:
    """Build one client of the zoo: its ``LightningModule`` and its training and validation loaders.

    Args:
        name: one of :data:`CLIENTS`.
        seed: seeds the weights (under a forked RNG: the global RNG is untouched), the data and the
            training shuffle.
        steps_per_epoch: training batches per epoch (the training set holds
            ``steps_per_epoch * batch_size`` samples).
        val_steps: validation batches per epoch; default ``max(1, steps_per_epoch // 4)``.
        batch_size: samples per batch; default per client (cnn 64, resnet 32, lstm 32, gpt2 16,
            bert 32, kwargs 32, mlp_dropout 64).
        image_size: side of the synthetic images (``cnn``, ``resnet``, ``kwargs``, ``mlp_dropout``;
            the reference CNN needs at least 16).
        compile: ``None``, or ``"model"`` for ``module.model = torch.compile(module.model)``.
        compile_kwargs: keyword arguments of ``torch.compile`` (e.g. ``{"backend": "eager"}`` in
            tests, where inductor's code generation would only add compile time).

    Returns:
        :class:`Client` ``(module, train_loader, val_loader)``. Precision is the Trainer's:
        ``Trainer(precision="bf16-mixed")``.

    Raises:
        ValueError: an unknown ``name`` or ``compile``, or ``compile="model"`` on a client without a
            ``model`` attribute (``kwargs``).
        ImportError: ``gpt2``/``bert`` without ``transformers``.

    Example::

        >>> module, train, val = make_client("lstm", steps_per_epoch=4, batch_size=8)
        >>> x, y = next(iter(train))
        >>> len(train), len(val), tuple(x.shape), type(module).__name__
        (4, 1, (8, 32, 8), 'DemoClassifier')
    """
    if name not in CLIENTS:
        raise ValueError(f"`name` must be one of {list(CLIENTS)}, got {name!r}.")
    if compile not in _COMPILE_FORMS:
        raise ValueError(f"`compile` must be one of {list(_COMPILE_FORMS)}, got {compile!r}.")
    if compile == "model" and name == "kwargs":
        raise ValueError("`compile`='model' compiles `module.model`, which the `kwargs` client does not have.")
    check_int("seed", seed, minimum=0)
    check_int("steps_per_epoch", steps_per_epoch, minimum=1)
    val_steps = max(1, steps_per_epoch // 4) if val_steps is None else check_int("val_steps", val_steps, minimum=1)
    batch_size = _DEFAULT_BATCH[name] if batch_size is None else check_int("batch_size", batch_size, minimum=1)
    check_int("image_size", image_size, minimum=16 if name == "cnn" else 4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module, train, val, collate = _build(name, seed, steps_per_epoch * batch_size, val_steps * batch_size, image_size)
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=_stream(seed, 3), collate_fn=collate)
    val_loader = DataLoader(val, batch_size=batch_size, shuffle=False, collate_fn=collate)
    if compile == "model":
        module.model = torch.compile(module.model, **dict(compile_kwargs or {}))
    return Client(module, train_loader, val_loader)


__all__ = [
    "CLIENTS", "HF_CLIENTS", "VARIANTS", "BasicBlock", "BertClient", "Client", "GPT2Client", "KeywordTokens",
    "KwargsClient", "LSTMClassifier", "MarkovTokens", "MaskedImages", "ResNet", "SyntheticSequences", "make_client",
]
