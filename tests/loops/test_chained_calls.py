"""Modules called step by step: a decoder called once per token is measured over its true length.

The reference: ||dL/dh_t|| of each decoder step from the user's own graph, where
the total gradient of step t is that of its output plus that of the state it
hands on (retain_grad on both), compared with the probe's deep event.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradprobe

TOKENS = 12


class Seq2Seq(nn.Module):
    def __init__(self, kind: str, layers: int) -> None:
        super().__init__()
        rnn = {"GRU": nn.GRU, "LSTM": nn.LSTM, "RNN": nn.RNN}[kind]
        self.embed = nn.Embedding(10, 6)
        self.encoder = rnn(6, 8, num_layers=layers)
        self.decoder = rnn(6, 8, num_layers=layers)
        self.head = nn.Linear(8, 10)
        self.kept: list[tuple[torch.Tensor, ...]] = []

    def forward(self, source: torch.Tensor, target: torch.Tensor, keep: bool = False) -> torch.Tensor:
        _, state = self.encoder(self.embed(source))
        logits = []
        for t in range(target.shape[0]):  # teacher forcing, one call per output token
            out, state = self.decoder(self.embed(target[t : t + 1]), state)
            if keep:
                for tensor in (out, *(state if isinstance(state, tuple) else (state,))):
                    tensor.retain_grad()
                self.kept.append((out, *(state if isinstance(state, tuple) else (state,))))
            logits.append(self.head(out))
        return torch.cat(logits)


def _batch():
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, 10, (7, 5), generator=generator), torch.randint(0, 10, (TOKENS, 5), generator=generator)


def _loss(model, keep=False):
    source, target = _batch()
    logits = model(source, target, keep=keep)
    return nn.functional.cross_entropy(logits.reshape(-1, 10), target.reshape(-1))


def _reference_grad_norms(kind: str, layers: int) -> list[float]:
    """||dL/dh_t|| of the top layer's hidden state at each decoder step, from the user's graph."""
    torch.manual_seed(0)
    model = Seq2Seq(kind, layers).double()
    _loss(model, keep=True).backward()
    norms = []
    for out, h_n, *_ in model.kept:
        total = out.grad[0] + (h_n.grad[-1] if h_n.grad is not None else 0)  # output use + the state handed on
        norms.append(float(total.norm()))
    return norms


@pytest.mark.parametrize(("kind", "layers"), [("GRU", 1), ("LSTM", 2), ("RNN", 1)])
def test_a_decoder_called_once_per_token_is_one_sequence_of_its_true_length(kind, layers):
    torch.manual_seed(0)
    model = Seq2Seq(kind, layers).double()
    events = []
    with gradprobe.attach(model, every=1, config={}, sinks=[events.append]) as probe:
        _loss(model).backward()
        probe.step()
    deep = {e["layer"]: e for e in events if e["kind"] == "deep"}
    top = f"decoder.l{layers - 1}"
    assert deep[top]["seq_len"] == TOKENS and deep["encoder.l0"]["seq_len"] == 7
    assert len(deep[top]["profile"]) == TOKENS and deep[top]["chained"] is True
    assert deep[top]["grad_norms"] == pytest.approx(_reference_grad_norms(kind, layers), rel=1e-9, abs=1e-12)


def test_unrelated_calls_of_one_module_keep_the_latest_sequence():
    """Two independent sequences through one LSTM (no state handed on): the latest is measured, not a join."""
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 5)
    events = []
    with gradprobe.attach(lstm, every=1, config={}, sinks=[events.append]) as probe:
        first, _ = lstm(torch.randn(9, 2, 3))
        second, _ = lstm(torch.randn(4, 2, 3))
        (first.sum() + second.sum()).backward()
        probe.step()
    (deep,) = [e for e in events if e["kind"] == "deep"]
    assert deep["seq_len"] == 4
