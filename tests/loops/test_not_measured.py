"""GP001: an attached recurrent layer that could not be measured is reported, never healthy by silence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.testing import GradientHealthError, assert_healthy


class LayerNormLSTMCell(nn.Module):
    """A custom cell in the style of PyTorch's custom-LSTM benchmarks, randn-initialised (it saturates)."""

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.weight_ih = nn.Parameter(torch.randn(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.randn(4 * hidden_size, hidden_size))

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = state
        gates = x @ self.weight_ih.t() + h @ self.weight_hh.t()
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class Loop(nn.Module):
    def __init__(self, cell: nn.Module) -> None:
        super().__init__()
        self.cell = cell

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = (x.new_zeros(x.shape[1], 8), x.new_zeros(x.shape[1], 8))
        outs = []
        for x_t in x:
            state = self.cell(x_t, state)
            outs.append(state[0])
        return torch.stack(outs)


def _scripted_loop() -> Loop:
    torch.manual_seed(0)
    return Loop(torch.jit.script(LayerNormLSTMCell(4, 8)))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("cells", [(), ("cell",)], ids=["found-by-name", "named-with-cells"])
def test_a_scripted_cell_is_gp001_not_an_exception_and_not_healthy(cells):
    model, x = _scripted_loop(), torch.randn(6, 3, 4)
    report = gradprobe.check(model, x, cells=cells, config={})
    (finding,) = [f for f in report.findings if f.code == "GP001"]
    assert finding.severity == "warning" and finding.layer == "cell" and "TorchScript" in finding.message
    assert not report.healthy
    with pytest.raises(GradientHealthError, match="GP001 not-measured"):
        assert_healthy(model, x, cells=cells, config={})
    assert_healthy(model, x, cells=cells, config={}, allow=["GP001"])  # allowed on purpose


def test_the_same_cell_in_eager_mode_is_measured():
    torch.manual_seed(0)
    model = Loop(LayerNormLSTMCell(4, 8))
    report = gradprobe.check(model, torch.randn(6, 3, 4), cells=["cell"], config={})
    assert "cell" in report.layers and report.layers["cell"].seq_len == 6
    assert not [f for f in report.findings if f.code == "GP001"]


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.GRU(3, 5)
        self.unused = nn.LSTM(3, 5, bidirectional=True)
        self.frozen_call = nn.GRU(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            context, _ = self.frozen_call(x)
        return self.used(x)[0] + context


def test_unused_and_no_grad_layers_get_their_reasons_and_measured_ones_do_not():
    torch.manual_seed(0)
    report = gradprobe.check(TwoLayers(), torch.randn(7, 2, 3), config={})
    found = {f.layer: f for f in report.findings if f.code == "GP001"}
    assert set(found) == {"unused", "frozen_call"}
    assert "hooks never ran" in found["unused"].message and found["unused"].evidence["tracks"] == [
        "unused.l0",
        "unused.l0_reverse",
    ]
    assert "gradients disabled" in found["frozen_call"].message
    assert "used.l0" in report.layers


def test_gp001_is_in_the_run_log_and_the_cli_report(tmp_path):
    from click.testing import CliRunner

    from gradprobe.cli import main

    model = TwoLayers()
    with gradprobe.attach(model, log=tmp_path / "run.log", every=2, config={}) as probe:
        for _ in range(3):
            model(torch.randn(7, 2, 3)).sum().backward()
            probe.step()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "run.log")])
    assert result.exit_code == 1 and "GP001 not-measured" in result.output and "unused" in result.output
