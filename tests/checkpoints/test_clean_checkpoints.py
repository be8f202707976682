"""Nothing of gradprobe ends up in a user's checkpoint or copy (issue 27, item 5).

A model saved while a probe is attached (``torch.save(model)``, its
``state_dict()``, a ``copy.deepcopy``) loads with ``torch.load(weights_only=True)``
in a process where gradprobe cannot be imported, computes what the probed model
computes, and carries no hook.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import gradprobe
from gradprobe.fixes import HiddenGradClip

USER_MODEL = '''
import torch
from torch import nn


class WordLM(nn.Module):
    """pytorch/examples' word language model, in small."""

    def __init__(self, cell="LSTM"):
        super().__init__()
        self.encoder = nn.Embedding(50, 16)
        self.drop = nn.Dropout(0.2)
        self.rnn = getattr(nn, cell)(16, 24, 2, dropout=0.2)
        self.decoder = nn.Linear(24, 50)

    def forward(self, tokens, hidden=None):
        out, hidden = self.rnn(self.drop(self.encoder(tokens)), hidden)
        return self.decoder(self.drop(out)), hidden


class CellLoop(nn.Module):
    """A hand-written loop over an RNNCell."""

    def __init__(self):
        super().__init__()
        self.cell = nn.RNNCell(3, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = torch.zeros(x.shape[1], 8)
        for t in range(x.shape[0]):
            h = self.cell(x[t], h)
        return self.head(h)
'''

LOADER = """
import json, sys
sys.modules["gradprobe"] = None  # gradprobe is not installed here: any import of it fails
import torch
from torch import nn
import usermodel

torch.serialization.add_safe_globals([
    usermodel.WordLM, usermodel.CellLoop, nn.Embedding, nn.Dropout, nn.LSTM, nn.GRU, nn.RNNCell, nn.Linear,
])
out = {}
for name in sys.argv[1:]:
    obj = torch.load(name + ".pt", weights_only=True)
    if isinstance(obj, dict):
        model = usermodel.WordLM()
        model.load_state_dict(obj)
    else:
        model = obj
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    model.eval()
    x = torch.load(name + ".input.pt", weights_only=True)
    with torch.no_grad():
        y = model(x)
    y = y[0] if isinstance(y, tuple) else y
    out[name] = {"hooks": hooks, "output": y.double().sum().item(), "attrs": sorted(k for k in vars(model) if "gradprobe" in k or k == "__getstate__")}
print(json.dumps(out))
"""


def _train(model, probe_steps, inputs, target_fn):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(probe_steps):
        out = model(inputs)
        out = out[0] if isinstance(out, tuple) else out
        loss = target_fn(out)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "usermodel.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import usermodel

    yield usermodel
    sys.modules.pop("usermodel", None)


def _load_elsewhere(tmp_path, names):
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(LOADER), *names],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _expected(model, x):
    model.eval()
    with torch.no_grad():
        y = model(x)
    model.train()
    return (y[0] if isinstance(y, tuple) else y).double().sum().item()


def test_checkpoints_saved_while_attached_load_without_gradprobe(tmp_path, user_module):
    torch.manual_seed(0)
    lm = user_module.WordLM()
    tokens = torch.randint(0, 50, (12, 4))
    cells = user_module.CellLoop()
    xs = torch.randn(7, 4, 3)
    with (
        gradprobe.attach(lm, every=1, config={}, lyapunov_k=0) as lm_probe,
        gradprobe.attach(cells, every=1, config={}) as cell_probe,
    ):
        clip = HiddenGradClip(cells, value=1.0)
        _train(lm, 2, tokens, lambda out: out.pow(2).mean())
        _train(cells, 2, xs, lambda out: out.pow(2).mean())
        assert any(m._forward_hooks for m in lm.modules())  # attached: gradprobe's hooks are on the model
        saved = {
            "whole": (lm, tokens),
            "state": (lm.state_dict(), tokens),
            "deepcopy": (copy.deepcopy(lm), tokens),
            "cells": (cells, xs),
            "cells_copy": (copy.deepcopy(cells), xs),
        }
        for name, (obj, x) in saved.items():
            torch.save(obj, tmp_path / f"{name}.pt")
            torch.save(x, tmp_path / f"{name}.input.pt")
        expected = {"whole": _expected(lm, tokens), "cells": _expected(cells, xs)}
        expected.update(state=expected["whole"], deepcopy=expected["whole"], cells_copy=expected["cells"])
        copied = saved["deepcopy"][0]
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in copied.modules())
        assert "__getstate__" not in vars(copied.rnn)
        clip.remove()
    assert lm_probe.findings is not None and cell_probe.findings is not None
    assert not any("__getstate__" in vars(m) for m in [*lm.modules(), *cells.modules()])  # detached: nothing left

    loaded = _load_elsewhere(tmp_path, list(saved))
    for name, result in loaded.items():
        assert result["hooks"] == 0, name
        assert result["attrs"] == [], name
        assert result["output"] == pytest.approx(expected[name], rel=1e-6), name


def test_a_users_own_hooks_stay_in_the_checkpoint(tmp_path, user_module):
    """Only gradprobe's entries are left out: a hook the user registered is pickled as before."""
    lm = user_module.WordLM()
    lm.rnn.register_forward_hook(user_module.WordLM)  # any picklable callable stands for the user's hook
    before = set(lm.rnn._forward_hooks)
    with gradprobe.attach(lm, every=1, config={}):
        assert len(lm.rnn._forward_hooks) > len(before)
        copied = copy.deepcopy(lm)
        assert set(copied.rnn._forward_hooks) == before
        assert "__getstate__" not in vars(copied.rnn)
