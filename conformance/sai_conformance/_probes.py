"""Behaviour probes: small scenarios whose parameter updates show how a port does SGD-SaI.

Every probe starts from zero parameters with ``weight_decay=0``, so a step's parameter change is
``-lr * S * m`` and nothing else. Two steps with the same gradient ``g`` separate the block's
scale ``S`` from how its first momentum buffer starts: with ``m1 = c g``,

.. math::

    \\Delta_1 = -\\eta S c\\, g, \\qquad \\Delta_2 = -\\eta S (\\mu c + 1 - \\mu)\\, g
    \\quad\\Rightarrow\\quad S = \\frac{a_2 - \\mu a_1}{1 - \\mu}, \\quad c = a_1 / S

where ``a_k = -<Delta_k, g> / (eta <g, g>)``. The measured scales are then compared with what the
reference predicts for every combination of knob values (:data:`sai_core.KNOB_VALUES`), which
names the knobs a port sets differently. Gradients are float32-representable, so float32 ports
see exactly the same inputs as float64 ones.

A probe that the target's framework cannot express is ``n/a``; a target that raises is reported
(``error: KeyError``), never fatal.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sai_core import DEFAULT_PRESET, KNOB_VALUES, PRESETS, ReferenceSGDSaI, gsnr, resolve_config

from ._cases import round_to_dtype
from ._targets import NotExpressible, Session, Target, describe_error

__all__ = ["PROBES", "Outcome", "Probe", "ProbeReport", "run_probes"]

LR, MU, EPS = 0.1, 0.9, 1e-8
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


@dataclasses.dataclass(frozen=True)
class Probe:
    """One behaviour probe (SPEC.md "Conformance").

    Attributes:
        key: short identifier (JSON, tests).
        title: column header of the report card.
        question: what it measures.
        clean: the value the contract (``docs/spec.md``) requires.
    """

    key: str
    title: str
    question: str
    clean: str


PROBES: tuple[Probe, ...] = (
    Probe("buffer", "first buffer", "the momentum buffer after a block's first gradient: g or (1 - mu) g", "g"),
    Probe(
        "gsnr",
        "g-SNR per block",
        "the scale S of four blocks ((8, 16), (16, 1), (7,), (1, 16)) against every knob value",
        DEFAULT_PRESET,
    ),
    Probe("constant", "g-SNR constant", "whether S stays fixed when step 3 brings a gradient with another g-SNR",
          "constant"),
    Probe("resume", "save/load", "S after saving and loading the optimizer state, then a gradient with another g-SNR",
          "kept"),
    Probe("late", "late block", "a block whose first gradient comes at step 2", "works"),
    Probe("zero", "zero first grad", "a block whose first gradient is all zeros, then normal gradients", "trains"),
    Probe("scalar", "1-element block", "the g-SNR of a (1,) and a 0-d block", "finite: G = sqrt(n)"),
    Probe("maximize", "maximize", "the direction of step 1 with maximize=True", "ascends"),
    Probe("momentum0", "momentum=0", "two steps with momentum=0", "works"),
    Probe("closure", "closure calls", "how often step(closure) calls the closure on step 1", "1 call"),
)
PROBE_BY_KEY: dict[str, Probe] = {p.key: p for p in PROBES}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one probe measured.

    Attributes:
        probe: the probe's key.
        value: a short categorical answer (equal answers mean equal behaviour).
        detail: the numbers or the error behind it.
    """

    probe: str
    value: str
    detail: str = ""

    @property
    def applicable(self) -> bool:
        return self.value != "n/a"

    @property
    def clean(self) -> bool:
        """Whether the answer is the contract's (an ``n/a`` probe is not held against a target)."""
        return not self.applicable or self.value == PROBE_BY_KEY[self.probe].clean


@dataclasses.dataclass
class ProbeReport:
    """Every probe's outcome and the knob combinations the measurements are consistent with.

    Attributes:
        target: the target's name.
        dtype: the dtype the probes ran in.
        outcomes: probe key -> outcome, in :data:`PROBES` order.
        consistent: knob combinations that reproduce every measured scale and buffer, or
            ``None`` when the scales could not be measured.
    """

    target: str
    dtype: str
    outcomes: dict[str, Outcome]
    consistent: list[dict[str, Any]] | None

    def knob_values(self) -> dict[str, list[Any]] | None:
        """For each knob, the values found in a consistent combination (``None``: unknown)."""
        if not self.consistent:
            return None
        return {k: [v for v in KNOB_VALUES[k] if any(c[k] == v for c in self.consistent)] for k in KNOB_VALUES}

    def knob_distance(self, knobs: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """Fewest knobs a consistent combination changes from ``knobs``, and that combination."""
        if not self.consistent:
            return None
        best = min(self.consistent, key=lambda c: sum(c[k] != knobs[k] for k in KNOB_VALUES))
        return sum(best[k] != knobs[k] for k in KNOB_VALUES), best


# -- inputs ----------------------------------------------------------------------------------


def _gradient(seed: int, shape: tuple[int, ...], offset: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return round_to_dtype(offset + rng.standard_normal(shape), "float32")


def _hyper(*, momentum: float = MU, maximize: bool = False) -> dict[str, Any]:
    return {"lr": LR, "momentum": momentum, "weight_decay": 0.0, "eps": EPS, "maximize": maximize}


@dataclasses.dataclass(frozen=True)
class _Scenario:
    shapes: tuple[tuple[int, ...], ...]
    steps: tuple[tuple[np.ndarray | None, ...], ...]
    hyper: dict[str, Any]


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
    a = [_gradient(50 + i, (8, 16), 0.5) for i in range(3)]
    b = _gradient(60, (7,), 0.3)
    return _Scenario(((8, 16), (7,)), ((a[0], None), (a[1], b), (a[2], b)), _hyper())


def _zero_scenario() -> _Scenario:
    a = [_gradient(70 + i, (8, 16), 0.5) for i in range(3)]
    b = _gradient(80, (4, 4), 0.3)
    return _Scenario(((8, 16), (4, 4)), ((a[0], np.zeros((4, 4))), (a[1], b), (a[2], b)), _hyper())


def _two_block_grads(seed: int) -> tuple[np.ndarray, np.ndarray]:
    return _gradient(seed, (8, 16), 0.5), _gradient(seed + 1, (7,), 0.3)


# -- running a scenario -----------------------------------------------------------------------


class _StepFailed(Exception):
    def __init__(self, step: int, error: BaseException) -> None:
        super().__init__(f"step {step} raised {describe_error(error)}")
        self.step, self.error = step, error


def _open(target: Target, dtype: str, scenario: _Scenario) -> Session:
    try:
        groups = [(range(len(scenario.shapes)), scenario.hyper)]
        return target.open([np.zeros(s) for s in scenario.shapes], groups, dtype)
    except NotExpressible:
        raise
    except Exception as exc:
        raise _StepFailed(0, exc) from exc


def _run(session: Session, steps: Sequence[Sequence[np.ndarray | None]], hyper: dict[str, Any],
         history: list[list[np.ndarray]], first_step: int = 1) -> None:
    """Steps ``session`` and appends the parameters after each step to ``history``."""
    for offset, grads in enumerate(steps):
        try:
            session.step(list(grads), [hyper])
        except NotExpressible:
            raise
        except Exception as exc:
            raise _StepFailed(first_step + offset, exc) from exc
        history.append(session.params())


def _coefficient(delta: np.ndarray, direction: np.ndarray) -> float:
    return -float(np.vdot(delta, direction)) / (LR * float(np.vdot(direction, direction)))


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


def _measure_two_steps(before: Sequence[np.ndarray], after1: Sequence[np.ndarray],
                       after2: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> _ScaleMeasurement:
    scales, buffers, residual = [], [], 0.0
    for p0, p1, p2, g in zip(before, after1, after2, grads):
        d1, d2 = p1 - p0, p2 - p1
        a1, a2 = _coefficient(d1, g), _coefficient(d2, g)
        residual = max(residual, _off_direction(d1, g), _off_direction(d2, g))
        scale = (a2 - MU * a1) / (1 - MU)
        scales.append(scale)
        buffers.append(a1 / scale if scale != 0 and np.isfinite(scale) else float("nan"))
    return _ScaleMeasurement(np.array(scales), np.array(buffers), residual)


def _agrees(measured: Sequence[float], predicted: Sequence[float | None], tolerance: float) -> bool:
    for m, p in zip(measured, predicted):
        if p is None or not np.isfinite(m) or abs(m - p) > tolerance * abs(p) + 1e-300:
            return False
    return True


# -- what the reference predicts ----------------------------------------------------------------

ALL_KNOBS: tuple[dict[str, Any], ...] = tuple(
    dict(zip(KNOB_VALUES, values)) for values in itertools.product(*KNOB_VALUES.values())
)


def _knob_key(knobs: dict[str, Any]) -> tuple:
    return tuple(knobs[k] for k in KNOB_VALUES)


@functools.lru_cache(maxsize=None)
def _predicted(scenario_name: str, knob_key: tuple) -> tuple[float | None, ...]:
    """The reference's scales after running a scenario's steps under one knob combination."""
    scenario = _SCENARIOS[scenario_name]()
    if isinstance(scenario, tuple):
        scenario = scenario[0]
    knobs = dict(zip(KNOB_VALUES, knob_key))
    optimizer = ReferenceSGDSaI([np.zeros(s) for s in scenario.shapes], **scenario.hyper, **knobs)
    for grads in scenario.steps:
        optimizer.step(list(grads))
    return tuple(None if s is None else float(s) for s in optimizer.scale)


@functools.lru_cache(maxsize=None)
def _predicted_fresh(grads_name: str, knob_key: tuple) -> tuple[float, ...]:
    """The scales a fresh reference gives the gradients ``grads_name`` at its first step."""
    grads = {"gsnr-step3": _gsnr_scenario()[1], "resume-after": _resume_scenario()[1]}[grads_name]
    knobs = dict(zip(KNOB_VALUES, knob_key))
    optimizer = ReferenceSGDSaI([np.zeros(g.shape) for g in grads], **_hyper(), **knobs)
    optimizer.step(list(grads))
    return tuple(float(s) for s in optimizer.scale)


_SCENARIOS: dict[str, Callable[[], Any]] = {
    "gsnr": _gsnr_scenario,
    "scalar": _scalar_scenario,
    "late": _late_scenario,
}

_SCALE_KNOBS = ("snr", "normalize", "std_correction", "vector_rule")
# The contract's knobs: those of the default preset.
_CONTRACT = resolve_config(DEFAULT_PRESET).knobs()


def _describe_knobs(knobs: dict[str, Any], names: Sequence[str] = tuple(KNOB_VALUES)) -> str:
    changed = [f"{k}={knobs[k]}" for k in names if knobs[k] != _CONTRACT[k]]
    return ", ".join(changed) if changed else DEFAULT_PRESET


def _fmt(values: Sequence[float | None]) -> str:
    return "[" + ", ".join("-" if v is None else f"{v:.6g}" for v in values) + "]"


# -- the probes ---------------------------------------------------------------------------------


def _error(key: str, exc: BaseException) -> Outcome:
    if isinstance(exc, NotExpressible):
        return Outcome(key, "n/a", str(exc))
    if isinstance(exc, _StepFailed):
        return Outcome(key, f"error: {type(exc.error).__name__}", str(exc))
    return Outcome(key, f"error: {type(exc).__name__}", describe_error(exc))


class _Prober:
    """Runs every probe on one target and keeps the measurements the knob inference needs."""

    def __init__(self, target: Target, dtype: str) -> None:
        self.target, self.dtype = target, dtype
        self.tolerance = TOLERANCE[dtype]
        self.outcomes: dict[str, Outcome] = {}
        self.gsnr_consistent: list[dict[str, Any]] | None = None
        self.scalar_consistent: list[dict[str, Any]] | None = None
        self.momentum_init: str | None = None

    def _replay(self, key: str, scenario: _Scenario) -> list[list[np.ndarray]] | None:
        """Parameters before and after every step of ``scenario``; ``None`` (outcome recorded) on error."""
        history: list[list[np.ndarray]] = []
        try:
            session = _open(self.target, self.dtype, scenario)
            history.append(session.params())
            _run(session, scenario.steps, scenario.hyper, history)
        except Exception as exc:
            self.outcomes[key] = _error(key, exc)
            return None
        return history

    def consistent(self) -> list[dict[str, Any]] | None:
        if self.gsnr_consistent is None:
            return None
        combos = [c for c in self.gsnr_consistent if self.momentum_init in (None, c["momentum_init"])]
        if self.scalar_consistent is not None:
            keys = {_knob_key(c) for c in self.scalar_consistent}
            combos = [c for c in combos if _knob_key(c) in keys]
        return combos

    # 1-3: buffer, g-SNR per block, g-SNR constant across steps
    def probe_gsnr(self) -> None:
        scenario, third = _gsnr_scenario()
        history: list[list[np.ndarray]] = []
        try:
            session = _open(self.target, self.dtype, scenario)
            history.append(session.params())
            _run(session, scenario.steps[:2], scenario.hyper, history)
        except Exception as exc:
            for key in ("buffer", "gsnr", "constant"):
                self.outcomes[key] = _error(key, exc)
            return
        first = scenario.steps[0]
        measured = _measure_two_steps(history[0], history[1], history[2], first)
        if measured.off_direction > PARALLEL[self.dtype] or not np.all(np.isfinite(measured.scale)):
            detail = (
                f"the update is not lr * S * m (relative residual {measured.off_direction:.3g}); "
                f"scales {_fmt(measured.scale)}"
            )
            for key in ("buffer", "gsnr", "constant"):
                self.outcomes[key] = Outcome(key, "not SGD-like", detail)
            return
        # buffer
        c = measured.buffer
        if np.allclose(c, 1.0, rtol=0, atol=self.tolerance * 10):
            self.momentum_init, value = "grad", "g"
        elif np.allclose(c, 1 - MU, rtol=0, atol=self.tolerance * 10):
            self.momentum_init, value = "zeros", "(1-mu) g"
        else:
            value = f"{float(np.median(c)):.3g} g"
        self.outcomes["buffer"] = Outcome("buffer", value, f"m1 = c * g with c = {_fmt(c)} per block (mu = {MU})")
        # g-SNR per block
        self.gsnr_consistent = [
            k for k in ALL_KNOBS if _agrees(measured.scale, _predicted("gsnr", _knob_key(k)), self.tolerance)
        ]
        contract = _predicted("gsnr", _knob_key(_CONTRACT))
        if self.gsnr_consistent:
            best = min(self.gsnr_consistent, key=lambda k: sum(k[n] != _CONTRACT[n] for n in _SCALE_KNOBS))
            value = _describe_knobs(best, _SCALE_KNOBS)
            predicted = _predicted("gsnr", _knob_key(best))
            detail = f"S measured {_fmt(measured.scale)}, reproduced by {value}; {DEFAULT_PRESET} gives {_fmt(contract)}"
        else:
            value = "no knob setting"
            detail = (
                f"S measured {_fmt(measured.scale)}; {DEFAULT_PRESET} gives {_fmt(contract)}; "
                "no knob combination reproduces it"
            )
        self.outcomes["gsnr"] = Outcome("gsnr", value, detail)
        # constant across steps
        try:
            _run(session, [third], scenario.hyper, history, first_step=3)
        except Exception as exc:
            self.outcomes["constant"] = _error("constant", exc)
            return
        c_used = np.where(np.isfinite(c), c, 1.0)
        buffers = [MU * (MU * ci + 1 - MU) * g + (1 - MU) * g3 for ci, g, g3 in zip(c_used, first, third)]
        later = np.array([_coefficient(p3 - p2, m) for p2, p3, m in zip(history[2], history[3], buffers)])
        if _agrees(later, measured.scale, self.tolerance):
            value = "constant"
        elif self.gsnr_consistent and any(
            _agrees(later, _predicted_fresh("gsnr-step3", _knob_key(k)), self.tolerance) for k in self.gsnr_consistent
        ):
            value = "recomputed"
        else:
            value = "changes"
        detail = f"S at steps 1-2 {_fmt(measured.scale)}, at step 3 {_fmt(later)}"
        self.outcomes["constant"] = Outcome("constant", value, detail)

    # 4: save/load
    def probe_resume(self) -> None:
        scenario, after = _resume_scenario()
        history: list[list[np.ndarray]] = []
        try:
            session = _open(self.target, self.dtype, scenario)
            history.append(session.params())
            _run(session, scenario.steps, scenario.hyper, history)
            try:
                saved = session.save()
                session = session.resume(saved, [scenario.hyper])
            except NotExpressible:
                raise
            except Exception as exc:
                raise _StepFailed(2, exc) from exc
            history[-1] = session.params()
            _run(session, [after], scenario.hyper, history, first_step=3)
        except Exception as exc:
            self.outcomes["resume"] = _error("resume", exc)
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
        recomputed = self.gsnr_consistent is not None and any(
            _agrees(later, _predicted_fresh("resume-after", _knob_key(k)), self.tolerance) for k in self.gsnr_consistent
        )
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

    # 5: a block whose first gradient comes late
    def probe_late(self) -> None:
        scenario = _late_scenario()
        history = self._replay("late", scenario)
        if history is None:
            return
        if np.any(history[1][1] != history[0][1]):
            detail = "the block changed at step 1, before its first gradient"
            self.outcomes["late"] = Outcome("late", "moves without a gradient", detail)
            return
        g = scenario.steps[1][1]
        measured = _measure_two_steps([history[1][1]], [history[2][1]], [history[3][1]], [g])
        scale = float(measured.scale[0])
        if not np.isfinite(scale):
            value, detail = "non-finite", f"S = {scale}"
        elif scale == 0.0:
            value, detail = "never trains", "the block does not move after its first gradient (S = 0)"
        elif self.gsnr_consistent and not any(
            _agrees([scale], [_predicted("late", _knob_key(k))[1]], self.tolerance) for k in self.gsnr_consistent
        ):
            expected = _predicted("late", _knob_key(self.gsnr_consistent[0]))[1]
            value = "wrong scale"
            detail = f"S = {scale:.6g}; the knobs measured elsewhere give {expected:.6g} (M frozen at step 1)"
        else:
            value, detail = "works", f"S = {scale:.6g} from its first gradient at step 2"
        self.outcomes["late"] = Outcome("late", value, detail)

    # 6: an all-zero first gradient
    def probe_zero(self) -> None:
        scenario = _zero_scenario()
        history = self._replay("zero", scenario)
        if history is None:
            return
        moved = [history[k + 1][1] - history[k][1] for k in (1, 2)]
        if not all(np.all(np.isfinite(d)) for d in moved):
            value, detail = "non-finite", "the block's parameters became inf or nan"
        elif all(not np.any(d) for d in moved):
            value, detail = "frozen", "after a zero first gradient the block never moves again (S = 0)"
        else:
            value = "trains"
            detail = f"moves by {float(np.linalg.norm(moved[0])):.3g} at step 2"
        self.outcomes["zero"] = Outcome("zero", value, detail)

    # 7: 1-element blocks (and the constant gradient that pins the degenerate knob)
    def probe_scalar(self) -> None:
        scenario = _scalar_scenario()
        history = self._replay("scalar", scenario)
        if history is None:
            return
        grads = scenario.steps[0]
        measured = _measure_two_steps(history[0], history[1], history[2], grads)
        scales = measured.scale
        self.scalar_consistent = [
            k for k in ALL_KNOBS if _agrees(scales, _predicted("scalar", _knob_key(k)), self.tolerance)
        ]
        # The (8, 16) block's g-SNR under the statistic measured by the g-SNR probe (the contract's if unknown).
        knobs = self.gsnr_consistent[0] if self.gsnr_consistent else _CONTRACT
        reference_gsnr = float(gsnr(grads[0], eps=EPS, **knobs))
        labels = []
        for block in (1, 2):
            if not np.isfinite(scales[block]) or not np.isfinite(scales[0]) or scales[0] == 0:
                labels.append(("non-finite", f"S = {scales[block]}"))
                continue
            # S_block / S_matrix = G_block / G_matrix, with or without max-normalisation.
            estimate = scales[block] / scales[0] * reference_gsnr
            norm = float(np.abs(grads[block]).sum())
            candidates = {"finite: G = sqrt(n)": 1.0, "finite: G = ||g||": norm, "explodes: G = ||g||/eps": norm / EPS}
            # 2 %: without a measured statistic the matrix block's g-SNR may be off by the biased
            # std (0.4 %); the candidates differ by 2x or more.
            label = next((name for name, value in candidates.items() if abs(estimate - value) <= 0.02 * value), None)
            if label is None:
                label = "explodes" if estimate > EXPLOSION else "finite: other G"
            labels.append((label, f"{'(1,)' if block == 1 else '0-d'} block: G = {estimate:.6g} (|g| = {norm:g})"))
        values = sorted({label for label, _ in labels})
        value = values[0] if len(values) == 1 else "; ".join(f"{s}: {v}" for s, (v, _) in zip(("(1,)", "0-d"), labels))
        detail = "; ".join(d for _, d in labels) + f"; S measured {_fmt(scales)}"
        self.outcomes["scalar"] = Outcome("scalar", value, detail)

    # 8: maximize on step 1
    def probe_maximize(self) -> None:
        grads = _two_block_grads(90)
        scenario = _Scenario(((8, 16), (7,)), (grads,), _hyper(maximize=True))
        history: list[list[np.ndarray]] = []
        try:
            session = _open(self.target, self.dtype, scenario)  # kept: grads_modified is read below
            history.append(session.params())
            _run(session, scenario.steps, scenario.hyper, history)
        except Exception as exc:
            self.outcomes["maximize"] = _error("maximize", exc)
            return
        signs = {int(np.sign(np.vdot(p1 - p0, g))) for p0, p1, g in zip(history[0], history[1], grads)}
        directions = {frozenset({1}): "ascends", frozenset({-1}): "descends", frozenset({0}): "does not move"}
        value = directions.get(frozenset(signs), "mixed")
        detail = "sign of <step, g> per block"
        if session.grads_modified:
            value += ", negates .grad"
            detail += "; the caller's .grad tensors were changed in place"
        self.outcomes["maximize"] = Outcome("maximize", value, detail)

    # 9: momentum = 0
    def probe_momentum0(self) -> None:
        first, second = _two_block_grads(100), _two_block_grads(102)
        scenario = _Scenario(((8, 16), (7,)), (first, second), _hyper(momentum=0.0))
        history = self._replay("momentum0", scenario)
        if history is None:
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
        self.outcomes["momentum0"] = Outcome("momentum0", value, detail)

    # 10: closure calls on step 1
    def probe_closure(self) -> None:
        grads = _two_block_grads(110)
        scenario = _Scenario(((8, 16), (7,)), (grads,), _hyper())
        try:
            session = _open(self.target, self.dtype, scenario)
            try:
                calls = session.step_with_closure(list(grads), [scenario.hyper])
            except NotExpressible:
                raise
            except Exception as exc:
                raise _StepFailed(1, exc) from exc
        except Exception as exc:
            self.outcomes["closure"] = _error("closure", exc)
            return
        value = f"{calls} call{'s' if calls != 1 else ''}"
        self.outcomes["closure"] = Outcome("closure", value, f"step(closure) called the closure {calls} time(s)")


def run_probes(target: Target, dtype: str | None = None) -> ProbeReport:
    """Runs every probe of :data:`PROBES` on ``target``.

    Args:
        target: from :func:`sai_conformance._targets.resolve_target` (or a reference target).
        dtype: parameter dtype; default the most precise one the target holds.

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
    prober.probe_gsnr()
    prober.probe_resume()
    prober.probe_late()
    prober.probe_zero()
    prober.probe_scalar()
    prober.probe_maximize()
    prober.probe_momentum0()
    prober.probe_closure()
    outcomes = {p.key: prober.outcomes[p.key] for p in PROBES}
    return ProbeReport(target.name, dtype, outcomes, prober.consistent())


@functools.lru_cache(maxsize=None)
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
