"""Reference CNN, benchmark models, synthetic tokens and the DemoClassifier inside a real Trainer."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nn_neuroimaging_lightning.demo.data import DemoDataModule
from nn_neuroimaging_lightning.demo.model import (
    DemoClassifier,
    DropoutMLP,
    ReferenceCNN,
    SyntheticTokens,
    TinyTransformer,
)


def test_reference_cnn_parameter_count_and_layout():
    m = ReferenceCNN()
    # Hand count: conv1 3*16*25+16, conv2 16*32*25+32, fc1 288*64+64, fc2 64*10+10.
    assert 1216 + 12832 + 18496 + 650 == 33_194
    assert sum(p.numel() for p in m.parameters()) == 33_194
    names = [n for n, _ in m.named_children()]
    assert names == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "flatten", "fc1", "relu3", "fc2"]
    assert (m.conv1.in_channels, m.conv1.out_channels, m.conv1.kernel_size) == (3, 16, (5, 5))
    assert (m.conv2.in_channels, m.conv2.out_channels, m.conv2.kernel_size) == (16, 32, (5, 5))
    assert (m.fc1.in_features, m.fc1.out_features, m.fc2.out_features) == (288, 64, 10)


def test_reference_cnn_intermediate_shapes():
    m = ReferenceCNN()
    shapes = {}
    hooks = [
        getattr(m, name).register_forward_hook(lambda mod, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        for name in ("conv1", "pool1", "conv2", "pool2", "fc1", "fc2")
    ]
    try:
        out = m(torch.randn(4, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    assert shapes == {
        "conv1": (4, 16, 28, 28), "pool1": (4, 16, 14, 14), "conv2": (4, 32, 10, 10),
        "pool2": (4, 32, 3, 3), "fc1": (4, 64), "fc2": (4, 10),
    }
    # Independent functional re-implementation with the same weights.
    x = torch.randn(4, 3, 32, 32)
    ref = F.max_pool2d(F.relu(F.conv2d(x, m.conv1.weight, m.conv1.bias)), 2)
    ref = F.adaptive_avg_pool2d(F.relu(F.conv2d(ref, m.conv2.weight, m.conv2.bias)), 3).flatten(1)
    ref = F.linear(F.relu(F.linear(ref, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    torch.testing.assert_close(m(x), ref)
    assert out.shape == (4, 10)


def test_dropout_mlp_train_eval_differ_and_has_batchnorm():
    torch.manual_seed(0)
    m = DropoutMLP()
    assert isinstance(m.bn1, nn.BatchNorm1d) and isinstance(m.drop1, nn.Dropout)
    x = torch.randn(8, 3, 32, 32)
    m.eval()
    e1, e2 = m(x), m(x)
    torch.testing.assert_close(e1, e2)
    m.train()
    assert not torch.allclose(m(x), m(x))
    assert e1.shape == (8, 10)


def test_tiny_transformer_block_activations_are_btd():
    m = TinyTransformer(vocab=20, seq_len=12, num_classes=3, d_model=16, nhead=2, num_layers=2).eval()
    seen = {}
    hooks = [
        m.get_submodule(n).register_forward_hook(lambda mod, i, o, n=n: seen.__setitem__(n, tuple(o.shape)))
        for n in ("embed", "blocks.0", "blocks.1", "blocks.0.ff1", "head")
    ]
    try:
        out = m(torch.randint(0, 20, (5, 12)))
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"embed": (5, 12, 16), "blocks.0": (5, 12, 16), "blocks.1": (5, 12, 16),
                    "blocks.0.ff1": (5, 12, 64), "head": (5, 3)}
    assert out.shape == (5, 3)
    with pytest.raises(ValueError, match="seq_len=12"):
        m(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="`nhead`"):
        TinyTransformer(d_model=10, nhead=3)


def test_synthetic_tokens_rule_and_determinism():
    ds = SyntheticTokens(300, seq_len=10, vocab=13, num_classes=5, seed=4, key_positions=(2, 7))
    again = SyntheticTokens(300, seq_len=10, vocab=13, num_classes=5, seed=4, key_positions=(2, 7))
    other = SyntheticTokens(300, seq_len=10, vocab=13, num_classes=5, seed=5, key_positions=(2, 7))
    assert torch.equal(ds.tokens, again.tokens) and torch.equal(ds.labels, again.labels)
    assert not torch.equal(ds.tokens, other.tokens)
    assert ds.tokens.min() >= 0 and ds.tokens.max() < 13 and ds.tokens.shape == (300, 10)
    brute = [(int(t[2]) + int(t[7])) % 5 for t in ds.tokens]
    assert ds.labels.tolist() == brute
    assert len(ds) == 300 and torch.equal(ds[3][0], ds.tokens[3])
    assert SyntheticTokens(4, seq_len=6).key_positions == (1,)
    with pytest.raises(ValueError, match="`key_positions`"):
        SyntheticTokens(4, seq_len=6, key_positions=(6,))


def test_tiny_transformer_learns_tokens_quickly():
    torch.manual_seed(0)
    train = SyntheticTokens(512, seq_len=8, vocab=16, num_classes=4, seed=0)
    test = SyntheticTokens(256, seq_len=8, vocab=16, num_classes=4, seed=1)
    m = TinyTransformer(vocab=16, seq_len=8, num_classes=4)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(6):
        for i in range(0, 512, 64):
            loss = F.cross_entropy(m(train.tokens[i:i + 64]), train.labels[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = (m.eval()(test.tokens).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.6, acc  # chance 0.25


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"lr": 0.0}, ValueError, "`lr`"),
        ({"lr": "fast"}, TypeError, "`lr`"),
        ({"model": "cnn"}, TypeError, "`model`"),
        ({"num_classes": 1}, ValueError, "`num_classes`"),
    ],
)
def test_demo_classifier_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DemoClassifier(**kwargs)


def test_demo_classifier_tiny_fit_logs_metrics():
    pl.seed_everything(0, workers=True)
    dm = DemoDataModule(batch_size=16, n_train=160, n_val=64, seed=0)
    module = DemoClassifier(lr=1e-3)
    assert "model.conv1" in dict(module.named_modules())
    before = module.model.fc2.weight.detach().clone()
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=5, limit_val_batches=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        accelerator="cpu", devices=1,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 5
    assert not torch.equal(before, module.model.fc2.weight)
    metrics = trainer.callback_metrics
    assert {"train_loss", "val_loss", "val_acc"} <= set(metrics)
    # Independent check of the logged validation numbers on the same two batches.
    module.eval()
    xs, ys = zip(*list(dm.val_dataloader())[:2])
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.no_grad():
        logits = module(x)
    torch.testing.assert_close(metrics["val_acc"], (logits.argmax(1) == y).float().mean())
    torch.testing.assert_close(metrics["val_loss"], F.cross_entropy(logits, y), rtol=1e-5, atol=1e-5)
    # Test and predict paths go through forward as well.
    test_out = trainer.test(module, datamodule=dm, verbose=False)
    assert 0.0 <= test_out[0]["test_acc"] <= 1.0 and "test_loss" in test_out[0]
    preds = trainer.predict(module, dataloaders=dm.predict_dataloader())
    assert torch.cat(preds).shape == (64, 10)
