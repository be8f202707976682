"""attach(model, optimizer=opt): one probe step per optimizer step, and what the loop does to the gradients in between."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradprobe
from gradprobe.events import iter_events
from gradprobe.recorders import backward_roots


class Tagger(nn.Module):
    def __init__(self, kind: type[nn.Module] = nn.LSTM) -> None:
        super().__init__()
        self.rnn = kind(3, 8, batch_first=True)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def _data(seed: int = 0, batches: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 12, 3, generator=g), torch.randn(8, 1, generator=g)) for _ in range(batches)]


def _steps(events: list[dict]) -> list[dict]:
    return [e for e in events if e["kind"] == "step"]


def _total_norm(model: nn.Module) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))


def test_each_optimizer_step_is_one_probe_step_with_the_loss_of_its_backward():
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    events: list[dict] = []
    losses, norms = [], []
    with gradprobe.attach(model, optimizer=opt, every=2, config={}, sinks=[events.append]) as probe:
        for x, y in _data(batches=5):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            losses.append(float(loss.detach()))
            norms.append(_total_norm(model))
            opt.step()
    assert probe.step_index == 5
    steps = _steps(events)
    assert [e["step"] for e in steps] == [0, 1, 2, 3, 4]
    assert [e["loss"] for e in steps] == pytest.approx(losses, rel=1e-7)
    assert [e["grad_norm"] for e in steps] == pytest.approx(norms, rel=1e-6)
    assert all(e["clip"] is None for e in steps)  # the loop did not touch the gradients
    assert [e["step"] for e in events if e["kind"] == "deep" and e["layer"] == "rnn.l0"] == [0, 2, 4]


def test_probe_step_under_optimizer_hooks_only_hands_over_the_loss():
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    events: list[dict] = []
    with gradprobe.attach(model, optimizer=opt, config={}, sinks=[events.append]) as probe:
        for x, y in _data(batches=3):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            probe.step(123.0)  # the README's old placement: no second step
            opt.step()
            probe.step(456.0)  # after the optimizer: belongs to a recorded step, dropped
    assert probe.step_index == 3
    assert [e["loss"] for e in _steps(events)] == [123.0, 123.0, 123.0]


@pytest.mark.parametrize("max_norm", [0.05, 0.3])
def test_clipping_by_norm_is_seen_with_its_threshold(max_norm):
    torch.manual_seed(0)
    model = Tagger(nn.GRU)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    events: list[dict] = []
    raw = []
    with gradprobe.attach(model, optimizer=opt, config={}, sinks=[events.append]):
        for x, y in _data(batches=4):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            raw.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)))
            opt.step()
    for event, norm in zip(_steps(events), raw):
        assert event["grad_norm"] == pytest.approx(norm, rel=1e-6)  # the gradient as the model produced it
        if norm > max_norm:
            assert event["clip"]["kind"] == "norm"
            assert event["clip"]["threshold"] == pytest.approx(max_norm, rel=1e-5)
        else:
            assert event["clip"] is None  # below the threshold clip_grad_norm_ changes nothing


def test_clipping_by_value_is_seen_with_its_threshold():
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    events: list[dict] = []
    with gradprobe.attach(model, optimizer=opt, config={}, sinks=[events.append]):
        for x, y in _data(batches=3):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
            opt.step()
    clips = [e["clip"] for e in _steps(events)]
    assert all(c["kind"] == "value" and c["threshold"] == pytest.approx(0.01, rel=1e-6) for c in clips)


def _spiky_training(clip: float | None) -> list[gradprobe.Finding]:
    """A GRU whose loss is multiplied by 5000 on one step: an extreme gradient spike."""
    torch.manual_seed(0)
    model = nn.GRU(3, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with gradprobe.attach(model, optimizer=opt, every=100, config={}) as probe:
        for step in range(30):
            opt.zero_grad()
            out, _ = model(torch.randn(6, 2, 3))
            (out.pow(2).mean() * (5000.0 if step == 25 else 1.0)).backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return probe.findings


def test_no_gp401_on_a_loop_that_clips():
    unclipped = {f.code: f for f in _spiky_training(clip=None)}
    assert "GP401" in unclipped  # the same run without clipping is at risk
    clipped = {f.code: f for f in _spiky_training(clip=1.0)}
    assert "GP401" not in clipped
    assert "the loop clips by norm" in clipped["GP102"].message
    assert clipped["GP102"].evidence["clip_threshold"] == pytest.approx(1.0, rel=1e-5)


def _amp_run(use_scaler: bool, pass_scaler: bool = False, clip: float | None = None) -> tuple[list[dict], list[float]]:
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, enabled=use_scaler)
    events: list[dict] = []
    losses = []
    with gradprobe.attach(
        model, optimizer=opt, every=1, config={}, sinks=[events.append], scaler=scaler if pass_scaler else None
    ):
        for x, y in _data(batches=3):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            losses.append(float(loss.detach()))
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(opt)
            scaler.update()
    return events, losses


@pytest.mark.parametrize("pass_scaler", [False, True], ids=["found", "given"])
@pytest.mark.parametrize("clip", [None, 0.05], ids=["no-clip", "clip"])
def test_grad_scaler_values_are_unscaled(pass_scaler, clip):
    """A power-of-two loss scale is exact in fp32: the scaled run's figures equal the unscaled run's."""
    plain, plain_losses = _amp_run(use_scaler=False, clip=None if clip is None else clip)
    scaled, losses = _amp_run(use_scaler=True, pass_scaler=pass_scaler, clip=clip)
    assert losses == plain_losses
    for a, b in zip(_steps(plain), _steps(scaled)):
        assert b["grad_scale"] == 2.0**12
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-7)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-6)
        assert (b["clip"] or {}).get("kind") == (a["clip"] or {}).get("kind") == ("norm" if clip else None)
    deep_plain = [e["grad_norms"] for e in plain if e["kind"] == "deep"]
    deep_scaled = [e["grad_norms"] for e in scaled if e["kind"] == "deep"]
    assert len(deep_plain) == 3
    for a, b in zip(deep_plain, deep_scaled):
        assert b == pytest.approx(a, rel=1e-5)


def test_steps_skipped_by_grad_scaler_are_counted_not_recorded():
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=1000)  # overflows until backed off
    events: list[dict] = []
    stepped = []
    with gradprobe.attach(model, optimizer=opt, config={}, sinks=[events.append]) as probe:
        for x, y in _data(batches=4) * 2:
            opt.zero_grad()
            scaler.scale(16 * nn.functional.mse_loss(model(x), y)).backward()
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            stepped.append(scaler.get_scale() == before)
    assert 1 <= stepped.count(False) < 8
    steps = _steps(events)
    assert probe.step_index == len(steps) == stepped.count(True)
    last = len(stepped) - 1 - stepped[::-1].index(True)
    assert [e.get("skipped", 0) for e in steps] == [
        len(run) for run in "".join("s" if s else "x" for s in stepped[: last + 1]).split("s")[:-1]
    ]  # each recorded step counts the skipped steps just before it
    assert all(e["nonfinite"] is None for e in steps)


def test_gradient_accumulation_is_one_step_with_the_summed_loss():
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    events: list[dict] = []
    data = _data(batches=6)
    sums = []
    with gradprobe.attach(model, optimizer=opt, every=1, config={}, sinks=[events.append]) as probe:
        for start in range(0, 6, 3):
            opt.zero_grad()
            total = 0.0
            for x, y in data[start : start + 3]:
                loss = nn.functional.mse_loss(model(x), y) / 3
                loss.backward()
                total += float(loss.detach())
            sums.append(total)
            norm = _total_norm(model)
            opt.step()
    assert probe.step_index == 2
    steps = _steps(events)
    assert [e["loss"] for e in steps] == pytest.approx(sums, rel=1e-6)
    assert steps[-1]["grad_norm"] == pytest.approx(norm, rel=1e-6)  # the accumulated gradient
    assert all("skipped" not in e for e in steps)


class CellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(2, 6)
        self.head = nn.Linear(6, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, outputs = None, []
        for x_t in x:
            h = self.cell(x_t, h)
            outputs.append(self.head(h))
        return torch.stack(outputs)


def test_lbfgs_one_probe_step_per_optimizer_step_and_bounded_capture():
    torch.manual_seed(0)
    model = CellLoop()
    x, y = torch.randn(15, 4, 2), torch.randn(15, 4, 1)
    opt = torch.optim.LBFGS(model.parameters(), max_iter=20, history_size=5)
    events: list[dict] = []
    calls, kept, returned = [0], [], []
    with gradprobe.attach(model, optimizer=opt, every=1, config={}, sinks=[events.append]) as probe:

        def closure():
            calls[0] += 1
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            kept.append(len(probe._capture.peek().cell_calls["cell"].inputs))
            return loss

        for _ in range(3):
            before = [p.detach().clone() for p in model.parameters()]
            returned.append(float(opt.step(closure).detach()))  # L-BFGS returns its first evaluation's loss
            assert probe.step_index == len(_steps(events))
            assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert calls[0] > 3 * 5  # many closure calls per optimizer step
    assert probe.step_index == 3
    assert max(kept) == 15  # one sequence of T calls, whatever the number of closure calls
    steps = _steps(events)
    assert all("skipped" not in e for e in steps)
    assert [e["loss"] for e in steps] == pytest.approx(returned, rel=1e-7)  # measured before the parameters move
    deep = [e for e in events if e["kind"] == "deep"]
    assert [e["seq_len"] for e in deep] == [15, 15, 15]


def test_detaching_removes_every_hook_and_the_backward_wrapper():
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    original = torch.autograd.backward
    probe = gradprobe.attach(model, optimizer=opt, config={})
    assert backward_roots.installed()
    assert opt._optimizer_step_pre_hooks and opt._optimizer_step_post_hooks
    assert all(p._post_accumulate_grad_hooks for p in model.parameters())
    probe.close()
    assert torch.autograd.backward is original and not backward_roots.installed()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert not any(p._post_accumulate_grad_hooks for p in model.parameters())


def test_two_probes_share_the_backward_wrapper():
    a, b = Tagger(), Tagger()
    opt_a, opt_b = torch.optim.SGD(a.parameters(), lr=0.1), torch.optim.SGD(b.parameters(), lr=0.1)
    original = torch.autograd.backward
    first = gradprobe.attach(a, optimizer=opt_a, config={})
    second = gradprobe.attach(b, optimizer=opt_b, config={})
    first.close()
    assert backward_roots.installed()
    x, y = _data(batches=1)[0]
    nn.functional.mse_loss(b(x), y).backward()
    opt_b.step()
    assert second.step_index == 1
    second.close()
    assert torch.autograd.backward is original


def test_an_error_in_the_optimizer_hooks_disables_the_probe_not_the_training():
    torch.manual_seed(0)
    model, twin = Tagger(), Tagger()
    twin.load_state_dict(model.state_dict())
    opt, twin_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(twin.parameters(), lr=0.1)
    probe = gradprobe.attach(model, optimizer=opt, config={})

    def broken() -> dict:
        raise RuntimeError("recorder broke")

    probe._loop.read_gradients = broken
    with pytest.warns(gradprobe.GradprobeWarning, match="recorder broke"):
        for x, y in _data(batches=3):
            for m, o in ((model, opt), (twin, twin_opt)):
                o.zero_grad()
                nn.functional.mse_loss(m(x), y).backward()
                o.step()
    assert probe.disabled and "recorder broke" in probe.faults["measuring"]
    assert not opt._optimizer_step_pre_hooks  # the hooks went with the failure
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))
    probe.close()
    assert not backward_roots.installed()


def test_attach_rejects_something_that_is_not_an_optimizer():
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        gradprobe.attach(Tagger(), optimizer=object(), config={})  # type: ignore[arg-type]


def _closure_training(hooks: bool) -> tuple[gradprobe.Probe, list[dict], list[float]]:
    torch.manual_seed(0)
    model = Tagger(nn.GRU)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    events: list[dict] = []
    raw: list[float] = []
    with gradprobe.attach(model, optimizer=opt if hooks else None, every=1, config={}, sinks=[events.append]) as probe:
        for x, y in _data(batches=3):

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                raw.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), 0.01)))
                if not hooks:
                    probe.step(loss)  # by hand, before the update
                return loss

            assert opt.step(closure) is not None  # the closure's result goes back to the optimizer
    return probe, events, raw


def test_a_closure_that_clips_is_one_step_recorded_before_the_update():
    """Lightning's automatic optimization: optimizer.step(closure) with backward and clipping inside the closure."""
    probe, events, raw = _closure_training(hooks=True)
    _, by_hand, _ = _closure_training(hooks=False)
    assert probe.step_index == 3
    steps = _steps(events)
    assert [e["grad_norm"] for e in steps] == pytest.approx(raw, rel=1e-6)
    assert all(e["clip"]["kind"] == "norm" and e["clip"]["threshold"] == pytest.approx(0.01, rel=1e-5) for e in steps)
    deep = [e for e in events if e["kind"] == "deep"]
    reference = [e for e in by_hand if e["kind"] == "deep"]
    assert len(deep) == len(reference) == 3
    for a, b in zip(reference, deep):  # the replay saw the weights before the update, as probe.step by hand does
        assert b["jacobian_norms"] == pytest.approx(a["jacobian_norms"], rel=1e-9)
        assert b["profile"] == pytest.approx(a["profile"], rel=1e-9)


def test_another_models_backward_is_not_this_steps_loss():
    """Two models trained side by side (as a GAN's two halves): only the probed model's backward counts."""
    torch.manual_seed(0)
    model, other = Tagger(), Tagger()
    opt, other_opt = torch.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(other.parameters(), lr=0.1)
    events: list[dict] = []
    losses = []
    with gradprobe.attach(model, optimizer=opt, config={}, sinks=[events.append]) as probe:
        for x, y in _data(batches=3):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            losses.append(float(loss.detach()))
            other_opt.zero_grad()
            (100 * nn.functional.mse_loss(other(x), y)).backward()  # between our backward and our step
            other_opt.step()
            opt.step()
    assert probe.step_index == 3
    steps = _steps(events)
    assert [e["loss"] for e in steps] == pytest.approx(losses, rel=1e-7)
    assert all("skipped" not in e for e in steps)


def test_zero_grad_without_set_to_none_keeps_each_steps_own_loss():
    torch.manual_seed(0)
    model = Tagger()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    events: list[dict] = []
    losses = []
    with gradprobe.attach(model, optimizer=opt, config={}, sinks=[events.append]):
        for x, y in _data(batches=3):
            opt.zero_grad(set_to_none=False)  # gradients stay as zero tensors
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            losses.append(float(loss.detach()))
            opt.step()
    assert [e["loss"] for e in _steps(events)] == pytest.approx(losses, rel=1e-7)


def test_fix_auto_clips_at_the_optimizer_step_after_the_loops_own_changes():
    torch.manual_seed(0)
    model = nn.GRU(3, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    events: list[dict] = []
    with gradprobe.attach(model, optimizer=opt, every=100, fix="auto", config={}, sinks=[events.append]) as probe:
        for step in range(30):
            opt.zero_grad()
            out, _ = model(torch.randn(6, 2, 3))
            (out.pow(2).mean() * (1000.0 if step == 25 else 1.0)).backward()
            opt.step()
    applied = [e for e in events if e["kind"] == "fix" and e["applied"] and e["name"] == "clip-grad-norm"]
    assert applied and applied[0]["step"] == 25 and applied[0]["detail"]["norm"] > applied[0]["detail"]["max_norm"]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert probe.step_index == 30 and "GP401" not in {f.code for f in probe.findings}


def test_a_backward_that_raised_does_not_blind_the_later_steps(tmp_path):
    """A backward pass that fails (a user's tensor hook raising, caught by the loop) never runs its end callback;
    the steps after it still get their loss."""
    torch.manual_seed(0)
    model = nn.GRU(2, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    losses = []
    with gradprobe.attach(model, log=tmp_path / "run.log", every=100, config={}, optimizer=opt):
        for step in range(6):
            opt.zero_grad()
            out, _ = model(torch.randn(5, 3, 2))
            loss = out.pow(2).mean()
            if step == 2:
                out.register_hook(lambda grad: (_ for _ in ()).throw(RuntimeError("user hook")))
                with pytest.raises(RuntimeError, match="user hook"):
                    loss.backward()
                continue
            loss.backward()
            opt.step()
            losses.append(loss.item())
    logged = [e["loss"] for e in iter_events(tmp_path / "run.log") if e["kind"] == "step"]
    assert logged == pytest.approx(losses)


def test_two_models_in_two_threads_log_their_own_losses(tmp_path):
    """Each probe listens to the one wrapper of torch.autograd.backward: a backward pass counts for the probe of
    the thread that ran it."""
    import threading

    results: dict[int, list[float]] = {}
    barrier = threading.Barrier(2)

    def train(index: int) -> None:
        torch.manual_seed(index)
        model = nn.LSTM(2, 6)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        losses = []
        with gradprobe.attach(model, log=tmp_path / f"run{index}.log", every=100, config={}, optimizer=opt):
            barrier.wait()
            for _ in range(30):
                opt.zero_grad()
                out, _ = model(torch.randn(20, 4, 2) * (index + 1))
                loss = out.pow(2).mean()
                barrier.wait()  # the two backward passes start together and overlap
                loss.backward()
                opt.step()
                losses.append(loss.item())
        results[index] = losses

    threads = [threading.Thread(target=train, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in (0, 1):
        logged = [e["loss"] for e in iter_events(tmp_path / f"run{index}.log") if e["kind"] == "step"]
        assert logged == pytest.approx(results[index]), index
