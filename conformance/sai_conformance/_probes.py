"""Behaviour probes: small scenarios whose parameter updates show how a port does SGD-SaI.

Most probes start from zero parameters with ``weight_decay=0``, so a step's parameter change is
``-lr * S * m`` and nothing else. Two steps with the same gradient ``g`` separate the block's
scale ``S`` from how its first momentum buffer starts: with ``m1 = c g``,

.. math::

    \\Delta_1 = -\\eta S c\\, g, \\qquad \\Delta_2 = -\\eta S (\\mu c + 1 - \\mu)\\, g
    \\quad\\Rightarrow\\quad S = \\frac{a_2 - \\mu a_1}{1 - \\mu}, \\quad c = a_1 / S

where ``a_k = -<Delta_k, g> / (eta <g, g>)``. Everything is measured by magnitude:

* the statistic from the *ratios* of the measured scales, ``S_i / G_i`` the same constant for every
  block under the right statistic knobs (:data:`sai_core.KNOB_VALUES`), whatever the normalisation;
* the normalisation from that constant: ``1`` (none), ``1 / max G`` (max), or another reduction of
  the first g-SNRs (mean, median, ...), named when one reproduces it;
* every other probe by comparing what it measured with what the reference gives on the same
  inputs under the knob values measured so far (its parameters measured the same way).

Gradients are float32-representable (bfloat16 where the probe runs in bfloat16), so every dtype
sees exactly the same inputs. A probe that the target's framework cannot express is ``n/a``; a
target that raises is reported (``error: KeyError``), one that hangs is ``timeout``; neither is
fatal. The probes are one table, :data:`PROBES`: each with its question, the contract's answer and
its cost; a probe's measurement is the :class:`_Prober` method its ``run`` names (probes that read
the same scenario share one run).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sai_core import DEFAULT_PRESET, KNOB_VALUES, PRESETS, ReferenceSGDSaI, gsnr, resolve_config

from ._cases import round_to_dtype
from ._targets import NotExpressible, Session, Target, TargetHung, TargetTimeout, describe_error

__all__ = ["PROBES", "Outcome", "Probe", "ProbeReport", "run_probes"]

LR, MU, EPS = 0.1, 0.9, 1e-8
# The weight-decay probe: a second step at another lr (the decay must use the step's lr), and
# lr * wd = 0.05, so decay applied after the update shrinks the update by 5 %, 250x the float32
# tolerance below.
DECAY_LRS, DECAY = (0.1, 0.05), 0.5
# Relative agreement between a measured and a predicted scale. float64: the measurement divides
# two reductions over <= 128 elements (~1e-14) and the target's own g-SNR errs by as much; 1e-7
# is far below the smallest knob effect (biased vs unbiased std over 128 elements: 4e-3).
# float32: the target's g-SNR errs by ~1e-6 and the measurement amplifies a difference by
# 1 / (1 - mu) = 10; 2e-4 still separates every knob value.
TOLERANCE: dict[str, float] = {"float64": 1e-7, "float32": 2e-4}
# Above this relative residual a parameter change is not a multiple of the gradient (not SGD-like).
PARALLEL: dict[str, float] = {"float64": 1e-9, "float32": 1e-5}
# A g-SNR this far above sqrt(n) cannot come from the statistic (G <= sqrt(n) / eps only via eps).
EXPLOSION = 1e3
# The bfloat16 probe. One step from zero stores bf16(-lr S c g); S is read from it by least squares
# against the reference's parameters stored the same way. The stored roundings do not average out
# (a bfloat16 gradient has 8 significant bits, so k * g rounds alike for many elements): a port
# that rounds its buffer or its update at a different point than the reference moves the measured
# S by up to ~3e-4 (measured: the reference with a zeros-started buffer against a g-started one).
# A statistic computed in bfloat16 rounds the norm and the std (8 significant bits) by up to
# 2**-9 = 2e-3 each; the probe's gradients are chosen so that this rounding moves G by 5e-3 and
# 6e-3 (tests/test_identify.py checks it). 1.5e-3 is 5x that noise and 3x below the effect; above
# 2e-2 (5 bfloat16 units) the scale is wrong for another reason than rounding.
LOWPREC_NOISE, LOWPREC_WRONG = 1.5e-3, 2e-2
# A scale within this of a bfloat16-rounded lr * S (float32 statistic) had only its update scalar
# rounded: a quarter of the smallest bfloat16 spacing (2**-8), 3x the noise above.
LOWPREC_GRID = 1e-3
LOWPREC_SEEDS: tuple[int, ...] = (299, 187)
LOWPREC_SHAPE: tuple[int, ...] = (32, 64)


@dataclasses.dataclass(frozen=True)
class Probe:
    """One behaviour probe (SPEC.md "Conformance").

    Attributes:
        key: short identifier (JSON, tests).
        title: column header of the report card.
        question: what it measures.
        clean: the value the contract (``docs/spec.md``, preset ``sgd-sai``) gives.
        cost: what it costs the target (optimizers built x steps each, blocks); ``shared`` when it
            reads the run of the probe named there.
        run: the :class:`_Prober` method that measures it.
    """

    key: str
    title: str
    question: str
    clean: str
    cost: str
    run: str


PROBES: tuple[Probe, ...] = (
    Probe(
        "buffer",
        "first buffer",
        "the momentum buffer after a block's first gradient: g or (1 - mu) g",
        "g",
        "shared with g-SNR per block",
        "run_gsnr",
    ),
    Probe(
        "gsnr",
        "g-SNR per block",
        "the statistic knobs whose G reproduce the ratios of the scales S of four blocks "
        "((8, 16), (16, 1), (7,), (1, 16))",
        DEFAULT_PRESET,
        "1 optimizer x 3 steps, 4 blocks",
        "run_gsnr",
    ),
    Probe(
        "normalize",
        "normalisation",
        "the constant c of S = c G measured on the same blocks: 1 (none), 1 / max G (max) or another reduction",
        "none",
        "shared with g-SNR per block",
        "run_gsnr",
    ),
    Probe(
        "constant",
        "g-SNR constant",
        "whether S stays fixed when step 3 brings a gradient with another g-SNR",
        "constant",
        "shared with g-SNR per block",
        "run_gsnr",
    ),
    Probe(
        "scalar",
        "1-element block",
        "the g-SNR of a (1,) and a 0-d block",
        "finite: G = sqrt(n)",
        "1 optimizer x 2 steps, 4 blocks",
        "run_scalar",
    ),
    Probe(
        "resume",
        "save/load",
        "S after saving and loading the optimizer state, then a gradient with another g-SNR",
        "kept",
        "2 optimizers x 3 steps, 2 blocks",
        "run_resume",
    ),
    Probe(
        "late",
        "late block",
        "the S of a block whose first gradient comes at step 2 with a g-SNR above M, and the earlier block's S",
        "works",
        "1 optimizer x 3 steps, 2 blocks",
        "run_late",
    ),
    Probe(
        "zero",
        "zero first grad",
        "a block whose first gradient is all zeros: when it initializes and with which S and buffer",
        "trains",
        "1 optimizer x 3 steps, 2 blocks",
        "run_zero",
    ),
    Probe(
        "nonfinite",
        "non-finite first grad",
        "blocks whose first gradient holds a NaN or an inf: left untouched, then S from their first finite "
        "gradient, and no other block affected",
        "defers",
        "1 optimizer x 3 steps, 3 blocks",
        "run_nonfinite",
    ),
    Probe(
        "maximize",
        "maximize",
        "the sign given to each of 3 steps' gradients with maximize=True (against a maximize=False run), and "
        "whether the caller's .grad changed",
        "ascends",
        "2 optimizers x 3 steps, 2 blocks",
        "run_maximize",
    ),
    Probe(
        "momentum0",
        "momentum=0",
        "two steps with momentum=0",
        "works",
        "1 optimizer x 2 steps, 2 blocks",
        "run_momentum0",
    ),
    Probe(
        "decay",
        "weight decay",
        "the decay of each step as a multiple of lr * wd * theta (decoupled: 1 with the step's lr, not S) "
        "and the update's factor (decay before the update: 1, after it: 1 - lr * wd)",
        "decoupled",
        "2 optimizers x 2 steps, 2 blocks",
        "run_decay",
    ),
    Probe(
        "groups",
        "M across groups",
        "the M dividing G in each of two parameter groups (torch-style groups only)",
        "no M (S = G)",
        "1 optimizer x 2 steps, 2 groups of 2 blocks",
        "run_groups",
    ),
    Probe(
        "lowprec",
        "bf16 statistics",
        "the S of two bfloat16 blocks against the float32 statistic of the same gradients",
        "float32 statistics",
        "1 optimizer x 1 step, 2 bfloat16 blocks",
        "run_lowprec",
    ),
    Probe(
        "fit",
        "model.fit",
        "Keras: the weights after 3 steps of model.fit compiled (graph / jit) against run_eagerly=True",
        "same as eager",
        "2 models x 3 steps",
        "run_fit",
    ),
    Probe(
        "closure",
        "closure calls",
        "how often step(closure) calls the closure on step 1",
        "1 call",
        "1 optimizer x 1 step, 2 blocks",
        "run_closure",
    ),
)
PROBE_BY_KEY: dict[str, Probe] = {p.key: p for p in PROBES}
# Answers that are not measurements: not held against a target (a timeout itself is).
NOT_MEASURED: tuple[str, ...] = ("n/a", "not run")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one probe measured.

    Attributes:
        probe: the probe's key.
        value: a short categorical answer (equal answers mean equal behaviour).
        detail: the numbers or the error behind it, in words.
        measured: the probe's key numbers by name (what tests and JSON readers compare).
    """

    probe: str
    value: str
    detail: str = ""
    measured: dict[str, float] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        # Finite numbers only (JSON round trips; a non-finite measurement is said in the detail).
        finite = {k: float(v) for k, v in self.measured.items() if math.isfinite(v)}
        object.__setattr__(self, "measured", finite)

    @property
    def applicable(self) -> bool:
        return self.value not in NOT_MEASURED

    @property
    def clean(self) -> bool:
        """Whether the answer is the contract's (an ``n/a`` probe is not held against a target)."""
        return not self.applicable or self.value == PROBE_BY_KEY[self.probe].clean


@dataclasses.dataclass
class ProbeReport:
    """Every probe's outcome and the knob combinations the measurements are consistent with.

    Attributes:
        target: the target's name.
        dtype: the dtype the probes ran in (the bfloat16 probe excepted).
        outcomes: probe key -> outcome, in :data:`PROBES` order.
        consistent: knob combinations that reproduce every measured scale and buffer, or
            ``None`` when the scales could not be measured. ``normalize`` may hold a value that
            is no knob value (``"mean"``, ``"other"``): a normalisation no preset has.
    """

    target: str
    dtype: str
    outcomes: dict[str, Outcome]
    consistent: list[dict[str, Any]] | None

    def knob_values(self) -> dict[str, list[Any]] | None:
        """For each knob, the values found in a consistent combination (``None``: unknown)."""
        if not self.consistent:
            return None
        values = {}
        for knob, allowed in KNOB_VALUES.items():
            found = [v for v in allowed if any(c[knob] == v for c in self.consistent)]
            found += sorted({c[knob] for c in self.consistent} - set(allowed), key=str)
            values[knob] = found
        return values

    def knob_distance(self, knobs: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """Fewest knobs a consistent combination changes from ``knobs``, and that combination."""
        if not self.consistent:
            return None
        best = min(self.consistent, key=lambda c: sum(c[k] != knobs[k] for k in KNOB_VALUES))
        return sum(best[k] != knobs[k] for k in KNOB_VALUES), best


# -- inputs ----------------------------------------------------------------------------------


def _gradient(seed: int, shape: tuple[int, ...], offset: float, dtype: str = "float32") -> np.ndarray:
    rng = np.random.default_rng(seed)
    return round_to_dtype(offset + rng.standard_normal(shape), dtype)


def _hyper(
    *, momentum: float = MU, maximize: bool = False, lr: float = LR, weight_decay: float = 0.0
) -> dict[str, Any]:
    return {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eps": EPS, "maximize": maximize}


@dataclasses.dataclass(frozen=True)
class _Scenario:
    """Blocks, per-step gradients (``None``: absent), hyperparameters and groups of one probe run."""

    shapes: tuple[tuple[int, ...], ...]
    steps: tuple[tuple[np.ndarray | None, ...], ...]
    hyper: dict[str, Any]
    initial: tuple[np.ndarray, ...] | None = None  # default: zeros
    groups: tuple[tuple[int, ...], ...] | None = None  # default: one group
    step_hyper: tuple[dict[str, Any], ...] | None = None  # per-step hyperparameters (default: hyper)
    dtype: str | None = None  # default: the target's most precise

    def initial_params(self) -> list[np.ndarray]:
        return [np.zeros(s) for s in self.shapes] if self.initial is None else [p.copy() for p in self.initial]

    def group_indices(self) -> tuple[tuple[int, ...], ...]:
        return self.groups or (tuple(range(len(self.shapes))),)

    def hyper_at(self, step: int) -> dict[str, Any]:
        return self.hyper if self.step_hyper is None else self.step_hyper[step]


def _gsnr_scenario() -> tuple[_Scenario, tuple[np.ndarray, ...]]:
    shapes = ((8, 16), (16, 1), (7,), (1, 16))
    first = tuple(_gradient(10 + i, s, o) for i, (s, o) in enumerate(zip(shapes, (0.5, 1.0, 0.3, 0.8))))
    # Step 3: other offsets, so a recomputed g-SNR differs from the kept one in every block.
    third = tuple(_gradient(20 + i, s, o) for i, (s, o) in enumerate(zip(shapes, (0.0, 2.0, 1.5, 0.0))))
    return _Scenario(shapes, (first, first, third), _hyper()), third


def _scalar_scenario() -> _Scenario:
    # A (1,) and a 0-d block (n == 1) and a constant (3, 4) gradient: the degenerate cases.
    grads = (_gradient(30, (8, 16), 0.5), np.array([0.5]), np.array(-0.25), np.full((3, 4), 0.375))
    return _Scenario(((8, 16), (1,), (), (3, 4)), (grads, grads), _hyper())


def _resume_scenario() -> tuple[_Scenario, tuple[np.ndarray, ...]]:
    shapes = ((8, 16), (7,))
    first = (_gradient(40, shapes[0], 0.5), _gradient(41, shapes[1], 0.0))
    after = (_gradient(42, shapes[0], 0.0), _gradient(43, shapes[1], 2.0))
    return _Scenario(shapes, (first, first), _hyper()), after


def _late_scenario() -> _Scenario:
    # The late block's gradient has mean 3 (G ~ sqrt(n) * 3.2 = 36) against the first block's
    # mean 0.5 (G ~ 12.6): under normalize="max" its S = G / M is ~2.9 (a running max gives 1).
    a = _gradient(50, (8, 16), 0.5)
    b = _gradient(60, (16, 8), 3.0)
    return _Scenario(((8, 16), (16, 8)), ((a, None), (a, b), (a, b)), _hyper())


def _zero_scenario() -> _Scenario:
    a = _gradient(70, (8, 16), 0.5)
    b = _gradient(80, (4, 4), 1.0)  # G(b) ~ 5.7, far from the sqrt(16) = 4 a zero gradient may get
    return _Scenario(((8, 16), (4, 4)), ((a, np.zeros((4, 4))), (a, b), (a, b)), _hyper())


def _nonfinite_scenario() -> _Scenario:
    a = _gradient(130, (8, 16), 0.5)
    b, c = _gradient(131, (7,), 0.3), _gradient(132, (4, 4), 1.0)
    b_nan, c_inf = b.copy(), c.copy()
    b_nan[0], c_inf[0, 0] = np.nan, np.inf
    return _Scenario(((8, 16), (7,), (4, 4)), ((a, b_nan, c_inf), (a, b, c), (a, b, c)), _hyper())


def _maximize_grads() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    return tuple((_gradient(90 + 2 * k, (8, 16), 0.5), _gradient(91 + 2 * k, (7,), 0.3)) for k in range(3))


def _maximize_scenario(maximize: bool) -> _Scenario:
    return _Scenario(((8, 16), (7,)), _maximize_grads(), _hyper(maximize=maximize))


def _two_block_grads(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return _gradient(seed, (8, 16), 0.5), _gradient(seed + 1, (7,), 0.3)


def _decay_scenario(weight_decay: float) -> _Scenario:
    grads = _two_block_grads(140)
    initial = (_gradient(142, (8, 16), 0.0), _gradient(143, (7,), 0.0))
    step_hyper = tuple(_hyper(lr=lr, weight_decay=weight_decay) for lr in DECAY_LRS)
    return _Scenario(((8, 16), (7,)), (grads, grads), step_hyper[0], initial=initial, step_hyper=step_hyper)


def _groups_scenario() -> _Scenario:
    # Group 1 holds the block with the largest g-SNR (mean 2: G ~ 25); group 2's largest is ~5.
    shapes = ((8, 16), (7,), (16, 1), (4, 4))
    grads = tuple(_gradient(150 + i, s, o) for i, (s, o) in enumerate(zip(shapes, (2.0, 0.3, 0.5, 0.0))))
    return _Scenario(shapes, (grads, grads), _hyper(), groups=((0, 1), (2, 3)))


def _lowprec_scenario() -> _Scenario:
    grads = tuple(_gradient(seed, LOWPREC_SHAPE, 0.5, "bfloat16") for seed in LOWPREC_SEEDS)
    return _Scenario(tuple(LOWPREC_SHAPE for _ in grads), (grads,), _hyper(), dtype="bfloat16")


_SCENARIOS: dict[str, Callable[[], _Scenario]] = {
    "gsnr": lambda: _gsnr_scenario()[0],
    "scalar": _scalar_scenario,
    "late": _late_scenario,
    "zero": _zero_scenario,
    "nonfinite": _nonfinite_scenario,
    "groups": _groups_scenario,
    "lowprec": _lowprec_scenario,
}


# -- running a scenario -----------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(self, step: int, error: BaseException) -> None:
        what = "building the optimizer" if step == 0 else f"step {step}"
        super().__init__(f"{what} raised {describe_error(error)}")
        self.step, self.error = step, error


def _open(target: Target, dtype: str, scenario: _Scenario) -> Session:
    try:
        groups = [(indices, scenario.hyper) for indices in scenario.group_indices()]
        return target.open(scenario.initial_params(), groups, scenario.dtype or dtype)
    except (NotExpressible, TargetTimeout, TargetHung):
        raise
    except Exception as exc:
        raise _StepFailed(0, exc) from exc


def _run(
    session: Session,
    scenario: _Scenario,
    history: list[list[np.ndarray]],
    steps: range | None = None,
    grads: Sequence[Sequence[np.ndarray | None]] | None = None,
) -> None:
    """Steps ``session`` and appends the parameters after each step to ``history``."""
    steps = range(len(scenario.steps)) if steps is None else steps
    groups = len(scenario.group_indices())
    for index, step in enumerate(steps):
        row = scenario.steps[step] if grads is None else grads[index]
        try:
            session.step(list(row), [scenario.hyper_at(min(step, len(scenario.steps) - 1))] * groups)
        except (NotExpressible, TargetTimeout, TargetHung):
            raise
        except Exception as exc:
            raise _StepFailed(step + 1, exc) from exc
        history.append(session.params())


def _coefficient(delta: np.ndarray, direction: np.ndarray, lr: float = LR) -> float:
    return -float(np.vdot(delta, direction)) / (lr * float(np.vdot(direction, direction)))


def _off_direction(delta: np.ndarray, direction: np.ndarray) -> float:
    """Relative size of the part of ``delta`` that is not a multiple of ``direction``."""
    size = float(np.linalg.norm(delta))
    if size == 0.0 or not np.isfinite(size):
        return 0.0 if size == 0.0 else float("inf")
    residual = delta + LR * _coefficient(delta, direction) * direction
    return float(np.linalg.norm(residual)) / size


@dataclasses.dataclass(frozen=True)
class _ScaleMeasurement:
    scale: np.ndarray  # S per block
    buffer: np.ndarray  # c per block (nan where S == 0)
    off_direction: float  # largest relative residual of the two steps


def _measure_two_steps(
    before: Sequence[np.ndarray],
    after1: Sequence[np.ndarray],
    after2: Sequence[np.ndarray],
    grads: Sequence[np.ndarray],
) -> _ScaleMeasurement:
    scales, buffers, residual = [], [], 0.0
    for p0, p1, p2, g in zip(before, after1, after2, grads):
        d1, d2 = p1 - p0, p2 - p1
        a1, a2 = _coefficient(d1, g), _coefficient(d2, g)
        residual = max(residual, _off_direction(d1, g), _off_direction(d2, g))
        scale = (a2 - MU * a1) / (1 - MU)
        scales.append(scale)
        buffers.append(a1 / scale if scale != 0 and np.isfinite(scale) else float("nan"))
    return _ScaleMeasurement(np.array(scales), np.array(buffers), residual)


def _close(measured: float, predicted: float | None, tolerance: float) -> bool:
    if predicted is None or not np.isfinite(measured) or not np.isfinite(predicted):
        return False
    return abs(measured - predicted) <= tolerance * abs(predicted) + 1e-300


def _agrees(measured: Sequence[float], predicted: Sequence[float | None], tolerance: float) -> bool:
    return len(measured) == len(predicted) and all(_close(m, p, tolerance) for m, p in zip(measured, predicted))


def _fmt(values: Sequence[float | None]) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.6g}" for v in values) + "]"


def _steps_text(steps: Sequence[int]) -> str:
    if len(steps) == 1:
        return f"step {steps[0]}"
    if list(steps) == list(range(steps[0], steps[-1] + 1)):
        return f"steps {steps[0]}-{steps[-1]}"
    return "steps " + ", ".join(str(s) for s in steps)


# -- what the reference predicts ----------------------------------------------------------------

ALL_KNOBS: tuple[dict[str, Any], ...] = tuple(
    dict(zip(KNOB_VALUES, values)) for values in itertools.product(*KNOB_VALUES.values())
)
_STATISTIC_KNOBS = ("snr", "std_correction", "degenerate", "vector_rule")
_SCALE_KNOBS = ("snr", "normalize", "std_correction", "vector_rule")
# The contract's knobs: those of the default preset.
_CONTRACT = resolve_config(DEFAULT_PRESET).knobs()

# Reductions of the first g-SNRs a port may divide by, tried in this order: "max" is the paper's
# (the knob value), the others are what ports do by mistake.
REDUCTIONS: dict[str, Callable[[np.ndarray], float]] = {
    "max": lambda g: float(np.max(g)),
    "mean": lambda g: float(np.mean(g)),
    "median": lambda g: float(np.median(g)),
    "sum": lambda g: float(np.sum(g)),
    "min": lambda g: float(np.min(g)),
    "root mean square": lambda g: float(np.sqrt(np.mean(np.square(g)))),
    "geometric mean": lambda g: float(np.exp(np.mean(np.log(g)))),
}


def _knob_key(knobs: dict[str, Any]) -> tuple:
    return tuple(knobs[k] for k in KNOB_VALUES)


def _statistic(knobs: dict[str, Any]) -> dict[str, Any]:
    return {k: knobs[k] for k in _STATISTIC_KNOBS}


def _raw_gsnrs(grads: Sequence[np.ndarray], knobs: dict[str, Any]) -> np.ndarray:
    return np.array([float(gsnr(np.asarray(g, dtype=np.float64), eps=EPS, **_statistic(knobs))) for g in grads])


def _first_gsnrs(scenario: _Scenario, knobs: dict[str, Any]) -> np.ndarray:
    """Raw g-SNRs of the blocks that initialize at the first step where any does (finite, nonzero)."""
    for row in scenario.steps:
        ready = [g for g in row if g is not None and g.size and np.all(np.isfinite(g)) and np.any(g)]
        if ready:
            return _raw_gsnrs(ready, knobs)
    return np.array([1.0])


@functools.cache
def _reference_history(scenario_name: str, knob_key: tuple, lr_factor: float) -> tuple[tuple[np.ndarray, ...], ...]:
    """The reference's parameters before and after each step of a scenario under one knob combination."""
    import warnings

    scenario = _SCENARIOS[scenario_name]()
    knobs = dict(zip(KNOB_VALUES, knob_key))
    initial = scenario.initial_params()
    indices = scenario.group_indices()
    order = [i for idx in indices for i in idx]  # the reference flattens its groups in order
    optimizer = ReferenceSGDSaI([{"params": [initial[i] for i in idx]} for idx in indices], **scenario.hyper, **knobs)
    history = [tuple(initial)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference warns about a non-finite first gradient
        for step, row in enumerate(scenario.steps):
            for group in optimizer.param_groups:
                group.update(scenario.hyper_at(step))
                group["lr"] = scenario.hyper_at(step)["lr"] * lr_factor
            optimizer.step([row[i] for i in order])
            if scenario.dtype:  # stored in the scenario's dtype (buffer and parameter), as the contract says
                optimizer.params = [round_to_dtype(p, scenario.dtype) for p in optimizer.params]
                optimizer.momentum_buffer = [
                    None if m is None else round_to_dtype(m, scenario.dtype) for m in optimizer.momentum_buffer
                ]
            current: list[np.ndarray] = [np.zeros(0)] * len(order)
            for position, block in enumerate(order):
                current[block] = np.asarray(optimizer.params[position], dtype=np.float64).copy()
            history.append(tuple(current))
    return tuple(history)


def _describe_knobs(knobs: dict[str, Any], names: Sequence[str] = tuple(KNOB_VALUES)) -> str:
    changed = [f"{k}={knobs[k]}" for k in names if knobs[k] != _CONTRACT[k]]
    return ", ".join(changed) if changed else DEFAULT_PRESET


# -- the probes ---------------------------------------------------------------------------------


def _error(key: str, exc: BaseException) -> Outcome:
    inner = exc.error if isinstance(exc, _StepFailed) else exc
    if isinstance(inner, NotExpressible):
        return Outcome(key, "n/a", str(inner))
    if isinstance(inner, TargetTimeout):
        return Outcome(key, "timeout", str(inner))
    if isinstance(inner, TargetHung):
        return Outcome(key, "not run", str(inner))
    if isinstance(exc, _StepFailed):
        return Outcome(key, f"error: {type(exc.error).__name__}", str(exc))
    return Outcome(key, f"error: {type(exc).__name__}", describe_error(exc))


class _Prober:
    """Runs every probe on one target and keeps the knob values measured so far."""

    def __init__(self, target: Target, dtype: str) -> None:
        self.target, self.dtype = target, dtype
        self.tolerance = TOLERANCE[dtype]
        self.outcomes: dict[str, Outcome] = {}
        # Knob combinations consistent with every measurement so far (None: the scales are unknown).
        self.combos: list[dict[str, Any]] | None = None
        self.factor = 1.0  # S = factor * G under normalize="other"
        self.buffer_c: float | None = None

    # -- shared machinery --------------------------------------------------------------------

    def _replay(self, scenario: _Scenario) -> tuple[list[list[np.ndarray]], Session | None, BaseException | None]:
        """Parameters before and after each step (as far as it got), the session, and what stopped it."""
        history: list[list[np.ndarray]] = []
        session = None
        try:
            session = _open(self.target, self.dtype, scenario)
            history.append(session.params())
            _run(session, scenario, history)
        except Exception as exc:
            return history, session, exc
        return history, session, None

    def _fail(self, keys: Sequence[str], exc: BaseException) -> None:
        for key in keys:
            self.outcomes[key] = _error(key, exc)

    def consistent(self) -> list[dict[str, Any]] | None:
        return self.combos

    def _lr_factor(self, scenario_name: str, knobs: dict[str, Any]) -> float:
        label = knobs["normalize"]
        if label in KNOB_VALUES["normalize"]:
            return 1.0
        if label in REDUCTIONS:
            return 1.0 / REDUCTIONS[label](_first_gsnrs(_SCENARIOS[scenario_name](), knobs))
        return self.factor

    def predicted(self, scenario_name: str, knobs: dict[str, Any]) -> tuple[tuple[np.ndarray, ...], ...]:
        """The reference's parameter history of a scenario under ``knobs`` (a normalisation no knob
        has is a scaled learning rate: with zero decay and zero initial parameters the two agree)."""
        reference = dict(knobs)
        if reference["normalize"] not in KNOB_VALUES["normalize"]:
            reference["normalize"] = "none"
        return _reference_history(scenario_name, _knob_key(reference), self._lr_factor(scenario_name, knobs))

    def candidates(self) -> list[dict[str, Any]]:
        """The knob combinations to compare with (the contract's when nothing was measured)."""
        return self.combos if self.combos else [dict(_CONTRACT)]

    def narrow(self, keep: Callable[[dict[str, Any]], bool]) -> bool:
        """Keeps the consistent combinations ``keep`` accepts; ``False`` (nothing changed) when none is."""
        if not self.combos:
            return False
        kept = [c for c in self.combos if keep(c)]
        if kept:
            self.combos = kept
        return bool(kept)

    # -- 1-4: buffer, g-SNR per block, normalisation, g-SNR constant across steps --------------

    def run_gsnr(self) -> None:
        keys = ("buffer", "gsnr", "normalize", "constant")
        scenario, third = _gsnr_scenario()
        history, _, exc = self._replay(scenario)
        if len(history) < 3:
            self._fail(keys, exc)
            return
        first = scenario.steps[0]
        measured = _measure_two_steps(history[0], history[1], history[2], first)
        if measured.off_direction > PARALLEL[self.dtype] or not np.all(np.isfinite(measured.scale)):
            detail = (
                f"the update is not lr * S * m (relative residual {measured.off_direction:.3g}); "
                f"scales {_fmt(measured.scale)}"
            )
            for key in keys:
                self.outcomes[key] = Outcome(key, "not SGD-like", detail)
            return
        # buffer
        c = measured.buffer
        if np.allclose(c, 1.0, rtol=0, atol=self.tolerance * 10):
            momentum_init, value = "grad", "g"
        elif np.allclose(c, 1 - MU, rtol=0, atol=self.tolerance * 10):
            momentum_init, value = "zeros", "(1-mu) g"
        else:
            momentum_init, value = None, f"{float(np.median(c)):.3g} g"
        self.buffer_c = float(np.median(c))
        self.outcomes["buffer"] = Outcome(
            "buffer", value, f"m1 = c * g with c = {_fmt(c)} per block (mu = {MU})", {"c": self.buffer_c}
        )
        self._statistic_and_normalisation(measured.scale, first, momentum_init)
        # constant across steps
        if len(history) < 4:
            self._fail(["constant"], exc)
            return
        c_used = np.where(np.isfinite(c), c, 1.0)
        buffers = [MU * (MU * ci + 1 - MU) * g + (1 - MU) * g3 for ci, g, g3 in zip(c_used, first, third)]
        later = np.array([_coefficient(p3 - p2, m) for p2, p3, m in zip(history[2], history[3], buffers)])
        if _agrees(later, measured.scale, self.tolerance):
            value = "constant"
        elif any(_agrees(later, self._normalised(third, k), self.tolerance) for k in self.candidates()):
            value = "recomputed"
        else:
            value = "changes"
        detail = f"S at steps 1-2 {_fmt(measured.scale)}, at step 3 {_fmt(later)}"
        change = float(np.max(np.abs(later / measured.scale - 1)))
        self.outcomes["constant"] = Outcome("constant", value, detail, {"largest relative change of S": change})

    def _normalised(self, grads: Sequence[np.ndarray], knobs: dict[str, Any]) -> list[float]:
        """The scales a fresh optimizer under ``knobs`` gives ``grads`` at its first step."""
        raw = _raw_gsnrs(grads, knobs)
        label = knobs["normalize"]
        if label == "none":
            return list(raw)
        if label in REDUCTIONS:
            return list(raw / REDUCTIONS[label](raw))
        return list(raw * self.factor)

    def _statistic_and_normalisation(
        self, scales: np.ndarray, grads: Sequence[np.ndarray], momentum_init: str | None
    ) -> None:
        """The statistic knobs from the ratios S_i / G_i (one constant c), the normalisation from c."""
        tolerance = self.tolerance
        found: list[tuple[dict[str, Any], str, float]] = []
        for values in itertools.product(*(KNOB_VALUES[k] for k in _STATISTIC_KNOBS)):
            statistic = dict(zip(_STATISTIC_KNOBS, values))
            raw = _raw_gsnrs(grads, statistic)
            ratios = scales / raw
            c = float(np.exp(np.mean(np.log(np.abs(ratios))))) * float(np.sign(ratios[0]))
            if not np.all(np.abs(ratios / c - 1) <= tolerance):
                continue
            label = next((name for name, reduce in REDUCTIONS.items() if abs(c * reduce(raw) - 1) <= tolerance), None)
            if abs(c - 1) <= tolerance:
                label = "none"
            found.append((statistic, label or "other", c))
        contract_raw = _raw_gsnrs(grads, _CONTRACT)
        if not found:
            same = np.allclose(scales, scales[0], rtol=tolerance, atol=0)
            value = f"no g-SNR: S = {scales[0]:.6g} for every block" if same else "no knob setting"
            detail = (
                f"S measured {_fmt(scales)}; no statistic's g-SNRs {_fmt(contract_raw)} ({DEFAULT_PRESET}) "
                "or another knob's are proportional to it"
            )
            self.outcomes["gsnr"] = Outcome("gsnr", value, detail)
            self.outcomes["normalize"] = Outcome("normalize", "unknown", "the statistic could not be measured")
            return
        # The statistic closest to the contract's; its normalisation.
        statistic, label, c = min(found, key=lambda f: sum(f[0][k] != _CONTRACT[k] for k in _STATISTIC_KNOBS))
        if label == "other":
            self.factor = c
        raw = _raw_gsnrs(grads, statistic)
        value = _describe_knobs({**_CONTRACT, **statistic}, ("snr", "std_correction", "vector_rule"))
        ratio_detail = f"S_i / G_i = {_fmt(scales / raw)}"
        detail = (
            f"S measured {_fmt(scales)}; G of {value}: {_fmt(raw)}, {ratio_detail} (one constant); "
            f"{DEFAULT_PRESET}'s G: {_fmt(contract_raw)}"
        )
        measured = {"S / G": c}
        if statistic["std_correction"] != _CONTRACT["std_correction"] and statistic["snr"] == "gsnr":
            unbiased = _raw_gsnrs(grads, {**statistic, "std_correction": 1})
            measured["largest G(biased) / G(unbiased)"] = float(np.max(raw / unbiased))
        self.outcomes["gsnr"] = Outcome("gsnr", value, detail, measured)
        # normalisation
        if label == "none":
            norm_value, words = "none", "S = G"
        elif label == "max":
            norm_value, words = "max", f"S = G / M with M = max G = {1 / c:.6g}"
        elif label == "other":
            norm_value = "other"
            words = (
                f"another reduction: S = G / {1 / c:.6g}; no reduction of the first g-SNRs "
                f"({', '.join(REDUCTIONS)}) gives that constant"
            )
        else:
            norm_value = f"another reduction: {label}"
            words = f"another reduction: S = G / {1 / c:.6g}, the {label} of the first g-SNRs {_fmt(raw)}"
        self.outcomes["normalize"] = Outcome(
            "normalize", norm_value, f"{words} (c = S / G = {c:.6g})", {"c": c, "divisor": 1 / c}
        )
        # The normalisation is a measured value, one per statistic; "mean" or "other" is no knob value.
        label_of = {tuple(f[0].values()): f[1] for f in found}
        combos: dict[tuple, dict[str, Any]] = {}
        for knobs in ALL_KNOBS:
            measured_label = label_of.get(tuple(_statistic(knobs).values()))
            if measured_label is None or momentum_init not in (None, knobs["momentum_init"]):
                continue
            if measured_label in KNOB_VALUES["normalize"] and knobs["normalize"] != measured_label:
                continue
            combo = {**knobs, "normalize": measured_label}
            combos[_knob_key(combo)] = combo
        self.combos = list(combos.values()) or None

    # -- 5: 1-element blocks (and the constant gradient that pins the degenerate knob) -------------

    def run_scalar(self) -> None:
        scenario = _scalar_scenario()
        history, _, exc = self._replay(scenario)
        if len(history) < 3:
            self._fail(["scalar"], exc)
            return
        grads = scenario.steps[0]
        scales = _measure_two_steps(history[0], history[1], history[2], grads).scale

        def predicted_scales(knobs: dict[str, Any]) -> np.ndarray:
            h = self.predicted("scalar", knobs)
            return _measure_two_steps(h[0], h[1], h[2], grads).scale

        self.narrow(lambda k: _agrees(scales, predicted_scales(k), self.tolerance))
        # The (8, 16) block's g-SNR under the statistic measured by the g-SNR probe.
        knobs = self.candidates()[0]
        reference_gsnr = float(_raw_gsnrs([grads[0]], knobs)[0])
        labels, measured = [], {}
        for block, name in ((1, "(1,)"), (2, "0-d")):
            if not np.isfinite(scales[block]) or not np.isfinite(scales[0]) or scales[0] == 0:
                labels.append(("non-finite", f"S = {scales[block]}"))
                continue
            # S_block / S_matrix = G_block / G_matrix, with or without a normalisation.
            estimate = scales[block] / scales[0] * reference_gsnr
            measured[f"G {name}"] = float(estimate)
            norm = float(np.abs(grads[block]).sum())
            candidates = {"finite: G = sqrt(n)": 1.0, "finite: G = ||g||": norm, "explodes: G = ||g||/eps": norm / EPS}
            # 2 %: the candidates differ by 2x or more.
            label = next((name_ for name_, value in candidates.items() if abs(estimate - value) <= 0.02 * value), None)
            if label is None:
                label = "explodes" if estimate > EXPLOSION else "finite: other G"
            labels.append((label, f"{name} block: G = {estimate:.6g} (|g| = {norm:g})"))
        values = sorted({label for label, _ in labels})
        value = values[0] if len(values) == 1 else "; ".join(f"{s}: {v}" for s, (v, _) in zip(("(1,)", "0-d"), labels))
        detail = "; ".join(d for _, d in labels) + f"; S measured {_fmt(scales)}"
        self.outcomes["scalar"] = Outcome("scalar", value, detail, measured)

    # -- 6: save/load ------------------------------------------------------------------------------

    def run_resume(self) -> None:
        scenario, after = _resume_scenario()
        history: list[list[np.ndarray]] = []
        try:
            session = _open(self.target, self.dtype, scenario)
            history.append(session.params())
            _run(session, scenario, history)
            try:
                saved = session.save()
                session = session.resume(saved, [scenario.hyper])
            except (NotExpressible, TargetTimeout, TargetHung):
                raise
            except Exception as exc:
                raise _StepFailed(2, exc) from exc
            history[-1] = session.params()
            _run(session, scenario, history, range(2, 3), [after])
        except Exception as exc:
            self._fail(["resume"], exc)
            return
        first = scenario.steps[0]
        measured = _measure_two_steps(history[0], history[1], history[2], first)
        rows = []
        for block, (g, g3) in enumerate(zip(first, after)):
            c = measured.buffer[block] if np.isfinite(measured.buffer[block]) else 1.0
            m2 = (MU * c + 1 - MU) * g
            basis = np.stack([m2.reshape(-1), g3.reshape(-1)], axis=1)
            delta = (history[3][block] - history[2][block]).reshape(-1)
            (alpha, beta), *_ = np.linalg.lstsq(-LR * basis, delta, rcond=None)
            rows.append((float(alpha), float(beta), c))
        kept_buffer = all(abs(a * (1 - MU) - MU * b) <= 10 * self.tolerance * abs(MU * b) for a, b, _ in rows)
        reset_buffer = all(abs(a) <= 10 * self.tolerance * abs(b) for a, b, _ in rows)
        if kept_buffer:
            later = np.array([b / (1 - MU) for _, b, _ in rows])
        elif reset_buffer:
            later = np.array([b / c for _, b, c in rows])
        else:
            later = np.array([float("nan")] * len(rows))
        recomputed = any(_agrees(later, self._normalised(after, k), self.tolerance) for k in self.candidates())
        if kept_buffer and _agrees(later, measured.scale, self.tolerance):
            value = "kept"
        elif recomputed:
            value = "recomputed" if kept_buffer else "recomputed, buffer reset"
        elif reset_buffer and _agrees(later, measured.scale, self.tolerance):
            value = "buffer reset"
        else:
            value = "changes"
        detail = f"S before saving {_fmt(measured.scale)}, after loading {_fmt(later)}" + (
            "" if kept_buffer else "; the momentum buffer was not restored"
        )
        self.outcomes["resume"] = Outcome("resume", value, detail)

    # -- 7: a late block whose g-SNR exceeds M ------------------------------------------------------

    @staticmethod
    def _late_measure(history: Sequence[Sequence[np.ndarray]], scenario: _Scenario) -> tuple[float, float, float]:
        """(S of the first block at steps 1-2, its S at step 3, S of the late block)."""
        a, b = scenario.steps[0][0], scenario.steps[1][1]
        first = _measure_two_steps([history[0][0]], [history[1][0]], [history[2][0]], [a])
        s_a, c_a = float(first.scale[0]), float(first.buffer[0])
        c_a = c_a if np.isfinite(c_a) else 1.0
        coefficient = MU * (MU * c_a + 1 - MU) + 1 - MU  # m3 = coefficient * a
        s_a3 = _coefficient(history[3][0] - history[2][0], a) / coefficient
        late = _measure_two_steps([history[1][1]], [history[2][1]], [history[3][1]], [b])
        return s_a, s_a3, float(late.scale[0])

    def run_late(self) -> None:
        scenario = _late_scenario()
        history, _, exc = self._replay(scenario)
        if len(history) < 4:
            self._fail(["late"], exc)
            return
        if np.any(history[1][1] != history[0][1]):
            self.outcomes["late"] = Outcome(
                "late", "moves without a gradient", "the block changed at step 1, before its first gradient"
            )
            return
        s_a, s_a3, s_b = self._late_measure(history, scenario)
        predictions = [self._late_measure(self.predicted("late", k), scenario) for k in self.candidates()]
        expected = predictions[0]
        measured = {
            "S late block": s_b,
            "S late block, frozen M": expected[2],
            "S first block before": s_a,
            "S first block after": s_a3,
        }
        words = (
            f"the late block's S = {s_b:.6g} (the knobs measured elsewhere, M frozen at step 1: {expected[2]:.6g}); "
            f"the first block's S {s_a:.6g} before, {s_a3:.6g} after"
        )
        if not np.isfinite(s_b):
            value = "non-finite"
        elif s_b == 0.0:
            value, words = "never trains", "the block does not move after its first gradient (S = 0)"
        elif any(_close(s_b, p[2], self.tolerance) and _close(s_a3, p[0], self.tolerance) for p in predictions):
            value = "works"
        elif not _close(s_a3, s_a, self.tolerance) or (_close(s_b, 1.0, self.tolerance) and expected[2] > 1):
            value = "M raised by the late block (running max)"
        else:
            value = "wrong scale"
        self.outcomes["late"] = Outcome("late", value, words, measured)

    # -- 8: an all-zero first gradient ---------------------------------------------------------------

    @staticmethod
    def _zero_measure(history: Sequence[Sequence[np.ndarray]], scenario: _Scenario) -> tuple[float, float, bool]:
        """(S, c) of the zero block from steps 2-3, and whether it moved at step 1."""
        b = scenario.steps[1][1]
        moved = bool(np.any(history[1][1] != history[0][1]))
        measured = _measure_two_steps([history[1][1]], [history[2][1]], [history[3][1]], [b])
        return float(measured.scale[0]), float(measured.buffer[0]), moved

    def run_zero(self) -> None:
        scenario = _zero_scenario()
        history, _, exc = self._replay(scenario)
        if len(history) < 4:
            self._fail(["zero"], exc)
            return
        scale, c, moved = self._zero_measure(history, scenario)
        deltas = [history[k + 1][1] - history[k][1] for k in (1, 2)]

        def matches(knobs: dict[str, Any]) -> bool:
            s, cc, _ = self._zero_measure(self.predicted("zero", knobs), scenario)
            if s == 0.0 or scale == 0.0:
                return s == scale
            return _close(scale, s, self.tolerance) and _close(c, cc, 10 * self.tolerance)

        deferred = [{**k, "zero_gradient": "defer"} for k in self.candidates()]
        expected, expected_c, _ = self._zero_measure(self.predicted("zero", deferred[0]), scenario)
        measured = {"S": scale, "buffer c": c, "S if deferred": expected}
        if not all(np.all(np.isfinite(d)) for d in deltas):
            value, detail = "non-finite", "the block's parameters became inf or nan"
        elif all(not np.any(d) for d in deltas):
            value, detail = "frozen", "after a zero first gradient the block never moves again (S = 0)"
        else:
            detail = (
                f"S = {scale:.6g} with its buffer started at {c:.3g} g from steps 2-3; initialized at its first "
                f"nonzero gradient it gets S = {expected:.6g}, buffer {expected_c:.3g} g"
            )
            if any(matches(k) for k in deferred) and not moved:
                value = "trains"
            elif any(matches({**k, "zero_gradient": "degenerate"}) for k in self.candidates()):
                value = "initialized by the zero gradient"
            else:
                value = "wrong scale"
        self.narrow(matches)
        self.outcomes["zero"] = Outcome("zero", value, detail, measured)

    # -- 9: non-finite first gradients ---------------------------------------------------------------

    def run_nonfinite(self) -> None:
        scenario = _nonfinite_scenario()
        history, _, exc = self._replay(scenario)
        if len(history) < 4:
            self._fail(["nonfinite"], exc)
            return
        reference = self.predicted("nonfinite", self.candidates()[0])
        a = scenario.steps[0][0]
        labels, measured, words = [], {}, []
        for block, name in ((1, "NaN"), (2, "inf")):
            g = scenario.steps[1][block]
            after = [history[k][block] for k in range(4)]
            if not all(np.all(np.isfinite(p)) for p in after):
                label, text = "non-finite parameters", f"{name}: the block's parameters became inf or nan"
            elif np.any(after[1] != after[0]):
                label, text = "moves at the non-finite step", f"{name}: the block changed at step 1"
            else:
                s = float(_measure_two_steps([after[1]], [after[2]], [after[3]], [g]).scale[0])
                expected = float(
                    _measure_two_steps([reference[1][block]], [reference[2][block]], [reference[3][block]], [g]).scale[
                        0
                    ]
                )
                measured[f"S {name} block"], measured[f"S {name} block, deferred"] = s, expected
                if s == 0.0:
                    label, text = "frozen", f"{name}: the block never moves (S = 0)"
                elif _close(s, expected, self.tolerance):
                    label, text = "defers", f"{name}: S = {s:.6g} from its first finite gradient"
                else:
                    label, text = (
                        "wrong scale",
                        f"{name}: S = {s:.6g}; deferred to its first finite gradient: {expected:.6g}",
                    )
            labels.append(label)
            words.append(text)
        # The other block: its parameters finite and its S what it would be without the bad blocks.
        first = [history[k][0] for k in range(3)]
        s_a = float(_measure_two_steps([first[0]], [first[1]], [first[2]], [a]).scale[0])
        s_a_expected = float(_measure_two_steps([reference[0][0]], [reference[1][0]], [reference[2][0]], [a]).scale[0])
        measured["S other block"], measured["S other block, expected"] = s_a, s_a_expected
        poisoned = not all(np.all(np.isfinite(history[k][0])) for k in range(4)) or not _close(
            s_a, s_a_expected, self.tolerance
        )
        value = labels[0] if labels[0] == labels[1] else f"NaN: {labels[0]}; inf: {labels[1]}"
        if poisoned:
            value += ", poisons other blocks"
            words.append(f"the block with a finite gradient got S = {s_a:.6g} (expected {s_a_expected:.6g})")
        self.outcomes["nonfinite"] = Outcome("nonfinite", value, "; ".join(words), measured)

    # -- 10: maximize over 3 steps --------------------------------------------------------------------

    def run_maximize(self) -> None:
        runs = {}
        modified: list[bool] = []
        for maximize in (False, True):
            scenario = _maximize_scenario(maximize)
            history: list[list[np.ndarray]] = []
            try:
                session = _open(self.target, self.dtype, scenario)
                history.append(session.params())
                for step in range(3):
                    _run(session, scenario, history, range(step, step + 1))
                    if maximize:
                        modified.append(bool(session.grads_modified))
            except Exception as exc:
                self._fail(["maximize"], exc)
                return
            runs[maximize] = history
        grads = _maximize_grads()
        # Each step's change in the basis of the gradients so far: the last coefficient carries the
        # sign given to this step's gradient (the earlier ones, the momentum of the earlier steps).
        signs, per_block = [], []
        for step in range(3):
            ratios = []
            for block in range(2):
                basis = np.stack([grads[k][block].reshape(-1) for k in range(step + 1)], axis=1)
                coefficients = {}
                for maximize in (False, True):
                    delta = (runs[maximize][step + 1][block] - runs[maximize][step][block]).reshape(-1)
                    coefficients[maximize] = np.linalg.lstsq(basis, delta, rcond=None)[0][-1]
                if coefficients[False] != 0 and np.isfinite(coefficients[False]):
                    ratios.append(float(coefficients[True] / coefficients[False]))
            per_block.append(ratios)
            signs.append(float(np.mean(ratios)) if ratios else float("nan"))
        # +1: the step ascends (its gradient is negated against the maximize=False run), -1: descends.
        direction = [-s for s in signs]
        measured = {f"direction at step {k + 1}": d for k, d in enumerate(direction)}
        ascends = [k + 1 for k, d in enumerate(direction) if _close(d, 1.0, 10 * self.tolerance)]
        descends = [k + 1 for k, d in enumerate(direction) if _close(d, -1.0, 10 * self.tolerance)]
        if len(ascends) == 3:
            value = "ascends"
        elif len(descends) == 3:
            value = "descends"
        elif len(ascends) + len(descends) == 3:
            value = f"descends at {_steps_text(descends)}, ascends at {_steps_text(ascends)}"
        else:
            value = "wrong magnitude"
        detail = (
            f"each step's gradient enters with direction {_fmt(direction)} (+1 ascends, -1 descends), "
            "measured against a maximize=False run"
        )
        changed = [k + 1 for k, m in enumerate(modified) if m]
        if changed:
            value += ", negates .grad" if len(changed) == 3 else f", negates .grad at {_steps_text(changed)}"
            detail += f"; the caller's .grad tensors were changed in place at {_steps_text(changed)}"
        self.outcomes["maximize"] = Outcome("maximize", value, detail, measured)

    # -- 11: momentum = 0 -----------------------------------------------------------------------------

    def run_momentum0(self) -> None:
        first, second = _two_block_grads(100), _two_block_grads(102)
        scenario = _Scenario(((8, 16), (7,)), (first, second), _hyper(momentum=0.0))
        history, _, exc = self._replay(scenario)
        if len(history) < 3:
            self._fail(["momentum0"], exc)
            return
        memory = []
        for block, (g1, g2) in enumerate(zip(first, second)):
            basis = np.stack([g1.reshape(-1), g2.reshape(-1)], axis=1)
            delta = (history[2][block] - history[1][block]).reshape(-1)
            (alpha, beta), *_ = np.linalg.lstsq(-LR * basis, delta, rcond=None)
            memory.append(abs(alpha) / max(abs(beta), 1e-300))
        if not all(np.all(np.isfinite(p)) for p in history[2]):
            value, detail = "non-finite", "parameters became inf or nan"
        elif max(memory) > 10 * self.tolerance:
            value, detail = "keeps a buffer", f"step 2 still moves along step 1's gradient (ratio {max(memory):.3g})"
        else:
            value, detail = "works", "step 2 moves along its own gradient only"
        self.outcomes["momentum0"] = Outcome("momentum0", value, detail, {"step 1's share in step 2": max(memory)})

    # -- 12: weight decay -----------------------------------------------------------------------------

    def run_decay(self) -> None:
        runs = {}
        for weight_decay in (0.0, DECAY):
            history, _, exc = self._replay(_decay_scenario(weight_decay))
            if len(history) < 3:
                self._fail(["decay"], exc)
                return
            runs[weight_decay] = history
        grads = _decay_scenario(0.0).steps[0]
        tolerance = 10 * self.tolerance
        decay = np.zeros((2, 2))  # [step, block]: the decay as a multiple of lr * wd * theta
        update = np.zeros((2, 2))  # the update's factor against the run without decay
        scale = np.zeros(2)
        residual = 0.0
        for block, g in enumerate(grads):
            plain = [_coefficient(runs[0.0][k + 1][block] - runs[0.0][k][block], g, DECAY_LRS[k]) for k in range(2)]
            scale[block] = (plain[1] - MU * plain[0]) / (1 - MU)
            for k, lr in enumerate(DECAY_LRS):
                theta = runs[DECAY][k][block].reshape(-1)
                delta = (runs[DECAY][k + 1][block] - runs[DECAY][k][block]).reshape(-1)
                basis = np.stack([-lr * DECAY * theta, -lr * g.reshape(-1)], axis=1)
                (d, u), *_ = np.linalg.lstsq(basis, delta, rcond=None)
                fit = basis @ np.array([d, u])
                residual = max(residual, float(np.linalg.norm(delta - fit) / max(np.linalg.norm(delta), 1e-300)))
                decay[k, block] = d
                update[k, block] = u / plain[k] if plain[k] else float("nan")
        measured = {
            f"decay / (lr wd theta), step {k + 1}, block {b}": float(decay[k, b]) for k in range(2) for b in range(2)
        }
        measured.update({f"update factor, step {k + 1}": float(np.mean(update[k])) for k in range(2)})
        measured.update({f"S block {b}": float(scale[b]) for b in range(2)})
        found = []
        if residual > 1e3 * PARALLEL[self.dtype]:
            found.append("coupled: the decay enters the momentum")
        if np.all(np.abs(decay) <= tolerance):
            found.append("not applied")
        elif np.allclose(decay, 1.0, rtol=0, atol=tolerance):
            pass
        elif all(_close(decay[k, b], scale[b], tolerance) for k in range(2) for b in range(2)):
            found.append("scaled by S")
        elif np.allclose(decay[0], 1.0, rtol=0, atol=tolerance) and np.allclose(
            decay[1], DECAY_LRS[0] / DECAY_LRS[1], rtol=0, atol=tolerance
        ):
            found.append("first lr, not the step's")
        elif not found:
            found.append("wrong magnitude")
        after = [1 - lr * DECAY for lr in DECAY_LRS]
        if all(_close(float(np.mean(update[k])), after[k], tolerance) for k in range(2)) and "not applied" not in found:
            found.append("after the update")
        elif not np.allclose(update, 1.0, rtol=0, atol=tolerance) and not found:
            found.append("changes the update")
        value = ", ".join(found) if found else "decoupled"
        detail = (
            f"per step the decay is lr * wd * theta times {_fmt(decay.reshape(-1))} (steps x blocks; "
            f"decoupled: 1, the blocks' S: {_fmt(scale)}) and the update is multiplied by "
            f"{_fmt(update.mean(axis=1))} (decay before it: 1; after it: {_fmt(after)}); lr {DECAY_LRS}, wd {DECAY}"
        )
        self.outcomes["decay"] = Outcome("decay", value, detail, measured)

    # -- 13: one M across parameter groups ------------------------------------------------------------

    def run_groups(self) -> None:
        if not self.target.has_groups:
            self.outcomes["groups"] = Outcome(
                "groups", "n/a", f"{self.target.kind} optimizers have no parameter groups"
            )
            return
        scenario = _groups_scenario()
        history, _, exc = self._replay(scenario)
        if len(history) < 3:
            self._fail(["groups"], exc)
            return
        grads = scenario.steps[0]
        scales = _measure_two_steps(history[0], history[1], history[2], grads).scale
        knobs = self.candidates()[0]
        raw = _raw_gsnrs(grads, knobs)
        divisors = raw / scales  # the M each block's G was divided by
        per_group = [divisors[list(idx)] for idx in scenario.group_indices()]
        measured = {f"M group {g + 1}": float(np.mean(d)) for g, d in enumerate(per_group)}
        measured["max G over all groups"] = float(np.max(raw))
        within = all(np.allclose(d, d[0], rtol=10 * self.tolerance, atol=0) for d in per_group)
        if np.allclose(divisors, 1.0, rtol=0, atol=10 * self.tolerance):
            value = "no M (S = G)"
        elif np.allclose(divisors, divisors[0], rtol=10 * self.tolerance, atol=0):
            value = "one M across groups"
        elif within:
            value = "one M per group"
        else:
            value = "M differs per block"
        detail = (
            f"G divided by {_fmt(divisors)} (blocks of group 1, then group 2); the largest G of all groups is "
            f"{np.max(raw):.6g}, of each group {_fmt([float(np.max(raw[list(i)])) for i in scenario.group_indices()])}"
        )
        self.outcomes["groups"] = Outcome("groups", value, detail, measured)

    # -- 14: statistics of low-precision gradients ---------------------------------------------------

    def run_lowprec(self) -> None:
        scenario = _lowprec_scenario()
        if "bfloat16" not in self.target.dtypes():
            self.outcomes["lowprec"] = Outcome("lowprec", "n/a", f"{self.target.name} cannot hold bfloat16 parameters")
            return
        history, _, exc = self._replay(scenario)
        if len(history) < 2:
            self._fail(["lowprec"], exc)
            return
        c = self.buffer_c if self.buffer_c is not None and np.isfinite(self.buffer_c) else 1.0
        grads = scenario.steps[0]
        scales = np.array([_coefficient(history[1][b] - history[0][b], g) / c for b, g in enumerate(grads)])
        reference = self.predicted("lowprec", self.candidates()[0])
        expected = np.array([_coefficient(reference[1][b] - reference[0][b], g) / c for b, g in enumerate(grads)])
        deviation = np.abs(scales / expected - 1)
        worst = float(np.max(deviation)) if np.all(np.isfinite(deviation)) else float("inf")
        # What a float32 statistic gives when the port rounds the scalar lr * S to bfloat16 (torch's
        # add_(m, alpha=-lr * S) on a bfloat16 tensor does): an update, not a statistic, in bfloat16.
        rounded = np.array([round_to_dtype(np.array([LR * s * c]), "bfloat16")[0] / (LR * c) for s in expected])
        on_grid = bool(np.all(np.abs(scales / rounded - 1) <= LOWPREC_GRID))
        measured = {"largest relative deviation of S": worst}
        if worst <= LOWPREC_NOISE:
            value = "float32 statistics"
        elif on_grid:
            value = "float32 statistics, lr * S rounded to bf16"
        elif worst <= LOWPREC_WRONG:
            value = "bf16 statistics"
        else:
            value = "wrong scale in bf16"
        detail = (
            f"S of the bfloat16 blocks {_fmt(scales)}; the float32 statistic of the same gradients gives "
            f"{_fmt(expected)}: relative deviation {_fmt(deviation)} (bfloat16 rounding unit {2.0**-8:.2g}; "
            f"measurement noise below {LOWPREC_NOISE:g})"
        )
        if value.startswith("float32 statistics,"):
            detail += f"; lr * S rounded to bfloat16 gives {_fmt(rounded)}"
        self.outcomes["lowprec"] = Outcome("lowprec", value, detail, measured)

    # -- 15: Keras model.fit compiled against eager -------------------------------------------------

    def run_fit(self) -> None:
        hyper = _hyper(lr=0.01)
        try:
            initial, eager = self.target.fit(hyper, "eager", 3)
            _, compiled = self.target.fit(hyper, "compiled", 3)
        except Exception as exc:
            self._fail(["fit"], exc)
            return
        # Normwise against the eager weights, at the float32 trajectory tolerance (TOLERANCES): the
        # compiled step may fuse or reorder the float32 arithmetic, nothing more.
        from ._tolerances import TOLERANCES

        rtol = TOLERANCES["float32"].trajectory
        moved_eager = max(float(np.max(np.abs(e - w))) for e, w in zip(eager, initial))
        moved = max(float(np.max(np.abs(c - w))) for c, w in zip(compiled, initial))
        scale = max(float(np.max(np.abs(e))) for e in eager)
        difference = max(float(np.max(np.abs(c - e))) for c, e in zip(compiled, eager))
        measured = {
            "largest change (eager)": moved_eager,
            "largest change (compiled)": moved,
            "compiled - eager, relative": difference / scale if scale else float("inf"),
        }
        if moved_eager == 0:
            value, detail = "does not train eagerly", "run_eagerly=True leaves the weights unchanged"
        elif not np.isfinite(difference):
            value, detail = "non-finite", "the compiled fit gave inf or nan weights"
        elif moved == 0:
            value, detail = "never moves compiled", f"eager training moves the weights by up to {moved_eager:.3g}"
        elif difference <= rtol * scale:
            value, detail = "same as eager", f"compiled and eager weights agree within {difference / scale:.2g}"
        else:
            value = "differs from eager"
            detail = (
                f"compiled weights differ from eager ones by {difference:.3g} ({difference / scale:.3g} relative); "
                f"eager moves them by {moved_eager:.3g}"
            )
        self.outcomes["fit"] = Outcome("fit", value, detail, measured)

    # -- 16: closure calls on step 1 ------------------------------------------------------------------

    def run_closure(self) -> None:
        grads = _two_block_grads(110)
        scenario = _Scenario(((8, 16), (7,)), (grads,), _hyper())
        try:
            session = _open(self.target, self.dtype, scenario)
            try:
                calls = session.step_with_closure(list(grads), [scenario.hyper])
            except (NotExpressible, TargetTimeout, TargetHung):
                raise
            except Exception as exc:
                raise _StepFailed(1, exc) from exc
        except Exception as exc:
            self._fail(["closure"], exc)
            return
        value = f"{calls} call{'s' if calls != 1 else ''}"
        self.outcomes["closure"] = Outcome(
            "closure", value, f"step(closure) called the closure {calls} time(s)", {"calls": float(calls)}
        )


# The order the runs happen in: the g-SNR run first (it measures the knobs the others predict with),
# the scalar and zero probes next (they pin the degenerate and zero_gradient knobs).
RUN_ORDER: tuple[str, ...] = tuple(dict.fromkeys(["run_gsnr", "run_scalar", "run_zero", *(p.run for p in PROBES)]))


def run_probes(target: Target, dtype: str | None = None) -> ProbeReport:
    """Runs every probe of :data:`PROBES` on ``target``.

    Args:
        target: from :func:`sai_conformance._targets.resolve_target` (or a reference target).
        dtype: parameter dtype; default the most precise one the target holds (the bfloat16
            probe always runs in bfloat16).

    Returns:
        The outcomes and the knob combinations consistent with the measurements.

    Examples:
        >>> from sai_conformance._targets import reference_target
        >>> report = run_probes(reference_target("sgd-sai", std_correction=0))
        >>> report.outcomes["gsnr"].value, report.outcomes["scalar"].value
        ('std_correction=0', 'finite: G = sqrt(n)')
        >>> report.knob_values()["std_correction"]
        [0]
    """
    dtype = dtype or target.probe_dtype()
    if dtype not in TOLERANCE:
        raise ValueError(f"Invalid dtype: {dtype!r} for probes (expected one of {sorted(TOLERANCE)})")
    prober = _Prober(target, dtype)
    for run in RUN_ORDER:
        getattr(prober, run)()
    missing = [p.key for p in PROBES if p.key not in prober.outcomes]
    if missing:  # pragma: no cover - every run records each of its probes
        raise RuntimeError(f"probes {missing} recorded no outcome")
    outcomes = {p.key: prober.outcomes[p.key] for p in PROBES}
    return ProbeReport(target.name, dtype, outcomes, prober.consistent())


@functools.cache
def preset_outcomes(preset: str) -> dict[str, Outcome]:
    """What the reference under ``preset`` answers on every probe (what a faithful port answers).

    Examples:
        >>> preset_outcomes("pytorch-optimizer-4")["buffer"].value
        '(1-mu) g'
    """
    if preset not in PRESETS:
        raise ValueError(f"Invalid preset: {preset!r} (expected one of {sorted(PRESETS)})")
    from ._targets import reference_target

    return run_probes(reference_target(preset)).outcomes
