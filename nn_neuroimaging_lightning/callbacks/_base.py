"""Plumbing shared by the three callbacks: events, the events file, panels, logging, stopping."""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import asdict
from typing import Any, Callable, Deque, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from nn_neuroimaging_lightning import config as C
from nn_neuroimaging_lightning.events import EVENTS_FILENAME, AnomalyEvent, append_events
from nn_neuroimaging_lightning.panels.sink import PanelSink

__all__ = ["EVENTS_FILENAME", "AnomalyEvent", "MonitorCallback", "append_events", "log_dir"]

def _wrap_batch_hook(fn: Any, before: bool) -> Any:
    @functools.wraps(fn)
    def hook(self: "MonitorCallback", trainer: Trainer, pl_module: LightningModule, *args: Any, **kwargs: Any) -> Any:
        if before:
            self._note_batch_start(trainer, pl_module)
            return fn(self, trainer, pl_module, *args, **kwargs)
        try:
            return fn(self, trainer, pl_module, *args, **kwargs)
        finally:
            self._note_batch_end()

    hook._monitor_wrapped = True  # type: ignore[attr-defined]
    return hook


def _wrap_end_hook(fn: Any) -> Any:
    @functools.wraps(fn)
    def hook(self: "MonitorCallback", *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._wait_panels()

    hook._monitor_wrapped = True  # type: ignore[attr-defined]
    return hook


def log_dir(trainer: Trainer) -> str:
    """The directory of the run: the first logger's ``log_dir`` or the trainer's root dir."""
    for logger in trainer.loggers:
        path = getattr(logger, "log_dir", None)
        if path:
            return str(path)
    return str(trainer.default_root_dir)


class MonitorCallback(Callback):
    """Base of the three callbacks: bounded event list, events file, panels, logging, the stop gate.

    Subclasses set ``stop_on`` (anomaly kinds that stop the run) and ``panels`` (bool) in their
    constructor, and hold their :class:`~nn_neuroimaging_lightning.taps.LayerTaps` in ``_taps`` once
    set up (or override :meth:`_layer_taps`).
    """

    source = "nn_monitor"
    #: The structured config (a dataclass of :mod:`nn_neuroimaging_lightning.config`) of ``from_config``.
    config_class: Optional[type] = None
    stop_on: Sequence[str] = ()
    panels: bool = True
    #: Whether the callback judges a training step before its optimizer update (NN-EEG, in
    #: ``on_before_backward``): only then are the buffers snapshot at each batch start for the gate.
    judges_before_update: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Every subclass's own `on_train_batch_start` / `on_train_batch_end` is wrapped so that the
        # base knows the step of the batch (`trainer.global_step` during its forward) and when a
        # training batch is running, whichever hooks a subclass overrides (see `_event_step`).
        super().__init_subclass__(**kwargs)
        for name, before in (("on_train_batch_start", True), ("on_train_batch_end", False)):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_monitor_wrapped", False):
                setattr(cls, name, _wrap_batch_hook(fn, before))
        # ... and their `teardown` / `on_exception` end by waiting for the figures still being drawn
        # (the renderer process, `panels.worker`), so that the run's panels are written when the
        # fit returns.
        for name in ("teardown", "on_exception"):
            fn = cls.__dict__.get(name)
            if fn is not None and not getattr(fn, "_monitor_wrapped", False):
                setattr(cls, name, _wrap_end_hook(fn))

    def __init__(self, max_events: int = 1000, flag_history: Optional[int] = None) -> None:
        super().__init__()
        self._events: Deque[AnomalyEvent] = deque(maxlen=max_events)
        if flag_history is not None:
            #: ``(step, flagged layers)`` entries, oldest first (NN-EEG and NN-fMRI; the cross-modal callback reads them).
            self.flag_history: Deque[Tuple[int, FrozenSet[str]]] = deque(maxlen=flag_history)
        self._warned: set = set()  # keys of the one-time warnings (`_warn_once`)
        self._noticed_no_panels = False
        self._log_dir: Optional[str] = None
        self._is_global_zero = True
        self._sink: Optional[PanelSink] = None
        self._sink_loggers: List[Any] = []
        self._stopped_by: Optional[str] = None
        self._batch_step: Optional[int] = None  # trainer.global_step at the current training batch's start
        self._in_train_batch = False
        self._trainer_now: Optional[Trainer] = None
        self._veto = False  # skip the next optimizer update (a stop decided before it)
        self._stepped_in_batch = False  # an optimizer step already ran in this training batch
        self._buffer_snapshot: Optional[List[Tensor]] = None
        self._maxima: Dict[str, Any] = {}  # `_running_max`: per-step values folded between logs

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> "MonitorCallback":
        """Build the callback from a YAML file, a mapping or a DictConfig.

        Keys map one-to-one to the constructor's keyword arguments (see
        :mod:`nn_neuroimaging_lightning.config`, the dataclass in ``config_class``); ``overrides``
        win, e.g. callables.
        """
        return C.build(cls, config, **overrides)

    def _state_key_fields(self) -> Dict[str, Any]:
        """The constructor arguments that tell two instances apart in a checkpoint (``state_key``)."""
        return {}

    @property
    def state_key(self) -> str:
        """Lightning's key of this callback's checkpoint state, made once: Lightning reads it on
        every hook call (its profiler's action name), 3 callbacks x ~20 hooks per step."""
        key = self.__dict__.get("_state_key")
        if key is None:
            key = self.__dict__["_state_key"] = self._generate_state_key(**self._state_key_fields())
        return key

    @property
    def events(self) -> List[AnomalyEvent]:
        """The most recent anomaly events (bounded by ``max_events``), oldest first."""
        return list(self._events)

    def _remember_trainer(self, trainer: Trainer) -> None:
        self._log_dir = log_dir(trainer)
        self._is_global_zero = trainer.is_global_zero

    # ------------------------------------------------------------------ steps and the update gate
    def _note_batch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A training batch starts: remember its step; with ``stop_on``, snapshot the model's buffers."""
        self._batch_step = trainer.global_step
        self._in_train_batch = True
        self._trainer_now = trainer
        self._stepped_in_batch = False
        if self.stop_on and self.judges_before_update:
            # BatchNorm running statistics change in the forward, before any update: a poisoned forward
            # would leave NaN in them. Restored in `on_before_optimizer_step` when the update is vetoed.
            with torch.no_grad():
                self._buffer_snapshot = [b.detach().clone() for b in pl_module.buffers()]

    def _note_batch_end(self) -> None:
        self._in_train_batch = False

    def _event_step(self, trainer: Trainer) -> int:
        """The step an event found now belongs to: the training batch's step inside a training batch
        (``trainer.global_step`` during its forward, also after the optimizer step advanced it),
        else ``trainer.global_step``."""
        if self._in_train_batch and self._batch_step is not None:
            return self._batch_step
        return trainer.global_step

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        pass  # wrapped below: `_note_batch_start`

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        pass  # wrapped below: `_note_batch_end`

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        """Veto the update of a step whose forward or loss stopped the run (``stop_on``).

        The gate: a stop decided before the optimizer step of the batch (NN-EEG judges a training
        step in ``on_before_backward``) sets every gradient of the optimizer to ``None``, so
        ``optimizer.step()`` leaves those parameters (and their optimizer state) untouched, and the
        model's buffers (BatchNorm running statistics) are restored from the snapshot taken at the
        batch's start. The decision is already the same on every rank (``_maybe_stop`` reduces it),
        so every DDP rank skips the same update. With gradient accumulation the whole accumulated
        update is dropped (the poisoned micro-batch's gradients are in it); with manual optimization
        the gate acts at the first ``optimizer.step()`` after the judged ``manual_backward``.
        """
        self._stepped_in_batch = True
        if not self._veto:
            return
        self._veto = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
        snapshot, self._buffer_snapshot = self._buffer_snapshot, None
        if snapshot is not None:
            with torch.no_grad():
                for b, saved in zip(pl_module.buffers(), snapshot):
                    b.copy_(saved)

    def _record(self, events: List[AnomalyEvent]) -> None:
        """Keep the events and append them to the events file (global rank zero only).

        Inside a training batch, an event dated ``trainer.global_step`` read after that batch's
        optimizer step is dated with the batch's step (the global step of its forward). Events
        recorded after this or any other callback stopped the run (``trainer.should_stop``; e.g.
        in the validation loop Lightning runs on stopping) are marked ``after_stop``.
        """
        if not events:
            return
        trainer = self._trainer_now
        if self._in_train_batch and trainer is not None and self._batch_step is not None:
            for e in events:
                if e.step == trainer.global_step:
                    e.step = self._batch_step
        # after a stop by this callback or any other (NN-EEG's gate, EarlyStopping): Lightning's
        # end-of-run work (the validation it still runs, fMRI's evaluation in it) is marked
        if self._stopped_by is not None or (trainer is not None and trainer.should_stop):
            for e in events:
                e.after_stop = True
        self._events.extend(events)
        if self._is_global_zero and self._log_dir is not None:
            append_events(self._log_dir, events)

    @property
    def layers(self) -> List[str]:
        """Names of the tapped modules, in forward order (selection order before the first forward)."""
        taps = self._layer_taps()
        if taps is None:
            return []
        return [taps.names[i] for i in taps.forward_order()]

    def _layer_taps(self) -> Optional[Any]:
        """The callback's :class:`~nn_neuroimaging_lightning.taps.LayerTaps` (its ``_taps``), once set up."""
        return getattr(self, "_taps", None)

    def _panels(self, trainer: Trainer) -> Optional[PanelSink]:
        """The panel sink of the trainer's loggers on global rank zero, else ``None``.

        ``None`` too when ``panels=False`` or no logger takes panels (one notice per callback).
        """
        if not self.panels or not trainer.is_global_zero:
            return None
        loggers = list(trainer.loggers)
        if self._sink is None or self._sink_loggers != loggers:
            self._sink, self._sink_loggers = PanelSink(loggers), loggers
        if not self._sink and not self._noticed_no_panels:
            self._noticed_no_panels = True
            rank_zero_info(
                f"{type(self).__name__}: no logger in `trainer.loggers` takes panels (TensorBoardLogger, WandbLogger, MLFlowLogger and CSVLogger do); "
                "logging scalars only, skipping the rich panels (spectra, heatmaps, timelines)."
            )
        return self._sink or None

    def _wait_panels(self) -> None:
        """Wait for this callback's figures still in the renderer process (``PanelSink.wait``)."""
        if self._sink is not None:
            self._sink.wait()

    @_wrap_end_hook
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._finish(trainer)

    @_wrap_end_hook
    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._finish(trainer)

    def _finish(self, trainer: Trainer) -> None:
        """The end of a run (``teardown``, ``on_exception``): the taps come off, the panels are written out."""
        taps = self._layer_taps()
        if taps is not None:
            taps.detach()
            taps.discard()
        sink = self._panels(trainer)
        if sink is not None:
            sink.flush()

    def _maybe_stop(self, trainer: Trainer, events: List[AnomalyEvent]) -> None:
        """Set ``trainer.should_stop`` when an event's kind is in ``stop_on`` (on any rank: a collective)."""
        if not self.stop_on:
            return
        hit = next((e for e in events if e.kind in self.stop_on), None)
        if self._reduce_decision(trainer, hit is not None) and not trainer.should_stop:
            trainer.should_stop = True
            self._stopped_by = hit.kind if hit is not None else "another rank"
            if self._in_train_batch and not self._stepped_in_batch:
                self._veto = True  # decided before this batch's update: `on_before_optimizer_step` skips it
            where = f" in `{hit.layer}`" if hit is not None else ""
            step = hit.step if hit is not None else self._event_step(trainer)
            rank_zero_warn(f"{type(self).__name__} stopped the run at step {step}: {self._stopped_by}{where}.")

    def _running_max(self, name: str, value: Any, flagged: bool, trainer: Trainer, epoch_batches: int) -> Any:
        """Fold a per-step value (a float or a tensor) into its running max; the max to log now, or ``None``.

        Logged on the trainer's logging steps (every ``log_every_n_steps``, the steps Lightning
        writes to the loggers), on the epoch's last batch (``epoch_batches``: the batch's index in
        the epoch plus one, also right after a mid-epoch resume), and at once on a ``flagged`` step (so that ``trainer.callback_metrics``
        has it). The max is reset on logging steps and the last batch only, so the next written point
        holds a flag raised between logging steps. The logged curve misses no flagged step (except
        one on an epoch's last batch that is not a logging step: it is in the epoch value only), and
        the epoch's max, which ``EarlyStopping`` reads, is the same as with a ``pl_module.log`` on
        every step, which costs Lightning ~0.15-0.3 ms per call on CPU.
        """
        held = self._maxima.get(name)
        if held is None:
            held = value
        elif isinstance(value, Tensor) or isinstance(held, Tensor):
            held = torch.maximum(torch.as_tensor(held), torch.as_tensor(value))
        else:
            held = max(held, value)
        n_batches = trainer.num_training_batches
        last = n_batches != float("inf") and epoch_batches >= n_batches
        due = last or (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0
        self._maxima[name] = None if due else held
        return held if due or flagged else None

    @staticmethod
    def _log(pl_module: LightningModule, name: str, value: Any, **kwargs: Any) -> None:
        """``pl_module.log`` with the defaults our scalars need (one value per step, batch size 1).

        Under DDP nothing is synced (``sync_dist`` stays False unless a caller sets it): a synced
        log is a collective that every rank must make with the same names at the same point, and
        which names a rank logs can depend on what it saw (an undefined ``rho`` after a NaN on one
        rank, a state accuracy not computed yet). A mismatched collective hangs or aborts the run
        (a version that synced epoch-only scalars had a rank abort once in CI, in the DDP NaN
        test; not reproduced in 14 reruns, and this is the likely cause). The values
        that must agree are made equal before logging instead (zeta permutations are merged across
        ranks, the stop decision is reduced), the rest are the rank's own, and only rank 0's
        logger writes.
        """
        kwargs.setdefault("on_step", True)
        kwargs.setdefault("on_epoch", False)
        kwargs.setdefault("batch_size", 1)
        kwargs.setdefault("add_dataloader_idx", False)
        if isinstance(value, torch.Tensor) and value.dtype not in (torch.float32, torch.float64):
            value = value.float()
        pl_module.log(name, value, **kwargs)

    def _log_plot_scalars(self, trainer: Trainer, pl_module: LightningModule, tags: Sequence[str], values: Tensor,
                          **kwargs: Any) -> None:
        """Scalars to plot, ``values`` ``(n,)`` with one tag each, straight to the loggers (a logging step;
        ``kwargs`` go to :meth:`_log` when there is no logger, e.g. ``on_step=False, on_epoch=True`` in an epoch hook).

        One ``log_metrics`` call per logger (the host copy is allowed here): 20 ``pl_module.log``
        calls cost Lightning ~6 ms on CPU, ``log_metrics`` ~2.4 ms in a training step, every
        ``log_every_n_steps``. A logger's own ``log_metrics`` is the public way to honour its
        settings (a TensorBoardLogger's ``prefix``, which has no public accessor). They are plots,
        not values to monitor; with no logger at all they go through ``pl_module.log``, so
        ``trainer.callback_metrics`` is where they can be read.
        """
        if not trainer.loggers:
            for tag, value in zip(tags, values):
                self._log(pl_module, tag, value, **kwargs)
            return
        host = values.detach().float().cpu().numpy()
        metrics = {tag: float(v) for tag, v in zip(tags, host)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    @staticmethod
    def _reduce_decision(trainer: Trainer, decision: bool) -> bool:
        """True on every rank if any rank decided True (a collective: call it on all ranks)."""
        if trainer.world_size > 1:
            return bool(trainer.strategy.reduce_boolean_decision(decision, all=False))
        return decision

    def _warn_once(self, key: Any, message: Union[str, Callable[[], str]]) -> bool:
        """``rank_zero_warn(message)`` the first time ``key`` is seen; whether it warned. ``message`` may be a
        callable, called only then (a message that costs something to build)."""
        if key in self._warned:
            return False
        self._warned.add(key)
        rank_zero_warn(message if isinstance(message, str) else message())
        return True

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"events": [asdict(e) for e in self._events]}
        if hasattr(self, "flag_history"):
            state["flag_history"] = [(step, sorted(layers)) for step, layers in self.flag_history]
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the events; the rest of the state when the layers are known, else in ``setup``.

        Lightning restores callback state before ``setup`` when resuming, while the layers (and so
        the buffers the state fills) are only known in ``setup``: a subclass with layer-bound
        state implements ``_apply_state`` and ``_layers_ready`` and calls
        :meth:`_apply_pending_state` once its buffers exist.
        """
        self._events.clear()
        for e in state_dict.get("events", []):
            self._events.append(AnomalyEvent(**e))
        if hasattr(self, "flag_history") and "flag_history" in state_dict:
            self.flag_history.clear()
            self.flag_history.extend((int(step), frozenset(layers)) for step, layers in state_dict["flag_history"])
        if type(self)._apply_state is MonitorCallback._apply_state:
            return
        if self._layers_ready():
            self._apply_state(state_dict)
        else:
            self._pending_state = dict(state_dict)

    def _layers_ready(self) -> bool:
        """Whether the layer-bound buffers exist (the state can be applied now)."""
        return True

    def _apply_state(self, state: Dict[str, Any]) -> None:
        """Restore the layer-bound state (subclasses)."""

    def _apply_pending_state(self) -> None:
        """Apply a state loaded before ``setup`` (call once the buffers exist)."""
        pending, self._pending_state = getattr(self, "_pending_state", None), None
        if pending is not None:
            self._apply_state(pending)



MonitorCallback.on_train_batch_start = _wrap_batch_hook(MonitorCallback.on_train_batch_start, True)  # type: ignore[method-assign]
MonitorCallback.on_train_batch_end = _wrap_batch_hook(MonitorCallback.on_train_batch_end, False)  # type: ignore[method-assign]
