"""The committed golden vectors: current with the generator, and covering SPEC.md's case list."""

from __future__ import annotations

import filecmp

import pytest

from sai_conformance import load_cases
from sai_conformance._features import case_features
from sai_conformance._golden import GOLDEN_PACKAGE_DIR
from sai_conformance.generate import generate
from sai_core import PRESETS

# SPEC.md (version 2), "Conformance": cases cover at least these.
REQUIRED_FEATURES = (
    [f"shape {s}" for s in [(), (1,), (7,), (1, 16), (16, 1), (8, 16), (3, 4, 5, 6)]]
    + [
        "zero-size block",
        "zero-size block alone at step 1",
        "all-zero first gradient",
        "constant first gradient",
        "NaN first gradient",
        "inf first gradient",
        "first gradient scale 1e30",
        "first gradient scale 1e-30",
        "late block with G above M",
        "block absent at step 1, gradient later",
        "block absent at a later step",
        "gradient scale 1e-6",
        "gradient scale 1e6",
        "lr schedule with a zero-lr step",
        "momentum 0",
        "momentum 0.9",
        "momentum 0.99",
        "weight decay 0",
        "weight decay 0.1",
        "maximize",
        "two groups with different hyperparameters",
    ]
    + [f"preset {p}" for p in PRESETS]
    + ["dtype float64", "dtype float32", "dtype bfloat16"]
)


def test_golden_vectors_are_current(tmp_path):
    written = generate(tmp_path)
    committed = sorted(p.name for p in GOLDEN_PACKAGE_DIR.glob("*.json"))
    assert sorted(p.name for p in written) == committed, "case list changed: run python -m sai_conformance.generate"
    match, mismatch, errors = filecmp.cmpfiles(tmp_path, GOLDEN_PACKAGE_DIR, committed, shallow=False)
    assert not mismatch and not errors, (
        f"stale golden files {mismatch + errors}: run python -m sai_conformance.generate"
    )


@pytest.mark.parametrize("feature", REQUIRED_FEATURES)
def test_required_feature_is_covered(feature):
    covered = set().union(*(case_features(case) for case in load_cases()))
    assert feature in covered


def test_every_preset_covers_the_degenerate_and_shape_cases():
    cases = load_cases()
    every_preset = {
        "all-zero first gradient",
        "constant first gradient",
        "NaN first gradient",
        "inf first gradient",
        "zero-size block",
        "shape ()",
        "shape (3, 4, 5, 6)",
    }
    for preset in PRESETS:
        features = set().union(*(case_features(c) for c in cases if c.preset == preset))
        assert every_preset <= features, (preset, every_preset - features)


@pytest.mark.parametrize("feature", ["first gradient scale 1e30", "first gradient scale 1e-30"])
def test_overflow_cases_in_float32_and_bfloat16(feature):
    # SPEC v2: "a first gradient whose squares overflow float32 (elements ~1e30) and one that
    # underflows (~1e-30)", in float32 and in bfloat16.
    dtypes = {c.dtype for c in load_cases() if feature in case_features(c)}
    assert {"float32", "bfloat16"} <= dtypes


def test_golden_round_trip_is_exact():
    case = load_cases()[0]
    from sai_conformance._golden import case_from_json, case_to_json

    again = case_from_json(case_to_json(case))
    for a, b in zip(again.expected[-1].params, case.expected[-1].params):
        assert (a == b).all()
