"""Small models shared by the tests."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LinearCell(nn.Module):
    """A custom cell ``h' = W h + U x`` (no nonlinearity), for theory checks."""

    def __init__(self, input_size: int, hidden_size: int, recurrent: Tensor) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.W = nn.Parameter(recurrent.clone())
        self.U = nn.Parameter(torch.randn(hidden_size, input_size, dtype=recurrent.dtype) * 0.1)

    def forward(self, x: Tensor, h: Tensor) -> Tensor:
        return h @ self.W.T + x @ self.U.T


class LoopModel(nn.Module):
    """Drives a cell with a Python loop over time, reads out every step."""

    def __init__(self, cell: nn.Module, hidden_size: int, lstm: bool = False) -> None:
        super().__init__()
        self.cell = cell
        self.lstm = lstm
        self.head = nn.Linear(hidden_size, 1).to(next(cell.parameters()).dtype)
        self.hidden_size = hidden_size

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        batch = x.shape[1]
        h = x.new_zeros(batch, self.hidden_size)
        state = (h, h.clone()) if self.lstm else h
        hs = []
        for t in range(x.shape[0]):
            state = self.cell(x[t], state)
            h = state[0] if self.lstm else state
            hs.append(h)
        return self.head(torch.stack(hs)), hs


class EncoderDecoder(nn.Module):
    """A GRU encoder and an LSTMCell decoder: two recurrent sites in one model."""

    def __init__(self, input_size: int = 3, hidden: int = 8) -> None:
        super().__init__()
        self.encoder = nn.GRU(input_size, hidden, batch_first=True)
        self.decoder = nn.LSTMCell(hidden, hidden)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: Tensor, steps: int = 5) -> tuple[Tensor, None]:
        enc, h = self.encoder(x)
        state = (h[0], torch.zeros_like(h[0]))
        inp = enc[:, -1]
        outs = []
        for _ in range(steps):
            state = self.decoder(inp, state)
            inp = state[0]
            outs.append(self.head(state[0]))
        return torch.stack(outs, dim=1), None


def orthogonal(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=dtype))
    return q
