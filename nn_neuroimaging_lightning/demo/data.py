"""The demo's data: a seeded, class-structured synthetic image set, and a LightningDataModule.

Nothing can be downloaded on the machines the demo runs on, so the default data is generated:
ten classes of 32×32×3 images, each class a *prototype* made of oriented colour gratings and
coloured Gaussian blobs; each sample is its class prototype under a random shift, contrast and
brightness jitter, overlaid with a random distractor grating and blob and pixel noise. A small CNN
learns it well, but not in a handful of steps. With ``data_dir`` the DataModule reads a local copy
of CIFAR-10's binary version instead (:mod:`nn_neuroimaging_lightning.demo.cifar`).
"""

from __future__ import annotations

import math
import os
from typing import Optional, Union

import lightning.pytorch as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from nn_neuroimaging_lightning._validation import check_float, check_int
from nn_neuroimaging_lightning.demo.cifar import CIFAR10Binary

_GRATINGS = 2  # per class prototype
_BLOBS = 2  # per class prototype
_SHIFT = 5.0  # max per-sample shift, pixels
_COLOUR_JITTER = 0.3  # std of the per-sample colour perturbation of each component
_CONTRAST = (0.5, 1.5)  # per-sample gain range of the class pattern
_BRIGHTNESS = 0.3  # std of the per-sample, per-channel offset
_DISTRACTOR = (0.0, 0.9)  # amplitude range of the random distractor pattern
_CALIBRATION_N = 1024  # samples used to fix the normalisation constants
_MASK63 = (1 << 63) - 1


def _stream_seed(seed: int, stream: int) -> int:
    # Decorrelates the prototype and sample generators even when their seeds coincide.
    return (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK63


def _unit_colours(n: int, g: torch.Generator) -> Tensor:
    c = torch.randn(n, 3, generator=g)
    return c / c.norm(dim=-1, keepdim=True).clamp_min(1e-6)  # (n, 3)


def _prototypes(num_classes: int, prototype_seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(_stream_seed(prototype_seed, 0))
    c, k, b = num_classes, _GRATINGS, _BLOBS
    # Orientations spread over the half circle so classes do not share them by accident.
    base = torch.linspace(0, math.pi, c * k + 1)[:-1]
    theta = base[torch.randperm(c * k, generator=g)].view(c, k) + 0.1 * torch.randn(c, k, generator=g)
    return {
        "theta": theta,  # (C, K)
        "freq": 1.5 + 3.0 * torch.rand(c, k, generator=g),  # (C, K) cycles per image
        "phase": 2 * math.pi * torch.rand(c, k, generator=g),  # (C, K)
        "g_colour": _unit_colours(c * k, g).view(c, k, 3),  # (C, K, 3)
        "centre": 0.2 + 0.6 * torch.rand(c, b, 2, generator=g),  # (C, B, 2) in image units
        "sigma": 0.07 + 0.08 * torch.rand(c, b, generator=g),  # (C, B)
        "b_colour": 1.5 * _unit_colours(c * b, g).view(c, b, 3),  # (C, B, 3)
    }


def _grating_factors(
    x: Tensor, y: Tensor, theta: Tensor, freq: Tensor, phase: Tensor
) -> tuple[Tensor, Tensor]:
    """Separable factors of ``sin(2π f (x cos θ + y sin θ) + φ)``: rows ``(N, S, 2)``, cols ``(N, 2, S)``.

    ``x``, ``y`` are per-sample shifted coordinates ``(N, S)``; the field is ``rows @ cols``, using
    ``sin(a + b) = sin b cos a + cos b sin a`` so no transcendental is evaluated per pixel.
    """
    w = 2 * math.pi * freq[:, None]
    a = w * torch.cos(theta)[:, None] * x + phase[:, None]  # (N, S) along columns
    b = w * torch.sin(theta)[:, None] * y  # (N, S) along rows
    rows = torch.stack((torch.sin(b), torch.cos(b)), dim=2)  # (N, S, 2)
    cols = torch.stack((torch.cos(a), torch.sin(a)), dim=1)  # (N, 2, S)
    return rows, cols


def _blob_factors(x: Tensor, y: Tensor, centre: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Separable factors of an isotropic Gaussian blob: rows ``(N, S, 1)``, cols ``(N, 1, S)``."""
    inv = 1.0 / (2 * sigma[:, None] ** 2)
    cols = torch.exp(-((x - centre[:, 0, None]) ** 2) * inv)  # (N, S)
    rows = torch.exp(-((y - centre[:, 1, None]) ** 2) * inv)  # (N, S)
    return rows[:, :, None], cols[:, None, :]


def _render(
    n: int,
    num_classes: int,
    image_size: int,
    noise: float,
    proto: dict[str, Tensor],
    g: torch.Generator,
    mean: Optional[Tensor] = None,
    std: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` images and balanced labels from generator ``g``, normalised if ``mean``/``std`` given.

    The per-channel normalisation is folded into the colours and the noise scale, so it costs no
    extra pass over the images.
    """
    mean = torch.zeros(3) if mean is None else mean  # (3,)
    std = torch.ones(3) if std is None else std  # (3,)
    # Every random draw happens here, in a fixed order, before any rendering.
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]  # (N,)
    s = image_size
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (_SHIFT / s)  # (N, 2) image units
    phase = 2 * math.pi * torch.rand(n, _GRATINGS, generator=g)  # (N, K) class gratings: any phase
    colour_jitter = _COLOUR_JITTER * torch.randn(n, _GRATINGS + _BLOBS, 3, generator=g)
    lo, hi = _CONTRAST
    gain = lo + (hi - lo) * torch.rand(n, generator=g)  # (N,)
    lo, hi = _DISTRACTOR
    d_amp = lo + (hi - lo) * torch.rand(n, 2, generator=g)  # (N, 2) grating, blob
    d_theta = math.pi * torch.rand(n, generator=g)
    d_freq = 1.5 + 3.0 * torch.rand(n, generator=g)
    d_phase = 2 * math.pi * torch.rand(n, generator=g)
    d_colour = _unit_colours(2 * n, g).view(n, 2, 3)
    d_centre = 0.15 + 0.7 * torch.rand(n, 2, generator=g)
    d_sigma = 0.07 + 0.08 * torch.rand(n, generator=g)
    brightness = _BRIGHTNESS * torch.randn(n, 3, generator=g)
    images = torch.randn(n, 3, s, s, generator=g).mul_((noise / std)[:, None, None])  # (N, 3, S, S)

    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s  # (S,)
    x = grid - shift[:, :1]  # (N, S)
    y = grid - shift[:, 1:]  # (N, S)
    factors, colours = [], []
    for k in range(_GRATINGS):
        factors.append(_grating_factors(x, y, proto["theta"][labels, k], proto["freq"][labels, k],
                                        proto["phase"][labels, k] + phase[:, k]))
        colours.append(gain[:, None] * (proto["g_colour"][labels, k] + colour_jitter[:, k]))
    for b in range(_BLOBS):
        factors.append(_blob_factors(x, y, proto["centre"][labels, b], proto["sigma"][labels, b]))
        colours.append(gain[:, None] * (proto["b_colour"][labels, b] + colour_jitter[:, _GRATINGS + b]))
    factors.append(_grating_factors(x, y, d_theta, d_freq, d_phase))
    colours.append(d_amp[:, :1] * d_colour[:, 0])
    factors.append(_blob_factors(x, y, d_centre, d_sigma))
    colours.append(1.5 * d_amp[:, 1:] * d_colour[:, 1])
    ones = torch.ones(n, s)
    factors.append((ones[:, :, None], ones[:, None, :]))  # constant field for the brightness offset
    colours.append(brightness - mean)
    # Every component is a rank-1 or rank-2 field times a colour, so the whole image is one batched
    # product per sample and channel: (S, R) @ (R, S) with the colours folded into the right factor.
    rows = torch.cat([f[0] for f in factors], dim=2)  # (N, S, R)
    cols = torch.cat([f[1] for f in factors], dim=1)  # (N, R, S)
    colour = torch.cat(
        [c[:, :, None].expand(n, 3, f[0].shape[2]) for f, c in zip(factors, colours)], dim=2
    ) / std[:, None]  # (N, 3, R)
    right = (colour[:, :, :, None] * cols[:, None]).reshape(n * 3, -1, s)  # (N*3, R, S)
    left = rows[:, None].expand(n, 3, s, rows.shape[2]).reshape(n * 3, s, -1)  # (N*3, S, R)
    images.view(n * 3, s, s).baddbmm_(left, right)  # noise + sum of fields, in place
    return images, labels  # (N, 3, S, S) float32, (N,) int64


class SyntheticImages(Dataset):
    """A deterministic, class-structured synthetic image set shaped like CIFAR-10.

    Class ``c`` has a prototype ``P_c`` of two oriented colour gratings and two colour blobs, fixed by
    ``prototype_seed``. Sample ``i`` of class ``y_i`` is

    .. math::
        x_i = \\big(a_i\\, P_{y_i}(u - \\delta_i;\\ \\phi_i,\\ C_{y_i} + \\kappa_i)
              + D_i + b_i + \\sigma \\eta_i - \\mu\\big) / s

    with a shift ``δ_i`` of up to ±5 px, a uniformly random grating phase ``φ_i`` (so orientation and
    frequency, not phase, identify a grating), per-component colour jitter ``κ_i``, contrast
    ``a_i ∈ [0.5, 1.5]``, a class-independent distractor grating and blob ``D_i``, a per-channel
    brightness offset ``b_i``, white noise ``η_i`` of standard deviation ``σ = noise``, and per-channel
    constants ``μ``, ``s`` measured once on a calibration draw of the same task (so every set with the
    same ``prototype_seed`` and ``noise`` is normalised identically to about zero mean, unit variance).
    Labels are balanced and shuffled. Everything is generated up front from ``torch.Generator``
    objects (never the global RNG): the same arguments give bitwise the same tensors.

    Args:
        n: number of samples.
        seed: seed of the per-sample randomness (labels, jitter, noise).
        num_classes: number of classes.
        image_size: height and width in pixels.
        noise: standard deviation of the pixel noise before normalisation.
        prototype_seed: seed of the class prototypes; sets with the same ``prototype_seed`` are the
            same task, so train and validation sets share it and differ in ``seed``.

    Raises:
        TypeError, ValueError: an argument has the wrong type or range.

    Example::

        >>> ds = SyntheticImages(100, seed=1)
        >>> x, y = ds[0]
        >>> tuple(x.shape), x.dtype, ds.labels.bincount().tolist() == [10] * 10
        ((3, 32, 32), torch.float32, True)
        >>> bool(torch.equal(ds.images, SyntheticImages(100, seed=1).images))
        True
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        num_classes: int = 10,
        image_size: int = 32,
        noise: float = 1.0,
        prototype_seed: int = 0,
    ) -> None:
        self.n = check_int("n", n, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        self.num_classes = check_int("num_classes", num_classes, minimum=2)
        self.image_size = check_int("image_size", image_size, minimum=4)
        self.noise = check_float("noise", noise, minimum=0.0)
        self.prototype_seed = check_int("prototype_seed", prototype_seed, minimum=0)

        proto = _prototypes(self.num_classes, self.prototype_seed)
        # Normalisation constants from a fixed calibration draw, so that every set of one task
        # (train, val, any seed) is normalised identically.
        cal_gen = torch.Generator().manual_seed(_stream_seed(self.prototype_seed, 1))
        cal, _ = _render(_CALIBRATION_N, self.num_classes, self.image_size, self.noise, proto, cal_gen)
        self.mean = cal.mean(dim=(0, 2, 3))  # (3,) of the raw images
        self.std = cal.std(dim=(0, 2, 3)).clamp_min(1e-6)  # (3,)

        gen = torch.Generator().manual_seed(_stream_seed(self.seed, 2))
        self.images, self.labels = _render(
            self.n, self.num_classes, self.image_size, self.noise, proto, gen, self.mean, self.std
        )  # (N, 3, S, S) float32 normalised, (N,) int64

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


class DemoDataModule(pl.LightningDataModule):
    """The demo's data: synthetic images by default, CIFAR-10 (binary version) from ``data_dir``.

    Synthetic train and validation sets share the class prototypes (``prototype_seed=seed``) and use
    different sample seeds (``2 * seed`` and ``2 * seed + 1``). With ``data_dir``, the training batches
    and the test batch of CIFAR-10 are read and the first ``n_train`` / ``n_val`` records kept
    (``None`` keeps all). The training loader shuffles with a generator seeded by ``seed``; the
    validation, test and predict loaders do not shuffle.

    Args:
        data_dir: directory holding CIFAR-10's ``*.bin`` files, or ``None`` for synthetic data.
        batch_size: samples per batch.
        n_train: training samples (synthetic) or cap on the CIFAR-10 training records.
        n_val: validation samples (synthetic) or cap on the CIFAR-10 test records.
        seed: seed of the synthetic data and of the training shuffle.
        num_workers: DataLoader worker processes.
        noise: pixel noise of the synthetic set (see :class:`SyntheticImages`).

    Raises:
        TypeError, ValueError: an argument has the wrong type or range.

    Example::

        >>> dm = DemoDataModule(n_train=128, n_val=64, batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.val_dataloader()))
        >>> tuple(x.shape), tuple(y.shape), len(dm.train_dataloader())
        ((32, 3, 32, 32), (32,), 4)
    """

    def __init__(
        self,
        data_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        batch_size: int = 64,
        n_train: Optional[int] = 6400,
        n_val: Optional[int] = 2048,
        seed: int = 0,
        num_workers: int = 0,
        noise: float = 1.0,
    ) -> None:
        super().__init__()
        if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
            raise TypeError(f"`data_dir` must be a path or None, got {data_dir!r}.")
        self.data_dir = data_dir
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        if data_dir is None and (n_train is None or n_val is None):
            raise ValueError(
                f"`n_train` and `n_val` must be positive ints for synthetic data, got {n_train!r} and {n_val!r}."
            )
        self.n_train = None if n_train is None else check_int("n_train", n_train, minimum=1)
        self.n_val = None if n_val is None else check_int("n_val", n_val, minimum=1)
        self.seed = check_int("seed", seed, minimum=0)
        self.num_workers = check_int("num_workers", num_workers, minimum=0)
        self.noise = check_float("noise", noise, minimum=0.0)
        self.num_classes = 10
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        if self.data_dir is None:
            common = {"num_classes": self.num_classes, "noise": self.noise, "prototype_seed": self.seed}
            self.train_set = SyntheticImages(self.n_train, seed=2 * self.seed, **common)
            self.val_set = SyntheticImages(self.n_val, seed=2 * self.seed + 1, **common)
        else:
            self.train_set = CIFAR10Binary(self.data_dir, train=True, limit=self.n_train)
            self.val_set = CIFAR10Binary(self.data_dir, train=False, limit=self.n_val)

    def _loader(self, dataset: Optional[Dataset], shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("DemoDataModule.setup() must run before asking for a dataloader.")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)
