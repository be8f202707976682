"""The deep step of fused stacks (one forward pass, one backward sweep) against the general replay and theory."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import gradprobe
from gradprobe.recorders import sweep
from gradprobe.recorders.capture import StackCall
from gradprobe.recorders.sweep import lyapunov as sweep_lyapunov
from gradprobe.reference import RNN as ReferenceRNN
from gradprobe.reference import functional as fn


def _deep_events(model, x, hx=None, general=False, monkeypatch=None, train=True, lengths=None):
    """The deep and saturation events of one probed step, by the sweep or (``general``) the autograd replay.

    ``lengths``: feed ``x`` packed with these (unsorted) lengths.
    """
    if general:
        monkeypatch.setattr(sweep, "supported", lambda *args, **options: False)
    events: list[dict] = []
    model.train(train)
    torch.manual_seed(11)  # the same dropout masks in both runs
    # Lanczos as long as the state (H=7: at most 14): both paths get the exact top singular value, so their
    # Jacobian norms agree to rounding; a shorter Lanczos amplifies the paths' different roundings
    with gradprobe.attach(model, every=1, config={}, sinks=[events.append], spectral_steps=16) as probe:
        given = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
        out, hidden = model(given) if hx is None else model(given, hx)
        out = out.data if lengths is not None else out
        states = hidden if isinstance(hidden, tuple) else (hidden,)
        loss = out.pow(2).sum() + sum((0.3 + 0.2 * k) * s.sin().sum() for k, s in enumerate(states))
        loss.backward()
        probe.step(loss)
    assert probe.error is None, probe.error
    if general:
        monkeypatch.undo()
    deep = {e["layer"]: e for e in events if e["kind"] == "deep"}
    saturation = {e["layer"]: e for e in events if e["kind"] == "saturation"}
    return deep, saturation


CONFIGS = {
    "lstm": (nn.LSTM, {}, 20),
    "lstm_2layer_bi_dropout": (nn.LSTM, {"num_layers": 2, "bidirectional": True, "dropout": 0.4}, 20),
    "lstm_proj_batch_first": (nn.LSTM, {"proj_size": 3, "batch_first": True, "num_layers": 2}, 20),
    "lstm_long": (nn.LSTM, {"num_layers": 2}, 150),  # more than one chunk of the sweep
    "gru_2layer_bi": (nn.GRU, {"num_layers": 2, "bidirectional": True}, 20),
    "gru_long": (nn.GRU, {"bidirectional": True}, 150),
    "rnn_tanh_3layer": (nn.RNN, {"num_layers": 3, "dropout": 0.3}, 20),
    "rnn_relu_bi": (nn.RNN, {"nonlinearity": "relu", "bidirectional": True}, 20),
    "leaky_reference": (ReferenceRNN, {"nonlinearity": "leaky_relu", "num_layers": 2}, 20),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("with_state", [False, True])
def test_the_sweep_measures_what_the_autograd_replay_measures(name, with_state, monkeypatch):
    """Per-step ||dL/dh_t|| (the loss reaches every layer through outputs and final states), Jacobian norms and saturation."""
    cls, options, steps = CONFIGS[name]
    torch.manual_seed(0)
    model = cls(4, 7, dtype=torch.float64, **options)
    batch_first = options.get("batch_first", False)
    x = torch.randn((5, steps, 4) if batch_first else (steps, 5, 4), dtype=torch.float64)
    hx = None
    if with_state:
        layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
        h0 = torch.randn(layers, 5, options.get("proj_size") or 7, dtype=torch.float64)
        hx = (h0, torch.randn(layers, 5, 7, dtype=torch.float64)) if cls is nn.LSTM else h0
    fast, fast_saturation = _deep_events(model, x, hx)
    general, general_saturation = _deep_events(model, x, hx, general=True, monkeypatch=monkeypatch)
    assert fast.keys() == general.keys() and len(fast) == getattr(model, "num_layers", 1) * (
        2 if options.get("bidirectional") else 1
    )
    for layer, event in fast.items():
        reference = general[layer]
        assert event["seq_len"] == reference["seq_len"] == steps and event["batch"] == reference["batch"] == 5
        assert event["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-10, abs=1e-14)
        assert min(event["grad_norms"]) > 0
        assert event["jacobian_norms"] == pytest.approx(reference["jacobian_norms"], rel=1e-10)
        assert fast_saturation[layer]["fractions"] == pytest.approx(general_saturation[layer]["fractions"], abs=1e-12)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_single_precision_large_layers_agree_with_the_autograd_replay(cls, monkeypatch):
    """B*H >= 4096: tanh is taken as 2 sigmoid(2x) - 1; the gradients still agree to single-precision round-off."""
    torch.manual_seed(2)
    model = cls(8, 256)
    x = torch.randn(15, 16, 8)
    fast, _ = _deep_events(model, x)
    general, _ = _deep_events(model, x, general=True, monkeypatch=monkeypatch)
    for layer, event in fast.items():
        assert event["grad_norms"] == pytest.approx(general[layer]["grad_norms"], rel=2e-5)


@pytest.mark.parametrize(
    "module",
    [
        nn.LSTM(3, 6, proj_size=2, dtype=torch.float64),
        nn.GRU(3, 5, dtype=torch.float64),
        nn.RNN(3, 5, nonlinearity="relu", dtype=torch.float64),
    ],
    ids=["lstm_proj", "gru", "rnn_relu"],
)
@pytest.mark.parametrize("output_known", [False, True], ids=["loop", "from_output"])
@pytest.mark.parametrize(("lyapunov_k", "fixed_period"), [(0, None), (3, None), (3, 3)], ids=["k0", "k3", "k3_every3"])
def test_the_profile_is_the_product_of_analytic_jacobians(module, output_known, lyapunov_k, fixed_period, monkeypatch):
    """profile[k] = mean_b ||v_b^T J_T ... J_(T-k+1)|| with the sweep's own random v, Jacobians formed explicitly.

    Both forward passes: the loop over time, and the one from the call's captured output. Lyapunov vectors
    swept alongside, re-orthonormalized in place (after 4, 12, 28 and 40 steps here, or every 3 steps as off
    the CPU), leave the profile's rows as they are.
    """
    if fixed_period is not None:
        monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_EVERY", fixed_period)
        monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_MAX_EVERY", fixed_period)
    torch.manual_seed(3)
    steps = 40
    x = torch.randn(steps, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        out, _ = module(x)
    twin = gradprobe.recorders.replay._twin_for(module)
    call = StackCall(x, None, False, grads=[torch.ones_like(out)])
    if output_known:
        call.outputs, call.output_version = [out], out._version
    assert (call.layer_output() is not None) == output_known
    params = {name: p.detach() for name, p in module.named_parameters()}
    (measured,) = sweep.sweep_stack(
        twin, ["l0"], call, params, 2, lyapunov_k, torch.Generator().manual_seed(5), head_rows=2
    )
    run = measured.run
    states = [run.h] if run.c is None else [run.h, run.c]
    size = sum(s.shape[-1] for s in states)
    v = torch.randn(2, size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    u = v / v.norm(dim=-1, keepdim=True)
    weights = run.weights
    x_proj = fn.project_input(run.mode, x[:, :2], weights)
    expected = [1.0]
    for t in range(steps - 1, 0, -1):
        jac = fn.jacobian(run.mode, x_proj[t], tuple(s[t, :2] for s in states), weights)
        u = torch.einsum("bi,bij->bj", u, jac)
        expected.append(float(u.norm(dim=-1).mean()))
    assert measured.result.profile == pytest.approx(expected, rel=1e-9, abs=1e-14)


def test_the_lyapunov_spectrum_of_a_non_normal_recurrence():
    """W upper triangular: the exponents are log |diag W| although W != W^T (the sweep walks the adjoint products)."""
    diagonal = torch.tensor([1.15, 0.8, 0.45, 0.2], dtype=torch.float64)
    weight = torch.diag(diagonal) + torch.triu(torch.full((4, 4), 0.6, dtype=torch.float64), diagonal=1)
    rnn = nn.RNN(1, 4).double()
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            param.copy_(weight if name == "weight_hh_l0" else torch.zeros_like(param))
    report = gradprobe.check(rnn, torch.zeros(400, 2, 1, dtype=torch.float64), config={}, lyapunov_k=4)
    assert report.layers["RNN.l0"].lyapunov == pytest.approx(diagonal.log().tolist(), abs=5e-3)


def test_padded_and_packed_calls_take_the_sweep_and_unbatched_calls_the_general_replay(monkeypatch):
    taken: list[bool] = []
    real = sweep.sweep_stack
    monkeypatch.setattr(sweep, "sweep_stack", lambda *a, **k: taken.append(True) or real(*a, **k))
    model = nn.GRU(3, 4)
    gradprobe.check(model, torch.randn(6, 2, 3), config={})
    assert taken == [True]

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = model

        def forward(self, x):
            return self.gru(pack_padded_sequence(x, [6, 4, 2]))[1]

    report = gradprobe.check(Packed(), torch.randn(6, 3, 3), loss_fn=lambda h: h.pow(2).sum(), config={})
    assert taken == [True, True] and report.layers["gru.l0"].seq_len == 6
    assert math.isfinite(report.layers["gru.l0"].grad_norms[0])

    report = gradprobe.check(model, torch.randn(6, 3), config={})  # unbatched: the general replay
    (layer,) = report.layers.values()
    assert taken == [True, True] and layer.seq_len == 6 and math.isfinite(layer.grad_norms[0])


@pytest.mark.parametrize("every", [1, 2, 3])
@pytest.mark.parametrize("steps", [37, 40])
def test_lyapunov_exponents_do_not_depend_on_how_often_the_vectors_are_re_orthonormalized(every, steps, monkeypatch):
    """W = g P (P a cyclic permutation, orthogonal): every exponent is ln g exactly, whatever the QR period,
    burn-in and sequence parity."""
    monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_EVERY", every)
    monkeypatch.setattr(sweep_lyapunov, "LYAPUNOV_MAX_EVERY", every)  # a fixed period
    g = 0.7
    q = torch.eye(6, dtype=torch.float64).roll(1, dims=0)
    rnn = nn.RNN(1, 6, nonlinearity="relu").double()  # P keeps positive states positive: the relu's slope is 1
    with torch.no_grad():
        for name, param in rnn.named_parameters():
            param.copy_(g * q if name == "weight_hh_l0" else torch.zeros_like(param))
    taken: list[bool] = []
    real = sweep.sweep_stack
    monkeypatch.setattr(sweep, "sweep_stack", lambda *a, **k: taken.append(True) or real(*a, **k))
    h0 = torch.rand(1, 2, 6, dtype=torch.float64) + 1  # positive: the dynamics are h' = g P h
    with gradprobe.attach(rnn, every=1, config={}, lyapunov_k=4) as probe:
        out, hn = rnn(torch.zeros(steps, 2, 1, dtype=torch.float64), h0)
        (out.sum() + hn.sum()).backward()
        probe.step()
    assert taken == [True]
    assert probe.layers["RNN.l0"].lyapunov == pytest.approx([math.log(g)] * 4, abs=1e-9)


def test_an_output_changed_in_place_is_not_taken_for_the_layer_output(monkeypatch):
    """The top layer's forward pass reads h_t from the captured output only while that tensor is unchanged."""

    class Doubled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 5, dtype=torch.float64)

        def forward(self, x):
            out, hidden = self.rnn(x)
            return out.mul_(2), hidden  # in place: the captured output tensor no longer holds h_t

    torch.manual_seed(2)
    model = Doubled()
    x = torch.randn(12, 4, 3, dtype=torch.float64)
    fast, _ = _deep_events(model, x)
    general, _ = _deep_events(model, x, general=True, monkeypatch=monkeypatch)
    assert fast["rnn.l0"]["grad_norms"] == pytest.approx(general["rnn.l0"]["grad_norms"], rel=1e-10)
    assert fast["rnn.l0"]["jacobian_norms"] == pytest.approx(general["rnn.l0"]["jacobian_norms"], rel=1e-10)


PACKED_CONFIGS = {
    "lstm_bi_2layer_dropout": (nn.LSTM, {"num_layers": 2, "bidirectional": True, "dropout": 0.4}),
    "lstm_proj": (nn.LSTM, {"proj_size": 3}),
    "gru_bi": (nn.GRU, {"bidirectional": True}),
    "gru_2layer_dropout": (nn.GRU, {"num_layers": 2, "dropout": 0.3}),
    "rnn_tanh_bi_2layer": (nn.RNN, {"num_layers": 2, "bidirectional": True}),
    "rnn_relu": (nn.RNN, {"nonlinearity": "relu"}),
    "leaky_reference_bi": (ReferenceRNN, {"nonlinearity": "leaky_relu", "bidirectional": True}),
}


@pytest.mark.parametrize("name", list(PACKED_CONFIGS))
@pytest.mark.parametrize("with_state", [False, True])
def test_packed_calls_are_swept_and_measure_what_the_autograd_replay_measures(name, with_state, monkeypatch):
    """Rows that end early (or, in a reverse direction, start late) step with the identity and count only while alive."""
    cls, options = PACKED_CONFIGS[name]
    torch.manual_seed(0)
    model = cls(4, 7, dtype=torch.float64, **options)
    steps, lengths = 20, [13, 20, 6, 20, 17, 1]
    x = torch.randn(steps, len(lengths), 4, dtype=torch.float64)
    hx = None
    if with_state:
        layers = options.get("num_layers", 1) * (2 if options.get("bidirectional") else 1)
        h0 = torch.randn(layers, len(lengths), options.get("proj_size") or 7, dtype=torch.float64)
        hx = (h0, torch.randn(layers, len(lengths), 7, dtype=torch.float64)) if cls is nn.LSTM else h0
    taken: list[bool] = []
    real = sweep.sweep_stack
    monkeypatch.setattr(sweep, "sweep_stack", lambda *a, **k: taken.append(True) or real(*a, **k))
    fast, fast_saturation = _deep_events(model, x, hx, lengths=lengths)
    assert taken == [True]
    general, general_saturation = _deep_events(model, x, hx, general=True, monkeypatch=monkeypatch, lengths=lengths)
    assert fast.keys() == general.keys() and len(fast) == getattr(model, "num_layers", 1) * (
        2 if options.get("bidirectional") else 1
    )
    for layer, event in fast.items():
        reference = general[layer]
        assert event["seq_len"] == reference["seq_len"] == steps and event["batch"] == reference["batch"] == len(
            lengths
        )
        assert event["grad_norms"] == pytest.approx(reference["grad_norms"], rel=1e-10, abs=1e-14)
        assert event["jacobian_norms"] == pytest.approx(reference["jacobian_norms"], rel=1e-10)
        assert fast_saturation[layer]["fractions"] == pytest.approx(general_saturation[layer]["fractions"], abs=1e-12)


def _sampled_saturation(model, x, hx=None, lengths=None, batch_first=False, general=False, monkeypatch=None):
    """The saturation events of sampled (not deep) steps, by ``sample_stack`` or (``general``) the replay."""
    taken: list[bool] = []
    if general:
        monkeypatch.setattr(sweep, "supported", lambda *args, **options: False)
    else:
        real = sweep.sample_stack
        monkeypatch.setattr(sweep, "sample_stack", lambda *a, **k: taken.append(True) or real(*a, **k))
    events: list[dict] = []
    with gradprobe.attach(
        model, every=10**9, saturation_every=1, sample_rows=3, config={}, sinks=[events.append]
    ) as probe:
        for _ in range(3):  # step 0 is deep; 1 and 2 are sampled
            given = pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False) if lengths else x
            out, _ = model(given) if hx is None else model(given, hx)
            (out.data if lengths else out).pow(2).sum().backward()
            probe.step()
    assert probe.error is None, probe.error
    monkeypatch.undo()
    assert general or taken == [True, True]
    return [e for e in events if e["kind"] == "saturation" and not e["deep"]]


SAMPLED_CONFIGS = {
    "lstm_bi_2layer_dropout": (nn.LSTM, {"num_layers": 2, "bidirectional": True, "dropout": 0.4}),
    "lstm_proj_batch_first": (nn.LSTM, {"proj_size": 3, "batch_first": True}),
    "gru_2layer": (nn.GRU, {"num_layers": 2}),
    "rnn_tanh_bi": (nn.RNN, {"bidirectional": True}),
    "rnn_relu_2layer": (nn.RNN, {"nonlinearity": "relu", "num_layers": 2}),
    "leaky_reference": (ReferenceRNN, {"nonlinearity": "leaky_relu"}),
}


@pytest.mark.parametrize("name", list(SAMPLED_CONFIGS))
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_sampled_saturation_from_one_batched_forward_pass_equals_the_replay(name, packed, monkeypatch):
    """Sampled steps read the gates of a few rows from one batched forward pass per layer direction (the top
    layer from the call's output); the replay of the same rows gives the same shares, dead units included."""
    cls, options = SAMPLED_CONFIGS[name]
    torch.manual_seed(0)
    model = cls(4, 7, dtype=torch.float64, **options).train()
    batch_first = options.get("batch_first", False)
    lengths = [9, 14, 3, 14, 11] if packed else None
    x = torch.randn(5, 14, 4, dtype=torch.float64) if batch_first else torch.randn(14, 5, 4, dtype=torch.float64)
    fast = _sampled_saturation(model, x, lengths=lengths, batch_first=batch_first, monkeypatch=monkeypatch)
    general = _sampled_saturation(
        model, x, lengths=lengths, batch_first=batch_first, general=True, monkeypatch=monkeypatch
    )
    assert len(fast) == len(general) == 2 * len(model.all_weights if hasattr(model, "all_weights") else [0])
    for mine, theirs in zip(fast, general):
        assert (mine["layer"], mine["samples"], mine["units"]) == (theirs["layer"], theirs["samples"], theirs["units"])
        assert mine["fractions"] == pytest.approx(theirs["fractions"], abs=1e-12)
        assert mine["low"] == pytest.approx(theirs["low"], abs=1e-12)
        assert mine["dead_units"] == theirs["dead_units"]
