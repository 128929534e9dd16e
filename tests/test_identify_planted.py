"""`identify` names every planted mistake (tests/planted_ports), by the magnitude it measured.

Each row is one deliberately wrong port: the preset identify must find, the probes it must list as
deviations from that preset (exactly those: a planted mistake must not hide behind, or cause, other
findings) with their answers, and a check of the measured magnitude against the planted one,
computed here independently from the probe's inputs. torch and optax ports run in this process;
the Keras ones in one subprocess per backend (Keras fixes its backend per process).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sai_conformance import _probes
from sai_conformance._identify import Identification, identify
from sai_conformance._probes import DECAY, DECAY_LRS, LOWPREC_NOISE, MU, TOLERANCE

ROOT = Path(__file__).resolve().parents[1]


def _gsnr(grad: np.ndarray, correction: int = 1) -> float:
    """||g|| / std(g), written here from docs/spec.md (float64)."""
    grad = np.asarray(grad, dtype=np.float64)
    return float(np.linalg.norm(grad) / grad.std(ddof=correction))


def _close(measured: float, expected: float, rtol: float, what: str) -> None:
    assert abs(measured - expected) <= rtol * abs(expected), f"{what}: measured {measured:.8g}, planted {expected:.8g}"


# -- the magnitude of each planted mistake, from the probe's own inputs -------------------------------
# rtol: 10x the probe's tolerance of the dtype (float64 1e-7), the margin its own classifications use.


def _decay_after(result: Identification, rtol: float) -> None:
    for step, lr in enumerate(DECAY_LRS):
        _close(
            result.outcomes["decay"].measured[f"update factor, step {step + 1}"],
            1 - lr * DECAY,
            rtol,
            "update factor of decay after the update (1 - lr wd)",
        )


def _decay_times_scale(result: Identification, rtol: float) -> None:
    grads = _probes._decay_scenario(0.0).steps[0]
    for block, grad in enumerate(grads):
        for step in (1, 2):
            _close(
                result.outcomes["decay"].measured[f"decay / (lr wd theta), step {step}, block {block}"],
                _gsnr(grad),
                rtol,
                "decay multiplied by S = G",
            )


def _mean_biased(result: Identification, rtol: float) -> None:
    first = _probes._gsnr_scenario()[0].steps[0]
    biased = [_gsnr(g, correction=0) for g in first]
    _close(result.outcomes["normalize"].measured["divisor"], float(np.mean(biased)), rtol, "mean of the biased G")
    ratio = max(math.sqrt(g.size / (g.size - 1)) for g in first)
    _close(result.outcomes["gsnr"].measured["largest G(biased) / G(unbiased)"], ratio, rtol, "sqrt(n / (n - 1))")


def _max_per_group(result: Identification, rtol: float) -> None:
    scenario = _probes._groups_scenario()
    grads = scenario.steps[0]
    for group, indices in enumerate(scenario.group_indices()):
        _close(
            result.outcomes["groups"].measured[f"M group {group + 1}"],
            max(_gsnr(grads[i]) for i in indices),
            rtol,
            f"M of group {group + 1}",
        )


def _running_max(result: Identification, rtol: float) -> None:
    scenario = _probes._late_scenario()
    a, b = scenario.steps[0][0], scenario.steps[1][1]
    measured = result.outcomes["late"].measured
    _close(measured["S late block"], 1.0, rtol, "late block's S under a running max")
    _close(measured["S late block, frozen M"], _gsnr(b) / _gsnr(a), rtol, "G_late / M")


def _maximize_flip(result: Identification, rtol: float) -> None:
    for step, direction in ((1, -1.0), (2, 1.0), (3, 1.0)):
        _close(result.outcomes["maximize"].measured[f"direction at step {step}"], direction, rtol, f"step {step}")


def _zero_sqrt_n(result: Identification, rtol: float) -> None:
    scenario = _probes._zero_scenario()
    block = scenario.steps[1][1]
    measured = result.outcomes["zero"].measured
    _close(measured["S"], math.sqrt(block.size), rtol, "G = sqrt(n) of the zero gradient")
    _close(measured["buffer c"], 1 - MU, rtol, "buffer from zero, then (1 - mu) g")
    _close(measured["S if deferred"], _gsnr(block), rtol, "the deferred G of the first nonzero gradient")


def _bf16_statistics(result: Identification, rtol: float) -> None:
    import torch  # the planted torch port's own arithmetic; any port rounds norm and std alike

    deviations = []
    for seed in _probes.LOWPREC_SEEDS:
        grad = _probes._gradient(seed, _probes.LOWPREC_SHAPE, 0.5, "bfloat16")
        low = torch.tensor(grad).to(torch.bfloat16)
        deviations.append(abs(float(low.norm() / (low.std() + 1e-8)) / _gsnr(grad) - 1))
    measured = result.outcomes["lowprec"].measured["largest relative deviation of S"]
    # Within the probe's measurement noise (its bound, LOWPREC_NOISE).
    assert abs(measured - max(deviations)) <= LOWPREC_NOISE, f"measured {measured:.3g}, planted {max(deviations):.3g}"


def _nothing(result: Identification, rtol: float) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Planted:
    """One planted port and what identify must say about it."""

    desc: str
    target: str
    preset: str
    exact: bool
    answers: dict[str, str]  # probe key -> answer; exactly the probes listed as deviations
    magnitude: Callable[[Identification, float], None] = _nothing
    knob_differences: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        return self.target.split(".")[1].split("_")[0]


def _table(module: str, names: dict[str, str]) -> list[Planted]:
    """The same mistakes under each framework's names (``names``: mistake -> attribute)."""
    rows = {
        "clean": Planted("clean", "", "sgd-sai", True, {}),
        "decay_after": Planted(
            "decay after the update", "", "sgd-sai", False, {"decay": "after the update"}, _decay_after
        ),
        "decay_times_s": Planted(
            "decay multiplied by S", "", "sgd-sai", False, {"decay": "scaled by S"}, _decay_times_scale
        ),
        "mean_biased": Planted(
            "normalised by the mean g-SNR, biased std",
            "",
            "sgd-sai",
            False,
            {"gsnr": "std_correction=0", "normalize": "another reduction: mean"},
            _mean_biased,
            {"normalize": "mean", "std_correction": 0},
        ),
        "max_per_group": Planted(
            "one M per parameter group", "", "paper", True, {"groups": "one M per group"}, _max_per_group
        ),
        "running_max": Planted(
            "a running max", "", "paper", False, {"late": "M raised by the late block (running max)"}, _running_max
        ),
        "maximize_flip": Planted(
            "maximize descends at step 1, negates .grad later",
            "",
            "sgd-sai",
            True,
            {"maximize": "descends at step 1, ascends at steps 2-3, negates .grad at steps 2-3"},
            _maximize_flip,
        ),
        "zero_sqrt_n": Planted(
            "zero first gradient initializes with sqrt(n)",
            "",
            "sgd-sai",
            False,
            {"zero": "initialized by the zero gradient"},
            _zero_sqrt_n,
            {"zero_gradient": "degenerate"},
        ),
        "nonfinite": Planted(
            "non-finite first gradient poisons the block", "", "sgd-sai", True, {"nonfinite": "non-finite parameters"}
        ),
        "bf16_stats": Planted(
            "statistics in bfloat16", "", "sgd-sai", True, {"lowprec": "bf16 statistics"}, _bf16_statistics
        ),
        "zeros_buffer": Planted(
            "first buffer (1 - mu) g",
            "",
            "sgd-sai",
            False,
            {"buffer": "(1-mu) g"},
            knob_differences={"momentum_init": "zeros"},
        ),
        "biased_std": Planted(
            "biased std", "", "sgd-sai", False, {"gsnr": "std_correction=0"}, knob_differences={"std_correction": 0}
        ),
        "python_flag": Planted("a Python if on a tensor", "", "sgd-sai", True, {}),
    }
    # identify lists a max-normalised port's "one M across groups" where the preset has "no M";
    # the mean normalisation is one constant across groups too (torch only: groups exist there).
    if module == "torch_ports":
        rows["mean_biased"] = dataclasses.replace(
            rows["mean_biased"], answers={**rows["mean_biased"].answers, "groups": "one M across groups"}
        )
    return [
        dataclasses.replace(
            rows[m], desc=f"{module.split('_')[0]}: {rows[m].desc}", target=f"planted_ports.{module}:{name}"
        )
        for m, name in names.items()
    ]


TORCH = _table(
    "torch_ports",
    {
        "clean": "PlantedSaI",
        "decay_after": "DecayAfterUpdate",
        "decay_times_s": "DecayTimesScale",
        "mean_biased": "MeanNormalisedBiasedStd",
        "max_per_group": "MaxPerGroup",
        "running_max": "RunningMax",
        "maximize_flip": "MaximizeFlip",
        "zero_sqrt_n": "ZeroGradSqrtN",
        "nonfinite": "NonFinitePoisons",
        "bf16_stats": "Bf16Statistics",
        "zeros_buffer": "ZerosBuffer",
        "biased_std": "BiasedStd",
    },
)
JAX = _table(
    "jax_ports",
    {
        "clean": "planted_sai",
        "decay_after": "decay_after_update",
        "decay_times_s": "decay_times_scale",
        "mean_biased": "mean_normalised_biased_std",
        "zero_sqrt_n": "zero_grad_sqrt_n",
        "nonfinite": "nonfinite_poisons",
        "bf16_stats": "bf16_statistics",
    },
)
KERAS = _table(
    "keras_ports",
    {
        "clean": "PlantedSaI",
        "decay_after": "DecayAfterUpdate",
        "decay_times_s": "DecayTimesScale",
        "zero_sqrt_n": "ZeroGradSqrtN",
        "nonfinite": "NonFinitePoisons",
        "bf16_stats": "Bf16Statistics",
        "python_flag": "PythonFlag",
    },
)
# model.fit compiled: TensorFlow traces a graph, JAX jits, and reading a traced value into Python
# raises; torch's fit runs eagerly, so there the Python branch works and is no deviation.
FIT_ERROR = {"tensorflow": "error: NotImplementedError", "jax": "error: TracerArrayConversionError"}
# Keras backends and the planted ports each replays: every port on Keras's torch backend (float64,
# the fastest to run eagerly); the backend-specific probe (model.fit compiled) on the others.
KERAS_BACKENDS: dict[str, tuple[str, ...]] = {
    "torch": tuple(p.target.split(":")[1] for p in KERAS),
    "tensorflow": ("PythonFlag",),
    "jax": ("PythonFlag",),
}


def _check(planted: Planted, result: Identification, dtype_tolerance: float) -> None:
    desc = planted.desc
    assert result.preset == planted.preset and result.exact == planted.exact, (
        f"{desc}: identify said {result.summary()!r}; expected preset {planted.preset} "
        f"({'exact' if planted.exact else 'closest'})"
    )
    listed = {key: value for key, (value, _) in result.beyond_preset.items()}
    assert listed == planted.answers, f"{desc}: deviations {result.deviations}; expected {planted.answers}"
    for key in planted.answers:  # each one is a sentence of the verdict, with its measurement
        assert any(line.startswith(_probes.PROBE_BY_KEY[key].title) for line in result.deviations), result.deviations
    measured_knobs = {k: v[0] for k, v in result.knob_differences.items()}
    assert measured_knobs == planted.knob_differences, f"{desc}: knobs {measured_knobs}"
    assert result.agrees == (not planted.answers and planted.exact), f"{desc}: {result.deviations}"
    planted.magnitude(result, 10 * dtype_tolerance)


@pytest.mark.parametrize("planted", TORCH, ids=[p.desc for p in TORCH])
def test_torch_planted_mistakes_are_named(planted):
    pytest.importorskip("torch")
    _check(planted, identify(planted.target), TOLERANCE["float64"])


@pytest.mark.skipif(importlib.util.find_spec("optax") is None, reason="optax is not installed")
@pytest.mark.parametrize("planted", JAX, ids=[p.desc for p in JAX])
def test_optax_planted_mistakes_are_named(planted):
    _check(planted, identify(planted.target), TOLERANCE["float64"])


@pytest.fixture(scope="module")
def keras_results() -> dict[str, dict[str, Identification | str]]:
    """backend -> port name -> identification (or the subprocess's error), one process per backend."""
    results: dict[str, dict[str, Identification | str]] = {}
    for backend, names in KERAS_BACKENDS.items():
        if importlib.util.find_spec("keras") is None or importlib.util.find_spec(backend) is None:
            continue
        env = {
            **os.environ,
            "KERAS_BACKEND": backend,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
        }
        completed = subprocess.run(
            [sys.executable, str(ROOT / "tests" / "planted_ports" / "identify_keras.py"), *names],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        lines = [line for line in completed.stdout.splitlines() if line.startswith("@@identify ")]
        if not lines:
            results[backend] = {n: f"exit {completed.returncode}: {completed.stderr[-2000:]}" for n in names}
            continue
        documents = json.loads(lines[-1][len("@@identify ") :])
        results[backend] = {n: Identification.from_json(d) for n, d in zip(names, documents)}
    return results


KERAS_CASES = [
    (backend, planted)
    for backend, names in KERAS_BACKENDS.items()
    for planted in KERAS
    if planted.target.split(":")[1] in names
]


@pytest.mark.parametrize("backend,planted", KERAS_CASES, ids=[f"{b} {p.desc}" for b, p in KERAS_CASES])
def test_keras_planted_mistakes_are_named(backend, planted, keras_results):
    if backend not in keras_results:
        pytest.skip(f"keras or {backend} is not installed")
    result = keras_results[backend][planted.target.split(":")[1]]
    assert not isinstance(result, str), f"{planted.desc} on {backend}: {result}"
    if planted.target.endswith(":PythonFlag") and backend in FIT_ERROR:
        planted = dataclasses.replace(planted, answers={"fit": FIT_ERROR[backend]})
    # TensorFlow and torch hold float64 variables; JAX without x64 probes in float32.
    _check(planted, result, TOLERANCE[result.dtype])


def test_lowprec_gradients_move_a_bf16_statistic_well_past_the_noise():
    """The bf16 probe's premise: rounding norm and std to bfloat16 moves these gradients' G by more
    than 3x the probe's noise bound (so a bf16 statistic cannot pass unseen)."""
    torch = pytest.importorskip("torch")
    for seed in _probes.LOWPREC_SEEDS:
        grad = _probes._gradient(seed, _probes.LOWPREC_SHAPE, 0.5, "bfloat16")
        low = torch.tensor(grad).to(torch.bfloat16)
        moved = abs(float(low.norm() / low.std()) / _gsnr(grad) - 1)
        assert moved > 3 * LOWPREC_NOISE, f"seed {seed}: a bf16 statistic moves G by only {moved:.2g}"


def test_a_hanging_port_is_reported_not_waited_for():
    """A step() that never returns: identify gives up after --timeout and says which call hung."""
    pytest.importorskip("torch")
    # 3 s: building the optimizer and step 1 must finish in time on a loaded 2-core machine.
    result = identify("planted_ports.torch_ports:HangsAtStep2", timeout=3.0)
    assert result.hung == "step 2 did not return within 3 s (--timeout)", result.hung
    assert result.deviations[0].startswith("timeout: step 2 did not return"), result.deviations
    assert not result.agrees and result.preset is None
    # Every golden case is a timeout (the first hung at its step 2, the others were not run).
    for preset, score in result.scores.items():
        assert (score.passed, score.failed, score.errors) == (0, 0, 0) and score.timeouts > 0, (preset, score)
    assert result.seconds < 30, f"identify of a hanging port took {result.seconds:.1f} s"
