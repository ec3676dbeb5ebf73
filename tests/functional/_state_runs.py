"""Realistic activity windows from plain-torch training loops (no Lightning) for state tests.

Each run alternates epochs of ``model.train()`` + optimizer steps with evaluation passes under
``model.eval()`` / ``torch.no_grad()`` on a fixed validation set, and records ``mean |a|`` of every
tapped layer per forward with forward hooks, exactly the signal the EEG callback keeps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

TRAIN, EVAL = 0, 1


class _LastStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def _make(arch: str, gen: torch.Generator):
    """Model, tapped modules, optimizer and a batch sampler for ``arch``."""
    if arch == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(64, 10),
        )
        taps = [model[0], model[3], model[7]]
        protos = torch.randn(10, 3, 16, 16, generator=gen)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def batch(g: torch.Generator):
            y = torch.randint(0, 10, (16,), generator=g)
            return protos[y] + 1.5 * torch.randn(16, 3, 16, 16, generator=g), y
    elif arch == "mlp":
        model = nn.Sequential(
            nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.3), nn.Linear(64, 5),
        )
        taps = [model[0], model[3], model[6]]
        protos = torch.randn(5, 32, generator=gen)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def batch(g: torch.Generator):
            y = torch.randint(0, 5, (32,), generator=g)
            return protos[y] + torch.randn(32, 32, generator=g), y
    elif arch == "lstm":
        model = _LastStep()
        taps = [model.lstm, model.head]
        protos = torch.randn(3, 12, 8, generator=gen)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)

        def batch(g: torch.Generator):
            y = torch.randint(0, 3, (16,), generator=g)
            return protos[y] + torch.randn(16, 12, 8, generator=g), y
    else:
        raise ValueError(arch)
    return model, taps, opt, batch


def record_run(arch: str, seed: int, epochs: int = 4, train_steps: int = 96, eval_steps: int = 48):
    """Activity ``(layers, T)``, labels ``(T,)`` (0 train, 1 eval) and epoch ``(T,)`` per forward."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threading only adds contention on shared CPUs
    try:
        with torch.random.fork_rng():
            return _record(arch, seed, epochs, train_steps, eval_steps)
    finally:
        torch.set_num_threads(threads)


def _record(arch: str, seed: int, epochs: int, train_steps: int, eval_steps: int):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model, taps, opt, batch = _make(arch, gen)
    current: list[Tensor] = [torch.zeros(())] * len(taps)

    def hook(i: int):
        def _h(_m, _inp, out):
            out = out[0] if isinstance(out, tuple) else out
            current[i] = out.detach().abs().mean()
        return _h

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(taps)]
    val_gen = torch.Generator().manual_seed(seed + 1000)
    val = [batch(val_gen) for _ in range(eval_steps)]
    samples, labels, epoch_of = [], [], []
    try:
        for ep in range(epochs):
            model.train()
            for _ in range(train_steps):
                x, y = batch(gen)
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                samples.append(torch.stack(current))
                labels.append(TRAIN)
                epoch_of.append(ep)
            model.eval()
            with torch.no_grad():
                for x, _ in val:
                    model(x)
                    samples.append(torch.stack(current))
                    labels.append(EVAL)
                    epoch_of.append(ep)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(samples, dim=1), torch.tensor(labels), torch.tensor(epoch_of)


def windows(signal: Tensor, labels: Tensor, epoch: Tensor, width: int = 32, stride: int = 8):
    """Windows ``(N, layers, width)`` lying inside one label segment, their labels and epochs."""
    out, lab, ep = [], [], []
    t = signal.shape[1]
    for start in range(0, t - width + 1, stride):
        seg = labels[start:start + width]
        if bool((seg == seg[0]).all()):
            out.append(signal[:, start:start + width])
            lab.append(int(seg[0]))
            ep.append(int(epoch[start]))
    return torch.stack(out), torch.tensor(lab), torch.tensor(ep)
