"""The NumPy runner: the core math under NumPy in float64 and float32 (NumPy has no bfloat16)."""

from __future__ import annotations

import numpy as np

from ._core import CoreRunner

REQUIRES = ("numpy",)


def runners() -> list[CoreRunner]:
    return [CoreRunner("numpy", np, {"float64": np.float64, "float32": np.float32})]
