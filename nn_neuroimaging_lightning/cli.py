"""``nn-neuroimaging``: the demo job and run reports.

``nn-neuroimaging demo [--config FILE] [--max-epochs N] [--data-dir DIR] [--log-dir DIR]`` trains the
reference CNN on the embedded synthetic data (or a local CIFAR-10 binary copy) with all three
callbacks and writes a TensorBoard run; ``nn-neuroimaging report RUN_DIR`` prints a Markdown report
of a finished run, and ``nn-neuroimaging report RUN_DIR --html OUT.html`` writes it as one
self-contained HTML page with the figures (readable offline). ``python -m nn_neuroimaging_lightning``
does the same.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nn-neuroimaging", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{demo,report}")

    demo = sub.add_parser("demo", help="train the reference CNN with NN-EEG, NN-fMRI and cross-modal monitoring")
    demo.add_argument("--config", help="YAML file with `trainer`, `data`, `model`, `eeg`, `fmri`, `cross_modal` sections (see configs/demo.yaml)")
    demo.add_argument("--max-epochs", type=_positive_int, help="training epochs (default from the config: 8)")
    demo.add_argument("--data-dir", help="a local CIFAR-10 binary copy (cifar-10-batches-bin); default: synthetic data")
    demo.add_argument("--log-dir", help="where the TensorBoard run goes (default: runs)")
    demo.add_argument("--seed", type=int, help="seed for data, model and training (default 0)")
    demo.add_argument("--n-train", type=_positive_int, help="synthetic training images")
    demo.add_argument("--n-val", type=_positive_int, help="synthetic validation images")
    demo.add_argument("--no-progress-bar", action="store_true", help="hide Lightning's progress bar")

    report = sub.add_parser("report", help="print a Markdown report of a finished run, or write it as HTML")
    report.add_argument("run_dir", help="a run directory (the one holding events.out.tfevents.* and events.jsonl)")
    report.add_argument("--html", metavar="OUT.html",
                        help="write one self-contained HTML page (figures embedded, no network needed) instead of printing Markdown")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from nn_neuroimaging_lightning.demo.run import run_demo

        overrides = {
            "trainer.max_epochs": args.max_epochs,
            "data.data_dir": args.data_dir,
            "log_dir": args.log_dir,
            "seed": args.seed,
            "data.n_train": args.n_train,
            "data.n_val": args.n_val,
            "trainer.enable_progress_bar": False if args.no_progress_bar else None,
        }
        run_demo(args.config, {k: v for k, v in overrides.items() if v is not None})
        return 0
    if args.command == "report":
        from nn_neuroimaging_lightning.report import build_report, write_html_report

        if args.html:
            print(f"HTML report: {write_html_report(args.run_dir, args.html)}")
        else:
            print(build_report(args.run_dir))
        return 0
    return 2  # pragma: no cover - argparse enforces the choices


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
