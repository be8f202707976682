"""The remedies of the literature that gradprobe offers besides clipping and re-initialization, one by one.

    python examples/remedies.py

1. HiddenGradClip (Graves 2013): dL/dh_t clamped to [-1, 1] through time, on a GRUCell loop.
2. FlowRegularizer (Pascanu et al. 2013): Omega added to the loss lets a tanh RNN learn a 30-step
   dependency that norm clipping alone does not (benchmarks/flow_regularizer.py runs T=50 and longer).
3. The Lyapunov spectrum of a layer (Vogt et al. 2022), from one deep probe.
4. Dead ReLU units: the reference RNN with a leaky ReLU (torch.nn.RNN has none).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import torch
from torch import nn

import gradprobe


def hidden_clip() -> int:
    torch.manual_seed(0)
    cell, head = nn.GRUCell(3, 16), nn.Linear(16, 1)
    model = nn.ModuleDict({"cell": cell, "head": head})
    x, y = torch.randn(40, 8, 3), torch.randn(8, 1)
    with gradprobe.fixes.HiddenGradClip(model, value=1.0) as clip:
        h = torch.zeros(8, 16)
        for x_t in x:
            h = cell(x_t, h)
        (1e3 * nn.functional.mse_loss(head(h), y)).backward()  # a huge loss: large dL/dh_t
    print(f"1. HiddenGradClip: clamped {clip.clamped} entries of dL/dh_t to [-1, 1]; reach: {clip.reach['cell']}")
    return clip.clamped


def flow_regularizer(steps: int) -> tuple[float, float]:
    def train(regularize: bool) -> float:
        torch.manual_seed(0)
        cell, head = nn.RNNCell(1, 32), nn.Linear(32, 1)
        model = nn.ModuleDict({"cell": cell, "head": head})
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        reg = gradprobe.fixes.FlowRegularizer(model, weight=1.0, cells=["cell"]) if regularize else None
        g = torch.Generator().manual_seed(1)

        def batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            x = 0.5 * torch.randn(30, n, 1, generator=gen)
            y = (torch.rand(n, generator=gen) < 0.5).float()
            x[0, :, 0] = 2 * y - 1  # the answer is the sign of the first input
            return x, y

        def run(x: torch.Tensor) -> torch.Tensor:
            h = x.new_zeros(x.shape[1], 32, requires_grad=True)
            for x_t in x:
                h = cell(x_t, h)
            return head(h).squeeze(1)

        for _ in range(steps):
            x, y = batch(32, g)
            loss = nn.functional.binary_cross_entropy_with_logits(run(x), y)
            opt.zero_grad()
            (loss + reg(loss) if reg is not None else loss).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        test_x, test_y = batch(500, torch.Generator().manual_seed(9))
        with torch.no_grad():
            return float(((run(test_x) > 0).float() == test_y).float().mean())

    clipped, regularized = train(False), train(True)
    print(
        f"2. FlowRegularizer: sign of the first of 30 inputs after {steps} steps: accuracy {clipped:.2f} with clipping, "
        f"{regularized:.2f} with clipping + Omega (chance 0.50)"
    )
    return clipped, regularized


def lyapunov() -> list[float]:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 32)
    report = gradprobe.check(lstm, torch.randn(100, 8, 4), config={})
    spectrum = report.layers["LSTM.l0"].lyapunov
    shown = ", ".join(f"{v:+.3f}" for v in spectrum)
    print(
        f"3. Lyapunov spectrum of a default LSTM (natural log per step): {shown}; "
        f"the most expanding direction keeps x{math.exp(spectrum[0]):.2f} per step"
    )
    return spectrum


def leaky_relu() -> tuple[set[str], set[str]]:
    torch.manual_seed(0)
    relu = nn.RNN(4, 16, nonlinearity="relu")
    with torch.no_grad():
        relu.bias_ih_l0[:12] = -3.0  # 12 of 16 units pushed below zero
    leaky = gradprobe.reference.RNN(4, 16, nonlinearity="leaky_relu")
    leaky.load_state_dict(relu.state_dict())  # the same weights
    codes = []
    for model in (relu, leaky):
        with gradprobe.attach(model, every=5, saturation_every=2, config={}) as probe:
            for _ in range(10):
                model(torch.rand(20, 8, 4))[0].sum().backward()
                probe.step()
                model.zero_grad()
        codes.append({f.code for f in probe.findings})
    print(
        f"4. Dead ReLU units: nn.RNN(relu) -> {sorted(codes[0])}; reference RNN(leaky_relu), same weights -> {sorted(codes[1])}"
    )
    return codes[0], codes[1]


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps of the regularizer comparison")
    args = parser.parse_args(argv)
    return {
        "clamped": hidden_clip(),
        "flow": flow_regularizer(args.steps),
        "lyapunov": lyapunov(),
        "relu": leaky_relu(),
    }


if __name__ == "__main__":
    main()
