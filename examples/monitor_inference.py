"""NN-EEG on a served model in plain PyTorch (no Trainer): flag a corrupted and a drifted input stream.

A ``ReferenceCNN`` is trained for a few steps on synthetic images, then "served": batches arrive one
forward at a time inside ``with Monitor(model) as mon:``. The first ``--calibrate`` forwards are a
healthy stream and become the baseline. Then the stream goes wrong twice:

* at forward ``--corrupt-at`` one batch carries NaN pixels (a corrupted image);
* from forward ``--drift-at`` on, every input is scaled by ``--drift-scale`` (a broken
  normalisation upstream; x200 by default: the shared judge of `functional.anomalies` flags an
  explosion from about x100 on the reference CNN).

The monitor judges every forward when it returns (on CPU; one forward later on a GPU), and
``mon.check()`` compares the recent window's band powers with the calibration window's.
Printed: each flagged forward with its kind and layers, and the first flagged forward of the drift::

    python examples/monitor_inference.py
    python examples/monitor_inference.py --train-steps 5 --calibrate 64 --corrupt-at 70 --drift-at 80 --forwards 90  # tiny
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
import torch.nn.functional as F

from nn_neuroimaging_lightning.demo import ReferenceCNN, SyntheticImages
from nn_neuroimaging_lightning.monitor import Monitor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-steps", type=int, default=30, help="Adam steps before serving (0: random init)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--calibrate", type=int, default=64, help="healthy forwards that set the baseline")
    p.add_argument("--corrupt-at", type=int, default=100, help="forward whose batch has NaN pixels (-1: none)")
    p.add_argument("--drift-at", type=int, default=160, help="first forward of the drifted stream (-1: none)")
    p.add_argument("--drift-scale", type=float, default=200.0, help="input scale of the drifted stream")
    p.add_argument("--forwards", type=int, default=256, help="forwards served in all")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.calibrate > min(x for x in (args.corrupt_at, args.drift_at, args.forwards) if x >= 0):
        p.error("`--calibrate` must end before the stream goes wrong and before `--forwards`.")
    torch.set_num_threads(1)  # small batches: intra-op threads only contend
    torch.manual_seed(args.seed)

    model = ReferenceCNN()
    train = SyntheticImages(max(args.train_steps, 1) * args.batch_size, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(args.train_steps):
        x, y = train.images[i * args.batch_size:(i + 1) * args.batch_size], train.labels[i * args.batch_size:(i + 1) * args.batch_size]
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()

    stream = SyntheticImages(args.forwards * args.batch_size, seed=2).images.split(args.batch_size)  # (B, 3, 32, 32) each
    flagged = defaultdict(list)  # (forward, kind) -> layers
    with Monitor(model, calibrate=args.calibrate) as mon, torch.no_grad():
        for t, x in enumerate(stream):
            if t == args.corrupt_at:
                x = x.clone()
                x[0, :, 10:12, 10:12] = float("nan")  # a 2x2 patch of NaN pixels in one image
            if 0 <= args.drift_at <= t:
                x = x * args.drift_scale
            model(x)
        spectral = mon.check()
    for e in mon.events:
        flagged[(e.step, e.kind)].append(e.layer)

    print(f"tapped layers: {', '.join(mon.layers)}; calibrated on forwards 0-{args.calibrate - 1}; {mon.forwards} forwards served")
    runs = []  # consecutive forwards with the same kind and layers: [first, last, kind, layers]
    for (step, kind), layers in sorted(flagged.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if kind == "spectral_shift":
            continue
        if runs and runs[-1][2] == kind and runs[-1][3] == layers and runs[-1][1] == step - 1:
            runs[-1][1] = step
        else:
            runs.append([step, step, kind, layers])
    for first, last, kind, layers in sorted(runs):
        where = f"forward {first}" if first == last else f"forwards {first}-{last}"
        print(f"{where}: {kind} in {', '.join(layers)}")
    if args.corrupt_at >= 0:
        hit = sorted({e.step for e in mon.events if e.kind == "non_finite"})
        print(f"corrupted batch at forward {args.corrupt_at}: flagged non_finite at forward(s) {hit}")
    if args.drift_at >= 0:
        drift = [e.step for e in mon.events if e.kind == "explosion" and e.step >= args.drift_at]
        first = min(drift) if drift else None
        print(f"drift from forward {args.drift_at}: first flagged at forward {first}; "
              f"{len(set(drift))} of {args.forwards - args.drift_at} drifted forwards flagged")
    healthy = [e for e in mon.events if e.step < min(x for x in (args.corrupt_at, args.drift_at, args.forwards) if x >= 0)]
    print(f"events on the healthy stream after calibration: {len(healthy)}")
    print(f"spectral check of the last window: {', '.join(e.layer for e in spectral) or 'no shift'} "
          f"(Hellinger distances {', '.join(f'{k} {v:.2f}' for k, v in mon.spectral_distance.items())})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
