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


def test_dead_units_are_dated_from_the_first_sample_of_the_dead_stretch():
    """Saturation samples at steps 0..90 by 10: alive until step 30, every unit dead from step 40 on."""
    from gradprobe.rules.engine import RuleEngine

    engine = RuleEngine({})
    engine.feed({"kind": "meta", "layers": [], "settings": {}})
    for step in range(0, 100, 10):
        dead = 32 if step >= 40 else 0
        engine.feed(
            {
                "kind": "saturation",
                "step": step,
                "layer": "rnn.l0",
                "mode": "RNN_RELU",
                "units": 32,
                "dead_units": dead,
                "fractions": {"relu": 1.0 if dead else 0.4},
            }
        )
    (finding,) = [f for f in engine.findings() if f.code == "GP302"]
    assert finding.evidence["dead_units"] == 32
    assert (finding.first_step, finding.last_step) == (40, 90)
