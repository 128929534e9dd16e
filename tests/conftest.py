"""Shared fixtures: the array namespaces the core is tested under."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest


@dataclasses.dataclass(frozen=True)
class Namespace:
    """An array namespace under test, with a dtype and a way to move arrays in and out."""

    name: str
    xp: Any
    dtype: Any
    dtype_name: str
    context: Any  # a context manager factory (JAX needs x64 enabled for float64)

    def asarray(self, values: Any) -> Any:
        return self.xp.asarray(np.asarray(values, dtype=np.float64), dtype=self.dtype)

    def to_numpy(self, x: Any) -> np.ndarray:
        if isinstance(x, (np.ndarray, np.generic)):
            return np.asarray(x, dtype=np.float64)
        if hasattr(x, "detach"):  # torch
            return x.detach().cpu().double().numpy()
        return np.from_dlpack(x).astype(np.float64)


def _namespaces() -> Iterator[Any]:
    import array_api_strict

    yield "numpy", np, {"float64": np.float64, "float32": np.float32}, contextlib.nullcontext
    yield (
        "array_api_strict",
        array_api_strict,
        {
            "float64": array_api_strict.float64,
            "float32": array_api_strict.float32,
        },
        contextlib.nullcontext,
    )
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is pinned in the dev environment
        pass
    else:
        from array_api_compat import torch as xp_torch

        yield "torch", xp_torch, {"float64": torch.float64, "float32": torch.float32}, contextlib.nullcontext
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:  # pragma: no cover - jax is pinned in the dev environment
        pass
    else:
        yield "jax", jnp, {"float64": jnp.float64, "float32": jnp.float32}, lambda: jax.enable_x64(True)


NAMESPACE_PARAMS = [
    pytest.param((name, xp, dtypes[dtype], dtype, context), id=f"{name}-{dtype}")
    for name, xp, dtypes, context in _namespaces()
    for dtype in ("float64", "float32")
]


@pytest.fixture(params=NAMESPACE_PARAMS)
def xp(request) -> Iterator[Namespace]:
    """Every array namespace (numpy, array_api_strict, torch, jax.numpy) in float64 and float32."""
    name, module, dtype, dtype_name, context = request.param
    with context():
        yield Namespace(name, module, dtype, dtype_name, context)
