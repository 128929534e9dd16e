"""The core math under ``array_api_strict``: any call outside the array API standard fails here."""

from __future__ import annotations

from ._core import CoreRunner

REQUIRES = ("array_api_strict",)


def runners() -> list[CoreRunner]:
    import array_api_strict as xp

    return [CoreRunner("array-api-strict", xp, {"float64": xp.float64, "float32": xp.float32})]
