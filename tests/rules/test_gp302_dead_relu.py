import torch
from torch import nn

from .zoo import BATCH, check, codes, relu_rnn_negative_bias


def test_relu_rnn_with_negative_bias_is_dead():
    torch.manual_seed(0)
    report = check(relu_rnn_negative_bias(), torch.randn(50, BATCH, 4))
    (finding,) = [f for f in report.findings if f.code == "GP302"]
    assert finding.evidence["dead_units"] == 32 and finding.severity == "error"
    assert "32 of 32 ReLU units never active" in finding.message


def test_irnn_is_alive():
    torch.manual_seed(0)
    rnn = nn.RNN(4, 32, nonlinearity="relu")
    from gradprobe.fixes import reinit

    reinit.identity_recurrent_(rnn)
    assert "GP302" not in codes(check(rnn, torch.randn(30, BATCH, 4)), "info")
