"""The table of conformance cases (SPEC.md, "Conformance") and the inputs each one feeds.

A *scenario* fixes the blocks, groups, hyperparameter schedule and gradient plan; a *case* is a
scenario run under one preset and one dtype. Inputs are drawn from a NumPy generator seeded by the
case name and rounded to the case's dtype, so every backend receives exactly representable values.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

from sai_core import DEFAULT_HYPERPARAMETERS, DEFAULT_PRESET, PRESETS

__all__ = ["CASE_TABLE", "CaseSpec", "SCENARIOS", "round_to_dtype"]

NUM_STEPS = 4
ALL_SHAPES: tuple[tuple[int, ...], ...] = ((), (1,), (7,), (1, 16), (16, 1), (8, 16), (3, 4, 5, 6))
DEFAULT_HYPER: dict[str, Any] = dict(DEFAULT_HYPERPARAMETERS)

# A gradient plan entry: "normal" (random, offset per block so g-SNRs differ), "zero", "constant",
# "absent", "nan" / "inf" / "-inf" (normal with one such element), ("scaled", factor) or
# ("offset", mean) (normal around a given mean: a large mean makes a large g-SNR).
Plan = Any


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Blocks, groups and per-step plans of one conformance scenario.

    ``safety`` marks a scenario of the contract's safety rules (SPEC v2: non-finite first gradients,
    zero-size blocks, the overflow-safe statistic), which our presets follow and no published port
    does: ``identify``
    judges a port's preset on the other scenarios and leaves these to ``check``.
    """

    description: str
    shapes: tuple[tuple[int, ...], ...]
    groups: tuple[tuple[tuple[int, ...], Callable[[int], dict[str, Any]]], ...]
    plan: Callable[[int, int], Plan]  # (step, block) -> plan entry
    safety: bool = False


def _one_group(shapes: tuple[tuple[int, ...], ...], **hyper: Any) -> tuple:
    return ((tuple(range(len(shapes))), lambda step: {**DEFAULT_HYPER, **hyper}),)


def _normal(step: int, block: int) -> Plan:
    return "normal"


def _degenerate_plan(step: int, block: int) -> Plan:
    if step == 0 and block == 0:
        return "zero"
    if step == 0 and block == 1:
        return "constant"
    return "normal"


def _late_and_absent_plan(step: int, block: int) -> Plan:
    if block == 1 and step < 2:
        return "absent"  # first gradient at step 3
    if block == 2 and step == 2:
        return "absent"  # no gradient at one later step
    return "normal"


def _first_gradients_plan(step: int, block: int) -> Plan:
    # Block 1: NaN first, finite at step 2. Block 2: inf, then -inf, finite at step 3.
    # Block 3: all zero twice (deferred under zero_gradient="defer"), nonzero at step 3.
    plans = {(0, 1): "nan", (0, 2): "inf", (1, 2): "-inf", (0, 3): "zero", (1, 3): "zero"}
    return plans.get((step, block), "normal")


def _overflow_plan(step: int, block: int) -> Plan:
    if step == 0:
        return ("scaled", {0: 1e30, 1: 1e-30}.get(block, 1.0))
    return "normal"


def _zero_size_plan(step: int, block: int) -> Plan:
    # Step 1: the zero-size blocks have (empty) gradients, the others all-zero ones, so under
    # zero_gradient="defer" nothing initializes and M stays unset until step 2.
    return "zero" if step == 0 and block in (1, 3) else "normal"


def _zero_size_alone_plan(step: int, block: int) -> Plan:
    return "absent" if step == 0 and block != 0 else "normal"


def _late_above_max_plan(step: int, block: int) -> Plan:
    if block == 2:
        return "absent" if step < 2 else ("offset", 3.0)
    return "normal"


def _scales_plan(step: int, block: int) -> Plan:
    return ("scaled", {0: 1e-6, 1: 1e6}.get(block, 1.0))


_LR_SCHEDULE = (1e-3, 0.0, 5e-4, 2e-3)

SCENARIOS: dict[str, Scenario] = {
    "shapes": Scenario(
        "every required block shape, default hyperparameters", ALL_SHAPES, _one_group(ALL_SHAPES), _normal
    ),
    "degenerate": Scenario(
        "an all-zero and a constant first gradient, a 0-d and a (1,) block",
        ((8, 16), (7,), (), (1,), (3, 4)),
        _one_group(((8, 16), (7,), (), (1,), (3, 4))),
        _degenerate_plan,
    ),
    "late_and_absent": Scenario(
        "a block whose first gradient comes at step 3, a block absent at step 3",
        ((8, 16), (7,), (4, 4)),
        _one_group(((8, 16), (7,), (4, 4))),
        _late_and_absent_plan,
    ),
    "first_gradients": Scenario(
        "NaN, inf / -inf and all-zero first gradients: each block initializes at its first informative one",
        ((8, 16), (7,), (4, 4), (3, 4)),
        _one_group(((8, 16), (7,), (4, 4), (3, 4))),
        _first_gradients_plan,
        safety=True,
    ),
    "overflow": Scenario(
        "first gradients of scale 1e30 (float32 squares overflow) and 1e-30 (they underflow), eps 0",
        ((8, 16), (7,), (16, 1)),
        _one_group(((8, 16), (7,), (16, 1)), eps=0.0),
        _overflow_plan,
        safety=True,
    ),
    "zero_size": Scenario(
        "zero-size blocks with (empty) gradients while every other first gradient is all zero",
        ((0,), (8, 16), (2, 0, 3), (7,)),
        _one_group(((0,), (8, 16), (2, 0, 3), (7,))),
        _zero_size_plan,
        safety=True,
    ),
    "zero_size_alone": Scenario(
        "a zero-size block alone has a gradient at step 1; the others appear at step 2",
        ((0, 4), (8, 16), (7,)),
        _one_group(((0, 4), (8, 16), (7,))),
        _zero_size_alone_plan,
        safety=True,
    ),
    "late_above_max": Scenario(
        "a block whose first gradient comes at step 3 with a g-SNR above M",
        ((4, 4), (7,), (16, 8)),
        _one_group(((4, 4), (7,), (16, 8))),
        _late_above_max_plan,
    ),
    "grad_scales": Scenario(
        "gradients of scale 1e-6 and 1e6",
        ((8, 16), (16, 1), (7,)),
        _one_group(((8, 16), (16, 1), (7,))),
        _scales_plan,
    ),
    "lr_schedule": Scenario(
        "an lr schedule with a zero-lr step, weight decay 0.1",
        ((8, 16), (7,), ()),
        ((((0, 1, 2)), lambda step: {**DEFAULT_HYPER, "lr": _LR_SCHEDULE[step], "weight_decay": 0.1}),),
        _normal,
    ),
    "momentum_0": Scenario(
        "momentum 0 (no buffer), no weight decay",
        ((8, 16), (7,), ()),
        _one_group(((8, 16), (7,), ()), momentum=0.0, weight_decay=0.0),
        _normal,
    ),
    "momentum_0.99": Scenario(
        "momentum 0.99, weight decay 0.1",
        ((8, 16), (7,), ()),
        _one_group(((8, 16), (7,), ()), momentum=0.99, weight_decay=0.1),
        _normal,
    ),
    "maximize": Scenario(
        "maximize=True",
        ((8, 16), (7,), (1, 16)),
        _one_group(((8, 16), (7,), (1, 16)), maximize=True),
        _normal,
    ),
    "two_groups": Scenario(
        "two parameter groups with different lr, momentum, weight decay and eps; one global M",
        ((8, 16), (7,), (16, 1), (1, 16)),
        (
            ((0, 1), lambda step: {**DEFAULT_HYPER, "lr": 1e-3, "momentum": 0.9, "weight_decay": 0.0}),
            ((2, 3), lambda step: {**DEFAULT_HYPER, "lr": 5e-3, "momentum": 0.0, "weight_decay": 0.1, "eps": 1e-6}),
        ),
        _normal,
    ),
}


@dataclasses.dataclass(frozen=True)
class CaseSpec:
    """A scenario under one preset and dtype: the recipe of one golden case."""

    scenario: str
    preset: str
    dtype: str

    @property
    def name(self) -> str:
        return f"{self.scenario}-{self.preset}-{self.dtype}"


def _case_table() -> tuple[CaseSpec, ...]:
    specs = []
    both = ("float64", "float32")
    # Every preset on the scenarios where presets differ most: shapes and first gradients.
    for scenario in ("shapes", "degenerate", "first_gradients", "zero_size"):
        for preset in PRESETS:
            for dtype in both:
                specs.append(CaseSpec(scenario, preset, dtype))
    for preset in PRESETS:
        specs.append(CaseSpec("late_and_absent", preset, "float64"))
    for preset in (DEFAULT_PRESET, "paper"):
        specs.append(CaseSpec("late_and_absent", preset, "float32"))
        for scenario in ("late_above_max", "zero_size_alone"):
            for dtype in both:
                specs.append(CaseSpec(scenario, preset, dtype))
        for dtype in ("float64", "float32", "bfloat16"):
            specs.append(CaseSpec("overflow", preset, dtype))
    for scenario in ("grad_scales", "lr_schedule", "momentum_0", "momentum_0.99", "maximize", "two_groups"):
        for dtype in both:
            specs.append(CaseSpec(scenario, DEFAULT_PRESET, dtype))
    for dtype in both:  # one M across groups only matters when scales are divided by it
        specs.append(CaseSpec("two_groups", "paper", dtype))
    for scenario in ("shapes", "degenerate", "first_gradients", "two_groups"):
        specs.append(CaseSpec(scenario, DEFAULT_PRESET, "bfloat16"))
    specs.append(CaseSpec("shapes", "paper", "bfloat16"))
    return tuple(specs)


CASE_TABLE: tuple[CaseSpec, ...] = _case_table()


def round_to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Rounds float64 values to the nearest ``dtype`` value, returned as float64.

    bfloat16 is float32 with the low 16 bits rounded away (round half to even), done on the bit
    pattern because NumPy has no bfloat16 type.
    """
    values = np.asarray(values, dtype=np.float64)
    if dtype == "float64":
        return values.copy()
    as32 = values.astype(np.float32)
    if dtype == "float32":
        return as32.astype(np.float64)
    if dtype == "bfloat16":
        bits = as32.view(np.uint32).astype(np.uint64)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return rounded.astype(np.uint32).view(np.float32).astype(np.float64)
    raise ValueError(f"Invalid dtype: {dtype!r} (expected float64, float32 or bfloat16)")


def build_inputs(spec: CaseSpec) -> dict[str, Any]:
    """Initial parameters, per-step gradients and per-step group hyperparameters of a case."""
    scenario = SCENARIOS[spec.scenario]
    rng = np.random.default_rng(zlib.crc32(spec.name.encode()))
    shapes = scenario.shapes
    initial = [round_to_dtype(rng.standard_normal(s), spec.dtype) for s in shapes]
    # A per-block mean offset makes the blocks' g-SNRs differ (a zero-mean gradient has G ~ sqrt(n)).
    offsets = [0.5 * (i % 3) for i in range(len(shapes))]
    grads = []
    for step in range(NUM_STEPS):
        row = []
        for block, shape in enumerate(shapes):
            entry = scenario.plan(step, block)
            if entry == "absent":
                row.append(None)
                continue
            if entry == "zero":
                values = np.zeros(shape)
            elif entry == "constant":
                values = np.full(shape, 0.375)
            elif isinstance(entry, tuple) and entry[0] == "offset":
                values = entry[1] + rng.standard_normal(shape)
            else:
                factor = entry[1] if isinstance(entry, tuple) else 1.0
                values = factor * (offsets[block] + rng.standard_normal(shape))
                if entry in ("nan", "inf", "-inf"):
                    values.reshape(-1)[0] = float(entry)
            row.append(round_to_dtype(values, spec.dtype))
        grads.append(row)
    groups = [(params, [hyper(step) for step in range(NUM_STEPS)]) for params, hyper in scenario.groups]
    return {"shapes": shapes, "initial": initial, "grads": grads, "groups": groups, "description": scenario.description}
