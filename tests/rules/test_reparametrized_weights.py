"""Re-parametrized and wrapped recurrent weights (issue 27, item 3).

DropConnect (AWD-LSTM's ``WeightDrop``: the weight deleted, ``<name>_raw``
kept, a dropped copy set before each call) and ``torch.nn.utils.parametrize``
(orthogonal, spectral norm, weight norm): the static rules read the weight the
layer computes with, the deep probe measures it, and a wrapper that bypasses
hooks gets a GP001 that says exactly that.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations

import gradprobe


class WeightDrop(nn.Module):
    """AWD-LSTM's DropConnect wrapper (salesforce/awd-lstm-lm ``weight_drop.py``)."""

    def __init__(self, module: nn.Module, weights: list[str], dropout: float, call_forward_directly: bool) -> None:
        super().__init__()
        self.module, self.weights, self.dropout = module, weights, dropout
        self.call_forward_directly = call_forward_directly
        for name in weights:
            weight = getattr(module, name)
            del module._parameters[name]
            module.register_parameter(name + "_raw", nn.Parameter(weight.data))

    def forward(self, *args):
        for name in self.weights:
            raw = getattr(self.module, name + "_raw")
            setattr(self.module, name, F.dropout(raw, p=self.dropout, training=self.training))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch: "RNN module weights are not part of single contiguous chunk"
            if self.call_forward_directly:
                return self.module.forward(*args)  # as the original does: no hook runs
            return self.module(*args)


class DropConnectLM(nn.Module):
    def __init__(self, call_forward_directly: bool, scale_hh: float = 1.0, forget_bias: float | None = None) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 16)
        lstm = nn.LSTM(16, 24)
        with torch.no_grad():
            lstm.weight_hh_l0.mul_(scale_hh)
            if forget_bias is not None:
                lstm.bias_ih_l0[24:48] = forget_bias
                lstm.bias_hh_l0[24:48] = 0.0
        self.rnn = WeightDrop(lstm, ["weight_hh_l0"], 0.3, call_forward_directly)
        self.out = nn.Linear(24, 40)

    def forward(self, tokens):
        y, _ = self.rnn(self.emb(tokens))
        return self.out(y)


def _codes(findings, layer=None):
    return {(f.code, f.severity) for f in findings if layer is None or f.layer == layer}


@pytest.mark.parametrize("direct", [True, False])
def test_lint_reads_the_raw_weight_of_a_dropconnect_lstm(direct):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradprobe.GradprobeWarning)  # no rule may fail on it
        healthy = gradprobe.lint(DropConnectLM(direct), config={})
        exploding = gradprobe.lint(DropConnectLM(direct, scale_hh=12.0), config={})
        forgetting = gradprobe.lint(DropConnectLM(direct, forget_bias=-3.0), config={})
    assert not [f for f in healthy if f.severity != "info"], healthy
    assert ("GP201", "warning") in _codes(exploding, "rnn.module.l0")
    assert ("GP202", "error") in _codes(forgetting, "rnn.module.l0")
    sigma = next(f for f in exploding if f.code == "GP201").evidence["sigma_max"]
    raw = DropConnectLM(direct, scale_hh=12.0)
    assert sigma > 4.0 and not any(f.code == "GP001" for f in exploding)
    assert raw.rnn.module.weight_hh_l0_raw.shape == (96, 24)


def _train(model, steps=8, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradprobe.GradprobeWarning)
        with gradprobe.attach(model, every=4, config={}, optimizer=opt) as probe:
            for _ in range(steps):
                tokens = torch.randint(0, 40, (15, 6))
                loss = F.cross_entropy(model(tokens).flatten(0, 1), tokens.flatten())
                opt.zero_grad()
                loss.backward()
                opt.step()
    return probe


def test_a_wrapper_that_calls_forward_directly_gets_a_gp001_that_says_so():
    probe = _train(DropConnectLM(call_forward_directly=True))
    (finding,) = [f for f in probe.findings if f.code == "GP001"]
    assert finding.layer == "rnn.module" and finding.severity == "warning"
    assert ".forward() directly" in finding.message and "WeightDrop" in finding.message
    assert probe.error is None


def test_a_wrapper_that_calls_the_module_is_measured_with_the_weight_it_set():
    probe = _train(DropConnectLM(call_forward_directly=False))
    assert probe.error is None and not [f for f in probe.findings if f.code == "GP001"]
    assert "rnn.module.l0" in probe.layers and probe.layers["rnn.module.l0"].seq_len == 15


def test_the_measured_profile_is_that_of_the_weight_in_use():
    """In eval mode the dropped copy is the raw weight: the profile equals a plain LSTM's with that weight."""
    torch.manual_seed(3)
    wrapped = DropConnectLM(call_forward_directly=False, scale_hh=2.0).eval()
    plain_lstm = nn.LSTM(16, 24)
    with torch.no_grad():
        for name, value in wrapped.rnn.module.named_parameters():
            getattr(plain_lstm, name.removesuffix("_raw")).copy_(value)
    x = torch.randn(20, 3, 16)
    loss = lambda out: out[0].pow(2).sum()
    (got,) = gradprobe.check(wrapped.rnn, (x,), loss, config={}).layers.values()
    (want,) = gradprobe.check(plain_lstm.eval(), x, loss, config={}).layers.values()
    assert got.grad_norms == pytest.approx(want.grad_norms, rel=1e-5)
    assert got.profile == pytest.approx(want.profile, rel=1e-5)


@pytest.mark.parametrize("kind", ["orthogonal", "spectral_norm", "weight_norm"])
def test_parametrized_recurrent_weights_are_read_as_computed(kind):
    """A tanh RNN whose raw W_hh has sigma_max ~6 (GP201 warns) is fine once orthogonal or spectral-normed."""
    torch.manual_seed(1)
    rnn = nn.RNN(8, 32)
    with torch.no_grad():
        rnn.weight_hh_l0.normal_(0, 6.0 / (2 * 32**0.5))
    raw_sigma = float(torch.linalg.matrix_norm(rnn.weight_hh_l0.detach().double(), ord=2))
    assert ("GP201", "warning") in _codes(gradprobe.lint(rnn, config={}))
    getattr(parametrizations, kind)(rnn, "weight_hh_l0")
    effective = float(torch.linalg.matrix_norm(rnn.weight_hh_l0.detach().double(), ord=2))
    findings = gradprobe.lint(rnn, config={})
    assert not any(f.code == "GP001" for f in findings)
    if kind == "weight_norm":  # weight norm keeps the weight: the same warning, from the computed weight
        (gp201,) = [f for f in findings if f.code == "GP201"]
        assert gp201.evidence["sigma_max"] == pytest.approx(effective, rel=1e-9) == pytest.approx(raw_sigma, rel=1e-5)
    else:
        assert effective == pytest.approx(1.0, abs=0.1) and not any(f.code == "GP201" for f in findings)
    report = gradprobe.check(rnn, torch.randn(30, 4, 8), config={})
    assert len(report.layers) == 1 and not any(f.code == "GP001" for f in report.findings)
