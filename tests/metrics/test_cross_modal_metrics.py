import pytest
import torch

from nn_neuroimaging_lightning.functional.consistency import agreement, coherence, consistency, spearman
from nn_neuroimaging_lightning.metrics.cross_modal import Consistency, FlagAgreement, LayerCoherence, SpearmanRho


def _evaluations(n=5, layers=4, windows=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        out.append(
            dict(
                gamma=torch.rand(layers, generator=g),
                zeta_max=torch.rand(layers, generator=g),
                eeg_flags=torch.rand(windows, generator=g) > 0.5,
                fmri_flags=torch.rand(windows, generator=g) > 0.5,
                eeg_layers=torch.rand(layers, generator=g) > 0.6,
                fmri_layers=torch.rand(layers, generator=g) > 0.6,
            )
        )
    return out


def test_single_update_equals_functional():
    ev = _evaluations(1)[0]
    m_rho, m_agree, m_coh, m_cons = SpearmanRho(), FlagAgreement(), LayerCoherence(), Consistency()
    m_rho.update(ev["gamma"], ev["zeta_max"])
    m_agree.update(ev["eeg_flags"], ev["fmri_flags"])
    m_coh.update(ev["eeg_layers"], ev["fmri_layers"])
    m_cons.update(**ev)
    rho = spearman(ev["gamma"], ev["zeta_max"])
    agree = agreement(ev["eeg_flags"], ev["fmri_flags"])
    coh = coherence(ev["eeg_layers"], ev["fmri_layers"])
    torch.testing.assert_close(m_rho.compute(), rho)
    torch.testing.assert_close(m_agree.compute(), agree)
    torch.testing.assert_close(m_coh.compute(), coh)
    torch.testing.assert_close(m_cons.compute(), consistency(rho, agree, coh))


def test_accumulation_equals_functional_on_pooled_data():
    evs = _evaluations(5)
    m_rho, m_agree, m_coh, m_cons = SpearmanRho(), FlagAgreement(), LayerCoherence(), Consistency()
    for ev in evs:
        m_rho.update(ev["gamma"], ev["zeta_max"])
        m_agree.update(ev["eeg_flags"], ev["fmri_flags"])
        m_coh.update(ev["eeg_layers"], ev["fmri_layers"])
        m_cons.update(**ev)
    rho = torch.stack([spearman(ev["gamma"], ev["zeta_max"]) for ev in evs]).mean()
    agree = agreement(torch.cat([ev["eeg_flags"] for ev in evs]), torch.cat([ev["fmri_flags"] for ev in evs]))
    coh = coherence(torch.cat([ev["eeg_layers"] for ev in evs]), torch.cat([ev["fmri_layers"] for ev in evs]))
    torch.testing.assert_close(m_rho.compute(), rho)
    torch.testing.assert_close(m_agree.compute(), agree)
    torch.testing.assert_close(m_coh.compute(), coh)
    parts = m_cons.compute_components()
    torch.testing.assert_close(parts["rho"], rho)
    torch.testing.assert_close(parts["agreement"], agree)
    torch.testing.assert_close(parts["coherence"], coh)
    torch.testing.assert_close(parts["consistency"], consistency(rho, agree, coh))
    torch.testing.assert_close(m_cons.compute(), parts["consistency"])


def test_undefined_rho_is_skipped_and_makes_consistency_nan():
    m = SpearmanRho()
    m.update(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0]))  # undefined: 2 layers
    assert torch.isnan(m.compute())
    m.update(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]))
    assert m.compute().item() == pytest.approx(-1.0)

    c = Consistency()
    c.update(
        gamma=torch.tensor([1.0, 2.0]),
        zeta_max=torch.tensor([1.0, 2.0]),
        eeg_flags=torch.tensor([True]),
        fmri_flags=torch.tensor([False]),
        eeg_layers=torch.tensor([True, False]),
        fmri_layers=torch.tensor([True, False]),
    )
    # Issue 13 changed the rule: no defined rho makes the score NaN (it was (0.5 + 0 + 1) / 3).
    assert torch.isnan(c.compute())
    parts = c.compute_components()
    assert torch.isnan(parts["rho"]) and parts["agreement"].item() == 0.0 and parts["coherence"].item() == 1.0
    # A later evaluation with a defined rho makes it defined again (undefined ones are left out).
    c.update(
        gamma=torch.tensor([1.0, 2.0, 3.0]),
        zeta_max=torch.tensor([3.0, 2.0, 1.0]),
        eeg_flags=torch.tensor([True]),
        fmri_flags=torch.tensor([True]),
        eeg_layers=torch.tensor([True, False, False]),
        fmri_layers=torch.tensor([True, False, False]),
    )
    assert c.compute().item() == pytest.approx((0.0 + 0.5 + 1.0) / 3)


def test_reset_and_empty_state_values():
    m = FlagAgreement()
    m.update(torch.tensor([True]), torch.tensor([False]))
    assert m.compute().item() == 0.0
    m.reset()
    m.update(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))
    assert torch.isnan(m.compute())  # no window: undefined (issue 13; was 1.0)
    coh = LayerCoherence()
    coh.update(torch.zeros(0, dtype=torch.bool), torch.zeros(0, dtype=torch.bool))
    assert torch.isnan(coh.compute())  # no layer compared: undefined
    coh.update(torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool))
    assert coh.compute().item() == 1.0


def test_states_reduce_by_sum():
    # What DDP does with dist_reduce_fx="sum": merging two metrics' states equals one that saw all data.
    evs = _evaluations(4, seed=3)
    a, b, whole = Consistency(), Consistency(), Consistency()
    for i, ev in enumerate(evs):
        (a if i % 2 else b).update(**ev)
        whole.update(**ev)
    a.merge_state(b)
    torch.testing.assert_close(a.compute(), whole.compute())


def test_bad_input_metrics():
    with pytest.raises(TypeError, match="`eeg_flags` must be a bool tensor"):
        FlagAgreement().update(torch.tensor([1.0]), torch.tensor([True]))
    with pytest.raises(ValueError, match="same shape"):
        SpearmanRho().update(torch.ones(3), torch.ones(2))
