"""Reader for the official CIFAR-10 *binary* version (no pickle).

The binary distribution (``cifar-10-binary.tar.gz``) extracts to ``cifar-10-batches-bin/`` with
``data_batch_1.bin`` … ``data_batch_5.bin`` and ``test_batch.bin``. Each file holds up to 10,000
records of ``1 + 3072`` bytes: one label byte in ``0..9`` followed by the 32×32 red plane, then the
green plane, then the blue plane, each row-major. Files are parsed with :func:`numpy.fromfile`; the
Python-version files (``data_batch_1`` without extension, pickled) are deliberately not supported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

PathLike = Union[str, "os.PathLike[str]"]

#: Bytes per record: one label byte followed by 3 × 32 × 32 pixel bytes.
RECORD_BYTES = 1 + 3 * 32 * 32  # 3073
#: Records per official batch file.
RECORDS_PER_FILE = 10_000
#: Largest valid file size in bytes (30,730,000).
MAX_FILE_BYTES = RECORD_BYTES * RECORDS_PER_FILE
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILES = ("test_batch.bin",)
#: Per-channel mean and standard deviation of the CIFAR-10 training set, pixels scaled to [0, 1].
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: Directory name the official binary tarball extracts to.
EXTRACTED_DIR = "cifar-10-batches-bin"
NUM_CLASSES = 10


def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    size = path.stat().st_size
    if size == 0 or size % RECORD_BYTES != 0 or size > MAX_FILE_BYTES:
        if size == 0:
            why = "is empty"
        elif size % RECORD_BYTES != 0:
            why = "is not a whole number of records (truncated or not a CIFAR-10 binary file)"
        else:
            why = f"holds more than the {RECORDS_PER_FILE} records of an official batch file"
        raise ValueError(
            f"CIFAR-10 binary file {str(path)!r} has size {size} bytes and {why}; expected a positive "
            f"multiple of the record size {RECORD_BYTES} bytes (1 label byte + 3072 pixel bytes), "
            f"at most {MAX_FILE_BYTES} bytes."
        )
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)  # (N, 3073)
    labels = raw[:, 0].astype(np.int64)  # (N,)
    bad = np.flatnonzero(labels >= NUM_CLASSES)
    if bad.size:
        raise ValueError(
            f"CIFAR-10 binary file {str(path)!r} has label {int(labels[bad[0]])} at record {int(bad[0])} "
            f"({bad.size} bad record(s) in all); labels must be in 0..{NUM_CLASSES - 1}."
        )
    images = raw[:, 1:].reshape(-1, 3, 32, 32)  # (N, 3, 32, 32)
    return images, labels


def _resolve_files(path_or_dir: PathLike, train: bool) -> list[Path]:
    path = Path(path_or_dir)
    if path.is_file():
        return [path]
    names = TRAIN_FILES if train else TEST_FILES
    if not path.is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 path {str(path)!r} does not exist; expected a file or a directory holding {list(names)!r}."
        )
    candidates = [path, path / EXTRACTED_DIR]
    for root in candidates:
        files = [root / n for n in names]
        if all(f.is_file() for f in files):
            return files
    missing = [n for n in names if not (path / n).is_file()]
    raise FileNotFoundError(
        f"CIFAR-10 binary files missing in {str(path)!r} (also looked in {str(path / EXTRACTED_DIR)!r}): "
        f"expected {list(names)!r}, missing {missing!r}. Download the *binary* version "
        f"(cifar-10-binary.tar.gz) and pass the extracted directory."
    )


def read_cifar10_binary(path_or_dir: PathLike, train: bool = True) -> tuple[Tensor, Tensor]:
    """Read CIFAR-10 images and labels from the official binary format.

    Args:
        path_or_dir: a single ``.bin`` batch file, or a directory holding the batch files (either the
            extracted ``cifar-10-batches-bin`` directory or its parent).
        train: with a directory, read ``data_batch_1.bin`` … ``data_batch_5.bin`` if True, else
            ``test_batch.bin``. Ignored when a single file is given.

    Returns:
        ``(images, labels)``: ``images`` uint8 of shape ``(N, 3, 32, 32)`` (channels R, G, B) and
        ``labels`` int64 of shape ``(N,)``, in file order.

    Raises:
        FileNotFoundError: the path does not exist or expected batch files are missing (the message
            lists them).
        ValueError: a file is empty, not a multiple of 3073 bytes, larger than 10,000 records, or
            holds a label outside ``0..9`` (the message names the file and its size).

    Example::

        >>> import tempfile, os, numpy as np
        >>> rec = np.zeros((2, 3073), dtype=np.uint8); rec[:, 0] = [3, 7]; rec[1, 1:] = 255
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "test_batch.bin"); rec.tofile(p)
        ...     x, y = read_cifar10_binary(d, train=False)
        >>> x.shape, x.dtype, y.tolist(), int(x[1].min())
        (torch.Size([2, 3, 32, 32]), torch.uint8, [3, 7], 255)
    """
    files = _resolve_files(path_or_dir, train)
    parts = [_read_file(f) for f in files]
    images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels)


class CIFAR10Binary(Dataset):
    """CIFAR-10 from its binary files, normalised with the standard per-channel mean and std.

    Images stay uint8 in memory (150 MB for the training set) and are converted per item:

    .. math::
        x = (p / 255 - \\mu_c) / \\sigma_c

    with :data:`CIFAR10_MEAN` and :data:`CIFAR10_STD`.

    Args:
        path_or_dir: as in :func:`read_cifar10_binary`.
        train: training batches if True, else the test batch.
        limit: keep only the first ``limit`` records (``None`` keeps all).
        normalize: apply the per-channel normalisation; if False, items are floats in ``[0, 1]``.

    Raises:
        FileNotFoundError, ValueError: as in :func:`read_cifar10_binary`; ``ValueError`` for a bad
            ``limit``.

    Example::

        >>> import tempfile, os, numpy as np
        >>> rec = np.zeros((3, 3073), dtype=np.uint8); rec[:, 0] = [0, 1, 2]
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = os.path.join(d, "one.bin"); rec.tofile(p)
        ...     ds = CIFAR10Binary(p)
        >>> x, y = ds[2]
        >>> len(ds), tuple(x.shape), int(y), round(float(x[0, 0, 0]), 4)
        (3, (3, 32, 32), 2, -1.9895)
    """

    def __init__(
        self, path_or_dir: PathLike, train: bool = True, limit: int | None = None, normalize: bool = True
    ) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"`limit` must be a positive int or None, got {limit!r}.")
        images, labels = read_cifar10_binary(path_or_dir, train=train)
        if limit is not None:
            images, labels = images[:limit], labels[:limit]
        self.images = images  # (N, 3, 32, 32) uint8
        self.labels = labels  # (N,) int64
        self.normalize = normalize
        self._mean = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
        self._std = torch.tensor(CIFAR10_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def _convert(self, images: Tensor) -> Tensor:
        x = images.to(torch.float32).div_(255.0)
        if self.normalize:
            x = (x - self._mean) / self._std
        return x

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self._convert(self.images[index]), self.labels[index]
