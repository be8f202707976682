"""attach()/step()/close() on every supported kind of recurrent model."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gradprobe
from gradprobe import reference
from gradprobe.events import iter_events
from gradprobe.reference import from_torch

from .models import EncoderDecoder, LinearCell, LoopModel, orthogonal

T, B, F = 8, 3, 4
DOUBLE = torch.float64


def _states(hidden):
    return hidden if isinstance(hidden, tuple) else (hidden,)


def _loss(out, hidden):
    data = out.data if hasattr(out, "batch_sizes") else out
    return data.pow(2).sum() + sum(h.sum() for h in _states(hidden))


def _expected_grad_norms(fused, x):
    """Total ||dL/dh_t|| of every track, computed directly on a reference twin."""
    twin = from_torch(fused)
    out, hidden, trace = twin.trace(x)
    hs = [state[0] for layer in trace.layers for run in layer for state in run.states]
    grads = torch.autograd.grad(_loss(out, hidden), hs, allow_unused=True)
    norms, cursor = [], 0
    for layer in trace.layers:
        for run in layer:
            count = len(run.states)
            norms.append([0.0 if g is None else float(g.norm()) for g in grads[cursor : cursor + count]])
            cursor += count
    return norms


CONFIGS = {
    "lstm_2layer_bidirectional_batch_first": (
        lambda: nn.LSTM(F, 5, num_layers=2, bidirectional=True, batch_first=True, dtype=DOUBLE),
        lambda: torch.randn(B, T, F, dtype=DOUBLE),
    ),
    "lstm_proj": (
        lambda: nn.LSTM(F, 6, proj_size=3, num_layers=2, dtype=DOUBLE),
        lambda: torch.randn(T, B, F, dtype=DOUBLE),
    ),
    "gru_packed": (
        lambda: nn.GRU(F, 5, num_layers=2, bidirectional=True, dtype=DOUBLE),
        lambda: pack_padded_sequence(torch.randn(T, B, F, dtype=DOUBLE), torch.tensor([T, 3, 5]), enforce_sorted=False),
    ),
    "rnn_relu": (lambda: nn.RNN(F, 5, nonlinearity="relu", dtype=DOUBLE), lambda: torch.randn(T, B, F, dtype=DOUBLE)),
    "reference_lstm": (
        lambda: reference.LSTM(F, 5, num_layers=2, dtype=DOUBLE),
        lambda: torch.randn(T, B, F, dtype=DOUBLE),
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_stack_modules_report_every_track_with_exact_gradient_norms(name, tmp_path):
    torch.manual_seed(0)
    make_model, make_input = CONFIGS[name]
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    log = tmp_path / "run.log"
    expected = []
    with gradprobe.attach(model, log=log, every=2) as probe:
        for step in range(3):
            x = make_input()
            if step == 2:
                expected = _expected_grad_norms(model, x)
            out, hidden = model(x)
            loss = _loss(out, hidden)
            loss.backward()
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    assert probe.error is None
    events = list(iter_events(log))
    deep = [e for e in events if e["kind"] == "deep"]
    tracks = probe.sites or [t for layer in events[0]["layers"] for t in layer["tracks"]]
    assert {e["step"] for e in deep} == {0, 2}
    last = [e for e in deep if e["step"] == 2]
    assert [e["layer"] for e in last] == tracks
    for event, norms in zip(last, expected):
        assert event["seq_len"] == T
        assert event["grad_norms"] == pytest.approx(norms, rel=1e-8, abs=1e-12)
        assert event["profile"][0] == pytest.approx(1.0)
        assert len(event["jacobian_norms"]) == T
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == [0, 1, 2]
    assert all(e["grad_norm"] > 0 and e["nonfinite"] is None for e in steps)


def test_per_gate_gradient_norms_add_up():
    torch.manual_seed(1)
    model = nn.LSTM(F, 5)
    seen = []
    with gradprobe.attach(model, every=100, sinks=[seen.append]) as probe:
        out, _ = model(torch.randn(T, B, F))
        out.sum().backward()
        probe.step()
    step = next(e for e in seen if e["kind"] == "step")
    gates = step["gates"]["weight_hh_l0"]
    assert list(gates) == ["input", "forget", "cell", "output"]
    total = sum(v * v for v in gates.values()) ** 0.5
    assert total == pytest.approx(step["params"]["weight_hh_l0"], rel=1e-5)
    # each gate's own rows, in torch's order (i, f, g, o), for every gated parameter
    for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
        rows = getattr(model, name).grad.chunk(4)
        assert list(step["gates"][name].values()) == pytest.approx([float(r.norm()) for r in rows], rel=1e-5)
    assert step["grad_norm"] == pytest.approx(
        float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()), rel=1e-5
    )


@pytest.mark.parametrize(
    "cell, lstm",
    [
        (nn.LSTMCell(F, 5, dtype=DOUBLE), True),
        (nn.GRUCell(F, 5, dtype=DOUBLE), False),
        (nn.RNNCell(F, 5, dtype=DOUBLE), False),
    ],
    ids=["lstm_cell", "gru_cell", "rnn_cell"],
)
def test_cells_in_a_python_loop(cell, lstm):
    torch.manual_seed(2)
    model = LoopModel(cell, 5, lstm=lstm)
    seen = []
    with gradprobe.attach(model, every=1, sinks=[seen.append]) as probe:
        out, hs = model(torch.randn(T, B, F, dtype=DOUBLE))
        loss = out.pow(2).sum()
        expected = [float(g.norm()) for g in torch.autograd.grad(loss, hs, retain_graph=True)]
        loss.backward()
        probe.step(loss)
    assert probe.error is None
    (deep,) = [e for e in seen if e["kind"] == "deep"]
    assert deep["layer"] == "cell" and deep["chained"] is True
    assert deep["grad_norms"] == pytest.approx(expected, rel=1e-10)
    sat = [e for e in seen if e["kind"] == "saturation"]
    assert sat and set(sat[0]["fractions"]) >= ({"forget"} if lstm else set())


def test_model_with_several_recurrent_layers():
    torch.manual_seed(3)
    model = EncoderDecoder()
    seen = []
    with gradprobe.attach(model, every=1, sinks=[seen.append]) as probe:
        out, _ = model(torch.randn(B, T, 3))
        out.sum().backward()
        probe.step()
    layers = [e["layer"] for e in seen if e["kind"] == "deep"]
    assert layers == ["encoder.l0", "decoder"]
    deep = {e["layer"]: e for e in seen if e["kind"] == "deep"}
    assert deep["encoder.l0"]["seq_len"] == T and deep["decoder"]["seq_len"] == 5


def test_custom_cell_named_by_path():
    cell = LinearCell(2, 4, 0.9 * orthogonal(4))
    model = LoopModel(cell, 4)
    probe = gradprobe.attach(model, every=1, cells=["cell"])
    out, _ = model(torch.randn(6, 2, 2, dtype=DOUBLE))
    out.sum().backward()
    probe.step()
    probe.close()
    assert probe.layers["cell"].profile[3] == pytest.approx(0.9**3)


def test_model_without_recurrent_layer_is_a_clear_error():
    with pytest.raises(gradprobe.NotRecurrentError, match="Sequential has no recurrent layer"):
        gradprobe.attach(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    with pytest.raises(gradprobe.NotRecurrentError, match="no submodule named 'nope'"):
        gradprobe.attach(nn.LSTM(2, 2), cells=["nope"])
    with pytest.raises(gradprobe.NotRecurrentError, match="expected a torch.nn.Module"):
        gradprobe.attach("not a model")


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="fix must be one of"):
        gradprobe.attach(nn.GRU(2, 2), fix="sometimes")
    with pytest.raises(ValueError, match="every must be a number of steps >= 1"):
        gradprobe.attach(nn.GRU(2, 2), every=0)


def test_validation_under_no_grad_does_not_replace_the_training_call():
    torch.manual_seed(4)
    model = nn.GRU(F, 5)
    seen = []
    with gradprobe.attach(model, every=1, sinks=[seen.append]) as probe:
        out, _ = model(torch.randn(T, B, F))
        with torch.no_grad():
            model(torch.randn(2 * T, B, F))  # a validation pass of another length
        out.sum().backward()
        probe.step()
    (deep,) = [e for e in seen if e["kind"] == "deep"]
    assert deep["seq_len"] == T


def test_nonfinite_values_are_located():
    torch.manual_seed(5)
    model = nn.Sequential()
    model.rnn = nn.LSTM(F, 5)
    seen = []
    with gradprobe.attach(model, every=100, sinks=[seen.append]) as probe:
        x = torch.randn(T, B, F)
        x[3, 0, 0] = float("nan")
        out, _ = model.rnn(x)
        loss = out.sum()
        loss.backward()
        probe.step(loss)
    step = next(e for e in seen if e["kind"] == "step")
    assert step["nonfinite"]["where"] == "forward"
    assert step["nonfinite"]["layer"] == "rnn"
    assert step["nonfinite"]["count"] == 4  # every LSTM parameter


def _bf16_lstm_supported() -> bool:
    """oneDNN has no bfloat16 LSTM primitive on CPUs without AVX-512/AMX bf16 (e.g. some AMD EPYC)."""
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nn.LSTM(2, 2)(torch.randn(2, 1, 2))
    except RuntimeError:
        return False
    return True


@pytest.mark.parametrize("kind", ["stack", "cell"])
def test_mixed_precision_forward_is_replayed_in_the_weights_precision(kind):
    """Under autocast the captured tensors are bfloat16; the probe must not fail on the dtype mismatch."""
    if kind == "stack" and not _bf16_lstm_supported():
        pytest.skip("this CPU has no bfloat16 LSTM kernel (oneDNN: no primitive descriptor); nothing to probe")
    torch.manual_seed(0)
    model = nn.LSTM(4, 8) if kind == "stack" else LoopModel(nn.GRUCell(4, 8), 8)
    with gradprobe.attach(model, every=1, saturation_every=1, config={}) as probe:
        for _ in range(2):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(torch.randn(10, 3, 4))[0]
                loss = out.float().pow(2).mean()
            loss.backward()
            probe.step(loss)
    assert probe.error is None
    (layer,) = probe.layers.values()
    assert layer.profile[0] == pytest.approx(1.0) and len(layer.grad_norms) == 10
