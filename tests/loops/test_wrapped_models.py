"""Models wrapped in DataParallel, DistributedDataParallel or torch.compile, and models moved after attach."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
from torch import nn

import gradprobe


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][-1])


def _train(runner: nn.Module, model: nn.Module, steps: int = 3, **attach) -> tuple[gradprobe.Probe, list[dict]]:
    torch.manual_seed(1)
    opt = torch.optim.SGD(runner.parameters(), lr=0.0)
    events: list[dict] = []
    x, y = torch.randn(7, 5, 3), torch.randn(5, 1)
    with gradprobe.attach(runner, optimizer=opt, every=1, config={}, sinks=[events.append], **attach) as probe:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.mse_loss(runner(x.to(next(model.parameters()))), y.to(next(model.parameters()))).backward()
            opt.step()
    return probe, events


def _deep(events: list[dict]) -> list[tuple[str, list[float]]]:
    return [(e["layer"], e["grad_norms"]) for e in events if e["kind"] == "deep"]


def _same(got: list[tuple[str, list[float]]], expected: list[tuple[str, list[float]]], rel: float = 1e-6) -> None:
    assert got and [n for n, _ in got] == [n for n, _ in expected]
    for (_, a), (_, b) in zip(expected, got):
        assert b == pytest.approx(a, rel=rel)


def test_data_parallel_is_measured_under_the_inner_names():
    torch.manual_seed(0)
    model = Tagger()
    _, plain = _train(model, model)
    probe, wrapped = _train(nn.DataParallel(model), model)  # without GPUs DataParallel calls the module itself
    assert [s.name for s in probe.sites] == [] and _deep(wrapped)  # detached after close
    assert _deep(wrapped) == _deep(plain)
    meta = next(e for e in wrapped if e["kind"] == "meta")
    assert [layer["name"] for layer in meta["layers"]] == ["rnn"]
    assert set(next(e for e in wrapped if e["kind"] == "step")["params"]) == {n for n, _ in model.named_parameters()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_distributed_data_parallel_single_process():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    torch.manual_seed(0)
    model = Tagger()
    _, plain = _train(model, model)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        _, wrapped = _train(nn.parallel.DistributedDataParallel(model), model)
    finally:
        dist.destroy_process_group()
    _same(_deep(wrapped), _deep(plain))


def test_a_compiled_wrapper_is_attached_through():
    torch.manual_seed(0)
    model = Tagger()
    _, plain = _train(model, model)
    torch._dynamo.reset()
    _, wrapped = _train(torch.compile(model, backend="eager"), model)
    assert [n for n, _ in _deep(wrapped)] == ["rnn.l0"] * 3
    _same(_deep(wrapped), _deep(plain), rel=1e-5)


def test_cells_may_be_named_through_the_wrapper():
    model = nn.DataParallel(Tagger())
    with gradprobe.attach(model, cells=["module.rnn"], config={}) as probe:
        assert [s.name for s in probe.sites] == ["rnn"]


@pytest.mark.parametrize("swap", [False, True], ids=["data-replaced", "swap-tensors"])
def test_a_model_converted_after_attach_is_measured_in_its_new_dtype(swap):
    """``model.to()`` after attach (here to float64; a device move takes the same path)."""
    torch.manual_seed(0)
    reference = Tagger().double()
    model = Tagger()
    model.load_state_dict(reference.state_dict())
    _, expected = _train(reference, reference)
    previous = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(swap)
    try:
        torch.manual_seed(1)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        events: list[dict] = []
        x, y = torch.randn(7, 5, 3).double(), torch.randn(5, 1).double()
        with gradprobe.attach(model, optimizer=opt, every=1, config={}, sinks=[events.append]) as probe:
            model.double()
            for _ in range(3):
                opt.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                opt.step()
    finally:
        torch.__future__.set_swap_module_params_on_conversion(previous)
    assert probe.step_index == 3
    _same(_deep(events), _deep(expected), rel=1e-12)
    steps = [e for e in events if e["kind"] == "step"]
    assert all(e["grad_norm"] > 0 for e in steps)
