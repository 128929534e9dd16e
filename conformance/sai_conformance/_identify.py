"""``identify``: which preset a port implements, and where it departs from it and from the contract.

Two kinds of evidence, both measured on the target:

1. every preset's golden cases, replayed from the initial parameters (a preset *matches exactly*
   when no case that ran disagrees; a case where the target raised is reported, not counted as a
   numeric disagreement, because the presets describe the math, not a port's crashes);
2. the behaviour probes (:mod:`sai_conformance._probes`), which also measure the knob values.

Without an exact match the closest preset is the one whose knobs are fewest changes away from
what the probes measured (ties: most golden cases passed).

The verdict then lists every *deviation* from that preset, each in words with what was measured:
a probe whose answer differs from the one the reference gives under the preset (a knob set
differently shows on the probe that measures it), a golden case of the preset that failed, raised
or timed out, and a call that timed out. A target *agrees* (``identify`` exits 0) when it matches
its preset exactly and has no deviation.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping
from typing import Any

from sai_core import KNOB_VALUES, PRESETS, resolve_config

from ._cases import SCENARIOS
from ._golden import Case, load_cases
from ._probes import PROBE_BY_KEY, Outcome, preset_outcomes, run_probes
from ._targets import Target, replay_case, resolve_target

__all__ = ["Identification", "PresetScore", "identify", "identify_cases"]


@dataclasses.dataclass
class PresetScore:
    """How a target fared on one preset's golden cases."""

    preset: str
    passed: int = 0
    failed: int = 0
    errors: int = 0
    not_applicable: int = 0
    timeouts: int = 0  # timed out, or not run because the target had timed out
    notes: list[str] = dataclasses.field(default_factory=list)  # one line per failure or error

    @property
    def exact(self) -> bool:
        """No case that ran disagrees, and at least one agreed."""
        return self.failed == 0 and self.passed > 0


@dataclasses.dataclass
class Identification:
    """The verdict of :func:`identify` (plain data: it travels as JSON between processes).

    Attributes:
        target: the target's name (``module:attr``).
        kind: ``"torch"``, ``"optax"``, ``"keras"`` or ``"reference"``.
        description: its kind and version.
        dtype: the dtype of the golden cases and probes.
        scores: preset -> golden-case counts, in :data:`sai_core.PRESETS` order.
        outcomes: probe key -> outcome, in :data:`PROBES` order.
        knobs: knob -> values consistent with the probes (``None``: not measurable).
        preset: the matching (or closest) preset; ``None`` when nothing could be measured.
        exact: whether ``preset`` matches exactly.
        knob_differences: knob -> (measured value, the preset's value) for the knobs that differ.
        beyond_preset: probe key -> (target's answer, the preset's answer) where they differ.
        seconds: wall time of the identification.
        deviations: every way the target departs from ``preset``, one sentence each with the
            measured magnitude (empty: it agrees).
        timeout: the seconds one call into the target was allowed.
        hung: the call that timed out (after it the target was not called again), or ``None``.
    """

    target: str
    kind: str
    description: str
    dtype: str
    scores: dict[str, PresetScore]
    outcomes: dict[str, Outcome]
    knobs: dict[str, list[Any]] | None
    preset: str | None
    exact: bool
    knob_differences: dict[str, tuple[Any, Any]]
    beyond_preset: dict[str, tuple[str, str]]
    seconds: float
    deviations: list[str] = dataclasses.field(default_factory=list)
    timeout: float = 0.0
    hung: str | None = None

    @property
    def agrees(self) -> bool:
        """An exact preset and no deviation from it (``identify`` exits 0)."""
        return self.preset is not None and self.exact and not self.deviations

    @property
    def unclean(self) -> list[Outcome]:
        """Probes whose answer is not the contract's (``docs/spec.md``)."""
        return [o for o in self.outcomes.values() if not o.clean]

    def summary(self) -> str:
        """One line: the preset and how it matches.

        Examples:
            >>> from sai_conformance._targets import reference_target
            >>> identify(reference_target("paper", std_correction=0)).summary()
            'closest preset: paper (differs in std_correction=0, paper has 1)'
        """
        if self.preset is None:
            if self.hung:
                return f"no preset: the target timed out ({self.hung})"
            return "no preset: nothing could be measured"
        if self.exact:
            score = self.scores[self.preset]
            ran = score.passed + score.failed + score.errors + score.timeouts
            text = f"matches preset {self.preset} exactly ({score.passed}/{ran} golden cases"
            extra = [f"{score.errors} raised"] * bool(score.errors) + [f"{score.timeouts} timed out"] * bool(
                score.timeouts
            )
            return text + (f"; {', '.join(extra)})" if extra else ")")
        text = f"closest preset: {self.preset}"
        if self.knob_differences:
            changes = ", ".join(f"{k}={v[0]}, {self.preset} has {v[1]}" for k, v in self.knob_differences.items())
            text += f" (differs in {changes})"
        return text

    def to_json(self) -> dict[str, Any]:
        document = dataclasses.asdict(self)
        document["outcomes"] = {k: dataclasses.asdict(o) for k, o in self.outcomes.items()}
        return document

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Identification:
        data = dict(document)
        data["scores"] = {k: PresetScore(**v) for k, v in data["scores"].items()}
        data["outcomes"] = {k: Outcome(**v) for k, v in data["outcomes"].items()}
        data["knob_differences"] = {k: tuple(v) for k, v in data["knob_differences"].items()}
        data["beyond_preset"] = {k: tuple(v) for k, v in data["beyond_preset"].items()}
        return cls(**data)


def identify_cases(target: Target, cases: list[Case] | None = None) -> dict[str, list[Case]]:
    """The golden cases identify replays, per preset.

    Only the scenarios that every preset has (so each preset is judged on the same inputs; the
    default-preset-only scenarios, schedules, groups, ``maximize``, belong to ``check``), less the
    contract's safety scenarios (``Scenario.safety``: rules no published port follows), in the
    target's most precise dtype: a few small cases, so that identify takes seconds.
    """
    cases = load_cases() if cases is None else cases
    dtype = target.probe_dtype()
    presets_of: dict[str, set[str]] = {}
    for case in cases:
        if not SCENARIOS[case.scenario].safety:
            presets_of.setdefault(case.scenario, set()).add(case.preset)
    shared = {scenario for scenario, presets in presets_of.items() if presets >= set(PRESETS)}
    return {
        preset: [c for c in cases if c.preset == preset and c.dtype == dtype and c.scenario in shared]
        for preset in PRESETS
    }


def identify(
    target: Any, *, kind: str | None = None, kwargs: Mapping[str, Any] | None = None, timeout: float | None = None
) -> Identification:
    """Runs every preset's golden cases and every probe on ``target`` and names its preset.

    Args:
        target: ``"module:attr"``, a class / factory, or a :class:`~sai_conformance._targets.Target`.
        kind: ``"torch"``, ``"optax"`` or ``"keras"`` (detected when ``None``).
        kwargs: extra constructor arguments.
        timeout: seconds one call into the target may take (default
            :data:`~sai_conformance._targets.DEFAULT_TIMEOUT`, or the Target's own).

    Raises:
        ValueError: for a TARGET, kind or kwargs that cannot be used (naming it).

    Examples:
        >>> from sai_conformance._targets import reference_target
        >>> result = identify(reference_target("pytorch-optimizer-4"))
        >>> result.preset, result.exact
        ('pytorch-optimizer-4', True)
    """
    started = time.perf_counter()
    if not isinstance(target, Target):
        extra = {} if timeout is None else {"timeout": timeout}
        target = resolve_target(target, kind=kind, kwargs=kwargs, **extra)
    elif timeout is not None:
        target = dataclasses.replace(target, timeout=timeout)
    scores: dict[str, PresetScore] = {}
    for preset, cases in identify_cases(target).items():
        score = PresetScore(preset)
        for case in cases:
            result = replay_case(target, case)
            if result.status == "pass":
                score.passed += 1
            elif result.status == "n/a":
                score.not_applicable += 1
            elif result.status == "timeout":
                score.timeouts += 1
                score.notes.append(f"{case.name}: {result.detail.split(' Rerun: ')[0].split('timeout: ', 1)[-1]}")
            else:
                score.failed += result.status == "fail"
                score.errors += result.status == "error"
                score.notes.append(f"{case.name}: {result.detail.split(' Rerun: ')[0].split('): ', 1)[-1]}")
        scores[preset] = score
    report = run_probes(target)
    preset, exact = _choose_preset(scores, report)
    knob_differences: dict[str, tuple[Any, Any]] = {}
    beyond: dict[str, tuple[str, str]] = {}
    if preset is not None:
        preset_knobs = resolve_config(preset).knobs()
        closest = report.knob_distance(preset_knobs)
        if closest is not None:
            measured = closest[1]
            knob_differences = {
                k: (measured[k], preset_knobs[k]) for k in KNOB_VALUES if measured[k] != preset_knobs[k]
            }
        expected = preset_outcomes(preset)
        for key, outcome in report.outcomes.items():
            # What the reference cannot be asked (closures, model.fit) a faithful port answers as the
            # contract does.
            wanted = expected[key].value if expected[key].applicable else PROBE_BY_KEY[key].clean
            if outcome.applicable and outcome.value != wanted:
                beyond[key] = (outcome.value, wanted)
            elif outcome.value == "timeout":
                beyond[key] = (outcome.value, wanted)
    deviations = _deviations(preset, scores, report.outcomes, beyond)
    if target.hung is not None:
        deviations.insert(0, f"timeout: {target.hung}; the target was not called again")
    return Identification(
        target=target.name,
        kind=target.kind,
        description=target.description,
        dtype=report.dtype,
        scores=scores,
        outcomes=report.outcomes,
        knobs=report.knob_values(),
        preset=preset,
        exact=exact,
        knob_differences=knob_differences,
        beyond_preset=beyond,
        seconds=time.perf_counter() - started,
        deviations=deviations,
        timeout=target.timeout,
        hung=target.hung,
    )


def _deviations(
    preset: str | None, scores: dict[str, PresetScore], outcomes: dict[str, Outcome], beyond: dict[str, tuple[str, str]]
) -> list[str]:
    """One sentence per deviation from ``preset``: probes first (with their measurements), then cases."""
    if preset is None:
        return (
            [] if any(o.value in ("timeout", "not run") for o in outcomes.values()) else ["nothing could be measured"]
        )
    lines = []
    for key, (value, wanted) in beyond.items():
        outcome = outcomes[key]
        lines.append(f"{PROBE_BY_KEY[key].title}: {value} ({preset}: {wanted}). {outcome.detail}")
    skipped = [PROBE_BY_KEY[o.probe].title for o in outcomes.values() if o.value == "not run"]
    if skipped:
        lines.append(f"not run after the timeout: {', '.join(skipped)}")
    score = scores[preset]
    if score.failed or score.errors or score.timeouts:
        ran = score.passed + score.failed + score.errors + score.timeouts
        lines.append(f"golden cases of {preset}: {ran - score.passed}/{ran} did not pass: " + "; ".join(score.notes))
    return lines


def _choose_preset(scores: dict[str, PresetScore], report) -> tuple[str | None, bool]:
    order = list(PRESETS)
    exact = [p for p in order if scores[p].exact]
    if exact:
        return max(exact, key=lambda p: (scores[p].passed, -scores[p].errors, -order.index(p))), True
    if not report.consistent and not any(s.passed for s in scores.values()):
        return None, False

    def rank(preset: str) -> tuple[float, int, int]:
        distance = report.knob_distance(resolve_config(preset).knobs())
        return (math.inf if distance is None else distance[0], -scores[preset].passed, order.index(preset))

    return min(order, key=rank), False
