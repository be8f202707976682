"""A character language model built from a ``transformers`` Mamba config (no weights downloaded), trained
with AdamW on windows of the shipped text with ``clip_grad_norm_``, as the Hugging Face examples do, and a
declared dependency length (a word or two back: 32 characters).

Variants:
    healthy: the default initialization (Delta log-uniform in [1e-3, 1e-1], A = -(1..N)).
    collapsed-dt (broken, GP501): every mixer's dt_proj bias at 20: Delta ~ 20, every decay exp(-20 n) ~ 0,
        the selective state forgets everything at once; the model still learns from its local convolution,
        but nothing reaches further back than a few characters.

    python benchmarks/corpus/mamba_lm.py --variant healthy --steps 200
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

import gradprobe

VARIANTS = {"healthy": None, "collapsed-dt": "GP501"}
QUICK_STEPS = 60
STEPS = 200
WINDOW, BATCH, NEED = 48, 16, 32


def main(variant: str = "healthy", steps: int = STEPS, log: str | None = None, every: int = 25) -> common.RunResult:
    import transformers

    torch.manual_seed(0)
    data, alphabet = common.chars()
    config = transformers.MambaConfig(
        vocab_size=len(alphabet), hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, time_step_rank=4
    )
    model = transformers.MambaForCausalLM(config)
    if variant == "collapsed-dt":
        for name, module in model.named_modules():
            if type(module).__name__ == "MambaMixer":
                with torch.no_grad():
                    module.dt_proj.bias.fill_(20.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(5)
    result = common.RunResult("mamba_lm", variant, VARIANTS[variant])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*falling back to its reference PyTorch implementation.*")
        with gradprobe.attach(model, log=log, every=every, optimizer=opt, dependency_length=NEED, config={}) as probe:
            for _ in range(steps):
                starts = torch.randint(0, len(data) - WINDOW - 1, (BATCH,), generator=generator)
                ids = torch.stack([data[s : s + WINDOW] for s in starts.tolist()])
                loss = model(input_ids=ids, labels=ids).loss
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                result.losses.append(float(loss.detach()))
    result.findings, result.steps = probe.findings, steps
    return result


if __name__ == "__main__":
    common.run_from_command_line(VARIANTS, main, "healthy", STEPS)
