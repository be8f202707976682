"""The transformers adapters: tiny randomly initialized Mamba, Mamba-2 and RecurrentGemma models, measured on CPU."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from gradprobe_transformers_recurrences import MAMBA, MAMBA2, RGLRU, RWKV

import gradprobe

VOCAB = 48


def tiny(kind: str) -> nn.Module:
    """A tiny model from its config (no download)."""
    if kind == "mamba":
        config: Any = transformers.MambaConfig(
            vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, intermediate_size=64, time_step_rank=4
        )
        return transformers.MambaForCausalLM(config)
    if kind == "mamba2":
        if not hasattr(transformers, "Mamba2ForCausalLM"):
            pytest.skip(f"transformers {transformers.__version__} has no Mamba-2")
        config = transformers.Mamba2Config(
            vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=2, num_heads=4, head_dim=16,
            expand=2, n_groups=1, chunk_size=16,
        )  # fmt: skip
        return transformers.Mamba2ForCausalLM(config)
    if kind == "rwkv":
        if not hasattr(transformers, "RwkvForCausalLM"):
            pytest.skip(f"transformers {transformers.__version__} has no RWKV")
        config = transformers.RwkvConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, attention_hidden_size=32, intermediate_size=64,
            context_length=64,
        )  # fmt: skip
        return transformers.RwkvForCausalLM(config)
    if not hasattr(transformers, "RecurrentGemmaForCausalLM"):
        pytest.skip(f"transformers {transformers.__version__} has no RecurrentGemma")
    config = transformers.RecurrentGemmaConfig(
        vocab_size=VOCAB, hidden_size=32, lru_width=32, num_attention_heads=2, num_hidden_layers=2,
        intermediate_size=64, block_types=["recurrent", "attention"], attention_window_size=16,
    )  # fmt: skip
    return transformers.RecurrentGemmaForCausalLM(config)


MIXERS = {"mamba": "MambaMixer", "mamba2": "Mamba2Mixer", "rglru": "RecurrentGemmaRglru", "rwkv": "RwkvSelfAttention"}


def mixers(model: nn.Module, kind: str) -> list[str]:
    return [name for name, m in model.named_modules() if type(m).__name__ == MIXERS[kind]]


def train(model: nn.Module, steps: int = 12, every: int = 4, **kw: Any) -> tuple[Any, list[dict]]:
    events: list[dict] = []
    opt = torch.optim.AdamW(model.parameters(), 3e-3)
    data = torch.Generator().manual_seed(0)
    with gradprobe.attach(model, every=every, optimizer=opt, sinks=[events.append], **kw) as probe:
        for _ in range(steps):
            ids = torch.randint(0, VOCAB, (4, 24), generator=data)
            loss = model(input_ids=ids, labels=ids).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    return probe, events


@pytest.mark.parametrize("kind", ["mamba", "mamba2", "rglru", "rwkv"])
def test_attach_measures_every_mixer_of_a_tiny_model_and_a_default_init_is_healthy(kind: str) -> None:
    torch.manual_seed(0)
    model = tiny(kind)
    assert not [f for f in gradprobe.lint(model) if f.severity != "info"]
    probe, events = train(model)
    wanted = mixers(model, kind)
    assert len(wanted) >= 1
    meta = next(e for e in events if e["kind"] == "meta")
    assert {layer["name"]: layer.get("recurrence") for layer in meta["layers"]} == {n: kind for n in wanted}
    for name in wanted:
        deep = [e for e in events if e["kind"] == "deep" and e["layer"] == name]
        decays = [e for e in events if e["kind"] == "recurrence" and e["layer"] == name]
        assert [e["step"] for e in deep] == [0, 4, 8] == [e["step"] for e in decays]
        assert all(e["seq_len"] == 24 and len(e["grad_norms"]) == 24 and e["grad_norms"][0] > 0 for e in deep)
        assert all(0 < e["decay_min"] <= e["top_decay"] <= e["decay_max"] < 1 for e in decays)
    assert not [f for f in probe.findings if f.severity != "info"], [str(f) for f in probe.findings]


def _captured(monkeypatch: pytest.MonkeyPatch, module: Any, function: str) -> list[tuple[Any, ...]]:
    """Keep the arguments of the scan function a mixer calls (its eager path), then run it."""
    seen: list[tuple[Any, ...]] = []
    original = getattr(module, function)

    def keep(*args: Any, **kwargs: Any) -> Any:
        seen.append(tuple(a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function, keep)
    return seen


def test_the_mamba_adapter_computes_the_delta_the_mixer_scans_with(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.models.mamba import modeling_mamba

    torch.manual_seed(0)
    model = tiny("mamba").eval()
    seen = _captured(monkeypatch, modeling_mamba, "mamba_scan_forward")
    mixer = model.get_submodule(mixers(model, "mamba")[0])
    inputs: list[torch.Tensor] = []
    mixer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    model(input_ids=torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1)))
    _, _, time_step, *_ = seen[0]  # [B, D, T], before dt_proj's bias and softplus
    delta = nn.functional.softplus(time_step.transpose(1, 2) + mixer.dt_proj.bias)
    expected = torch.exp(delta[..., None] * -torch.exp(mixer.A_log.float())).reshape(2, 20, -1)
    with torch.no_grad():
        measured = MAMBA.transition(mixer, (inputs[0],), {})
    torch.testing.assert_close(measured, expected, rtol=1e-5, atol=1e-7)


def test_the_mamba2_adapter_computes_the_delta_the_mixer_scans_with(monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers.models.mamba2 import modeling_mamba2

    torch.manual_seed(0)
    model = tiny("mamba2").eval()
    seen = _captured(monkeypatch, modeling_mamba2, "mamba2_scan_forward")
    mixer = model.get_submodule(mixers(model, "mamba2")[0])
    inputs: list[torch.Tensor] = []
    mixer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    model(input_ids=torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(1)))
    raw_dt = seen[0][4]  # [B, T, H], before dt_bias and softplus
    delta = torch.clamp(nn.functional.softplus(raw_dt + mixer.dt_bias), *mixer.time_step_limit)
    expected = torch.exp(delta * -torch.exp(mixer.A_log.float()))
    with torch.no_grad():
        measured = MAMBA2.transition(mixer, (inputs[0],), {})
    torch.testing.assert_close(measured, expected, rtol=1e-5, atol=1e-7)


def test_a_mamba_with_a_constant_delta_has_the_horizon_of_its_slowest_channel() -> None:
    """x_proj = 0 makes Delta = softplus(dt bias) everywhere: a = exp(-Delta n), slowest n = 1, tau = 1/Delta."""
    torch.manual_seed(0)
    model = tiny("mamba")
    delta = 0.02
    for name in mixers(model, "mamba"):
        mixer = model.get_submodule(name)
        with torch.no_grad():
            mixer.x_proj.weight.zero_()
            mixer.dt_proj.bias.fill_(math.log(math.expm1(delta)))  # inverse softplus
            mixer.A_log.copy_(torch.log(torch.arange(1, 9, dtype=torch.float32)).expand_as(mixer.A_log))
    _, events = train(model, steps=1, every=1)
    for e in (e for e in events if e["kind"] == "recurrence"):
        assert e["top_decay"] == pytest.approx(math.exp(-delta), rel=1e-6)
        assert e["efold_horizon"] == pytest.approx(1 / delta, rel=1e-4)
        assert e["time_constants"][0] == pytest.approx(1 / (8 * delta), rel=1e-4)  # the fastest: n = 8


def _collapse(model: nn.Module) -> None:
    """Delta = softplus(20) ~ 20 on every channel: exp(-20 n) ~ 0, no memory (a collapsed Delta)."""
    for name in mixers(model, "mamba"):
        with torch.no_grad():
            model.get_submodule(name).dt_proj.bias.fill_(20.0)


def test_a_collapsed_delta_is_caught_at_lint_and_in_training_against_a_declared_need() -> None:
    torch.manual_seed(0)
    broken = tiny("mamba")
    _collapse(broken)
    lint = {f.code: f for f in gradprobe.lint(broken)}
    assert lint["GP505"].severity == "warning" and "no memory" in lint["GP505"].message
    probe, _ = train(broken, dependency_length=16)
    found = {(f.code, f.severity) for f in probe.findings}
    assert ("GP501", "warning") in found or ("GP501", "error") in found, [str(f) for f in probe.findings]
    assert not any(f.code == "GP101" for f in probe.findings)  # GP501 speaks for linear recurrences

    torch.manual_seed(0)
    healthy, _ = train(tiny("mamba"), dependency_length=16)
    assert not [f for f in healthy.findings if f.severity != "info"], [str(f) for f in healthy.findings]


@pytest.mark.parametrize("kind", ["mamba", "mamba2", "rglru", "rwkv"])
def test_static_decays_of_a_default_init_lie_inside_the_unit_interval(kind: str) -> None:
    torch.manual_seed(0)
    model = tiny(kind)
    adapter = {"mamba": MAMBA, "mamba2": MAMBA2, "rglru": RGLRU, "rwkv": RWKV}[kind]
    for name in mixers(model, kind):
        assert adapter.static_decays is not None
        decays = adapter.static_decays(model.get_submodule(name))
        assert decays is not None and bool(((decays > 0) & (decays < 1)).all())


def test_the_rwkv_decay_is_the_one_its_wkv_kernel_applies() -> None:
    """transformers' CPU WKV: a state of one step, then a zero key and value: the numerator falls by exp(w)."""
    from transformers.models.rwkv import modeling_rwkv

    torch.manual_seed(0)
    model = tiny("rwkv")
    attention = model.get_submodule(mixers(model, "rwkv")[0])
    width = attention.time_decay.shape[0]
    key = torch.tensor([[[0.0] * width, [-1e9] * width]])  # step 2 adds nothing: e^k = 0
    value = torch.ones(1, 2, width)
    _, state = modeling_rwkv.rwkv_linear_attention_cpu(
        attention.time_decay, attention.time_first, key, value, return_state=True
    )
    numerator, _, exponent = state  # (num, den, max): the real numerator is num * exp(max)
    kept = (numerator * torch.exp(exponent)).squeeze(0)  # after two steps: a * (e^0 * 1) + 0
    measured = RWKV.transition(attention, (torch.zeros(1, 2, width),), {})[0, 0]
    torch.testing.assert_close(kept, measured.detach(), rtol=1e-5, atol=1e-7)
