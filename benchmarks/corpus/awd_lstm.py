"""An AWD-LSTM style word language model: DropConnect on the recurrent weights (``WeightDrop``, which deletes
``weight_hh_l0``, keeps ``weight_hh_l0_raw`` and calls the LSTM's ``.forward()`` directly), a variable BPTT
length drawn around 35 for each window with the learning rate scaled by it, the state carried and detached,
gradients clipped at 0.25, plain SGD.

The LSTM's own hooks never run (``.forward()`` bypasses them), so the wrapper is named with ``cells=["rnn"]``
and measured at the sequence level through its inputs; the static rules read the raw weights.

Variants:
    healthy: the model as AWD-LSTM builds it.
    forget-bias-3 (broken, GP202): forget-gate bias -3 in the wrapped LSTM.
    whh-x4 (broken, GP201): the raw recurrent weights x4.

    python benchmarks/corpus/awd_lstm.py --variant healthy --steps 300
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "forget-bias-3": "GP202", "whh-x4": "GP201"}
QUICK_STEPS = 100  # the test's reduced run
STEPS = 300
BPTT, HIDDEN = 35, 96


class WeightDrop(nn.Module):
    """salesforce/awd-lstm-lm ``weight_drop.py``: DropConnect on the named weights of the wrapped module."""

    def __init__(self, module: nn.Module, weights: list[str], dropout: float) -> None:
        super().__init__()
        self.module, self.weights, self.dropout = module, weights, dropout
        for name in weights:
            weight = getattr(module, name)
            del module._parameters[name]
            module.register_parameter(name + "_raw", nn.Parameter(weight.data))

    def forward(self, *args: object) -> object:
        for name in self.weights:
            raw = getattr(self.module, name + "_raw")
            setattr(self.module, name, F.dropout(raw, p=self.dropout, training=self.training))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "RNN module weights are not part of single contiguous chunk"
            return self.module.forward(*args)


class AWDLSTM(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.encoder = nn.Embedding(vocab, 64)
        self.rnn = WeightDrop(nn.LSTM(64, HIDDEN), ["weight_hh_l0"], dropout=0.3)
        self.decoder = nn.Linear(HIDDEN, vocab)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def forward(self, x: Tensor, hidden: object = None) -> tuple[Tensor, object]:
        out, hidden = self.rnn(F.dropout(self.encoder(x), 0.2, self.training), hidden)
        return self.decoder(F.dropout(out, 0.2, self.training)), hidden


def windows(streams: Tensor, generator: torch.Generator):
    """AWD-LSTM's batches: a BPTT length of 35 (half of it 5% of the time), then Normal(length, 5), at least 5."""
    start = 0
    while True:
        base = float(BPTT) if float(torch.rand((), generator=generator)) < 0.95 else BPTT / 2
        length = max(5, int(float(torch.normal(torch.tensor(base), 5.0, generator=generator))))
        if start + length + 1 >= streams.size(0):
            start = 0
        yield streams[start : start + length], streams[start + 1 : start + 1 + length]
        start += length


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 25) -> common.RunResult:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(3)
    data, vocab = common.words()
    streams = common.stream_batches(data, batch=16)
    model = AWDLSTM(len(vocab))
    lstm = model.rnn.module
    with torch.no_grad():
        if variant == "forget-bias-3":
            lstm.bias_ih_l0[HIDDEN : 2 * HIDDEN] = -3.0
            lstm.bias_hh_l0[HIDDEN : 2 * HIDDEN] = 0.0
        elif variant == "whh-x4":
            lstm.weight_hh_l0_raw.mul_(4.0)
    lr, clip = 10.0, 0.25
    result = common.RunResult("awd_lstm", variant, VARIANTS[variant])
    hidden = None
    with gradprobe.attach(model, log=log, every=every, cells=["rnn"], config={}) as probe:
        for _, (x, y) in zip(range(steps), windows(streams, generator)):
            hidden = None if hidden is None else tuple(h.detach() for h in hidden)
            model.zero_grad()
            output, hidden = model(x, hidden)
            loss = F.cross_entropy(output.view(-1, len(vocab)), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            probe.step(loss)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr * x.shape[0] / BPTT)  # AWD-LSTM scales the rate by the window
            result.losses.append(loss.item())
    result.findings, result.steps, result.truncation = probe.findings, steps, probe.truncation
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
