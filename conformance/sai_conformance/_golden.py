"""Golden-vector data model: cases, snapshots of optimizer state, and their JSON form.

A golden file is written only by :mod:`sai_conformance.generate` from the NumPy float64 reference
and never edited by hand. Every array is stored as a flat list of Python floats (``repr`` round-trips
float64 exactly) next to the block's shape.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "GOLDEN_PACKAGE_DIR",
    "Case",
    "Group",
    "Snapshot",
    "load_case",
    "load_cases",
]

# Hyperparameters recorded per group and per step.
HYPERPARAMETER_NAMES: tuple[str, ...] = ("lr", "momentum", "weight_decay", "eps", "maximize")


def _golden_dir() -> Path:
    return Path(str(resources.files("sai_conformance") / "golden"))


GOLDEN_PACKAGE_DIR: Path = _golden_dir()


@dataclasses.dataclass
class Snapshot:
    """The optimizer-visible state after a step, in float64 NumPy.

    Attributes:
        params: current parameter values, one array per block.
        momentum_buffer: each block's buffer, ``None`` where none is stored.
        scale: each block's learning-rate scale ``S``, ``None`` before its first gradient.
        max_gsnr: the frozen normaliser ``M``, ``None`` before the first gradient.
        step: number of steps taken.
    """

    params: list[np.ndarray]
    momentum_buffer: list[np.ndarray | None]
    scale: list[float | None]
    max_gsnr: float | None
    step: int

    @classmethod
    def initial(cls, params: Sequence[np.ndarray]) -> Snapshot:
        """The state before any step: parameters only."""
        count = len(params)
        return cls([np.asarray(p, dtype=np.float64) for p in params], [None] * count, [None] * count, None, 0)


@dataclasses.dataclass(frozen=True)
class Group:
    """One parameter group: its blocks and its hyperparameters at every step."""

    params: tuple[int, ...]
    hyper: tuple[dict[str, Any], ...]  # one dict per step, keys HYPERPARAMETER_NAMES


@dataclasses.dataclass(frozen=True)
class Case:
    """One golden case: inputs of every step and the reference's state after every step."""

    name: str
    description: str
    scenario: str
    dtype: str  # "float64", "float32" or "bfloat16"; inputs are exactly representable in it
    preset: str
    knobs: dict[str, Any]
    shapes: tuple[tuple[int, ...], ...]
    groups: tuple[Group, ...]
    initial_params: tuple[np.ndarray, ...]
    grads: tuple[tuple[np.ndarray | None, ...], ...]  # [step][block]
    expected: tuple[Snapshot, ...]  # state after each step

    @property
    def num_steps(self) -> int:
        return len(self.grads)

    def hyper_at(self, step: int) -> list[dict[str, Any]]:
        """Hyperparameters of every group at ``step`` (0-based)."""
        return [dict(group.hyper[step]) for group in self.groups]

    def snapshot_before(self, step: int) -> Snapshot:
        """The reference state a one-step comparison starts ``step`` from."""
        return Snapshot.initial(self.initial_params) if step == 0 else self.expected[step - 1]


def _array_to_json(array: np.ndarray | None) -> list[float] | None:
    if array is None:
        return None
    return [float(x) for x in np.asarray(array, dtype=np.float64).reshape(-1)]


def _array_from_json(values: list[float] | None, shape: Sequence[int]) -> np.ndarray | None:
    if values is None:
        return None
    return np.asarray(values, dtype=np.float64).reshape(tuple(shape))


def case_to_json(case: Case) -> dict[str, Any]:
    """The JSON document of a case (see :func:`case_from_json` for the inverse)."""
    return {
        "name": case.name,
        "description": case.description,
        "scenario": case.scenario,
        "dtype": case.dtype,
        "preset": case.preset,
        "knobs": case.knobs,
        "shapes": [list(s) for s in case.shapes],
        "groups": [{"params": list(g.params), "hyper": list(g.hyper)} for g in case.groups],
        "initial_params": [_array_to_json(p) for p in case.initial_params],
        "steps": [
            {
                "grads": [_array_to_json(g) for g in grads],
                "expected": {
                    "params": [_array_to_json(p) for p in snap.params],
                    "momentum_buffer": [_array_to_json(b) for b in snap.momentum_buffer],
                    "scale": snap.scale,
                    "max_gsnr": snap.max_gsnr,
                    "step": snap.step,
                },
            }
            for grads, snap in zip(case.grads, case.expected)
        ],
    }


def case_from_json(doc: dict[str, Any]) -> Case:
    """Parses a document written by :func:`case_to_json`."""
    shapes = tuple(tuple(s) for s in doc["shapes"])
    steps = doc["steps"]
    expected = []
    for step in steps:
        e = step["expected"]
        expected.append(
            Snapshot(
                params=[_array_from_json(p, s) for p, s in zip(e["params"], shapes)],
                momentum_buffer=[_array_from_json(b, s) for b, s in zip(e["momentum_buffer"], shapes)],
                scale=list(e["scale"]),
                max_gsnr=e["max_gsnr"],
                step=e["step"],
            )
        )
    return Case(
        name=doc["name"],
        description=doc["description"],
        scenario=doc["scenario"],
        dtype=doc["dtype"],
        preset=doc["preset"],
        knobs=dict(doc["knobs"]),
        shapes=shapes,
        groups=tuple(Group(tuple(g["params"]), tuple(g["hyper"])) for g in doc["groups"]),
        initial_params=tuple(_array_from_json(p, s) for p, s in zip(doc["initial_params"], shapes)),
        grads=tuple(tuple(_array_from_json(g, s) for g, s in zip(step["grads"], shapes)) for step in steps),
        expected=tuple(expected),
    )


def dump_case(case: Case) -> str:
    """Deterministic text of a golden file (one line per step, keys sorted)."""
    doc = case_to_json(case)
    steps = doc.pop("steps")
    head = json.dumps(doc, sort_keys=True)
    lines = [head[:-1] + ', "steps": [']
    lines += [json.dumps(step, sort_keys=True) + ("," if i + 1 < len(steps) else "") for i, step in enumerate(steps)]
    lines.append("]}")
    return "\n".join(lines) + "\n"


def load_case(path: Path | str) -> Case:
    """Loads one golden file."""
    return case_from_json(json.loads(Path(path).read_text()))


def load_cases(directory: Path | str | None = None) -> list[Case]:
    """Loads every golden case, sorted by name (default: the vectors shipped in the package)."""
    root = GOLDEN_PACKAGE_DIR if directory is None else Path(directory)
    paths = sorted(root.glob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no golden vectors in {root}; run `python -m sai_conformance.generate`")
    return [load_case(p) for p in paths]


def iter_case_names(directory: Path | str | None = None) -> Iterator[str]:
    """Names of the golden cases without parsing them."""
    root = GOLDEN_PACKAGE_DIR if directory is None else Path(directory)
    for path in sorted(root.glob("*.json")):
        yield path.stem
