"""``identify``: which preset a port implements, and where it departs from it and from the contract.

Two kinds of evidence, both measured on the target:

1. every preset's golden cases, replayed from the initial parameters (a preset *matches exactly*
   when no case that ran disagrees; a case where the target raised is reported, not counted as a
   numeric disagreement, because the presets describe the math, not a port's crashes);
2. the behaviour probes (:mod:`sai_conformance._probes`), which also measure the knob values.

Without an exact match the closest preset is the one whose knobs are fewest changes away from
what the probes measured (ties: most golden cases passed).
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
from ._probes import Outcome, preset_outcomes, run_probes
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
            return "no preset: nothing could be measured"
        if self.exact:
            score = self.scores[self.preset]
            ran = score.passed + score.failed + score.errors
            text = f"matches preset {self.preset} exactly ({score.passed}/{ran} golden cases"
            return text + (f"; {score.errors} raised)" if score.errors else ")")
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
    def from_json(cls, document: Mapping[str, Any]) -> "Identification":
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


def identify(target: Any, *, kind: str | None = None, kwargs: Mapping[str, Any] | None = None) -> Identification:
    """Runs every preset's golden cases and every probe on ``target`` and names its preset.

    Args:
        target: ``"module:attr"``, a class / factory, or a :class:`~sai_conformance._targets.Target`.
        kind: ``"torch"``, ``"optax"`` or ``"keras"`` (detected when ``None``).
        kwargs: extra constructor arguments.

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
        target = resolve_target(target, kind=kind, kwargs=kwargs)
    scores: dict[str, PresetScore] = {}
    for preset, cases in identify_cases(target).items():
        score = PresetScore(preset)
        for case in cases:
            result = replay_case(target, case)
            if result.status == "pass":
                score.passed += 1
            elif result.status == "n/a":
                score.not_applicable += 1
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
            wanted = expected[key]
            if outcome.applicable and wanted.applicable and outcome.value != wanted.value:
                beyond[key] = (outcome.value, wanted.value)
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
    )


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
