"""Modules whose one call covers a whole sequence are measured at the sequence level (issue 27, item 2).

The profile in the input space, ``||v^T dy_T / dx_(T-k)||``, is checked
against theory (a linear recurrence ``h_t = rho Q h_(t-1) + U x_t`` with Q and U
orthogonal has exactly ``rho^k``) and against an independent autograd
Jacobian of a layer-norm LSTM that loops over time inside its ``forward``.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import gradprobe


class LinearScan(nn.Module):
    """``h_t = rho Q h_(t-1) + U x_t``, ``y_t = h_t``, looping inside one call (time-major)."""

    def __init__(self, size: int, rho: float, batch_first: bool | None = None) -> None:
        super().__init__()
        q, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))
        u, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64))
        self.A = nn.Parameter(rho * q)
        self.U = nn.Parameter(u)
        if batch_first is not None:
            self.batch_first = batch_first

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if getattr(self, "batch_first", False):
            x = x.transpose(0, 1)
        h = x.new_zeros(x.shape[1], self.A.shape[0])
        out = []
        for t in range(x.shape[0]):
            h = h @ self.A.T + x[t] @ self.U.T
            out.append(h)
        y = torch.stack(out)
        return (y.transpose(0, 1) if getattr(self, "batch_first", False) else y), h


def _corpus_module(name):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "corpus" / f"{name}.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"corpus_{name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


#: A layer-norm LSTM as one module looping over time (the shape of torchaudio's ``_CustomLSTM``), from the corpus.
LayerNormLSTM = _corpus_module("ln_lstm").LayerNormLSTM


class Predictor(nn.Module):
    def __init__(self, recurrent: nn.Module, size: int) -> None:
        super().__init__()
        self.recurrent = recurrent
        self.head = nn.Linear(size, 1)

    def forward(self, x):
        y, _ = self.recurrent(x)
        return self.head(y.to(self.head.weight.dtype))


def _check(module, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", gradprobe.GradprobeWarning)  # no measuring fault
        return gradprobe.check(module, x, cells=[module], config={}, **kwargs)


@pytest.mark.parametrize("rho", [0.7, 0.9])
@pytest.mark.parametrize("batch_first", [None, True, False])
def test_a_linear_scan_has_the_profile_rho_to_the_k(rho, batch_first):
    torch.manual_seed(0)
    scan = LinearScan(16, rho, batch_first)
    x = torch.randn(5, 40, 16, dtype=torch.float64) if batch_first else torch.randn(40, 5, 16, dtype=torch.float64)
    report = _check(scan, x)
    (layer,) = report.layers.values()
    assert layer.profile_kind == "input" and layer.seq_len == 40
    assert layer.profile == pytest.approx([rho**k for k in range(40)], rel=1e-9)
    assert layer.rate == pytest.approx(math.log(rho), rel=1e-6)
    assert layer.horizon == pytest.approx(math.ceil(math.log(1e-3) / math.log(rho)), abs=1)
    assert not [f for f in report.findings if f.code == "GP001"]


def test_time_is_found_by_causality_without_a_batch_first_attribute():
    """A batch-first module that does not say so: the last row of the batch depends on no other row."""
    torch.manual_seed(1)

    class Hidden(LinearScan):
        def forward(self, x):
            y, h = super().forward(x.transpose(0, 1))
            return y.transpose(0, 1), h

    report = _check(Hidden(8, 0.8), torch.randn(6, 30, 8, dtype=torch.float64))
    (layer,) = report.layers.values()
    assert layer.seq_len == 30 and layer.profile == pytest.approx([0.8**k for k in range(30)], rel=1e-9)


def _jacobian_profile(module, x, v):
    """Independently: the full Jacobian of y_T with respect to every x_t, contracted with v."""

    def last(inp):
        return module(inp)[0][-1]

    jac = torch.autograd.functional.jacobian(last, x)  # [B, H, T, B, I]
    contracted = torch.einsum("bh,bhtci->tci", v, jac)
    norms = torch.linalg.vector_norm(contracted.reshape(contracted.shape[0], -1), dim=1).flip(0)
    return (norms / norms[0]).tolist()


def test_a_layer_norm_lstm_in_one_module_is_measured_like_its_jacobian():
    torch.manual_seed(2)
    lstm = LayerNormLSTM(6, 12, forget_bias=1.0).double()
    x = torch.randn(25, 3, 6, dtype=torch.float64)
    report = _check(lstm, x, deep_rows=3)
    (layer,) = report.layers.values()
    assert layer.profile_kind == "input" and len(layer.grad_norms) == 25
    # the same random v the probe drew: its private generator, seeded by the settings' seed
    generator = torch.Generator().manual_seed(0)
    v = torch.randn((3, 12), generator=generator, dtype=torch.float64)
    v = v / torch.linalg.vector_norm(v)
    assert layer.profile == pytest.approx(_jacobian_profile(lstm, x, v), rel=1e-8)


def test_attached_in_training_with_its_broken_twin():
    """Trained under attach: no fault, measured every deep step; forget bias -3 shortens the horizon."""
    horizons = {}
    for name, bias in (("healthy", 1.0), ("forget-bias-3", -3.0)):
        torch.manual_seed(3)
        model = Predictor(LayerNormLSTM(4, 16, forget_bias=bias), 16)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        with warnings.catch_warnings():
            warnings.simplefilter("error", gradprobe.GradprobeWarning)
            with gradprobe.attach(model, every=5, cells=["recurrent"], config={}, optimizer=opt) as probe:
                for _ in range(15):
                    x = torch.randn(40, 8, 4)
                    loss = (model(x)[-1] - x[:5].sum(0)[:, :1]).pow(2).mean()
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        assert probe.error is None and not [f for f in probe.findings if f.code == "GP001"], probe.findings
        layer = probe.layers["recurrent"]
        assert layer.profile_kind == "input" and layer.step == 10
        horizons[name] = layer.horizon
    assert horizons["forget-bias-3"] < horizons["healthy"] / 2


@pytest.mark.parametrize("adapter", [True, False], ids=["adapter", "generic"])
def test_a_mamba_mixer_named_as_a_cell_is_measured(adapter, monkeypatch):
    """transformers' MambaMixer (batch-first, no batch_first attribute): no fault, both mixers measured. With the
    gradprobe-transformers adapter, exactly from its decays (a state profile); without it (the plugin switched
    off), over the sequence through its inputs, time found by causality."""
    transformers = pytest.importorskip("transformers")
    if not adapter:
        monkeypatch.setenv("GRADPROBE_DISABLE_PLUGINS", "transformers-recurrences")
    torch.manual_seed(0)
    config = transformers.MambaConfig(vocab_size=50, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2)
    model = transformers.MambaForCausalLM(config)
    mixers = [name for name, module in model.named_modules() if type(module).__name__ == "MambaMixer"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers: the reference implementation on CPU
        with gradprobe.attach(model, every=2, cells=mixers, config={}, optimizer=opt) as probe:
            for _ in range(3):
                ids = torch.randint(0, 50, (3, 24))
                loss = model(ids, labels=ids).loss
                opt.zero_grad()
                loss.backward()
                opt.step()
    assert probe.error is None and not [f for f in probe.findings if f.code == "GP001"]
    assert sorted(probe.layers) == sorted(mixers)
    for layer in probe.layers.values():
        assert layer.profile_kind == ("state" if adapter else "input")
        assert layer.seq_len == 24 and layer.profile[0] == 1.0


def test_a_cell_with_three_dimensional_inputs_called_in_a_loop_stays_a_cell():
    """A graph-style cell (``x [B, N, F]``, ``h [B, N, H]``) called once per step: its first call looks like a
    sequence call, but the chain goes on, so it is a cell of T steps, never a "sequence" over its N nodes. (The
    cell replay reads states as ``[B, H]``: such a cell is reported not measured, with the error, for now.)"""
    torch.manual_seed(4)

    class NodeCell(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(3 + 8, 8)

        def forward(self, x, h):
            return torch.tanh(self.lin(torch.cat([x, h], -1)))

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = NodeCell()

        def forward(self, xs):
            h = xs.new_zeros(xs.shape[1], xs.shape[2], 8)
            for x in xs:
                h = self.cell(x, h)
            return h

    model = Loop()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gradprobe.GradprobeWarning)
        with gradprobe.attach(model, every=1, cells=["cell"], config={}) as probe:
            model(torch.randn(12, 4, 5, 3)).pow(2).sum().backward()
            probe.step()
    assert not [layer for layer in probe.layers.values() if layer.profile_kind == "input"]
    measured = probe.layers.get("cell")
    if measured is not None:
        assert measured.seq_len == 12
    else:
        (finding,) = [f for f in probe.findings if f.code == "GP001"]
        assert finding.layer == "cell" and "measuring failed" in finding.message
