"""CIFAR-10 binary reader: record parsing against hand-written files, and every malformed case."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from nn_neuroimaging_lightning.demo.cifar import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10Binary,
    read_cifar10_binary,
)


def _records(labels, seed=0):
    rng = np.random.default_rng(seed)
    rec = np.empty((len(labels), 3073), dtype=np.uint8)
    rec[:, 0] = labels
    rec[:, 1:] = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    return rec


def test_reads_known_pixels_and_labels(tmp_path):
    rec = np.zeros((3, 3073), dtype=np.uint8)
    rec[:, 0] = [9, 0, 4]
    # Record 0: red plane 10, green 20, blue 30. Record 1: pixel value = column index.
    rec[0, 1:1025], rec[0, 1025:2049], rec[0, 2049:] = 10, 20, 30
    rec[1, 1:] = np.tile(np.arange(32, dtype=np.uint8), 96)
    # Record 2: a single marked pixel at channel 2 (blue), row 5, column 7.
    rec[2, 1 + 2 * 1024 + 5 * 32 + 7] = 255
    path = tmp_path / "batch.bin"
    path.write_bytes(rec.tobytes())
    images, labels = read_cifar10_binary(path)
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == [9, 0, 4]
    assert images[0, 0].unique().tolist() == [10]
    assert images[0, 1].unique().tolist() == [20]
    assert images[0, 2].unique().tolist() == [30]
    assert images[1, 1, 17].tolist() == list(range(32))
    assert images[2].nonzero().tolist() == [[2, 5, 7]]


def test_reads_directory_train_and_test_in_order(tmp_path):
    for i in range(1, 6):
        _records([i, i, i], seed=i).tofile(tmp_path / f"data_batch_{i}.bin")
    test = _records([7, 8], seed=99)
    test.tofile(tmp_path / "test_batch.bin")
    x, y = read_cifar10_binary(tmp_path, train=True)
    assert y.tolist() == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5]
    assert np.array_equal(x[3:6].numpy().reshape(3, -1), _records([2, 2, 2], seed=2)[:, 1:])
    xt, yt = read_cifar10_binary(str(tmp_path), train=False)
    assert yt.tolist() == [7, 8]
    assert np.array_equal(xt.numpy().reshape(2, -1), test[:, 1:])


def test_reads_extracted_subdirectory(tmp_path):
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    _records([3]).tofile(sub / "test_batch.bin")
    _, y = read_cifar10_binary(tmp_path, train=False)
    assert y.tolist() == [3]


def test_truncated_file_names_file_and_size(tmp_path):
    path = tmp_path / "data_batch_1.bin"
    path.write_bytes(_records([1, 2]).tobytes()[:-5])  # 6141 bytes
    with pytest.raises(ValueError, match=re.escape(str(path))) as info:
        read_cifar10_binary(path)
    assert "6141" in str(info.value) and "3073" in str(info.value)


def test_empty_file(tmp_path):
    path = tmp_path / "test_batch.bin"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"size 0 bytes and is empty.*3073"):
        read_cifar10_binary(tmp_path, train=False)


def test_oversized_file(tmp_path):
    path = tmp_path / "big.bin"
    rec = np.zeros((10_001, 3073), dtype=np.uint8)
    rec.tofile(path)
    with pytest.raises(ValueError, match=r"30733073 bytes.*more than the 10000 records") as info:
        read_cifar10_binary(path)
    assert str(path) in str(info.value)
    # Exactly 10,000 records is valid.
    rec[:10_000].tofile(path)
    assert read_cifar10_binary(path)[1].shape == (10_000,)


@pytest.mark.parametrize(("bad_label",), [(10,), (255,)])
def test_label_out_of_range(tmp_path, bad_label):
    path = tmp_path / "b.bin"
    _records([0, bad_label, 3]).tofile(path)
    with pytest.raises(ValueError, match=rf"label {bad_label} at record 1.*0\.\.9"):
        read_cifar10_binary(path)


def test_missing_files_listed(tmp_path):
    for i in (1, 2, 4):
        _records([0]).tofile(tmp_path / f"data_batch_{i}.bin")
    with pytest.raises(FileNotFoundError, match=r"missing \['data_batch_3.bin', 'data_batch_5.bin'\]"):
        read_cifar10_binary(tmp_path, train=True)
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        read_cifar10_binary(tmp_path, train=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_cifar10_binary(tmp_path / "nope")


def test_dataset_normalises_with_cifar_statistics(tmp_path):
    rec = _records([5, 6, 7], seed=3)
    rec.tofile(tmp_path / "test_batch.bin")
    ds = CIFAR10Binary(tmp_path, train=False)
    assert len(ds) == 3
    x, y = ds[1]
    raw = rec[1, 1:].reshape(3, 32, 32).astype(np.float64) / 255.0
    ref = (raw - np.array(CIFAR10_MEAN)[:, None, None]) / np.array(CIFAR10_STD)[:, None, None]
    assert x.dtype == torch.float32 and int(y) == 6
    np.testing.assert_allclose(x.numpy(), ref, rtol=1e-5, atol=1e-5)
    raw_ds = CIFAR10Binary(tmp_path, train=False, normalize=False, limit=2)
    assert len(raw_ds) == 2
    np.testing.assert_allclose(raw_ds[1][0].numpy(), raw, rtol=1e-6)
    with pytest.raises(ValueError, match="`limit`"):
        CIFAR10Binary(tmp_path, train=False, limit=0)
