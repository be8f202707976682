import pytest
import torch
from torch import nn

from gradprobe.fixes import NonFiniteGuard


def test_skip_leaves_parameters_and_adam_state_untouched():
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(4, 3)).sum().backward()
    model.weight.grad[0, 0] = float("nan")
    assert NonFiniteGuard("skip")(model.parameters(), finite=False) == {"mode": "skip", "parameters": 2}
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not opt.state  # no moment was updated


def test_random_step_has_the_requested_norm():
    model = nn.Linear(3, 2)
    model(torch.randn(4, 3)).sum().backward()
    model.bias.grad[0] = float("inf")
    NonFiniteGuard("random", step_size=0.05)(model.parameters(), finite=False)
    total = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
    assert total.item() == pytest.approx(0.05, rel=1e-5)


def test_finite_gradients_pass_and_bad_mode_is_rejected():
    assert NonFiniteGuard()(nn.Linear(2, 2).parameters(), finite=True) is None
    with pytest.raises(ValueError, match="mode must be"):
        NonFiniteGuard("retry")
