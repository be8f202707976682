"""Bad arguments raise the same kind of error as torch.nn."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from gradprobe import reference

BAD_CONSTRUCTOR_ARGS = [
    ((4, 0), {}),
    ((0, 4), {}),
    ((4, 4.0), {}),
    ((4.0, 4), {}),
    ((4, 4), {"num_layers": 0}),
    ((4, 4), {"dropout": 1.5}),
    ((4, 4), {"dropout": True}),
    ((4, 4), {"dropout": "0.1"}),
    ((4, 4), {"bias": 1}),
    ((4, 4), {"batch_first": "yes"}),
]
PAIRS = [(nn.RNN, reference.RNN), (nn.LSTM, reference.LSTM), (nn.GRU, reference.GRU)]


def _error_of(factory):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            factory()
    except Exception as exc:  # noqa: BLE001 - the type is what the test compares
        return type(exc)
    return None


@pytest.mark.parametrize(("args", "kwargs"), BAD_CONSTRUCTOR_ARGS)
@pytest.mark.parametrize(("torch_cls", "ours"), PAIRS, ids=lambda c: c.__name__ if isinstance(c, type) else None)
def test_constructor_errors_match(torch_cls, ours, args, kwargs):
    expected = _error_of(lambda: torch_cls(*args, **kwargs))
    assert expected is not None
    assert _error_of(lambda: ours(*args, **kwargs)) is expected


@pytest.mark.parametrize(
    ("torch_cls", "ours", "kwargs"),
    [
        (nn.RNN, reference.RNN, {"proj_size": 2}),
        (nn.GRU, reference.GRU, {"proj_size": 2}),
        (nn.LSTM, reference.LSTM, {"proj_size": 4}),
        (nn.LSTM, reference.LSTM, {"proj_size": -1}),
        (nn.RNN, reference.RNN, {"nonlinearity": "sigmoid"}),
    ],
)
def test_mode_specific_constructor_errors_match(torch_cls, ours, kwargs):
    expected = _error_of(lambda: torch_cls(3, 4, **kwargs))
    assert expected is ValueError
    assert _error_of(lambda: ours(3, 4, **kwargs)) is expected


def test_dropout_with_one_layer_warns_like_torch():
    with pytest.warns(UserWarning, match="num_layers greater than 1"):
        reference.LSTM(3, 4, dropout=0.2)


@pytest.mark.parametrize(("torch_cls", "ours"), PAIRS)
@pytest.mark.parametrize(
    "make_call",
    [
        lambda m: m(torch.randn(5, 2, 7)),  # wrong input_size
        lambda m: m(torch.randn(5, 2, 3, 1)),  # 4-D input
        lambda m: m(torch.randn(5, 2, 3).double()),  # dtype differs from weights
        lambda m: m(torch.randn(5, 2, 3), _hidden(m, batch=3)),  # hx batch mismatch
        lambda m: m(torch.randn(5, 2, 3), _hidden(m, batch=2, dims=2)),  # hx 2-D for 3-D input
        lambda m: m(torch.randn(5, 3), _hidden(m, batch=2, dims=3)),  # hx 3-D for 2-D input
    ],
    ids=["input_size", "4d", "dtype", "hx_batch", "hx_dims", "unbatched_hx_dims"],
)
def test_forward_errors_match(torch_cls, ours, make_call):
    expected = _error_of(lambda: make_call(torch_cls(3, 4)))
    assert expected is not None
    assert _error_of(lambda: make_call(ours(3, 4))) is expected


def _hidden(module, batch, dims=3):
    shape = (1, batch, 4) if dims == 3 else (batch, 4)
    h = torch.zeros(shape)
    if isinstance(module, (nn.LSTM, reference.LSTM)):
        return (h, h.clone())
    return h


@pytest.mark.parametrize(
    ("torch_cls", "ours"),
    [(nn.RNNCell, reference.RNNCell), (nn.LSTMCell, reference.LSTMCell), (nn.GRUCell, reference.GRUCell)],
)
@pytest.mark.parametrize(
    "make_call",
    [
        lambda c: c(torch.randn(2, 7)),
        lambda c: c(torch.randn(2, 3, 1)),
        lambda c: c(torch.randn(2, 3), _cell_hidden(c, torch.zeros(2, 5))),
        lambda c: c(torch.randn(2, 3), _cell_hidden(c, torch.zeros(1, 2, 4))),
    ],
    ids=["input_size", "3d", "hidden_size", "hidden_dims"],
)
def test_cell_forward_errors_match(torch_cls, ours, make_call):
    expected = _error_of(lambda: make_call(torch_cls(3, 4)))
    assert expected is not None
    assert _error_of(lambda: make_call(ours(3, 4))) is expected


def _cell_hidden(cell, h):
    return (h, h.clone()) if isinstance(cell, (nn.LSTMCell, reference.LSTMCell)) else h
