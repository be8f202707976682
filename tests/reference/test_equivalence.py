"""Reference modules equal torch.nn in outputs and every gradient."""

from __future__ import annotations

import itertools
import zlib

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from gradprobe import reference
from gradprobe.reference import from_torch

from .conftest import KINDS

INPUT, HIDDEN, BATCH, STEPS = 4, 5, 3, 6
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}
FORMS = ["tensor", "tensor+hx", "packed", "packed+hx", "unbatched"]


def _states(hidden):
    return hidden if isinstance(hidden, tuple) else (hidden,)


def _run(module: nn.Module, form: str, x: torch.Tensor, hx, lengths: torch.Tensor):
    """Forward ``module`` in one of the input forms, return the tensors to compare."""
    if form.startswith("packed"):
        packed = pack_padded_sequence(x, lengths, batch_first=module.batch_first, enforce_sorted=False)
        output, hidden = module(packed, hx)
        return [output.data, *_states(hidden)]
    if form == "unbatched":
        output, hidden = module(x.select(0 if module.batch_first else 1, 0), hx)
        return [output, *_states(hidden)]
    output, hidden = module(x, hx)
    return [output, *_states(hidden)]


def _initial_state(fused: nn.Module, kind: str, dtype) -> tuple | torch.Tensor:
    rows = fused.num_layers * (2 if fused.bidirectional else 1)
    h = torch.randn(rows, BATCH, fused.proj_size or HIDDEN, dtype=dtype)
    if kind.startswith("lstm"):
        return (h, torch.randn(rows, BATCH, HIDDEN, dtype=dtype))
    return h


GRID = list(itertools.product(KINDS, [1, 2, 3], [False, True], [False, True], FORMS, TOLERANCE))


@pytest.mark.parametrize(
    ("kind", "layers", "bidirectional", "batch_first", "form", "dtype"),
    GRID,
    ids=lambda v: str(v).replace("torch.", ""),
)
def test_outputs_and_gradients_match_torch(kind, layers, bidirectional, batch_first, form, dtype):
    torch.manual_seed(zlib.crc32(repr((kind, layers, bidirectional, batch_first, form)).encode()))
    cls, extra = KINDS[kind]
    fused = cls(INPUT, HIDDEN, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **extra)
    fused = fused.to(dtype)
    twin = from_torch(fused)
    shape = (BATCH, STEPS, INPUT) if batch_first else (STEPS, BATCH, INPUT)
    x = torch.randn(shape, dtype=dtype)
    lengths = torch.tensor([STEPS, 2, 4])
    hx = _initial_state(fused, kind, dtype) if form.endswith("+hx") else None

    results = []
    for module in (fused, twin):
        xi = x.clone().requires_grad_()
        hxi = None
        if hx is not None:
            hxi = tuple(h.clone().requires_grad_() for h in _states(hx))
            hxi = hxi if kind.startswith("lstm") else hxi[0]
        outs = _run(module, form, xi, hxi, lengths)
        weights = [torch.randn_like(o) for o in outs] if not results else results[0][1]
        loss = sum((o * w).sum() for o, w in zip(outs, weights))
        inputs = [xi, *_states(hxi)] if hxi is not None else [xi]
        grads = torch.autograd.grad(loss, inputs + list(module.parameters()))
        results.append((outs, weights, grads))

    tol = TOLERANCE[dtype]
    (outs_a, _, grads_a), (outs_b, _, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=0, atol=tol)
    assert len(grads_a) == len(grads_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=0, atol=tol)


@pytest.mark.parametrize("kind", list(KINDS))
def test_same_parameters_names_and_default_init(kind):
    cls, extra = KINDS[kind]
    ours = getattr(reference, cls.__name__)
    torch.manual_seed(7)
    fused = cls(INPUT, HIDDEN, num_layers=2, bidirectional=True, **extra)
    torch.manual_seed(7)
    twin = ours(INPUT, HIDDEN, num_layers=2, bidirectional=True, **extra)
    assert list(fused.state_dict()) == list(twin.state_dict())
    for (name, a), b in zip(fused.state_dict().items(), twin.state_dict().values()):
        assert torch.equal(a, b), name
    twin.load_state_dict(fused.state_dict())  # loads both ways without key errors
    fused.load_state_dict(twin.state_dict())


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn_tanh"])
def test_inter_layer_dropout_draws_the_same_mask(kind):
    cls, extra = KINDS[kind]
    fused = cls(INPUT, HIDDEN, num_layers=3, dropout=0.5, **extra).double()
    twin = from_torch(fused)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.double)
    torch.manual_seed(3)
    a, _ = fused(x)
    torch.manual_seed(3)
    b, _ = twin(x)
    torch.testing.assert_close(b, a, rtol=0, atol=1e-10)
    torch.manual_seed(4)
    c, _ = twin(x)
    assert not torch.allclose(b, c), "dropout masks should differ between seeds"
    twin.eval()
    fused.eval()
    torch.testing.assert_close(twin(x)[0], fused(x)[0], rtol=0, atol=1e-10)


@pytest.mark.parametrize(
    ("torch_cls", "ours", "extra"),
    [
        (nn.RNNCell, reference.RNNCell, {"nonlinearity": "tanh"}),
        (nn.RNNCell, reference.RNNCell, {"nonlinearity": "relu"}),
        (nn.LSTMCell, reference.LSTMCell, {}),
        (nn.GRUCell, reference.GRUCell, {}),
        (nn.LSTMCell, reference.LSTMCell, {"bias": False}),
    ],
)
@pytest.mark.parametrize("dtype", list(TOLERANCE), ids=str)
def test_cells_match_torch_over_a_python_loop(torch_cls, ours, extra, dtype):
    torch.manual_seed(11)
    fused = torch_cls(INPUT, HIDDEN, **extra).to(dtype)
    twin = from_torch(fused)
    assert isinstance(twin, ours)
    xs = torch.randn(STEPS, BATCH, INPUT, dtype=dtype)
    results = []
    for cell in (fused, twin):
        x = xs.clone().requires_grad_()
        state = None
        total = 0
        for t in range(STEPS):
            state = cell(x[t], state)
            h = state[0] if isinstance(state, tuple) else state
            total = total + (h * (t + 1)).sum()
        grads = torch.autograd.grad(total, [x, *cell.parameters()])
        results.append((h.detach(), grads))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=TOLERANCE[dtype])
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a, rtol=0, atol=TOLERANCE[dtype])
    unbatched = twin(xs[0, 0])
    expected = fused(xs[0, 0])
    for a, b in zip(_states(expected), _states(unbatched)):
        torch.testing.assert_close(b, a, rtol=0, atol=TOLERANCE[dtype])


def test_bias_false_multilayer_matches():
    fused = nn.LSTM(INPUT, HIDDEN, num_layers=2, bias=False, proj_size=2).double()
    twin = from_torch(fused)
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in fused.named_parameters()]
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.double)
    torch.testing.assert_close(twin(x)[0], fused(x)[0], rtol=0, atol=1e-10)


def test_from_torch_rejects_non_recurrent_modules():
    with pytest.raises(TypeError, match="Linear"):
        from_torch(nn.Linear(3, 3))


def test_from_torch_copies_instead_of_sharing():
    fused = nn.GRU(INPUT, HIDDEN)
    twin = from_torch(fused)
    with torch.no_grad():
        twin.weight_hh_l0.zero_()
    assert fused.weight_hh_l0.abs().sum() > 0


def test_second_order_gradients_are_refused_not_silently_wrong():
    """The batched W_hh gradient is first-order only: asking for more raises."""
    twin = reference.LSTM(INPUT, HIDDEN, dtype=torch.float64)
    x = torch.randn(STEPS, BATCH, INPUT, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(twin(x)[0].pow(2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.pow(2).sum().backward()  # e.g. a gradient penalty
