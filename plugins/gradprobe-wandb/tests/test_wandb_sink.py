"""WandbSink with a real wandb run in offline mode: the figures and the findings table reach the run's files."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

wandb = pytest.importorskip("wandb")

from gradprobe_wandb import WandbSink

import gradprobe


def _records(path) -> list[bytes]:
    """The raw protobuf records of an offline run's ``.wandb`` file.

    The file is a LevelDB-style log (a 7-byte ``:W&B`` header, then 32 KiB
    blocks of chunks with a 7-byte header: checksum, length, type) of protobuf
    ``Record`` messages; wandb no longer ships a Python reader for it.
    """
    import struct

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0 or len(chunk) < length:  # zero padding, or a chunk not fully written yet
            break
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(pending)
    return records


def _history(run_dir, wait_s: float = 30.0) -> list[dict]:
    """The logged rows, read back from the offline run's ``.wandb`` file once its ``exit`` record is there.

    ``run.finish()`` can return before wandb's writer has flushed the file's
    last records, so the file is read again until the run's ``exit`` record,
    written after every history row, has reached it.
    """
    import time

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + wait_s
    while True:
        parsed = []
        for raw in _records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            parsed.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in parsed) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any(r.WhichOneof("record_type") == "exit" for r in parsed), f"no exit record in {path} after {wait_s} s"
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in parsed
        if r.WhichOneof("record_type") == "history"
    ]


def test_steps_gates_horizons_and_findings_reach_an_offline_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="gradprobe-test", dir=str(tmp_path), settings=wandb.Settings(console="off"))
    sink = WandbSink(run)
    torch.manual_seed(0)
    model = nn.LSTM(3, 8)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    with gradprobe.attach(model, optimizer=opt, every=5, config={}, sinks=[sink]) as probe:
        for step in range(12):
            opt.zero_grad()
            out, _ = model(torch.randn(6, 2, 3))
            (out.pow(2).mean() * (1e4 if step == 10 else 1.0)).backward()  # one extreme spike
            opt.step()
    run_dir = tmp_path / "wandb"
    offline = next(run_dir.glob("offline-run-*"))
    run.finish()
    rows = _history(offline)
    steps = [r for r in rows if "gradprobe/grad_norm" in r]
    assert [r["gradprobe/step"] for r in steps] == list(range(12))
    assert all(r["gradprobe/gates/weight_hh_l0/forget"] > 0 for r in steps)
    horizons = [r for r in rows if "gradprobe/LSTM.l0/horizon" in r]
    assert [r["gradprobe/step"] for r in horizons] == [0, 5, 10]
    tables = [r for r in rows if r.get("gradprobe/findings/_type") == "table-file"]
    codes = {f.code for f in probe.findings}
    assert {"GP102", "GP401"} <= codes and tables
    assert tables[-1]["gradprobe/findings/nrows"] == len(probe.findings)
    table = json.loads((offline / "files" / tables[-1]["gradprobe/findings/path"]).read_text())
    assert table["columns"] == ["code", "name", "severity", "layer", "step", "message"]
    assert {row[0] for row in table["data"]} == codes
    assert sink.counts["warning"] + sink.counts["error"] + sink.counts["info"] == len(probe.findings)
