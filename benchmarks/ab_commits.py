"""Same-run A/B of two commits: whole fits of the callbacks at their defaults, interleaved, one process per fit.

Each fit runs in a fresh Python process whose ``PYTHONPATH`` is a git worktree of commit ``--old`` or
``--new`` (default: this checkout as it is), so both versions of the package are measured in the same
session, their fits interleaved in a random order per round: machine-load drift hits both alike.
The time is ``Trainer.fit``'s wall time inside the child (interpreter start-up and imports excluded).
Per commit and arm: the ratio to the plain fit of the same round and commit (median [bootstrap 95 %
CI]); and ``new / old``: the arm's fit time under ``--new`` over its time under ``--old`` in the same
round (1.00 = no change).

Run::

    python benchmarks/ab_commits.py --old HEAD~3 --clients cnn,resnet --arms plain,eeg,fmri --repeats 3
    python benchmarks/ab_commits.py --old HEAD --smoke   # < 1 minute
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

ARMS = ("plain", "eeg", "fmri", "all")


def _callbacks(arm: str) -> list:
    from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback

    if arm == "plain":
        return []
    if arm == "eeg":
        return [NNEEGCallback()]
    if arm == "fmri":
        return [NNfMRICallback()]
    if arm == "all":
        return [NNEEGCallback(), NNfMRICallback(), CrossModalCallback()]  # it finds the other two in the trainer
    raise ValueError(f"`arm` must be one of {ARMS}, got {arm!r}.")


def child(client: str, arm: str, steps: int, epochs: int, seed: int) -> None:
    """One fit in this process (the package imported from ``PYTHONPATH``); prints a JSON line."""
    from _clientfit import fit_client, quiet, set_threads

    import nn_neuroimaging_lightning

    quiet()
    set_threads(1)
    _, _, seconds = fit_client(client, seed, _callbacks(arm), steps_per_epoch=steps, epochs=epochs)
    print(json.dumps({"fit_s": seconds, "package": str(Path(nn_neuroimaging_lightning.__file__).parent)}))


def _worktree(ref: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), ref],
                   check=True, capture_output=True)
    return where


def _run(tree: Path, client: str, arm: str, steps: int, epochs: int, seed: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(HERE / "ab_commits.py"), "--child", client, arm, str(steps), str(epochs), str(seed)],
                         env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"the fit ({tree}, {client}, {arm}) failed:\n{out.stderr[-3000:]}")
    row = json.loads(out.stdout.strip().splitlines()[-1])
    if not row["package"].startswith(str(tree)):
        raise RuntimeError(f"the child imported the package from {row['package']}, not from {tree}")
    return float(row["fit_s"])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=5, metavar=("CLIENT", "ARM", "STEPS", "EPOCHS", "SEED"), help=argparse.SUPPRESS)
    p.add_argument("--old", default="HEAD", help="git ref of the earlier code")
    p.add_argument("--new", default="", help="git ref of the later code (default: this checkout's working tree)")
    p.add_argument("--clients", default="cnn,resnet", help="comma-separated clients of nn_neuroimaging_lightning.demo.clients")
    p.add_argument("--arms", default="plain,eeg,fmri", help=f"comma-separated, of {', '.join(ARMS)} (plain is always run)")
    p.add_argument("--steps", type=int, default=100, help="training steps per epoch")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="rounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="cnn, 8-step epochs, 1 epoch, 1 round, arms plain,eeg")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.child:
        client, arm, steps, epochs, seed = args.child
        child(client, arm, int(steps), int(epochs), int(seed))
        return 0
    from _clientfit import median_ci

    if args.smoke:
        args.clients, args.arms, args.steps, args.epochs, args.repeats = "cnn", "plain,eeg", 8, 1, 1
    clients = [c for c in args.clients.split(",") if c]
    arms = ["plain"] + [a for a in args.arms.split(",") if a and a != "plain"]
    for a in arms:
        if a not in ARMS:
            p.error(f"--arms: {a!r} is not one of {', '.join(ARMS)}")
    tmp = Path(tempfile.mkdtemp(prefix="nnl_ab_"))
    trees = {"old": _worktree(args.old, tmp / "old")}
    trees["new"] = _worktree(args.new, tmp / "new") if args.new else ROOT
    rng = random.Random(args.seed)
    fits: Dict[tuple, List[float]] = {}
    try:
        for r in range(args.repeats):
            jobs = [(v, c, a) for v in trees for c in clients for a in arms]
            rng.shuffle(jobs)
            for v, c, a in jobs:
                fits.setdefault((v, c, a), []).append(_run(trees[v], c, a, args.steps, args.epochs, args.seed + r))
                print(f"round {r + 1}/{args.repeats} {v:3s} {c:8s} {a:6s} {fits[(v, c, a)][-1]:7.2f} s", flush=True)
    finally:
        for v in ("old", "new"):
            if trees[v] != ROOT:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[v])], capture_output=True)
    rows = []
    cmd = "python benchmarks/ab_commits.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"\n`{cmd}` ({args.epochs} x {args.steps}-step epochs, {args.repeats} rounds)\n")
    print("| client | arm | old: ratio to plain | new: ratio to plain | new / old (the arm's fit time) |")
    print("|---|---|---|---|---|")

    def fmt(t: tuple) -> str:
        return f"{t[0]:.2f} [{t[1]:.2f}, {t[2]:.2f}]"

    for c in clients:
        for a in arms[1:]:
            cells = []
            for v in ("old", "new"):
                ratios = [x / y for x, y in zip(fits[(v, c, a)], fits[(v, c, "plain")])]
                cells.append(median_ci(ratios))
            change = median_ci([x / y for x, y in zip(fits[("new", c, a)], fits[("old", c, a)])])
            plain_change = median_ci([x / y for x, y in zip(fits[("new", c, "plain")], fits[("old", c, "plain")])])
            rows.append({"client": c, "arm": a, "old": cells[0], "new": cells[1], "new_over_old": change,
                         "plain_new_over_old": plain_change})
            print(f"| {c} | {a} | {fmt(cells[0])} | {fmt(cells[1])} | {fmt(change)} (plain: {fmt(plain_change)}) |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"args": vars(args), "fits": {"|".join(k): v for k, v in fits.items()}, "rows": rows},
                                             indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
