"""HiddenGradClip (Graves 2013): dL/dh_t clamped element-wise as it flows back through time."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.events import iter_events
from gradprobe.reference import RNN as ReferenceRNN
from gradprobe.reference import from_torch

T, B, H, V = 6, 2, 3, 0.05


def _weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w_ih": torch.randn(H, 2, generator=g, dtype=torch.float64),
        "w_hh": 1.5 * torch.randn(H, H, generator=g, dtype=torch.float64),
        "b": 0.1 * torch.randn(H, generator=g, dtype=torch.float64),
    }


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, B, 2, generator=g, dtype=torch.float64), torch.randn(
        T, B, H, generator=g, dtype=torch.float64
    )


def _hand_bptt(w: dict[str, torch.Tensor], x: torch.Tensor, r: torch.Tensor, clip_through_time: bool) -> torch.Tensor:
    """dL/dW_hh of L = sum_t <r_t, h_t> for h_t = tanh(W_ih x_t + W_hh h_(t-1) + b), by hand, with
    dL/dh_t clamped to [-V, V] at every step (through time) or only on the output path (fused reach)."""
    hs = [torch.zeros(B, H, dtype=torch.float64)]
    for t in range(T):
        hs.append(torch.tanh(x[t] @ w["w_ih"].t() + hs[-1] @ w["w_hh"].t() + w["b"]))
    grad_w = torch.zeros_like(w["w_hh"])
    carried = torch.zeros(B, H, dtype=torch.float64)  # dL/dh_t arriving from step t+1
    for t in range(T, 0, -1):
        direct = r[t - 1]
        if clip_through_time:
            total = (direct + carried).clamp(-V, V)
        else:
            total = direct.clamp(-V, V) + carried
        pre = total * (1 - hs[t] ** 2)
        grad_w += pre.t() @ hs[t - 1]
        carried = pre @ w["w_hh"]
    return grad_w


class CellLoop(nn.Module):
    def __init__(self, w: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.cell = nn.RNNCell(2, H).double()
        with torch.no_grad():
            self.cell.weight_ih.copy_(w["w_ih"])
            self.cell.weight_hh.copy_(w["w_hh"])
            self.cell.bias_ih.copy_(w["b"])
            self.cell.bias_hh.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, out = torch.zeros(B, H, dtype=x.dtype), []
        for x_t in x:
            h = self.cell(x_t, h)
            out.append(h)
        return torch.stack(out)


def _fused(w: dict[str, torch.Tensor]) -> nn.RNN:
    rnn = nn.RNN(2, H).double()
    with torch.no_grad():
        rnn.weight_ih_l0.copy_(w["w_ih"])
        rnn.weight_hh_l0.copy_(w["w_hh"])
        rnn.bias_ih_l0.copy_(w["b"])
        rnn.bias_hh_l0.zero_()
    return rnn


def _grad_w_hh(model: nn.Module, x: torch.Tensor, r: torch.Tensor, clip: bool) -> torch.Tensor:
    model.zero_grad()
    if clip:
        with gradprobe.fixes.HiddenGradClip(model, value=V):
            out = model(x)
            out = out[0] if isinstance(out, tuple) else out
            (out * r).sum().backward()
    else:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        (out * r).sum().backward()
    name = next(n for n, _ in model.named_parameters() if "weight_hh" in n)
    return dict(model.named_parameters())[name].grad.clone()


def test_a_cell_loop_is_clipped_at_every_step_as_by_hand():
    w = _weights()
    x, r = _inputs()
    got = _grad_w_hh(CellLoop(w), x, r, clip=True)
    assert torch.allclose(got, _hand_bptt(w, x, r, clip_through_time=True), atol=1e-12)
    assert not torch.allclose(got, _grad_w_hh(CellLoop(w), x, r, clip=False))  # the clip did bite


def test_a_reference_module_is_clipped_at_every_step_as_by_hand():
    w = _weights()
    x, r = _inputs()
    reference = from_torch(_fused(w))
    assert isinstance(reference, ReferenceRNN)
    got = _grad_w_hh(reference, x, r, clip=True)
    assert torch.allclose(got, _hand_bptt(w, x, r, clip_through_time=True), atol=1e-12)


def test_a_fused_module_is_clipped_only_where_its_gradient_enters():
    w = _weights()
    x, r = _inputs()
    fused = _fused(w)
    clip = gradprobe.fixes.HiddenGradClip(fused, value=V)
    assert "out of reach" in clip.reach["RNN"]
    clip.remove()
    got = _grad_w_hh(fused, x, r, clip=True)
    assert torch.allclose(got, _hand_bptt(w, x, r, clip_through_time=False), atol=1e-10)


def test_removal_restores_plain_gradients_and_the_fix_is_logged(tmp_path):
    w = _weights()
    x, r = _inputs()
    model = CellLoop(w)
    plain = _grad_w_hh(CellLoop(w), x, r, clip=False)
    log = tmp_path / "run.log"
    with gradprobe.attach(model, log=log, config={}) as probe:
        clip = gradprobe.fixes.HiddenGradClip(model, value=V, probe=probe)
        (model(x) * r).sum().backward()
        probe.step()
        clip.remove()
        clip.remove()  # idempotent
        model.zero_grad()
        (model(x) * r).sum().backward()
        assert torch.allclose(model.cell.weight_hh.grad, plain)
    fixes = [e for e in iter_events(log) if e["kind"] == "fix"]
    assert [e["name"] for e in fixes] == ["clip-hidden-grad", "clip-hidden-grad"]
    assert fixes[0]["detail"]["value"] == V and "every time step" in fixes[0]["detail"]["reach"]["cell"]
    assert fixes[1]["detail"]["clamped"] == clip.clamped > 0


def test_a_bad_bound_is_refused():
    with pytest.raises(ValueError, match="positive bound"):
        gradprobe.fixes.HiddenGradClip(nn.GRU(2, 2), value=0)


def test_copies_and_pickles_of_a_clipped_reference_module_carry_no_hooks(tmp_path):
    import copy

    reference = from_torch(_fused(_weights()))
    clip = gradprobe.fixes.HiddenGradClip(reference, value=V)
    twin = copy.deepcopy(reference)
    torch.save(reference, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert len(reference._state_hooks) == 1 and not twin._state_hooks and not loaded._state_hooks
    x, r = _inputs()
    unclipped = _grad_w_hh(from_torch(_fused(_weights())), x, r, clip=False)
    assert torch.allclose(_grad_w_hh(twin, x, r, clip=False), unclipped)  # the copy is not clipped
    assert not torch.allclose(_grad_w_hh(reference, x, r, clip=False), unclipped)  # the original still is
    clip.remove()
    assert not reference._state_hooks
