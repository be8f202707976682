"""DistributedDataParallel on CPU (gloo, 2 processes): one log path in the code, one report.

Every process wraps its DDP model with ``gradprobe.attach(model, log="run.log")``,
the same path on every rank, as one naturally writes it. The probe sees the
process group and writes ``run.rank{N}.log`` instead (rank 0 says so once), with
``rank`` in each log's meta event. ``gradprobe report run.log`` reads all the
rank files as one run: a finding seen on several ranks appears once, with the
ranks in its evidence.

    python examples/ddp.py [--steps 40] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gradprobe
from gradprobe.report import summarize_logs
from gradprobe.report.text import render_text


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(4, 32, batch_first=True)
        self.head = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


def worker(rank: int, world: int, port: int, out: Path, steps: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # same initial weights on every rank
    model = DistributedDataParallel(Tagger())
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own shard of data
    with gradprobe.attach(model, log=out / "run.log", every=10, config={}) as probe:
        for _ in range(steps):
            x = torch.randn(8, 120, 4, generator=generator)
            y = x[:, :, :1].cumsum(dim=1) / 10  # needs memory over the whole sequence
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()  # gradients are all-reduced here
            probe.step(loss)
            opt.step()
            opt.zero_grad()
    dist.barrier()
    dist.destroy_process_group()
    # the log is closed; leave before C++ static destructors race gloo's threads at interpreter
    # shutdown ("terminate called without an active exception", seen with and without gradprobe)
    sys.stdout.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    mp.spawn(worker, args=(args.world, free_port(), args.out, args.steps), nprocs=args.world, join=True)
    text = render_text(summarize_logs([args.out / "run.log"], config={}))
    print(text)
    print(f"same from the shell: gradprobe report {args.out / 'run.log'}")
    return text


if __name__ == "__main__":
    main()
