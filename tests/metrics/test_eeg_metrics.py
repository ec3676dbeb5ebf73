import numpy as np
import pytest
import scipy.signal
import torch

from nn_neuroimaging_lightning.functional.spectral import DEFAULT_BANDS, band_powers, welch_psd
from nn_neuroimaging_lightning.metrics.eeg import BandPower, StateAccuracy


@pytest.mark.parametrize(("relative", "num_layers"), [(False, None), (True, None), (False, 3)])
def test_band_power_matches_functional_and_scipy(relative, num_layers):
    g = torch.Generator().manual_seed(0)
    wins = [torch.randn(3, 128, dtype=torch.float64, generator=g) for _ in range(4)]
    m = BandPower(relative=relative, num_layers=num_layers)
    m.set_dtype(torch.float64)
    for w in wins[:2]:
        m.update(w)
    m.update(torch.stack(wins[2:]))  # a batch of windows counts per window
    expected = torch.stack([band_powers(*welch_psd(w), relative=relative) for w in wins]).mean(0)
    torch.testing.assert_close(m.compute(), expected)
    assert m.count.item() == 4
    # independent reference for the absolute powers: scipy Welch and explicit bin sums
    if not relative:
        ref = np.zeros((3, 5))
        for w in wins:
            f, p = scipy.signal.welch(w.numpy(), 200.0, nperseg=64)
            for b, (lo, hi) in enumerate(DEFAULT_BANDS.values()):
                sel = (f >= lo) & ((f < hi) | ((hi == 100.0) & (f == hi)))
                ref[:, b] += p[:, sel].sum(-1) * (f[1] - f[0])
        np.testing.assert_allclose(m.compute().numpy(), ref / 4, rtol=1e-8)
    m.reset()
    assert m.count.item() == 0


def test_band_power_from_precomputed_powers_equals_from_signal():
    g = torch.Generator().manual_seed(1)
    wins = torch.randn(3, 2, 128, dtype=torch.float64, generator=g)
    from_signal, from_powers = BandPower(relative=True), BandPower(relative=True)
    for m in (from_signal, from_powers):
        m.set_dtype(torch.float64)
    from_signal.update(wins)
    from_powers.update(powers=band_powers(*welch_psd(wins[0]), relative=True))  # one (layers, bands) window
    from_powers.update(powers=band_powers(*welch_psd(wins[1:]), relative=True))  # a batch of two
    torch.testing.assert_close(from_powers.compute(), from_signal.compute())
    assert from_powers.count.item() == 3
    with pytest.raises(ValueError, match="one of `signal` or `powers`, got both"):
        from_powers.update(wins[0], powers=torch.zeros(2, 5))
    with pytest.raises(ValueError, match="one of `signal` or `powers`, got neither"):
        from_powers.update()
    with pytest.raises(ValueError, match=r"`powers` must be \(layers, 5\)"):
        from_powers.update(powers=torch.zeros(2, 4))


def test_band_power_before_any_window_is_undefined():
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert BandPower(num_layers=2).compute().isnan().all()


def test_band_power_bad_config():
    with pytest.raises(ValueError, match=r"band `delta` .* resolution 12.5 Hz"):
        BandPower(nperseg=16)
    with pytest.raises(ValueError, match="`num_layers` must be a positive int"):
        BandPower(num_layers=0)
    with pytest.raises(ValueError, match=r"`signal` must be \(layers, W\)"):
        BandPower().update(torch.zeros(128))


def test_state_accuracy_by_hand():
    m = StateAccuracy()
    m.update(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]))
    m.update(torch.tensor([2, 3, 3, 1]), torch.tensor([2, 3, 0, -1]))  # -1: ignored
    cm = np.zeros((4, 4), dtype=np.int64)
    for p, t in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 2), (3, 3), (3, 0)]:
        cm[t, p] += 1
    assert m.confusion_matrix().numpy().tolist() == cm.tolist()
    assert m.compute().item() == pytest.approx(5 / 7)
    assert m.balanced_accuracy().item() == pytest.approx((1 / 2 + 2 / 3 + 1 + 1) / 4)
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert m.compute().item() == 0.0
    assert m.confusion_matrix().sum() == 0


def test_state_accuracy_scores_and_errors():
    m = StateAccuracy(num_states=2)
    m.update(torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), torch.tensor([0, 1, 1]))
    assert m.compute().item() == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="`num_states` must be an int >= 2"):
        StateAccuracy(num_states=1)
    with pytest.raises(ValueError, match="`preds` must be"):
        m.update(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long))
