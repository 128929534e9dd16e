"""Comparison helpers shared by the torch tests."""

from __future__ import annotations

import torch


def assert_normwise_close(got: torch.Tensor, want: torch.Tensor, rtol: float, what: str = "") -> None:
    """``max|got - want| <= rtol * max|want|``: the conformance suite's measure.

    Normwise, not elementwise, because an update can move an element through zero, where an
    elementwise relative error means nothing (a difference of one rounding of a neighbouring
    element's size shows up as a huge relative error of a tiny element).
    """
    got, want = got.detach().double(), want.detach().double()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    error = float((got - want).abs().max()) if want.numel() else 0.0
    scale = float(want.abs().max()) if want.numel() else 0.0
    assert error <= rtol * scale, f"{what}: max abs error {error:.3g} > {rtol:g} * {scale:.3g}"
