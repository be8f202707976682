"""Per-tensor gradient norms (``tensor_norms``) against torch's own norms."""

from __future__ import annotations

import math

import pytest
import torch

from gradprobe.recorders.gradients import tensor_norms


def _tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    wide = torch.randn(6, 5, generator=g)
    return [
        torch.randn(4, 3, 2, generator=g),
        wide.t(),  # not contiguous
        torch.tensor([1.0, -7.0, 2.0]),  # the largest entry is negative
        torch.tensor([float("nan"), 1.0]),
        torch.tensor([1.0, float("-inf")]),
        torch.empty(0),
        torch.randn(4, generator=g).to(torch.bfloat16),
        torch.randn(4, generator=g).to(torch.float16),
        torch.randn(3, generator=g, dtype=torch.float64),
        torch.randn(3, generator=g, dtype=torch.complex64),
    ]


@pytest.mark.parametrize("order", [2.0, math.inf])
def test_norms_equal_torchs_vector_norm_for_every_dtype_and_odd_value(order):
    tensors = _tensors()
    expected = torch.stack(
        [
            torch.linalg.vector_norm(t if t.is_complex() else t.float(), order).float()
            if t.numel()
            else torch.zeros(())
            for t in tensors
        ]
    )
    got = tensor_norms(tensors, order)
    assert got.dtype == torch.float32 and got.shape == (len(tensors),)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.allclose(got[~got.isnan()], expected[~expected.isnan()], rtol=1e-6, atol=0)
