"""NN-EEG per-step anomaly judgement (plain PyTorch, no Lightning): baseline + judge -> events.

:class:`StepDetector` is the one code path of the per-forward judgement of
:class:`~nn_neuroimaging_lightning.NNEEGCallback` and :class:`~nn_neuroimaging_lightning.Monitor`:
the baseline coefficients of :func:`~nn_neuroimaging_lightning.functional.anomalies.baseline_coefficients`,
the judgement of :func:`~nn_neuroimaging_lightning.functional.anomalies.judge` (on host floats with
:func:`~nn_neuroimaging_lightning.functional.anomalies.judge_score_host` on CPU), and the events
(``non_finite``, ``explosion``, ``collapse``) of a judged sample. Which baseline a sample is judged
against is the caller's: the recent training samples (:meth:`StepDetector.train_baseline`), the samples of
the same inference run before it (:meth:`StepDetector.run_baseline`), or a calibration window
(:meth:`StepDetector.baseline`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from nn_neuroimaging_lightning._host import HostMirror
from nn_neuroimaging_lightning.eeg.recorder import TrainingHistory
from nn_neuroimaging_lightning.events import AnomalyEvent
from nn_neuroimaging_lightning.functional import anomalies as FA
from nn_neuroimaging_lightning.taps import RingBuffer

__all__ = ["Baseline", "StepDetector", "Verdict"]

# Training samples between refreshes of the explosion/collapse baseline (median/MAD of the
# training history): the per-step judgement is then a handful of element-wise ops on (layers,).
# 16, not 8: each refresh costs ~400 us in a reference-CNN step (judgement 85 -> 65 us per step);
# the median/MAD of a 128-sample history moves little in 16 samples.
REFRESH = 16
_TINY = 1e-30  # `inv` of a layer that is not judged (as in functional.anomalies.baseline_coefficients)


def _host_view(t: Tensor) -> np.ndarray:
    """A CPU tensor as numpy without a host sync; bf16 (which numpy lacks) is widened to float32 first."""
    t = t.detach()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


class Baseline:
    """``(neg_med, inv, floor)`` judgement coefficients, each ``(layers,)`` on the samples' device.

    ``log(x) * inv + neg_med`` is the robust z-score divided by ``explosion_z``; ``floor / x >= 1`` is a
    collapse. :meth:`host` gives them as lists of Python floats (CPU only), computed once.
    """

    __slots__ = ("coefficients", "_host")

    def __init__(self, coefficients: Tuple[Tensor, Tensor, Tensor]) -> None:
        self.coefficients = coefficients
        self._host: Optional[Tuple[List[float], List[float], List[float]]] = None

    def host(self) -> Tuple[List[float], List[float], List[float]]:
        if self._host is None:
            self._host = tuple(t.numpy().tolist() for t in self.coefficients)  # type: ignore[assignment]
        return self._host  # type: ignore[return-value]


class Verdict(NamedTuple):
    """A judged sample on the host: per-layer flags and scores, and the caller's ``tag``."""

    tag: Any
    non_finite: np.ndarray  # (layers,) bool
    exploded: np.ndarray  # (layers,) bool
    collapsed: np.ndarray  # (layers,) bool
    e: np.ndarray  # (layers,) z / explosion_z
    c: np.ndarray  # (layers,) floor / x
    loss_bad: bool  # the loss is not finite

    @property
    def flags(self) -> np.ndarray:
        """``(3, layers)`` bool: non_finite, explosion, collapse."""
        return np.stack([self.non_finite, self.exploded, self.collapsed])

    def any(self) -> bool:
        return bool(self.loss_bad or self.non_finite.any() or self.exploded.any() or self.collapsed.any())


class StepDetector:
    r"""Judge each new ``(layers,)`` activity sample for non-finite values, explosion and collapse.

    .. math::
        e_l = \frac{\log s_l - m_l}{s_l^{\mathrm{MAD}}\, z^*} > 1 \;(\text{explosion}), \qquad
        c_l = \frac{\max(r\, b_l,\ a)}{s_l} \ge 1 \;(\text{collapse})

    The score of a sample is :math:`\max_l \max(e_l, c_l)` clamped to ``[0, 10]`` (10 for a
    non-finite activity or loss), so ``score >= 1`` is an anomaly. On CPU the arithmetic runs on
    host floats read through numpy views (no dispatch, no sync) and the verdict is known at once; on
    an accelerator it runs on the device and ``[x, e, c, loss]`` reaches the host through a lagged
    non-blocking copy (:class:`~nn_neuroimaging_lightning._host.HostMirror`).

    Args:
        names: the layers' names, in sample row order.
        explosion_z: robust z-score of log-activity above which a layer explodes.
        collapse_ratio: activity at or below this fraction of the baseline median is a collapse.
        min_history: finite baseline samples a layer needs before it is judged.
        history_size: length of the training-sample history (:meth:`train_baseline`); 0 for none.
        source: the ``source`` of the events.

    Example::

        >>> det = StepDetector(["a", "b"], min_history=4)
        >>> base = det.baseline(torch.ones(2, 16))
        >>> score, verdict = det.judge(torch.tensor([1.0, 500.0]), base, tag=3)
        >>> [(e.step, e.layer, e.kind) for e in det.events(verdict, "train")]
        [(3, 'b', 'explosion')]
    """

    def __init__(
        self,
        names: Sequence[str],
        *,
        explosion_z: float = FA.EXPLOSION_Z,
        collapse_ratio: float = FA.COLLAPSE_RATIO,
        min_history: int = FA.MIN_HISTORY,
        history_size: int = 0,
        source: str = "nn_eeg",
    ) -> None:
        self.names = list(names)
        self.explosion_z, self.collapse_ratio, self.min_history = explosion_z, collapse_ratio, min_history
        self.source = source
        self.history = TrainingHistory(len(self.names), history_size) if history_size else None
        self.mirror = HostMirror()
        self._train: Optional[Baseline] = None
        self._since_refresh = 0
        # (run identity or None, run length when computed, baseline)
        self._run: Optional[Tuple[Any, int, Baseline]] = None
        self._fired: Optional[Tuple[Tuple[bool, ...], Tensor]] = None  # which layers have fired, on device

    # ------------------------------------------------------------------ baselines
    def baseline(self, history: Tensor, valid: Optional[Tensor] = None, fired: Optional[Sequence[int]] = None) -> Baseline:
        """The coefficients of a ``(layers, n)`` history (``valid``: usable entries).

        A layer with fewer than ``min_history`` usable samples, or a zero in ``fired`` (the
        forward counts of the taps: a module that never ran has no signal to judge), is not judged.
        """
        judged = None
        if fired is not None:
            key = tuple(c > 0 for c in fired)
            if self._fired is None or self._fired[0] != key or self._fired[1].device != history.device:
                self._fired = (key, torch.tensor(key, device=history.device))  # changes once per layer at most
            judged = self._fired[1]
        neg_med, inv, floor, _ = FA.baseline_coefficients(
            history, valid, explosion_z=self.explosion_z, collapse_ratio=self.collapse_ratio, min_count=self.min_history, judged=judged
        )
        return Baseline((neg_med, inv, floor))

    def train_baseline(self, device: torch.device, fired: Optional[Sequence[int]] = None) -> Baseline:
        """The baseline of the recent training samples, recomputed every ``REFRESH`` of them."""
        if self._train is None or self._since_refresh >= REFRESH:
            self._train = self.baseline(self.history.view(device), fired=fired)
            self._since_refresh = 0
        return self._train

    def run_baseline(self, x: Tensor, run: Any, run_len: int, ring: RingBuffer, fired: Optional[Sequence[int]] = None) -> Baseline:
        """The baseline of an inference sample: the samples of its run before it (weights change between runs, not within one).

        Args:
            x: the ``(layers,)`` sample being judged, the newest of ``ring``.
            run: the run's identity (a new identity recomputes the baseline).
            run_len: samples of the run so far, ``x`` included.
            ring: the ring buffer holding them.
            fired: the taps' forward counts.

        Fewer than ``min_history`` earlier samples judge no layer; from the first baseline that can
        judge, recomputed every ``REFRESH`` samples (the median/MAD of every step cost ~320 us of a
        reference-CNN validation step).
        """
        held, cached = min(run_len, ring.count), self._run
        if held - 1 < self.min_history:
            if cached is None or cached[0] is not None or cached[2].coefficients[0].device != x.device:
                self._run = (None, 0, Baseline((torch.zeros_like(x), torch.full_like(x, _TINY), torch.zeros_like(x))))
        elif cached is None or cached[0] != run or run_len - cached[1] >= REFRESH:
            self._run = (run, run_len, self.baseline(ring.ordered(held)[:, :-1], fired=fired))
        return self._run[2]

    # ------------------------------------------------------------------ judgement
    def judge(self, x: Tensor, base: Baseline, loss: Optional[Tensor] = None, tag: Any = None,
              learn: bool = False, sync: bool = False) -> Tuple[Any, Optional[Verdict]]:
        """Judge the ``(layers,)`` sample ``x``; returns its score and a verdict when one is on the host.

        On CPU the score is a host float and the verdict (``None`` for a healthy sample) is this
        sample's. On an accelerator the score is a device scalar and the verdict the newest landed
        copy (normally the previous sample's; with ``sync`` this sample's, waited for). ``learn``
        adds ``x`` to the training history.
        """
        if x.device.type == "cpu":
            # Python floats on numpy views (no aten dispatch, no sync): for a handful of layers a
            # loop of float ops costs less inside a training step than numpy's ufunc calls.
            xn = x.numpy()  # (layers,) shares memory
            loss_v = 0.0 if loss is None else float(_host_view(loss).reshape(-1)[0])
            top = FA.judge_score_host(xn.tolist(), *base.host())
            score = 10.0 if not (math.isfinite(top) and math.isfinite(loss_v)) else min(max(top, 0.0), 10.0)
            if learn:
                self.history.push(x, xn)
                self._since_refresh += 1
            if score < 1.0:
                return score, None
            _, _, e, c = FA.judge(x, base.coefficients)  # an anomalous step only: the scores per layer
            return score, self.verdict(np.concatenate([xn, e.numpy(), c.numpy(), [loss_v]]), tag)
        _, _, e, c = FA.judge(x, base.coefficients)  # (layers,) z / explosion_z and floor / x
        top = torch.maximum(e, c).amax()
        if loss is not None:
            loss = loss.detach().reshape(1).to(x.dtype)
            top = top + loss[0] * 0.0  # NaN when the loss is not finite
        else:
            loss = x.new_zeros(1)
        score = torch.nan_to_num(top, nan=10.0, posinf=10.0, neginf=0.0).clamp_(0.0, 10.0)
        self.mirror.push(torch.cat([x, e, c, loss]), tag=tag)
        if learn:
            self.history.push(x, None)
            self._since_refresh += 1
        return score, self.collect(wait=sync)

    def collect(self, wait: bool = False) -> Optional[Verdict]:
        """The verdict of a lagged accelerator copy once it has landed (``wait``: wait for it), else ``None``."""
        host, tag = self.mirror.flush() if wait else self.mirror.read()
        if host is None:
            return None
        self.mirror.clear()
        return self.verdict(host, tag)

    @staticmethod
    def verdict(host: np.ndarray, tag: Any) -> Verdict:
        """The verdict of a host copy of ``[x, e, c, loss]`` (numpy, no device access)."""
        n = (host.shape[0] - 1) // 3
        x, e, c, loss = host[:n], host[n:2 * n], host[2 * n:3 * n], host[3 * n]
        finite = np.isfinite(x)
        with np.errstate(invalid="ignore"):
            exploded = finite & (e > 1.0)
            collapsed = finite & (c >= 1.0)
        return Verdict(tag, ~finite, exploded, collapsed, e, c, not np.isfinite(loss))

    def events(self, verdict: Verdict, phase: str, error_phase: Optional[str] = None, step: Optional[int] = None,
               skip: Sequence[int] = ()) -> List[AnomalyEvent]:
        """The events of a verdict: ``non_finite`` (phase ``error_phase``), ``explosion`` (value: z),
        ``collapse`` (value: the activity relative to the baseline median when the relative floor decides).

        ``step`` defaults to the verdict's tag; layers in ``skip`` raise nothing.
        """
        step = verdict.tag if step is None else step
        error_phase = phase if error_phase is None else error_phase
        nf, ex, co = verdict.non_finite, verdict.exploded, verdict.collapsed
        if len(skip):
            keep = np.ones(len(nf), dtype=bool)
            keep[list(skip)] = False
            nf, ex, co = nf & keep, ex & keep, co & keep
        names, source = self.names, self.source
        events = [AnomalyEvent(step, error_phase, names[i], "non_finite", 1.0, source) for i in np.nonzero(nf)[0]]
        if verdict.loss_bad:
            events.append(AnomalyEvent(step, error_phase, "<loss>", "non_finite", 1.0, source))
        events += [AnomalyEvent(step, phase, names[i], "explosion", float(verdict.e[i] * self.explosion_z), source) for i in np.nonzero(ex)[0]]
        events += [AnomalyEvent(step, phase, names[i], "collapse", float(self.collapse_ratio / verdict.c[i]), source) for i in np.nonzero(co)[0]]
        return events

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> Dict[str, Any]:
        return {"train_history": None if self.history is None else self.history.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.history is not None and state.get("train_history") is not None:
            self.history.load_state_dict(state["train_history"])
            self._train = None  # recomputed from the restored history on the next step
