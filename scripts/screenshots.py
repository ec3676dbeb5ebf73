"""Screenshots of the TensorBoard panels of a short demo run, for the docs (``make screenshots``).

Runs ``nn-neuroimaging demo --max-epochs 2`` into a temporary log directory (or uses ``--log-dir``),
serves it with ``tensorboard --host 127.0.0.1`` on a free port, and saves PNGs of the key panels
with headless Chromium into ``docs/``:

==========================  =======================================================================
``band_powers.png``         Custom Scalars: band powers grouped per layer
``stacked_spectra.png``     Histograms filtered to the ``nn_eeg`` spectra (one spectrum per step)
``zeta_heatmap.png``        Images filtered to ``nn_fmri.*zeta`` (zeta heatmaps, significance dots)
``consistency.png``         Scalars: ``cross_modal/{consistency,rho,agreement,coherence}``
``spectrum.png``            Images: ``nn_eeg/spectrum`` (power spectrum per layer, bands shaded)
``phase_timeline.png``      Images: ``nn_eeg/phase_timeline``
``density_heatmap.png``     Images filtered to ``nn_fmri.*density`` (region densities)
``tractography.png``        Images filtered to ``nn_fmri/tract`` (region-to-region connection strength)
``gamma_vs_zeta.png``       Text: ``cross_modal/gamma_vs_zeta`` (per-layer table behind ``rho``)
``events.png``              Text: ``nn_eeg/events`` (anomaly events; empty for a healthy run: see ``--only``)
==========================  =======================================================================

TensorBoard is a single-page app that renders after its data requests return, so Chromium runs with
``--virtual-time-budget``: virtual time only advances while no request is pending, and the
screenshot is taken when the budget is used up. Each PNG is checked for content (not a blank page
or a spinner) and retaken once with a doubled budget if it looks empty. TensorBoard and Chromium are
started in their own process groups and always stopped at the end.

Usage::

    .venv/bin/python scripts/screenshots.py                   # demo run -> docs/*.png
    .venv/bin/python scripts/screenshots.py --log-dir runs    # screenshots of an existing run
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv's bin/ when run as .venv/bin/python

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
)

# (file name, URL fragment after "#": dashboard plus TensorBoard's hash-stored tag filter)
SHOTS: Tuple[Tuple[str, str, Optional[str]], ...] = (
    ("band_powers.png", "custom_scalars", None),
    ("stacked_spectra.png", "histograms", r"nn_eeg.*spectrum"),
    ("zeta_heatmap.png", "images", r"nn_fmri.*zeta"),
    ("consistency.png", "scalars", r"cross_modal/(consistency|rho|agreement|coherence)$"),
    ("spectrum.png", "images", r"^nn_eeg/spectrum$"),
    ("phase_timeline.png", "images", r"phase_timeline"),
    ("density_heatmap.png", "images", r"nn_fmri.*density"),
    ("tractography.png", "images", r"nn_fmri/tract"),
    ("gamma_vs_zeta.png", "text", r"gamma_vs_zeta"),
    ("events.png", "text", r"nn_eeg/events"),
)


def log(message: str) -> None:
    print(f"[screenshots] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def executable(name: str) -> List[str]:
    """The virtualenv's console script ``name``, else the one on PATH."""
    candidate = BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return [str(candidate)]
    found = shutil.which(name)
    if found:
        return [found]
    raise FileNotFoundError(f"`{name}` not found in {BIN} or on PATH; run `make venv` first.")


def run_demo(log_dir: Path, max_epochs: int, n_train: Optional[int], n_val: Optional[int]) -> None:
    cmd = executable("nn-neuroimaging") + [
        "demo", "--max-epochs", str(max_epochs), "--log-dir", str(log_dir), "--no-progress-bar",
    ]
    if n_train:
        cmd += ["--n-train", str(n_train)]
    if n_val:
        cmd += ["--n-val", str(n_val)]
    log("demo: " + " ".join(cmd))
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=str(REPO))
    log(f"demo finished in {time.perf_counter() - start:.1f} s")


def get(url: str, timeout: float = 5.0) -> Optional[bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read() if response.status == 200 else None
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def wait_for_tensorboard(proc: subprocess.Popen, base: str, timeout_s: float) -> None:
    """Until TensorBoard serves and has loaded some scalar tags of the run."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"tensorboard exited with code {proc.returncode} before serving {base}.")
        tags = get(base + "/data/plugin/scalars/tags")
        if tags is not None and len(tags) > 2:  # "{}" until the first run is loaded
            return
        time.sleep(0.5)
    raise TimeoutError(f"tensorboard did not serve the run at {base} within {timeout_s:.0f} s.")


def stop(proc: Optional[subprocess.Popen], name: str) -> None:
    """Stop a process started with ``start_new_session=True`` and its children (its group)."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
    log(f"warning: {name} (pid {proc.pid}) did not exit")


def url_for(base: str, dashboard: str, tag_filter: Optional[str]) -> str:
    fragment = dashboard
    if tag_filter:
        fragment += "&tagFilter=" + urllib.parse.quote(tag_filter, safe="")
    return f"{base}/#{fragment}"


def screenshot(chromium: str, url: str, path: Path, profile: Path, size: Tuple[int, int], budget_ms: int) -> None:
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
           f"--virtual-time-budget={budget_ms}", f"--screenshot={path}", url]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=budget_ms / 1000 + 90)
    except subprocess.TimeoutExpired:
        stop(proc, "chromium")
        raise TimeoutError(f"chromium did not finish the screenshot of {url}.") from None
    finally:
        stop(proc, "chromium")
    if proc.returncode != 0 or not path.is_file():
        tail = err.decode(errors="replace")[-2000:] if err else ""
        raise RuntimeError(f"chromium failed ({proc.returncode}) on {url}:\n{tail}")


def content_score(path: Path) -> float:
    """Fraction of coloured pixels below TensorBoard's toolbar and right of its sidebar.

    Coloured means ``max(r, g, b) - min(r, g, b) > 60``: chart lines, histograms and figures are
    coloured, the page chrome of the content area is grey. A blank page or a spinner scores 0, a
    dashboard whose charts have not been drawn yet about 0.002, drawn line charts 0.006 and more,
    images and histograms 0.04 and more.
    """
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)  # (H, W, 3)
    h, w, _ = rgb.shape
    area = rgb[int(0.17 * h):, int(0.26 * w):]
    return float(((area.max(-1) - area.min(-1)) > 60).mean())


def take_all(base: str, out_dir: Path, work: Path, size: Tuple[int, int], budget_ms: int, chromium: str,
             min_score: float, shots: Sequence[Tuple[str, str, Optional[str]]] = SHOTS) -> List[str]:
    problems: List[str] = []
    for i, (name, dashboard, tag_filter) in enumerate(shots):
        url = url_for(base, dashboard, tag_filter)
        target = out_dir / name
        score = 0.0
        for attempt, budget in enumerate((budget_ms, 2 * budget_ms)):
            start = time.perf_counter()
            tmp_png = work / f"{i}_{attempt}_{name}"
            screenshot(chromium, url, tmp_png, work / f"profile_{i}_{attempt}", size, budget)
            score = content_score(tmp_png)
            log(f"{name}: {url} -> coloured {score:.4f} ({time.perf_counter() - start:.1f} s)")
            if score >= min_score:
                break
        shutil.copyfile(tmp_png, target)
        if score < min_score:
            problems.append(f"{name} looks empty (coloured fraction {score:.4f} < {min_score}); check the run has that panel")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(REPO / "docs"), help="where the PNGs go (default: docs/)")
    parser.add_argument("--log-dir", help="an existing TensorBoard log dir: skip the demo and use it")
    parser.add_argument("--max-epochs", type=int, default=2, help="demo epochs (default 2)")
    parser.add_argument("--n-train", type=int, help="demo synthetic training images")
    parser.add_argument("--n-val", type=int, help="demo synthetic validation images")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--budget-ms", type=int, default=15000, help="Chromium virtual time budget per page")
    parser.add_argument("--min-score", type=float, default=0.004, help="content check threshold (see content_score)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, raw shots)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help=f"take only these shots (of {[n for n, _, _ in SHOTS]})")
    args = parser.parse_args(argv)
    shots = [s for s in SHOTS if not args.only or s[0] in args.only]
    unknown = sorted(set(args.only or ()) - {n for n, _, _ in SHOTS})
    if unknown:
        parser.error(f"--only: unknown shot(s) {unknown}; allowed: {[n for n, _, _ in SHOTS]}")

    if not (os.path.isfile(args.chromium) and os.access(args.chromium, os.X_OK)):
        log(f"Chromium not found at {args.chromium}; install it with `apt-get update && apt-get install -y chromium`.")
        return 2
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="nn_screenshots_"))
    tensorboard: Optional[subprocess.Popen] = None
    tb_log = None
    started = time.perf_counter()
    try:
        if args.log_dir:
            log_dir = Path(args.log_dir).resolve()
        else:
            log_dir = work / "logs"
            try:
                run_demo(log_dir, args.max_epochs, args.n_train, args.n_val)
            except subprocess.CalledProcessError as err:
                log(f"the demo failed with exit code {err.returncode}; no screenshots taken.")
                return 1
        runs = glob.glob(str(log_dir / "**" / "events.out.tfevents.*"), recursive=True)
        if not runs:
            log(f"no TensorBoard event files under {log_dir}.")
            return 1

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        tb_log = open(work / "tensorboard.log", "wb")
        cmd = executable("tensorboard") + ["--logdir", str(log_dir), "--port", str(port), "--host", "127.0.0.1"]
        log("tensorboard: " + " ".join(cmd))
        tensorboard = subprocess.Popen(cmd, stdout=tb_log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_tensorboard(tensorboard, base, timeout_s=120)
        except (RuntimeError, TimeoutError):
            tb_log.flush()
            sys.stderr.write((work / "tensorboard.log").read_text(errors="replace")[-3000:])
            raise
        problems = take_all(base, out_dir, work, (args.width, args.height), args.budget_ms, args.chromium,
                            args.min_score, shots)
        for name, _, _ in shots:
            log(f"wrote {out_dir / name}")
        for problem in problems:
            log("warning: " + problem)
        log(f"done in {time.perf_counter() - started:.1f} s")
        return 1 if problems else 0
    finally:
        stop(tensorboard, "tensorboard")
        if tb_log is not None:
            tb_log.close()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
