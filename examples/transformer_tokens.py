"""A tiny Transformer on synthetic tokens, watched by all three callbacks with token x hidden grids.

``TinyTransformer`` classifies token sequences whose label depends only on the tokens at
``--key-positions``. ``NNfMRICallback(grid=(g_t, g_d, 1))`` splits each encoder block's ``(B, T, D)``
output into ``g_t x g_d`` micro-regions (tokens x hidden units; for a rank-3 activation the first
two grid entries are used, see ``functional.grid.resolve_grid``) and scores every region by its
Shapley "zeta" impact on the validation loss. If the model has learnt the task, the regions holding
the key token positions carry the most impact. Printed per block: the density grid's shape and the
top zeta regions as token and hidden-unit ranges::

    python examples/transformer_tokens.py
    python examples/transformer_tokens.py --max-epochs 2 --n-train 512 --zeta-budget 64  # tiny

On the default settings (6 epochs) the model reaches val_acc 1.0 and the three top regions of
``model.blocks.0`` all lie on token 3, the key position; after the second block's attention the
information is spread over the sequence and its zeta is small and flat.
"""

from __future__ import annotations

import argparse
import tempfile

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

from nn_neuroimaging_lightning import CrossModalCallback, NNEEGCallback, NNfMRICallback
from nn_neuroimaging_lightning.demo import DemoClassifier, SyntheticTokens, TinyTransformer


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """Index ranges ``[lo, hi)`` of ``tensor_split(range(n), parts)``, the grid's own split."""
    return [(int(p[0]), int(p[-1]) + 1) for p in torch.tensor_split(torch.arange(n), parts)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--n-val", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--d-model", type=int, default=32)
    p.add_argument("--grid-tokens", type=int, default=16, help="g_t: token groups per block")
    p.add_argument("--grid-hidden", type=int, default=4, help="g_d: hidden-unit groups per block")
    p.add_argument("--key-positions", type=int, nargs="+", default=[3], help="positions whose tokens decide the label")
    p.add_argument("--zeta-budget", type=int, default=256)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-dir", default=None, help="TensorBoard run directory (default: a temporary one)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: intra-op threads only contend
    pl.seed_everything(args.seed, verbose=False)

    vocab, classes = 16, 4
    data = dict(seq_len=args.seq_len, vocab=vocab, num_classes=classes, key_positions=tuple(args.key_positions))
    train = DataLoader(SyntheticTokens(args.n_train, seed=args.seed, **data), batch_size=args.batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(args.seed))
    val = DataLoader(SyntheticTokens(args.n_val, seed=args.seed + 1, **data), batch_size=args.batch_size)
    net = TinyTransformer(vocab=vocab, seq_len=args.seq_len, num_classes=classes, d_model=args.d_model, nhead=4, num_layers=2, dim_ff=2 * args.d_model)
    module = DemoClassifier(model=net, lr=args.lr, num_classes=classes)

    blocks = r"re:model\.blocks\.\d+"  # the (B, T, D) outputs of the encoder blocks
    # EEG channels: the embedding, each block and the head. The default selection would also tap
    # `attn.out_proj`, a module MultiheadAttention never calls (it uses its weights functionally).
    eeg = NNEEGCallback(layers=["model.embed", blocks, "model.head"])
    fmri = NNfMRICallback(layers=blocks, grid=(args.grid_tokens, args.grid_hidden, 1), zeta_budget=args.zeta_budget,
                          zeta_time_fraction=None, probe_size=min(128, args.n_val), top_k=args.top_k)
    xm = CrossModalCallback()
    log_dir = args.log_dir or tempfile.mkdtemp(prefix="nn_tokens_")
    trainer = pl.Trainer(
        max_epochs=args.max_epochs, callbacks=[eeg, fmri, xm], accelerator="cpu", enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=8,
        logger=pl.loggers.TensorBoardLogger(log_dir, name="tokens"),
    )
    trainer.fit(module, train, val)

    metrics = trainer.callback_metrics
    print(f"val_acc {float(metrics['val_acc']):.3f} (chance {1 / classes:.2f}); key token positions {args.key_positions}")
    print(f"EEG layers: {len(eeg.layers)} tapped, {len(eeg.events)} events; fMRI layers: {fmri.layers}")
    tokens, hidden = _ranges(args.seq_len, args.grid_tokens), _ranges(args.d_model, args.grid_hidden)
    for name in fmri.layers:
        density = fmri.density[name]
        print(f"{name}: density grid {tuple(density.shape)} (tokens x hidden)")
        if name not in fmri.zeta:
            print("  no zeta yet")
            continue
        res = fmri.zeta[name]
        scores = res.scores.reshape(len(tokens), len(hidden))  # (g_t, g_d)
        order = scores.reshape(-1).argsort(descending=True)[: args.top_k]
        lo, hi = tokens[int(order[0]) // len(hidden)]
        print(f"  top region holds a key position: {'yes' if any(lo <= k < hi for k in args.key_positions) else 'no'}")
        for rank, flat in enumerate(order.tolist(), 1):
            i_t, i_d = divmod(flat, len(hidden))
            sig = bool(res.significant.reshape(-1)[flat])
            print(f"  top {rank}: tokens {tokens[i_t][0]}-{tokens[i_t][1] - 1}, hidden {hidden[i_d][0]}-{hidden[i_d][1] - 1}: "
                  f"zeta {float(scores[i_t, i_d]):+.4f}{' (significant)' if sig else ''}")
    print(f"cross-modal consistency: {xm.consistency if xm.consistency is None else round(xm.consistency, 3)}")
    if xm.scores:
        last = xm.scores[-1]
        print(f"cross-modal terms: rho {last['rho']:.3f} over {len(last['layers'])} layers, "
              f"agreement {last['agreement']:.3f}, coherence {last['coherence']:.3f}")
    print(f"TensorBoard: tensorboard --logdir {trainer.logger.log_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
