import torch
from torch import nn

import gradprobe


def test_nan_injected_in_the_input_is_located_in_the_forward_pass():
    torch.manual_seed(0)
    model = nn.GRU(3, 8)
    x = torch.randn(10, 4, 3)
    x[4, 1, 2] = float("nan")
    with gradprobe.attach(model, every=100, config={}) as probe:
        out, _ = model(x)
        loss = out.sum()
        loss.backward()
        probe.step(loss)
    (finding,) = [f for f in probe.findings if f.code == "GP103"]
    assert finding.severity == "error" and finding.step == 0
    assert finding.evidence["where"] == "forward" and finding.layer == "GRU"
    assert "first in the output of GRU at step 0" in finding.message


def test_nan_in_a_gradient_names_the_parameter():
    model = nn.Sequential()
    model.rnn = nn.RNN(2, 4)
    with gradprobe.attach(model, every=100, config={}) as probe:
        out, _ = model.rnn(torch.randn(5, 2, 2))
        out.sum().backward()
        model.rnn.weight_hh_l0.grad[0, 0] = float("inf")
        probe.step()
    (finding,) = [f for f in probe.findings if f.code == "GP103"]
    assert finding.evidence == {"where": "gradient", "parameter": "rnn.weight_hh_l0", "count": 1}
    assert finding.layer == "rnn"
