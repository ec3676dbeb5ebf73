r"""Drawing panel figures off the training loop: one background process renders them.

A figure costs 65-200 ms of matplotlib on one CPU core (``benchmarks/overhead_clients.py
--figures``), 7-40 of them per validation epoch, and matplotlib holds Python's GIL: drawn in a
thread of the training process it slowed a 100-step ResNet fit 2.6x (measured while writing this;
a thread is no way out). So the callbacks describe a figure as a :class:`Drawing` (the name of a
:mod:`~nn_neuroimaging_lightning.panels.figures` builder and its numpy arguments) and the
:class:`~nn_neuroimaging_lightning.panels.sink.PanelSink` hands it to one renderer process per
training process, which builds, draws and encodes it and sends the pixels back; a sender thread
writes the drawings to the renderer's stdin and a reader thread gives the pixels to the loggers
under the figure's own step. The training thread's share is pickling the arguments (well under a
millisecond for the panels' arrays).

Decisions:

- **A subprocess of ``python -m nn_neuroimaging_lightning.panels.worker``**, not
  :mod:`multiprocessing`: ``spawn`` re-imports the user's ``__main__`` (a training script without
  a ``__main__`` guard would train again), ``fork`` of a process with CUDA or OpenMP threads can
  deadlock. The renderer imports numpy and matplotlib only (the package's ``__init__`` is lazy),
  runs at a lower priority (``os.nice(5)``) so that it yields to the training loop and its data
  loaders, and exits when its stdin closes (the training process ended).
- **Where it cannot start** (no ``sys.executable``, a sandbox without subprocesses) or once it
  died, figures are drawn in the training thread as before, with one notice. Set
  ``NN_NEUROIMAGING_RENDER=inline`` to always draw them there (debugging a figure).
- **Nothing is lost**: the callbacks wait for their pending figures at ``teardown`` and on an
  exception (:meth:`PanelSink.wait`), up to :data:`WAIT_S` seconds; a figure whose builder raised
  becomes one warning naming its tag and the error (a panel never ends the fit).
- **The waiting thread draws too.** The renderer is sent at most :data:`IN_FLIGHT` drawings at a
  time (one being drawn, one ready), the rest wait in this process; a thread that waits for them
  (:meth:`FigureWorker.help`, from :meth:`PanelSink.wait` at ``teardown``) draws those not sent
  yet itself, so that the last epoch's figures are drawn by two processes while the fit ends
  instead of one (the training thread has nothing else to do then). On 2 cores a fit of the
  reference CNN or the ResNet with the three callbacks at defaults took 0.80-0.91 of its time
  before (``benchmarks/ab_commits.py``, ``benchmarks/README.md``). A tag's figures are still
  written in the order they were given (:class:`~nn_neuroimaging_lightning.panels.sink.PanelSink`).
- **A tag's next figure is drawn in place.** The renderer keeps the figure of each tag (all kinds
  but the phase timeline) and puts the next epoch's values into it (:class:`Kept`), the same pixels
  as a new figure at about half the cost; the thread that helps at teardown builds its share anew.
"""

from __future__ import annotations

import inspect
import os
import pickle
import queue
import struct
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Dict, Mapping, Optional, Tuple


__all__ = ["Drawing", "FigureWorker", "IN_FLIGHT", "Kept", "WAIT_S", "shared_worker", "shutdown"]

#: Seconds :meth:`PanelSink.wait` waits for figures still being drawn before it gives up on them.
WAIT_S = 300.0
#: Drawings sent to the renderer and not answered yet, at most: one being drawn and one ready to be.
IN_FLIGHT = 2
_ENV = "NN_NEUROIMAGING_RENDER"


def _host(value: Any) -> Any:
    """Tensors to numpy (the renderer does not import torch); containers element by element."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        return value.detach().cpu().numpy()
    if isinstance(value, Mapping):
        return {k: _host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host(v) for v in value)
    return value


@dataclass(frozen=True)
class Drawing:
    """A figure described by its builder in :mod:`~nn_neuroimaging_lightning.panels.figures` and
    its arguments: what the renderer process needs to draw it.

    Example::

        >>> import numpy as np
        >>> from nn_neuroimaging_lightning.panels import figures as PF
        >>> d = Drawing.of(PF.heatmap_figure, np.zeros((2, 2)), "phi")
        >>> d.builder, type(d.build()).__name__
        ('heatmap_figure', 'Figure')
    """

    builder: str
    args: Tuple[Any, ...] = ()
    kwargs: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> "Drawing":
        """The drawing of ``fn(*args, **kwargs)``; ``fn`` must be a public builder of ``panels.figures``.

        Raises:
            ValueError: If ``fn`` is not one of ``panels.figures.__all__``.
        """
        from nn_neuroimaging_lightning.panels import figures

        name = getattr(inspect.unwrap(fn), "__name__", repr(fn))  # unwrap: a profiler's timed wrapper
        known = getattr(figures, name, None) if name in figures.__all__ and name.endswith("_figure") else None
        if known is None or inspect.unwrap(known) is not inspect.unwrap(fn):
            builders = ", ".join(n for n in figures.__all__ if n.endswith("_figure"))
            raise ValueError(f"`fn` must be a figure builder of panels.figures ({builders}), got {name}.")
        return cls(name, tuple(_host(a) for a in args), {k: _host(v) for k, v in kwargs.items()})

    def build(self) -> Any:
        """The matplotlib figure (in whichever process calls this)."""
        from nn_neuroimaging_lightning.panels import figures

        return getattr(figures, self.builder)(*self.args, **self.kwargs)


def draw(drawing: Drawing) -> Any:
    """Build, render and release ``drawing``: a :class:`~nn_neuroimaging_lightning.panels.rendering.Rendered`."""
    from nn_neuroimaging_lightning.panels.rendering import release, render

    fig = drawing.build()
    try:
        return render(fig)
    finally:
        release(fig)


class Kept:
    """The renderer process's latest figure of each tag, drawn again in place for the tag's next drawing.

    A density, zeta, tract, spectrogram, spectrum or consistency figure of the next validation epoch
    differs from the last one in its values only, so
    :func:`~nn_neuroimaging_lightning.panels.figures.refill` puts them into the kept figure instead
    of building, laying out and releasing a new one: the same pixels (``tests/panels/test_worker.py``,
    ``tests/panels/test_figures.py``) at about half the cost (``benchmarks/overhead_clients.py
    --figures``: an 8x8x4 zeta map 60 -> 31 ms, a tract matrix 46 -> 23 ms). A drawing that changes
    more than the values (another shape, title, missing cells) is built anew and kept in its place.
    At most ``most`` figures are kept, the first tags to come: 2.6 MiB each (artists and the Agg
    canvas with its pixel buffer, measured on 32 zeta maps and tract matrices), so 24 hold 62 MiB
    in the renderer process, never in the training process; the default covers every client of
    ``demo/clients.py`` (8-18 such figures per epoch); a later tag is built anew each time.

    Example::

        >>> import numpy as np
        >>> from nn_neuroimaging_lightning.panels import figures as PF
        >>> kept = Kept()
        >>> first = kept.draw("nn_fmri/fc1/density", Drawing.of(PF.heatmap_figure, np.zeros((2, 2)), "phi"))
        >>> again = kept.draw("nn_fmri/fc1/density", Drawing.of(PF.heatmap_figure, np.ones((2, 2)), "phi"))
        >>> first.size == again.size, len(kept)
        (True, 1)
    """

    def __init__(self, most: int = 24) -> None:
        self.most = most
        self._figs: Dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self._figs)

    def draw(self, tag: Optional[str], drawing: Drawing) -> Any:
        """``drawing`` rendered (a :class:`~nn_neuroimaging_lightning.panels.rendering.Rendered`); a builder's error propagates."""
        from nn_neuroimaging_lightning.panels.figures import refill
        from nn_neuroimaging_lightning.panels.rendering import release, render

        if tag is None:
            return draw(drawing)
        fig = self._figs.pop(tag, None)
        if fig is not None:
            try:
                again = refill(fig, drawing.builder, *drawing.args, **drawing.kwargs)
            except BaseException:  # invalid arguments: the builder's error, reported like a new figure's
                release(fig)
                raise
            if not again:
                release(fig)
                fig = None
        if fig is None:
            fig = drawing.build()
        try:
            out = render(fig)
        except BaseException:
            release(fig)
            raise
        if len(self._figs) < self.most and _refillable(fig):
            self._figs[tag] = fig
        else:
            release(fig)
        return out

    def clear(self) -> None:
        """Release every kept figure."""
        from nn_neuroimaging_lightning.panels.rendering import release

        figs, self._figs = self._figs, {}
        for fig in figs.values():
            release(fig)


def _refillable(fig: Any) -> bool:
    from nn_neuroimaging_lightning.panels import figures

    return hasattr(fig, figures._REFILL)


def _drawn(drawing: Drawing, kept: Optional[Kept] = None, tag: Optional[str] = None) -> Tuple[Any, Optional[str]]:
    """``(the drawing rendered, None)``, or ``(None, the error as text)`` when its builder raised: what a ``done`` gets.

    With ``kept``, the tag's kept figure is drawn again in place where it can be (:class:`Kept`)."""
    try:
        return (draw(drawing) if kept is None else kept.draw(tag, drawing)), None
    except Exception as err:  # reported to the sink as one warning, not a dead renderer
        return None, f"{type(err).__name__}: {err}"


# ---------------------------------------------------------------------------------- the pipe
# A frame is the job number, the payload's length (8 bytes each, big-endian) and the pickled
# ``(tag, payload)`` (the renderer's answers: ``(None, result)``); the job number travels in the
# head so that a frame can be pickled before it has one.
def _frame(obj: Any) -> bytes:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return struct.pack(">Q", len(data)) + data


def _send(out: BinaryIO, job: int, obj: Any) -> None:
    out.write(struct.pack(">Q", job) + _frame(obj))
    out.flush()


def _receive(inp: BinaryIO) -> Tuple[int, Any, Any]:
    head = inp.read(16)
    if len(head) < 16:
        raise EOFError
    job, n = struct.unpack(">QQ", head)
    data = inp.read(n)
    if len(data) < n:
        raise EOFError
    tag, payload = pickle.loads(data)
    return job, tag, payload


class FigureWorker:
    """The renderer process and the thread that reads its results.

    :meth:`submit` queues a :class:`Drawing`; ``done(rendered, error)`` is called from the reader
    thread once it is drawn (``error`` is the builder's exception text, else ``None``), or with
    ``(None, None)`` when the process ended before drawing it. Once the process cannot start or
    has ended (it is not restarted), :meth:`submit` returns ``False`` and the caller draws inline.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # the process, the jobs, the failure
        self._answered = threading.Condition(self._lock)  # a result came back (or the process ended)
        # (process, job, frame, drawing) for the renderer's stdin, written by one sender thread in job
        # order, at most IN_FLIGHT unanswered at a time; the ones not sent yet may be drawn by `help`
        self._outbox: "queue.SimpleQueue[Optional[Tuple[subprocess.Popen, int, bytes, Drawing]]]" = queue.SimpleQueue()
        self._in_flight = 0
        self._sender: Optional[threading.Thread] = None
        self._proc: Optional[subprocess.Popen] = None
        self._jobs: Dict[int, Callable[[Any, Optional[str]], None]] = {}
        self._next = 0
        self._failed: Optional[str] = None

    @property
    def failed(self) -> Optional[str]:
        """Why figures are drawn inline (``None`` while the renderer process works)."""
        if os.environ.get(_ENV, "") == "inline":
            return f"{_ENV}=inline"
        return self._failed

    def _start(self) -> bool:
        if os.environ.get(_ENV, "") == "inline":  # read at every figure: it may be set after the renderer started
            return False
        if self._proc is not None:
            if self._proc.poll() is None:
                return True
            self._die(f"the renderer process ended (exit code {self._proc.poll()})")  # not restarted: inline from now on
        if self.failed is not None:
            return False
        try:
            env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="agg")
            self._proc = subprocess.Popen([sys.executable, "-m", "nn_neuroimaging_lightning.panels.worker"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        except (OSError, ValueError) as err:
            self._failed = f"the renderer process did not start ({type(err).__name__}: {err})"
            return False
        threading.Thread(target=self._read, args=(self._proc,), name="nn-neuroimaging-figures", daemon=True).start()
        self._sender = threading.Thread(target=self._write, args=(self._proc,), name="nn-neuroimaging-figures-out", daemon=True)
        self._sender.start()
        return True

    def submit(self, drawing: Drawing, done: Callable[[Any, Optional[str]], None], tag: Optional[str] = None) -> bool:
        """Queue ``drawing``; ``False`` if there is no renderer (the caller draws it inline).

        ``tag`` names the panel: the renderer keeps its figure and draws the tag's next one in place (:class:`Kept`).

        The training thread only pickles the drawing: a sender thread writes the frames to the
        renderer's stdin. Written here, a frame larger than the pipe's buffer (a tract matrix of
        256 x 256 regions is 512 KiB) waited until the renderer had drawn every figure before it:
        ~250 ms per validation epoch of the reference CNN (``benchmarks/overhead_clients.py``). No
        lock is held while the pipe is written: the reader thread takes ``self._lock`` for every
        result, and the renderer stops reading drawings while its result waits in a full pipe, so a
        writer holding it would deadlock all three (seen on a ResNet fit's zeta panels).
        """
        try:
            frame = _frame((tag, drawing))  # pickled before anything is queued or written
        except Exception:  # not picklable (PicklingError, TypeError, AttributeError ...): drawn inline
            return False
        with self._lock:
            if not self._start():
                return False
            proc, job = self._proc, self._next
            self._next += 1
            self._jobs[job] = done
            self._outbox.put((proc, job, struct.pack(">Q", job) + frame, drawing))  # in job order: under the lock
        return True

    def help(self) -> int:
        """Draw, in the calling thread, the queued drawings not sent to the renderer yet; how many.

        For a thread that would otherwise only wait for them (:meth:`PanelSink.wait`). Each one's
        ``done`` is called here, as the reader thread would have.
        """
        drawn = 0
        while True:
            try:
                item = self._outbox.get_nowait()
            except queue.Empty:
                return drawn
            if item is None:  # `close`'s sentinel: the sender's
                self._outbox.put(None)
                return drawn
            proc, job, _, drawing = item
            with self._lock:
                done = self._jobs.pop(job, None) if proc is self._proc else None
            if done is None:  # answered already (the process died)
                continue
            done(*_drawn(drawing))
            drawn += 1

    def _write(self, proc: subprocess.Popen) -> None:
        # the sender thread of `proc`: frames to its stdin until the sentinel, or until the pipe breaks;
        # it takes a drawing off the queue only when the renderer has room for it, so that the queue
        # holds what `help` may draw instead. `close` lets it finish the queue: `proc`, not
        # `self._proc`, is checked.
        while True:
            with self._lock:
                while self._in_flight >= IN_FLIGHT and proc.poll() is None:
                    self._answered.wait(1.0)
            item = self._outbox.get()
            if item is None:
                return
            target, job, data, _ = item
            if target is not proc:  # queued for a process that is gone: its job was answered by _die
                continue
            with self._lock:
                if job not in self._jobs:  # drawn by `help` meanwhile, or answered by `_die`
                    continue
                self._in_flight += 1
            try:
                proc.stdin.write(data)
                proc.stdin.flush()
            except Exception as err:  # a broken pipe: the process is gone
                with self._lock:
                    if self._proc is proc:
                        self._die(f"the renderer process stopped ({type(err).__name__}: {err})")
                return

    def _die(self, why: str) -> None:
        # under self._lock: every pending figure is answered "not drawn, no error": its sink draws it inline
        self._failed = self._failed or why
        jobs, self._jobs = self._jobs, {}
        self._in_flight = 0
        self._answered.notify_all()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        for done in jobs.values():
            done(None, None)

    def _read(self, proc: subprocess.Popen) -> None:
        while True:
            try:
                job, _, (rendered, error) = _receive(proc.stdout)
            except Exception:  # EOF or a broken pipe: the process is gone
                with self._lock:
                    if self._proc is proc:
                        self._die(f"the renderer process ended (exit code {proc.poll()})")
                    self._answered.notify_all()  # a sender waiting for room sees the process gone
                return
            with self._lock:
                done = self._jobs.pop(job, None)
                self._in_flight = max(self._in_flight - 1, 0)
                self._answered.notify_all()
            if done is not None:
                done(rendered, error)


    def close(self, timeout: float = 30.0) -> None:
        """End the renderer process (its stdin closes; it exits after the drawing in hand)."""
        with self._lock:
            proc, self._proc = self._proc, None
            sender, self._sender = self._sender, None
        if proc is None:
            return
        self._outbox.put(None)  # the sender writes what is queued, then ends
        if sender is not None:
            sender.join(timeout)
        try:
            proc.stdin.close()
            proc.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()


_shared: Optional[FigureWorker] = None
_shared_lock = threading.Lock()


def shared_worker() -> FigureWorker:
    """The renderer of this process (started at the first figure, shared by every sink)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = FigureWorker()
        return _shared


def shutdown() -> None:
    """End this process's renderer (a later figure starts a new one); for benchmarks and tests."""
    global _shared
    with _shared_lock:
        worker, _shared = _shared, None
    if worker is not None:
        worker.close()


def main() -> None:
    """The renderer process: drawings in on stdin, ``(job, Rendered | None, error | None)`` out on stdout."""
    try:
        os.nice(5)
    except (AttributeError, OSError):
        pass
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a builder's print must not corrupt the pipe
    kept = Kept()
    while True:
        try:
            job, tag, drawing = _receive(inp)
        except EOFError:
            return
        _send(out, job, (None, _drawn(drawing, kept, tag)))


if __name__ == "__main__":
    main()
