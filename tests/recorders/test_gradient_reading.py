"""A gradient reading decoded after its gradients were dropped (a deferred step): NaN norms are certain, an
infinite norm may be a float overflow of finite entries and never hides them."""

import math

import pytest
import torch

from gradprobe.recorders.gradients import GradientReading


def _reading(values, grads=None):
    names = ["head.weight", "rnn.weight_hh", "rnn.bias"]
    return GradientReading(torch.tensor(values), names, [], {}, grads)


def test_an_overflowing_norm_never_hides_a_nan_gradient():
    reading = _reading([math.inf, math.nan, 1.0])
    assert reading.record(loss_finite=True)["nonfinite_params"] == ["rnn.weight_hh"]
    assert reading.record(loss_finite=False)["nonfinite_params"] == ["rnn.weight_hh"]


def test_an_infinite_norm_alone_counts_only_when_nothing_certain_marks_the_step():
    reading = _reading([math.inf, 2.0, 1.0])
    assert reading.record(loss_finite=True)["nonfinite_params"] == ["head.weight"]
    assert reading.record(loss_finite=False)["nonfinite_params"] == []  # the loss marks the step


def test_kept_gradients_decide_entry_by_entry():
    huge = torch.full((4,), 3e19)  # finite entries whose float32 norm overflows
    grads = [huge, torch.tensor([float("nan")]), torch.ones(2)]
    norms = [float(torch.linalg.vector_norm(g)) for g in grads]
    assert math.isinf(norms[0])
    assert _reading(norms, grads).record()["nonfinite_params"] == ["rnn.weight_hh"]


def test_output_norms_equal_each_tensors_own_norm_in_order() -> None:
    """Alike outputs (a cell's chain of states) are normed together; the result is each tensor's norm, in order,
    Inf/NaN kept where they were."""
    from gradprobe.recorders.gradients import output_norms

    torch.manual_seed(0)
    tensors = [torch.randn(1, 8) for _ in range(5)] + [torch.randn(3, 2), torch.zeros(0, 4), torch.randn(1, 8)]
    tensors += [torch.randn(2, 2, dtype=torch.complex64), torch.randn(1, 8, dtype=torch.float64)]
    tensors[2][0, 3] = float("nan")
    tensors[7][0, 0] = float("inf")
    norms = output_norms(tensors)
    expected = [float(torch.linalg.vector_norm(t)) for t in tensors]
    assert norms.dtype == torch.float32 and norms.shape == (len(tensors),)
    for got, want in zip(norms.tolist(), expected):
        assert (got == pytest.approx(want, rel=1e-6)) if math.isfinite(want) else (math.isnan(got) == math.isnan(want))
    assert math.isnan(norms[2]) and math.isinf(norms[7])
