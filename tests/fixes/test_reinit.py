import math

import pytest
import torch
from torch import nn

from gradprobe.fixes import reinit


@pytest.mark.parametrize("module", [nn.LSTM(3, 8, num_layers=2), nn.GRU(3, 8, bidirectional=True), nn.RNNCell(3, 8)])
def test_orthogonal_recurrent_blocks(module):
    changed = reinit.orthogonal_recurrent_(module, gain=1.0)
    assert changed and all(name.startswith("weight_hh") for name in changed)
    for name in changed:
        for block in getattr(module, name).detach().chunk(getattr(module, name).shape[0] // 8, dim=0):
            torch.testing.assert_close(block.T @ block, torch.eye(8), atol=1e-5, rtol=0)


def test_identity_recurrent_for_irnn():
    rnn = nn.RNN(3, 6, nonlinearity="relu")
    reinit.identity_recurrent_(rnn)
    assert torch.equal(rnn.weight_hh_l0.detach(), torch.eye(6))
    assert rnn.bias_ih_l0.abs().sum() == 0 and rnn.bias_hh_l0.abs().sum() == 0


def test_forget_bias_sets_the_effective_bias():
    lstm = nn.LSTM(3, 5, num_layers=2)
    reinit.forget_bias_(lstm, 1.0)
    for layer in range(2):
        total = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        assert torch.allclose(total[5:10], torch.ones(5))
    with pytest.raises(TypeError):
        reinit.forget_bias_(nn.GRU(2, 2))


def test_chrono_init_spans_the_timescales():
    lstm = nn.LSTM(3, 400)
    reinit.chrono_init_(lstm, max_timescale=100, generator=torch.Generator().manual_seed(0))
    forget = (lstm.bias_ih_l0 + lstm.bias_hh_l0)[400:800].detach()
    inputs = (lstm.bias_ih_l0 + lstm.bias_hh_l0)[:400].detach()
    assert forget.min() >= 0 and forget.max() <= math.log(99) + 1e-6
    assert torch.allclose(inputs, -forget)
    assert forget.max() > math.log(50)  # long timescales are represented
    with pytest.raises(ValueError):
        reinit.chrono_init_(lstm, max_timescale=2)


def test_xavier_and_he_input():
    lstm = nn.LSTM(64, 64)
    reinit.xavier_input_(lstm)
    assert lstm.weight_ih_l0[:64].std().item() == pytest.approx(math.sqrt(2 / 128), rel=0.1)
    rnn = nn.RNN(256, 64, nonlinearity="relu")
    reinit.he_input_(rnn)
    assert rnn.weight_ih_l0.std().item() == pytest.approx(math.sqrt(2 / 256), rel=0.1)
