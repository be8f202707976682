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


def test_output_sums_are_finite_exactly_when_every_entry_is() -> None:
    """Alike outputs (a cell's chain of states) are summed together; each result is its tensor's own sum, in
    order, non-finite exactly where an entry is Inf/NaN, and finite for huge finite entries, whose norm would
    overflow (float32 squares past 1.8e19, a float16 norm past 65504)."""
    from gradprobe.recorders.gradients import output_sums

    torch.manual_seed(0)
    tensors = [torch.randn(1, 8) for _ in range(5)] + [torch.randn(3, 2), torch.zeros(0, 4), torch.randn(1, 8)]
    tensors += [torch.randn(2, 2, dtype=torch.complex64), torch.randn(1, 8, dtype=torch.float64)]
    tensors += [torch.full((4,), 3e19), torch.full((10**6,), 100.0, dtype=torch.float16)]
    tensors += [torch.randn(2, 2, dtype=torch.complex64), torch.full((3,), 2.0, dtype=torch.bfloat16)]
    tensors[2][0, 3] = float("nan")
    tensors[7][0, 0] = float("inf")
    tensors[12][1, 0] = complex(1.0, float("nan"))  # NaN in an imaginary part only
    sums = output_sums(tensors)
    assert sums.dtype == torch.float32 and sums.shape == (len(tensors),)
    for got, tensor in zip(sums.tolist(), tensors):
        parts = torch.view_as_real(tensor) if tensor.is_complex() else tensor
        if bool(torch.isfinite(parts).all()):
            assert got == pytest.approx(float(parts.double().sum()), rel=1e-4, abs=1e-5)
        else:
            assert not math.isfinite(got)
    assert [i for i, got in enumerate(sums.tolist()) if not math.isfinite(got)] == [2, 7, 12]
    # one tensor, and a chain of alike ones (the stacked path), read the same
    assert output_sums([tensors[11]]).tolist() == [pytest.approx(1e8, rel=1e-3)]
    chain = [torch.randn(1, 8) for _ in range(100)]
    chain[57][0, 2] = float("-inf")
    assert [i for i, got in enumerate(output_sums(chain).tolist()) if not math.isfinite(got)] == [57]
