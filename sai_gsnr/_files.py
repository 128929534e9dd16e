"""Reading the frozen scales out of a saved optimizer state, importing only the framework it needs.

Three formats, told apart by their contents (all three are zip archives), not by their names:

* a ``torch.save`` file (``*/data.pkl`` inside) holding an ``SGDSaI.state_dict()``, alone or as
  a value of a dict (``{"model": ..., "opt": ...}``, as ``docs/torch.md`` saves it): read with
  ``torch.load(weights_only=True)``, then :func:`sai_torch.scale_report`;
* a ``.keras`` file (``config.json`` and ``model.weights.h5`` inside): the optimizer's class is
  checked in ``config.json`` before Keras is imported, then ``keras.models.load_model`` and
  :func:`sai_keras.scale_report` (on the backend Keras is configured with);
* an ``.npz`` of an optax state's leaves, saved as ``docs/jax.md`` shows
  (``np.savez(f, *jax.tree.leaves(state))``): read with NumPy alone, JAX is not imported.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from sai_core import GsnrReport, report_from_scales, resolve_config

__all__ = ["CheckpointError", "read_checkpoint"]


class CheckpointError(ValueError):
    """A file that holds no SGD-SaI scales (another optimizer's, or no optimizer state at all)."""


def _kind(path: Path) -> str:
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as handle:
            # torch.save's legacy (non-zip) format starts with a pickle protocol byte.
            if handle.read(1) == b"\x80":
                return "torch"
        raise CheckpointError(
            f"Invalid CHECKPOINT: {str(path)!r} is not a torch.save file, a .keras file or an .npz of an optax state"
        )
    names = zipfile.ZipFile(path).namelist()
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return "torch"
    if "config.json" in names and any(name.endswith(".weights.h5") for name in names):
        return "keras"
    if names and all(name.endswith(".npy") for name in names):
        return "npz"
    raise CheckpointError(
        f"Invalid CHECKPOINT: {str(path)!r} is a zip archive holding {names[:4]}, which is neither a torch.save "
        "file, a .keras file nor an .npz of an optax state"
    )


def read_checkpoint(path: str | Path, *, preset: str | None = None) -> tuple[GsnrReport, list[str]]:
    """The frozen scales in ``path``, and notes on how they were read.

    Args:
        path: the file.
        preset: the preset the optimizer was built with. A torch or Keras checkpoint records
            its own (a different one is refused); an optax state does not (default ``"sgd-sai"``).

    Returns:
        ``(report, notes)``.

    Raises:
        CheckpointError: the file holds no SGD-SaI state, or ``preset`` contradicts it.
    """
    path = Path(path)
    kind = _kind(path)
    if kind == "torch":
        report, notes = _read_torch(path), []
    elif kind == "keras":
        report, notes = _read_keras(path), []
    else:
        report, notes = _read_optax_npz(path, preset or "sgd-sai")
        notes.append(
            f"preset {report.config.preset} from {'--preset' if preset else 'the default'}: an optax state does not record it"
        )
    if preset is not None and kind != "npz" and preset != report.config.preset:
        raise CheckpointError(
            f"Invalid --preset: {preset!r} (the checkpoint was saved with preset {report.config.preset!r}; "
            "its scales follow that preset)"
        )
    return report, notes


def _read_torch(path: Path) -> GsnrReport:
    import torch

    from sai_torch import scale_report

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a pickle torch refuses to load safely, or a corrupt file
        raise CheckpointError(f"Invalid CHECKPOINT: torch.load({str(path)!r}) failed: {_one_line(error)}") from error

    def is_state_dict(value: Any) -> bool:
        return isinstance(value, dict) and "state" in value and "param_groups" in value

    candidates = [loaded] if is_state_dict(loaded) else []
    if not candidates and isinstance(loaded, dict):
        candidates = [value for value in loaded.values() if is_state_dict(value)]
    if not candidates:
        keys = sorted(map(str, loaded)) if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(
            f"Invalid CHECKPOINT: {str(path)!r} holds no optimizer state_dict (found {keys}); save "
            "opt.state_dict() of a sai_torch.SGDSaI"
        )
    sai = [c for c in candidates if "sai_config" in c]
    try:
        return scale_report((sai or candidates)[0])
    except ValueError as error:
        raise CheckpointError(f"Invalid CHECKPOINT: {str(path)!r}: {error}") from error


def _read_keras(path: Path) -> GsnrReport:
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
    optimizer = (config.get("compile_config") or {}).get("optimizer")
    if not optimizer:
        raise CheckpointError(
            f"Invalid CHECKPOINT: {str(path)!r} was saved without a compiled optimizer: it holds no scales"
        )
    name = (
        optimizer.get("registered_name") or optimizer.get("class_name")
        if isinstance(optimizer, dict)
        else str(optimizer)
    )
    if name != "sai_keras>SGDSaI":
        raise CheckpointError(
            f"Invalid CHECKPOINT: {str(path)!r} was compiled with optimizer {name!r}, not sai_keras.SGDSaI: "
            "it holds no g-SNR scales"
        )
    import keras

    from sai_keras import scale_report

    try:
        model = keras.models.load_model(path)
    except Exception as error:  # custom layers that are not importable here, a corrupt file
        raise CheckpointError(
            f"Invalid CHECKPOINT: keras.models.load_model({str(path)!r}) failed: {_one_line(error)}"
        ) from error
    return scale_report(model)


def _is_0d(array: np.ndarray, kind: str) -> bool:
    return array.shape == () and array.dtype.kind == kind


def _read_optax_npz(path: Path, preset: str) -> tuple[GsnrReport, list[str]]:
    """An optax state's leaves, as ``np.savez(f, *jax.tree.leaves(state))`` writes them.

    The leaves of a :class:`sai_jax.ScaleBySaIState` come in its field order: ``count`` (int32),
    ``max_gsnr`` (a float), one float ``scale`` and then one bool ``initialized`` per parameter
    leaf, then one momentum buffer per leaf (absent with momentum 0). That run is searched for
    among the leaves (a chain or ``inject_hyperparams`` puts other leaves around it);
    ``tests/test_gsnr.py`` saves real ``sgd_sai`` states and reads them back here.
    """
    with np.load(path) as data:
        leaves = (
            [data[f"arr_{i}"] for i in range(len(data.files))]
            if all(f"arr_{i}" in data.files for i in range(len(data.files)))
            else None
        )
    if leaves is None:
        raise CheckpointError(
            f"Invalid CHECKPOINT: {str(path)!r} is an .npz whose arrays are named, not arr_0, arr_1, ... as "
            "np.savez(f, *jax.tree.leaves(state)) writes them"
        )
    for start in range(len(leaves) - 3):
        if not (_is_0d(leaves[start], "i") and _is_0d(leaves[start + 1], "f")):
            continue
        floats = 0
        while start + 2 + floats < len(leaves) and _is_0d(leaves[start + 2 + floats], "f"):
            floats += 1
        flags = 0
        while start + 2 + floats + flags < len(leaves) and _is_0d(leaves[start + 2 + floats + flags], "b"):
            flags += 1
        if floats == 0 or floats != flags:
            continue
        n, after = floats, start + 2 + 2 * floats
        buffers = leaves[after : after + n]
        # Buffers are floating (bfloat16 is stored as raw 2-byte records, kind "V").
        shapes: list[tuple[int, ...] | None] = (
            [tuple(b.shape) for b in buffers]
            if len(buffers) == n and all(b.dtype.kind in "fV" for b in buffers)
            else [None] * n
        )
        scales = leaves[start + 2 : start + 2 + n]
        initialized = [bool(flag) for flag in leaves[start + 2 + n : after]]
        entries = [
            (f"leaf {i}", shape, float(scale) if done else None)
            for i, (shape, scale, done) in enumerate(zip(shapes, scales, initialized))
        ]
        max_gsnr = float(leaves[start + 1]) if any(initialized) else None
        report = report_from_scales(entries, max_gsnr, config=resolve_config(preset), framework="jax")
        return report, ["names: 'leaf i' is the i-th parameter leaf in jax.tree order (an .npz records no names)"]
    raise CheckpointError(
        f"Invalid CHECKPOINT: {str(path)!r} is an .npz without an SGD-SaI state (no run of count, max_gsnr, "
        "scales and initialized flags among its arrays): another optimizer's state, or not an optax state"
    )


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"
