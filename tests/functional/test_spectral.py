import math

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nn_neuroimaging_lightning.functional.spectral import (
    DEFAULT_BANDS,
    band_mask,
    band_powers,
    check_bands,
    segment_psd,
    welch_psd,
)


@st.composite
def _welch_args(draw):
    n = draw(st.integers(2, 300))
    nperseg = draw(st.integers(1, n))
    noverlap = draw(st.one_of(st.none(), st.integers(0, nperseg - 1)))
    nfft = draw(st.one_of(st.none(), st.integers(nperseg, nperseg + 40)))
    detrend = draw(st.sampled_from(["constant", False]))
    fs = draw(st.sampled_from([1.0, 200.0, 37.5]))
    seed = draw(st.integers(0, 2**31 - 1))
    return n, nperseg, noverlap, nfft, detrend, fs, seed


@settings(max_examples=80, deadline=None)
@given(_welch_args())
def test_welch_matches_scipy(args):
    n, nperseg, noverlap, nfft, detrend, fs, seed = args
    x = np.random.default_rng(seed).normal(size=(2, 3, n)) + 0.5
    f_ref, p_ref = scipy.signal.welch(
        x, fs, window="hann", nperseg=nperseg, noverlap=noverlap, nfft=nfft, detrend=detrend,
        scaling="density",
    )
    f, p = welch_psd(torch.from_numpy(x), fs, nperseg, noverlap, detrend=detrend or None, nfft=nfft)
    assert p.dtype == torch.float64 and p.shape == p_ref.shape
    np.testing.assert_allclose(f.numpy(), f_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.numpy(), p_ref, rtol=1e-5, atol=1e-12 * max(np.abs(p_ref).max(), 1.0))


def test_welch_float32_and_default_args():
    x = torch.randn(4, 128, generator=torch.Generator().manual_seed(0))
    f, p = welch_psd(x)
    f_ref, p_ref = scipy.signal.welch(x.double().numpy(), 200.0, nperseg=64)
    assert p.dtype == torch.float32 and f.shape == (33,)
    np.testing.assert_allclose(p.numpy(), p_ref, rtol=1e-4, atol=1e-9)


def test_segment_psd_mean_is_welch_and_shape():
    x = torch.randn(3, 100, dtype=torch.float64)
    f, seg = segment_psd(x, nperseg=32, noverlap=8)
    assert seg.shape == (3, (100 - 8) // 24, 17)
    torch.testing.assert_close(seg.mean(-2), welch_psd(x, nperseg=32, noverlap=8)[1])
    _, _, sxx = scipy.signal.spectrogram(x.numpy(), 200.0, window="hann", nperseg=32, noverlap=8,
                                         detrend="constant", scaling="density", mode="psd")
    np.testing.assert_allclose(seg.numpy(), np.swapaxes(sxx, -1, -2), rtol=1e-8, atol=1e-14)


def test_welch_sine_peak():
    t = torch.arange(256, dtype=torch.float64)
    f, p = welch_psd(torch.sin(2 * math.pi * 50.0 * t / 200.0), fs=200.0, nperseg=64)
    assert f[p.argmax()] == 50.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"nperseg": 200}, "`nperseg` must not exceed"),
        ({"nperseg": 0}, "`nperseg` must be a positive int"),
        ({"nperseg": 16, "noverlap": 16}, "`noverlap` must be an int in"),
        ({"nperseg": 16, "noverlap": -1}, "`noverlap` must be an int in"),
        ({"nperseg": 16, "nfft": 8}, "`nfft` must be >="),
        ({"fs": 0.0}, "`fs` must be a positive"),
        ({"detrend": "linear"}, "`detrend` must be"),
        ({"window": "hamming"}, "`window` must be"),
        ({"window": torch.ones(3)}, "`window` tensor must have shape"),
    ],
)
def test_welch_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        welch_psd(torch.randn(2, 100), **kwargs)


def test_welch_bad_input_types():
    with pytest.raises(TypeError, match="`x` must be a torch.Tensor"):
        welch_psd(np.zeros(10))
    with pytest.raises(TypeError, match="`x` must be real"):
        welch_psd(torch.zeros(64, dtype=torch.complex64))


def test_check_bands_defaults_and_counts():
    assert check_bands(DEFAULT_BANDS, 200.0, 64) == {"delta": 1, "theta": 1, "alpha": 2, "beta": 5, "gamma": 23}


@pytest.mark.parametrize(
    ("bands", "fs", "nperseg", "match"),
    [
        (DEFAULT_BANDS, 200.0, 16, r"band `delta` \(0.5–4 Hz\) has no frequency bin at resolution 12.5 Hz \(fs=200, nperseg=16\)"),
        ({"theta": (4, 8)}, 200.0, 16, r"band `theta` .* resolution 12.5 Hz"),
        ({"x": (5, 5)}, 200.0, 64, r"band `x` must have lo < hi"),
        ({"x": (8, 4)}, 200.0, 64, r"band `x` must have lo < hi"),
        ({"x": (150, 200)}, 200.0, 64, r"band `x` \(150–200 Hz\) lies at or above the Nyquist"),
        ({}, 200.0, 64, r"`bands` must be a non-empty mapping"),
        ({"x": (1,)}, 200.0, 64, r"`bands` entry `x` must be two numbers"),
        (DEFAULT_BANDS, -1.0, 64, r"`fs` must be a positive"),
    ],
)
def test_check_bands_errors(bands, fs, nperseg, match):
    with pytest.raises(ValueError, match=match):
        check_bands(bands, fs, nperseg)


def test_band_mask_edges():
    f = torch.fft.rfftfreq(64, d=1 / 200.0).double()  # 0, 3.125, ..., 100
    m = band_mask(f, DEFAULT_BANDS)
    # every bin in at most one band; DC (0 Hz) in none; Nyquist (100 Hz) in gamma
    assert m.sum(1).max() == 1
    assert m[0].sum() == 0
    assert m[-1].tolist() == [0, 0, 0, 0, 1]
    # 12.5 Hz in alpha, 37.5 in gamma; 4 Hz is not a bin, 3.125 in delta
    assert m[4].tolist() == [0, 0, 1, 0, 0]
    assert m[1].tolist() == [1, 0, 0, 0, 0]
    # a bin exactly on a shared edge goes to the upper band
    m2 = band_mask(torch.tensor([0.0, 25.0, 50.0]), {"a": (0, 25), "b": (25, 50)})
    assert m2.tolist() == [[1, 0], [0, 1], [0, 1]]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([32, 64, 128]))
def test_band_powers_sum_to_in_band_total(seed, nperseg):
    x = torch.randn(3, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    f, p = welch_psd(x, nperseg=nperseg)
    bp = band_powers(f, p, DEFAULT_BANDS)
    df = 200.0 / nperseg
    in_band = (f >= 0.5)  # bands tile [0.5, 100] with no gaps
    # brute-force per-band integration
    ref = torch.stack([p[:, (f >= lo) & ((f < hi) | ((hi == 100.0) & (f == hi)))].sum(-1) * df
                       for lo, hi in DEFAULT_BANDS.values()], dim=-1)
    torch.testing.assert_close(bp, ref)
    torch.testing.assert_close(bp.sum(-1), p[:, in_band].sum(-1) * df)
    rel = band_powers(f, p, DEFAULT_BANDS, relative=True)
    torch.testing.assert_close(rel.sum(-1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(rel, bp / bp.sum(-1, keepdim=True))


def test_band_powers_parseval_for_white_noise():
    # for a long white series the total one-sided density integrates to ~ the variance
    x = torch.randn(20_000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    f, p = welch_psd(x, nperseg=64)
    total = p.sum() * (f[1] - f[0])
    assert abs(total.item() - x.var().item()) < 0.05


def test_band_powers_zero_total_gives_zeros():
    f, p = welch_psd(torch.ones(2, 128))
    rel = band_powers(f, p, relative=True)
    assert torch.equal(rel, torch.zeros(2, 5))


def test_band_powers_bad_shapes():
    with pytest.raises(ValueError, match="`freqs` must be 1-D with 3 bins"):
        band_powers(torch.zeros(4), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="`freqs` must have at least 2 bins"):
        band_powers(torch.zeros(1), torch.zeros(2, 1))
