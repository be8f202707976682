"""A gradient reading decoded after its gradients were dropped (a deferred step): NaN norms are certain, an
infinite norm may be a float overflow of finite entries and never hides them."""

import math

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
