"""Cost of NN-fMRI at its defaults on the client zoo: ms per zeta evaluation and the whole-fit ratio.

For each client (``cnn``, ``resnet``, ``gpt2`` by default) and epoch length, interleaved pairs of fits
of one epoch (seeded, CPU, one torch thread) without and with ``NNfMRICallback()`` at its defaults
(counted zeta schedule, ``zeta_grid`` (2, 2, 4), ``probe_size`` 16, tractography on); the ratio is the
median over pairs of with / without whole-fit seconds, measured side by side in one run. The zeta
cost is ``self_time["zeta_seconds"] / zeta_evaluations`` (zeta and tractography of one evaluation).

Run::

    python benchmarks/fmri_clients.py --quick          # 25-step epochs, 1 pair per client
    python benchmarks/fmri_clients.py --steps 25 100 --pairs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _clientfit import fit_client, quiet, set_threads  # noqa: E402

from nn_neuroimaging_lightning.callbacks import NNfMRICallback  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", nargs="+", default=["cnn", "resnet", "gpt2"])
    parser.add_argument("--steps", nargs="+", type=int, default=[25, 100])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="25-step epochs, 1 pair")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.pairs = [25], 1
    set_threads(args.threads)
    quiet()
    warnings.filterwarnings("ignore")
    print("\n| client | steps/epoch | ms per zeta evaluation (median) | whole fit with / without (median of pairs) | layers with a map |")
    print("|---|---:|---:|---:|---|")
    for client in args.clients:
        for steps in args.steps:
            ratios, per_eval, mapped = [], [], ""
            for pair in range(args.pairs):
                _, _, base = fit_client(client, pair, [], steps_per_epoch=steps, epochs=1, logger=False)
                fmri = NNfMRICallback(panels=False)
                _, _, with_fmri = fit_client(client, pair, [fmri], steps_per_epoch=steps, epochs=1, logger=False)
                st = fmri.self_time
                ratios.append(with_fmri / base)
                per_eval.append(1e3 * st["zeta_seconds"] / max(st["zeta_evaluations"], 1))
                mapped = f"{len(fmri.zeta)}/{len(fmri.zeta_layers)}"
            print(f"| {client} | {steps} | {statistics.median(per_eval):.0f} | {statistics.median(ratios):.3f} | {mapped} |",
                  flush=True)


if __name__ == "__main__":
    main()
