"""Bring small device tensors (flags, scores) to the host without a per-step synchronisation.

On CPU a tensor already lives in host memory: ``Tensor.numpy()`` shares it without dispatching
``aten._local_scalar_dense``, so a decision can be read in the same step (0 steps of lag). On an
accelerator the values are copied into pinned host memory with ``non_blocking=True`` and a CUDA
event is recorded; the copy is read on a later step once the event has completed (normally the
next one), so the training stream never waits on the host.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch


class HostMirror:
    """Latest host copy of a device tensor of fixed shape, with at most one step of lag off-CPU.

    Example::

        >>> m = HostMirror()
        >>> m.push(torch.tensor([1.0, 0.0]), tag=7)
        >>> m.read()
        (array([1., 0.], dtype=float32), 7)
    """

    def __init__(self) -> None:
        self._host: Optional[torch.Tensor] = None
        self._event: Optional["torch.cuda.Event"] = None
        self._pending_tag: object = None
        self._ready: Optional[np.ndarray] = None
        self._ready_tag: object = None

    def push(self, value: torch.Tensor, tag: object = None) -> None:
        """Start moving ``value`` to the host; ``tag`` (e.g. the step) travels with it."""
        value = value.detach()
        if value.device.type == "cpu":
            # Ops on CPU are synchronous: the numbers are final once the op returned.
            self._ready, self._ready_tag = value.to(torch.float32).numpy().copy(), tag
            return
        self._collect()
        if self._host is None or self._host.shape != value.shape:
            self._host = torch.empty(value.shape, dtype=torch.float32, pin_memory=torch.cuda.is_available())
        self._host.copy_(value, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()
        self._pending_tag = tag

    def _collect(self) -> None:
        if self._event is not None and self._event.query():
            self._ready, self._ready_tag = self._host.numpy().copy(), self._pending_tag
            self._event = None

    def read(self) -> tuple[Optional[np.ndarray], object]:
        """The newest completed host copy and its tag, or ``(None, None)``; never blocks."""
        self._collect()
        return self._ready, self._ready_tag

    def clear(self) -> None:
        self._ready = self._ready_tag = None

    def flush(self) -> tuple[Optional[np.ndarray], object]:
        """Wait for any copy in flight (for epoch ends and teardown, never the per-step path)."""
        if self._event is not None:
            self._event.synchronize()
        return self.read()
