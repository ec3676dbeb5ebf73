"""Synthetic demo data: determinism, normalisation, class structure, DataModule loaders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nn_neuroimaging_lightning.demo.data import DemoDataModule, SyntheticImages


def test_same_seed_bitwise_equal_and_different_seed_differs():
    a = SyntheticImages(200, seed=3)
    b = SyntheticImages(200, seed=3)
    c = SyntheticImages(200, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.images.shape == (200, 3, 32, 32) and a.images.dtype == torch.float32
    assert a.labels.dtype == torch.int64
    # Different seeds: different samples (not a single equal image), same task normalisation.
    assert not torch.equal(a.images, c.images)
    assert (a.images - c.images).abs().flatten(1).amax(1).min() > 0.1
    assert torch.equal(a.mean, c.mean) and torch.equal(a.std, c.std)


def test_global_rng_untouched():
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    SyntheticImages(50, seed=0)
    assert torch.equal(torch.rand(5), expected)


def test_prefix_consistency_not_required_but_prototype_seed_changes_task():
    a = SyntheticImages(100, seed=0, prototype_seed=0)
    b = SyntheticImages(100, seed=0, prototype_seed=1)
    assert not torch.equal(a.images, b.images)


def test_balanced_labels_and_normalisation():
    ds = SyntheticImages(2000, seed=1)
    assert ds.labels.bincount(minlength=10).tolist() == [200] * 10
    mean = ds.images.mean(dim=(0, 2, 3))
    std = ds.images.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros(3), atol=0.05), mean
    assert torch.allclose(std, torch.ones(3), atol=0.05), std
    x, y = ds[7]
    assert torch.equal(x, ds.images[7]) and int(y) == int(ds.labels[7])


def _nearest_class_mean_accuracy(train: SyntheticImages, test: SyntheticImages) -> float:
    # Independent reference in numpy: class means on raw pixels, Euclidean nearest mean.
    xtr = train.images.flatten(1).numpy().astype(np.float64)
    ytr = train.labels.numpy()
    xte = test.images.flatten(1).numpy().astype(np.float64)
    means = np.stack([xtr[ytr == c].mean(axis=0) for c in range(10)])  # (10, D)
    d2 = (xte**2).sum(1)[:, None] - 2 * xte @ means.T + (means**2).sum(1)[None]  # (N, 10)
    return float((d2.argmin(1) == test.labels.numpy()).mean())


def test_class_structure_nearest_class_mean_beats_chance():
    train = SyntheticImages(3000, seed=10, prototype_seed=5)
    test = SyntheticImages(1000, seed=11, prototype_seed=5)
    acc = _nearest_class_mean_accuracy(train, test)
    # Chance is 0.10; measured ~0.55. Random shifts, phases and distractors keep it far from 1.
    assert 0.35 < acc < 0.9, acc
    # Other prototypes = another task: the class means of this one do not transfer.
    other = SyntheticImages(1000, seed=11, prototype_seed=6)
    assert _nearest_class_mean_accuracy(train, other) < 0.25


def test_noise_makes_it_harder():
    train = SyntheticImages(2000, seed=0, noise=0.0)
    easy = _nearest_class_mean_accuracy(train, SyntheticImages(500, seed=1, noise=0.0))
    train_n = SyntheticImages(2000, seed=0, noise=6.0)
    hard = _nearest_class_mean_accuracy(train_n, SyntheticImages(500, seed=1, noise=6.0))
    assert easy > hard + 0.1, (easy, hard)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"n": 0}, ValueError, "`n`"),
        ({"n": 2.5}, TypeError, "`n`"),
        ({"n": 10, "seed": -1}, ValueError, "`seed`"),
        ({"n": 10, "noise": -0.1}, ValueError, "`noise`"),
        ({"n": 10, "num_classes": 1}, ValueError, "`num_classes`"),
    ],
)
def test_synthetic_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SyntheticImages(**kwargs)


def test_other_sizes_and_class_counts():
    ds = SyntheticImages(30, seed=0, num_classes=3, image_size=16)
    assert ds.images.shape == (30, 3, 16, 16)
    assert ds.labels.bincount().tolist() == [10, 10, 10]
    assert torch.isfinite(ds.images).all()


def test_datamodule_loaders_deterministic():
    dm = DemoDataModule(batch_size=32, n_train=96, n_val=64, seed=2)
    dm.setup("fit")
    assert len(dm.train_set) == 96 and len(dm.val_set) == 64
    # Train and val share the prototypes (same normalisation) but not the samples.
    assert torch.equal(dm.train_set.mean, dm.val_set.mean)
    assert not torch.equal(dm.train_set.images[:64], dm.val_set.images)
    # Validation: no shuffle, in dataset order.
    val_x = torch.cat([x for x, _ in dm.val_dataloader()])
    assert torch.equal(val_x, dm.val_set.images)
    # Train: shuffled, the same order for the same seed in a fresh DataModule.
    order1 = torch.cat([y for _, y in dm.train_dataloader()])
    dm2 = DemoDataModule(batch_size=32, n_train=96, n_val=64, seed=2)
    dm2.setup("fit")
    order2 = torch.cat([y for _, y in dm2.train_dataloader()])
    assert torch.equal(order1, order2)
    first = next(iter(dm.train_dataloader()))[0]
    assert not torch.equal(first, dm.train_set.images[:32])  # shuffled
    assert torch.equal(torch.cat([x for x, _ in dm.test_dataloader()]), val_x)


def test_datamodule_reads_cifar_from_data_dir(tmp_path):
    rec = np.zeros((4, 3073), dtype=np.uint8)
    rec[:, 0] = [0, 1, 2, 3]
    rec[:, 1:] = 128
    for i in range(1, 6):
        rec.tofile(tmp_path / f"data_batch_{i}.bin")
    rec[:2].tofile(tmp_path / "test_batch.bin")
    dm = DemoDataModule(data_dir=str(tmp_path), batch_size=4, n_train=None, n_val=None)
    dm.setup("fit")
    assert len(dm.train_set) == 20 and len(dm.val_set) == 2
    x, y = next(iter(dm.val_dataloader()))
    assert y.tolist() == [0, 1]
    assert torch.allclose(x[0, 0], torch.full((32, 32), (128 / 255 - 0.4914) / 0.2470))
    capped = DemoDataModule(data_dir=tmp_path, n_train=7, n_val=1)
    capped.setup()
    assert len(capped.train_set) == 7 and len(capped.val_set) == 1


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"batch_size": 0}, ValueError, "`batch_size`"),
        ({"n_train": None}, ValueError, "`n_train`"),
        ({"num_workers": -1}, ValueError, "`num_workers`"),
        ({"data_dir": 3}, TypeError, "`data_dir`"),
    ],
)
def test_datamodule_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DemoDataModule(**kwargs)


def test_datamodule_loader_before_setup():
    with pytest.raises(RuntimeError, match="setup"):
        DemoDataModule(n_train=8, n_val=8).val_dataloader()


def test_separable_fields_match_direct_per_pixel_formulas():
    from nn_neuroimaging_lightning.demo.data import _blob_factors, _grating_factors

    g = torch.Generator().manual_seed(0)
    n, s = 6, 32
    grid = (torch.arange(s, dtype=torch.float64) + 0.5) / s
    shift = torch.rand(n, 2, generator=g, dtype=torch.float64) * 0.2 - 0.1
    x, y = grid - shift[:, :1], grid - shift[:, 1:]  # (N, S)
    theta, freq, phase = (torch.rand(n, generator=g, dtype=torch.float64) * k for k in (3.14, 5.0, 6.28))
    rows, cols = _grating_factors(x, y, theta, freq, phase)
    xx, yy = x[:, None, :], y[:, :, None]  # column index is x, row index is y
    direct = torch.sin(2 * np.pi * freq[:, None, None] * (xx * torch.cos(theta)[:, None, None]
                       + yy * torch.sin(theta)[:, None, None]) + phase[:, None, None])
    torch.testing.assert_close(rows @ cols, direct, rtol=0, atol=1e-12)
    centre = torch.rand(n, 2, generator=g, dtype=torch.float64)
    sigma = 0.05 + 0.1 * torch.rand(n, generator=g, dtype=torch.float64)
    rows, cols = _blob_factors(x, y, centre, sigma)
    d2 = (xx - centre[:, 0, None, None]) ** 2 + (yy - centre[:, 1, None, None]) ** 2
    torch.testing.assert_close(rows @ cols, torch.exp(-d2 / (2 * sigma[:, None, None] ** 2)), rtol=0, atol=1e-12)
