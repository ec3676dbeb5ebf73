r"""The README's "Works with" table: per client, what is tapped, whether every tapped layer gets a
zeta map, and the whole-fit overhead ratio measured by ``benchmarks/overhead_clients.py``.

Each client of the zoo (``nn_neuroimaging_lightning.demo.clients``; the ResNet also under
``precision="bf16-mixed"`` and ``torch.compile``) is fitted once the way its users write it, with
the three callbacks at their defaults, for one epoch of ``--steps`` training batches and its
validation loop. "zeta maps" counts the tapped layers whose map has finite scores and finite 95 %
intervals after that first validation epoch. The overhead column is read from the JSON that
``overhead_clients.py --out`` wrote (``--overhead``); without it the column says how to get it.

Run::

    python benchmarks/works_with.py --overhead build/overhead_clients.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _clientfit as CF  # noqa: E402

#: Row name -> (client, make_client arguments, Trainer arguments).
ROWS: Dict[str, Any] = {
    "cnn": ("cnn", {}, {}),
    "resnet": ("resnet", {}, {}),
    "resnet_bf16": ("resnet", {}, {"precision": "bf16-mixed"}),
    "resnet_compiled": ("resnet", {"compile": "model"}, {}),
    "lstm": ("lstm", {}, {}),
    "gpt2": ("gpt2", {}, {}),
    "bert": ("bert", {}, {}),
    "kwargs": ("kwargs", {}, {}),
    "mlp_dropout": ("mlp_dropout", {}, {}),
}

DESCRIPTION = {
    "cnn": "reference CNN (conv, pool, linear)",
    "resnet": "ResNet, BatchNorm, residual blocks",
    "lstm": "nn.LSTM classifier",
    "gpt2": "transformers GPT2LMHeadModel, 2 layers, dict batch, `self.model(**batch).loss`",
    "bert": "transformers BertForSequenceClassification, 2 layers, dict batch",
    "kwargs": "keyword-only forward, dict batch",
    "resnet_bf16": "the ResNet under precision='bf16-mixed'",
    "resnet_compiled": "the ResNet under torch.compile (the model)",
    "mlp_dropout": "MLP with dropout",
}


def run_row(name: str, seed: int, steps: int) -> Dict[str, Any]:
    import torch

    from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback

    client, make_args, trainer_args = ROWS[name]
    if make_args.get("compile"):
        torch._dynamo.reset()  # a graph compiled earlier in this process without the hooks would be reused
    eeg, fmri, xm = NNEEGCallback(), NNfMRICallback(), CrossModalCallback()
    first: Dict[str, bool] = {}

    class FirstEpoch(CF.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            if trainer.current_epoch == 0:
                for layer, res in fmri.zeta.items():
                    first[layer] = bool(torch.isfinite(res.scores).all() and torch.isfinite(res.ci_low).all()
                                        and torch.isfinite(res.ci_high).all())

    t0 = time.perf_counter()
    error: Optional[str] = None
    try:
        CF.fit_client(client, seed, [eeg, fmri, xm, FirstEpoch()], steps_per_epoch=steps, epochs=1,
                      trainer_kwargs=trainer_args, client_kwargs=make_args)
    except Exception as exc:  # the table reports it
        error = f"{type(exc).__name__}: {exc}"[:200]
    layers = list(fmri.zeta_layers) if fmri.zeta_layers else list(eeg.layers or [])
    return {"row": name, "client": client, "taps": list(eeg.layers or []), "zeta_layers": layers,
            "zeta_ok": sorted(k for k, v in first.items() if v), "error": error,
            "seconds": time.perf_counter() - t0}


def _overhead(paths: Optional[str]) -> Dict[str, str]:
    """Client -> "ratio [low, high] (N-step epochs); ..." from overhead_clients.py's ``--out`` JSON
    files (comma-separated, in that order; a missing file is skipped)."""
    results: List[Dict[str, Any]] = []
    for path in (p.strip() for p in (paths or "").split(",")):
        if path and Path(path).exists():
            results += json.loads(Path(path).read_text()).get("results", [])
    out: Dict[str, str] = {}
    for res in results:
        ratio = res.get("ratio", {}).get("all")
        if not ratio or not all(math.isfinite(v) for v in ratio):
            continue
        med, lo, hi = ratio
        text = f"{med:.2f} [{lo:.2f}, {hi:.2f}] ({res['steps_per_epoch']}-step epochs)"
        out[res["client"]] = f"{out[res['client']]}; {text}" if res["client"] in out else text
    return out


def table(rows: List[Dict[str, Any]], overhead: Dict[str, str]) -> str:
    lines = ["| client | model | taps (default rule) | zeta maps after the first validation epoch | whole-fit ratio, all three vs plain |",
             "|---|---|---|---|---|"]
    for r in rows:
        taps = ", ".join(f"`{t}`" for t in r["taps"]) or "none"
        if r["error"]:
            zeta = f"fit failed: {r['error']}"
        else:
            n, ok = len(r["zeta_layers"]), len(r["zeta_ok"])
            missing = [t for t in r["zeta_layers"] if t not in r["zeta_ok"]]
            zeta = f"{'yes' if n and ok == n else 'no'}: {ok}/{n}" + (f" (none on {', '.join(missing)})" if missing else "")
        # a variant row (bf16, compile) has a ratio only if the overhead benchmark measured that variant
        ratio = overhead.get(r["row"]) if r["row"] != r["client"] else overhead.get(r["client"])
        lines.append(f"| {r['row']} | {DESCRIPTION.get(r['row'], '')} | {taps} | {zeta} | {ratio or 'not measured (overhead_clients.py)'} |")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names (see ROWS)")
    parser.add_argument("--steps", type=int, default=25, help="training batches of the one epoch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overhead", default="build/overhead_clients.json", help="overhead_clients.py --out JSON file(s), comma-separated")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    parser.add_argument("--rows-from", default=None, help="reuse the rows of an earlier --out JSON (no fits; only the table)")
    args = parser.parse_args(argv)
    CF.quiet()
    CF.set_threads(1)
    names = [n for n in (s.strip() for s in args.rows.split(",")) if n]
    bad = [n for n in names if n not in ROWS]
    if bad:
        parser.error(f"--rows: unknown {bad}; allowed: {list(ROWS)}")
    if args.rows_from:
        rows = [r for r in json.loads(Path(args.rows_from).read_text()) if r["row"] in names]
    else:
        rows = [run_row(n, args.seed, args.steps) for n in names]
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1))
    print(f"# works with (`python benchmarks/works_with.py {' '.join(argv if argv is not None else sys.argv[1:])}`)\n")
    print(table(rows, _overhead(args.overhead)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
