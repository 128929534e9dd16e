"""Helpers shared by the torch tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread, restored afterwards: the fastest for tiny tensors, and immune to OpenMP
    spin-waiting when other processes share the 2 cores (10-100x slower otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
