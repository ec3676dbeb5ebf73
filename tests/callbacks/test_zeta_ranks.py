"""The zeta engine under several processes, with the collectives injected (no process group needed).

Each layer's statistics are summed over the ranks in that layer's turn, so every rank must visit the
layers in one order; the order comes from per-rank cost measurements, so rank 0's is broadcast.
"""

from __future__ import annotations

from typing import Any, List

import torch
from torch import nn

from nn_neuroimaging_lightning.batches import Batch
from nn_neuroimaging_lightning.fmri.zeta import Collectives, ZetaScheduler


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1))


def test_every_rank_visits_the_layers_in_rank_zeros_order_and_sums_each_in_its_turn():
    net = _net()
    names = ["0", "2", "4"]
    zs = ZetaScheduler({n: net[int(n)] for n in names}, grid=(2,), budget=8, metric="mse")
    probe = Batch((torch.randn(8, 4),), {}, torch.randn(8, 1), 8)
    rank0_order = ["4", "0", "2"]  # what rank 0 measured as cheapest first
    broadcast: List[Any] = []
    reduced: List[int] = []

    def bcast(obj: Any) -> Any:
        broadcast.append(obj)
        return list(rank0_order) if isinstance(obj, list) and sorted(obj) == names else obj

    def reduce_sum(t: torch.Tensor) -> torch.Tensor:
        reduced.append(t.numel())
        return 2 * t  # the other rank's statistics equal to ours

    zs.compute(net, probe, coll=Collectives(world_size=2, rank=1, broadcast=bcast, reduce_sum=reduce_sum))
    assert list(zs.last_plan) == rank0_order  # layers visited in the broadcast order, not this rank's
    assert any(isinstance(o, list) for o in broadcast)
    assert reduced and all(n >= 1 for n in reduced)  # the statistics went through the injected sum
    for name in names:
        res = zs.zeta[name]
        assert res.stat_count % 2 == 0 and res.n_permutations % 2 == 0  # both ranks' samples counted


def test_one_process_does_not_broadcast():
    net = _net()
    zs = ZetaScheduler({"0": net[0], "2": net[2]}, grid=(2,), budget=8, metric="mse")
    probe = Batch((torch.randn(8, 4),), {}, torch.randn(8, 1), 8)

    def never(obj: Any) -> Any:
        raise AssertionError("a single process must not broadcast")

    zs.compute(net, probe, coll=Collectives(world_size=1, rank=0, broadcast=never))
    assert set(zs.zeta) == {"0", "2"}


def test_a_one_region_layer_keeps_per_player_shapes_over_evaluations():
    # torchmetrics squeezes one-element results; the window's merge must keep (R,) = (1,) statistics
    net = _net()
    zs = ZetaScheduler({"4": net[4]}, grid=(2,), budget=8, metric="mse", warn=lambda msg: None, on_clamped=lambda items: None)
    probe = Batch((torch.randn(8, 4),), {}, torch.randn(8, 1), 8)
    for evaluation in range(3):
        zs.compute(net, probe, evaluation=evaluation)
    res = zs.zeta["4"]
    assert tuple(res.scores.shape) == (1,) and tuple(res.stat_sum.shape) == (1,) and res.stat_count >= 6
    restored = ZetaScheduler({"4": net[4]}, grid=(2,), budget=8, metric="mse")
    restored.load_state_dict(zs.state_dict())
    torch.testing.assert_close(restored.zeta["4"].scores, res.scores)
