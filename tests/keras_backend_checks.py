"""Every check of ``sai_keras`` on one Keras backend, run in this process; results written as JSON.

Keras fixes its backend per process, so ``tests/test_keras_backends.py`` starts this script once
per backend (``KERAS_BACKEND``) and asserts each result it reports. Run it by hand to debug::

    KERAS_BACKEND=jax python tests/keras_backend_checks.py --out /tmp/jax.json
    KERAS_BACKEND=tensorflow python tests/keras_backend_checks.py --out /tmp/tf.json --only fit

Nothing is imported at module level beyond the standard library: pytest's doctest collection
imports this file in its own process, which must never import Keras.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

# Compile modes of model.fit per backend: (name, compile keyword arguments). "eager" is the
# reference every compiled mode must reproduce.
FIT_MODES: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "tensorflow": (
        ("graph", {"jit_compile": False}),
        ("xla", {"jit_compile": True}),
        ("eager", {"run_eagerly": True}),
    ),
    "jax": (("jit", {"jit_compile": True}), ("eager", {"run_eagerly": True})),
    "torch": (("default", {}), ("eager", {"run_eagerly": True})),
}

# Keras base-optimizer keywords checked end to end against the NumPy reference (see
# _reference_fit): each variant's keyword arguments for SGDSaI.
REFERENCE_VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "exclude_bias_from_weight_decay": {"exclude_from_weight_decay": ["bias"]},
    "gradient_accumulation_steps": {"gradient_accumulation_steps": 2},
    "loss_scale_factor": {"loss_scale_factor": 1024.0},
    "clipnorm": {"clipnorm": 0.5},
    "global_clipnorm": {"global_clipnorm": 0.5},
    "use_ema": {"use_ema": True, "ema_momentum": 0.8},
    "lr_schedule": {"learning_rate": "exponential_decay"},
    "momentum_0": {"momentum": 0.0},
    "preset_paper": {"preset": "paper", "learning_rate": 0.2},
    "preset_pytorch_optimizer_4": {"preset": "pytorch-optimizer-4", "learning_rate": 2e-3},
}

# How each backend's trainer runs an optimizer apply (keras/src/backend/*/trainer.py), for the
# checks that feed hand-made gradients: "eager" is a plain apply; "graph" / "xla" a tf.function
# without / with jit_compile; "jit" jax.jit of stateless_apply. torch's fit runs eagerly.
APPLY_MODES: dict[str, tuple[str, ...]] = {
    "tensorflow": ("eager", "graph", "xla"),
    "jax": ("eager", "jit"),
    "torch": ("eager",),
}

# The apply-level checks of contract v2, each reported once per APPLY_MODES mode.
APPLY_CHECKS: tuple[str, ...] = ("first_gradient_deferred", "overflow_statistic", "zero_size_never_sets_m")

# Bad input (SPEC.md step 0), per APPLY_MODES mode: a clear error and nothing changed; and sparse
# gradients (JAX BCOO; TensorFlow IndexedSlices and SparseTensor), densified: equal to dense.
FAULT_CHECKS: tuple[str, ...] = ("bad_apply_changes_nothing",)
SPARSE_BACKENDS: tuple[str, ...] = ("jax", "tensorflow")

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 0.1


def check_names(config: str) -> list[str]:
    """The checks a backend configuration reports (``jax-x64``: float64 conformance and the v2 apply checks)."""
    backend = "jax" if config == "jax-x64" else config
    # Contract v2's apply-level checks; jax-x64 reruns them where JAX stores float64.
    v2 = [f"{name}[{mode}]" for name in APPLY_CHECKS for mode in APPLY_MODES[backend]]
    if config == "jax-x64":
        return [n for n in v2 if not n.startswith("overflow_statistic")]  # float32 only: done by "jax"
    names = ["doctests", "docs_example", "namespace_contract", "runner_discovery", "validation_errors"]
    names += ["defaults", "config_round_trip", "optimizer_by_name"] + v2
    names += [f"{name}[{mode}]" for name in FAULT_CHECKS for mode in APPLY_MODES[backend]]
    if backend in SPARSE_BACKENDS:
        names += [f"sparse_gradient_equals_dense[{mode}]" for mode in APPLY_MODES[backend]]
    names += ["absent_gradient_none_equals_subset", "bfloat16_statistics_in_float32"]
    if backend != "jax":  # eager TensorFlow and torch run only the taken branch of a cond
        names.append("gsnr_evaluated_once_per_variable")
    names += [f"fit_matches_reference[{variant}]" for variant in REFERENCE_VARIANTS]
    for mode, _ in FIT_MODES[backend]:
        names.append(f"fit[{mode}]_scales_fixed_after_first_step")
        if mode != "eager":
            names.append(f"fit[{mode}]_equals_eager")
        names.append(f"fit[{mode}]_zero_first_batch_deferred")
    names += ["save_load_continuation", "mixed_bfloat16", "mixed_float16_loss_scaling"]
    names.append({"jax": "distribution_data_parallel_8", "tensorflow": "distribution_mirrored_2"}.get(backend, ""))
    return [n for n in names if n]


def conformance_plan(config: str) -> list[tuple[str, bool]]:
    """(runner label, compiled) pairs whose golden-vector results a configuration reports."""
    if config == "tensorflow":
        return [("compiled", True), ("eager", False)]
    return [("compiled", config != "torch")]


# ----------------------------------------------------------------------------------------------
# Helpers (imported lazily: they need Keras)


@dataclasses.dataclass
class _Result:
    ok: bool
    detail: str = ""


def _np(x: Any):
    import keras
    import numpy as np

    return np.asarray(keras.ops.convert_to_numpy(x)).astype(np.float64)


def _max_rel(actual, expected) -> float:
    import numpy as np

    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    diff = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    return diff / scale if scale > 0 else diff


def _compare_blocks(actual: list, expected: list, rtol: float, what: str) -> _Result:
    # Normwise per block, as the conformance harness compares (sai_conformance._tolerances).
    if len(actual) != len(expected) or not expected:
        return _Result(False, f"{what}: {len(actual)} blocks vs {len(expected)}")
    worst = max((_max_rel(a, e), i) for i, (a, e) in enumerate(zip(actual, expected)))
    return _Result(worst[0] <= rtol, f"{what}: worst block {worst[1]} max rel err {worst[0]:.3g} (rtol {rtol:g})")


def _float32_trajectory_rtol() -> float:
    # One documented table (sai_conformance.TOLERANCES): float32 drift over a few steps.
    from sai_conformance import TOLERANCES

    return TOLERANCES["float32"].trajectory


# ----------------------------------------------------------------------------------------------
# Data and models


def _linear_data():
    import numpy as np

    rng = np.random.default_rng(7)
    x = rng.standard_normal((32, 6)).astype("float32")
    y = (rng.standard_normal((32, 3)) + np.array([0.5, -1.0, 2.0])).astype("float32")
    kernel = (0.3 * rng.standard_normal((6, 3))).astype("float32")
    bias = (0.1 * rng.standard_normal(3)).astype("float32")
    return x, y, kernel, bias


def _make_optimizer(variant: dict[str, Any]):
    import keras

    from sai_keras import SGDSaI

    kwargs = {"learning_rate": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, **variant}
    if kwargs["learning_rate"] == "exponential_decay":
        kwargs["learning_rate"] = keras.optimizers.schedules.ExponentialDecay(LR, decay_steps=2, decay_rate=0.5)
    return SGDSaI(**kwargs)


def _reference_fit(variant: dict[str, Any], x, y, kernel, bias, batch: int, epochs: int):
    """The same training in float64 NumPy: analytic MSE gradients, ReferenceSGDSaI, Keras semantics.

    Keras semantics reproduced here: gradient accumulation averages the micro-batches of a group
    and applies once; clipping acts on the (averaged) gradient; EMA averages the weights after
    every apply (the first average is the weights) and replaces them at the end of ``fit``; a
    schedule is evaluated at the optimizer's iteration count before the step; ``loss_scale_factor``
    scales the loss and divides the gradients back, which is exact here (a power of two).
    """
    import numpy as np

    from sai_core import DEFAULT_PRESET, ReferenceSGDSaI

    lr0 = variant.get("learning_rate", LR)
    momentum = variant.get("momentum", MOMENTUM)
    exclude_bias = "bias" in (variant.get("exclude_from_weight_decay") or [])
    groups = [
        {"params": [kernel.astype(np.float64)], "weight_decay": WEIGHT_DECAY},
        {"params": [bias.astype(np.float64)], "weight_decay": 0.0 if exclude_bias else WEIGHT_DECAY},
    ]
    opt = ReferenceSGDSaI(groups, lr=0.0, momentum=momentum, preset=variant.get("preset", DEFAULT_PRESET))
    accumulate = variant.get("gradient_accumulation_steps") or 1
    ema_momentum = variant.get("ema_momentum") if variant.get("use_ema") else None
    average = None
    pending = []
    iterations = 0
    applied = 0
    for _ in range(epochs):
        for start in range(0, len(x), batch):
            xb, yb = x[start : start + batch].astype(np.float64), y[start : start + batch].astype(np.float64)
            w, b = opt.params
            d_pred = 2.0 * (xb @ w + b - yb) / yb.size
            pending.append([xb.T @ d_pred, d_pred.sum(axis=0)])
            iterations += 1
            if len(pending) < accumulate:
                continue
            grads = [sum(g[i] for g in pending) / accumulate for i in range(2)]
            pending = []
            if variant.get("clipnorm"):
                c = variant["clipnorm"]
                grads = [g * c / max(np.sqrt(np.sum(g * g)), c) for g in grads]
            if variant.get("global_clipnorm"):
                c = variant["global_clipnorm"]
                norm = np.sqrt(sum(np.sum(g * g) for g in grads))
                grads = [g * c * min(1.0 / norm, 1.0 / c) for g in grads]
            if lr0 == "exponential_decay":
                lr = LR * 0.5 ** (applied / 2)  # ExponentialDecay(LR, 2, 0.5) at the iteration count
            else:
                lr = lr0
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step(grads)
            applied += 1
            if ema_momentum is not None:
                m = 0.0 if average is None else ema_momentum
                average = [
                    p.copy() if a is None else m * a + (1 - m) * p for a, p in zip(average or [None] * 2, opt.params)
                ]
    params = average if ema_momentum is not None else opt.params
    return params, opt


def _linear_model(kernel, bias, optimizer, **compile_kwargs):
    import keras

    model = keras.Sequential([keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1], name="dense")])
    model.set_weights([kernel, bias])
    model.compile(optimizer=optimizer, loss="mse", **compile_kwargs)
    return model


def _mlp_data():
    import numpy as np

    rng = np.random.default_rng(11)
    x = rng.integers(0, 20, size=(32, 4)).astype("int32")
    # Opposite offsets keep the output bias's two gradient components apart: a 2-element gradient
    # with nearly equal components has a huge, ill-conditioned g-SNR (the std cancels), which
    # would make every scale (all divided by that M) sensitive to float32 rounding.
    y = (rng.standard_normal((32, 2)) + [1.0, -1.0]).astype("float32")
    return x, y


def _mlp(initial_weights=None):
    import keras

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((4,), dtype="int32"),
            keras.layers.Embedding(20, 6, name="embedding"),  # sparse gradients on TensorFlow
            keras.layers.Flatten(),
            keras.layers.Dense(8, activation="tanh", name="hidden"),
            keras.layers.Dense(2, name="out"),
        ]
    )
    if initial_weights is not None:
        model.set_weights(initial_weights)
    return model


def _optimizer_state(optimizer) -> dict[str, Any]:
    return {
        "scales": [float(_np(s)) for s in optimizer.scales],
        "initialized": [bool(_np(f)) for f in optimizer.initialized],
        "max_gsnr": float(_np(optimizer.max_gsnr)),
    }


# ----------------------------------------------------------------------------------------------
# Checks


def check_doctests() -> _Result:
    import doctest

    import sai_keras._ops_namespace
    import sai_keras._optimizer

    failed = attempted = 0
    for module in (sai_keras._optimizer, sai_keras._ops_namespace):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
        failed += result.failed
        attempted += result.attempted
    return _Result(failed == 0 and attempted > 0, f"{attempted} examples, {failed} failed")


def check_docs_example() -> _Result:
    import contextlib
    import io
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "keras.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    if not blocks:
        return _Result(False, "docs/keras.md has no python example")
    with tempfile.TemporaryDirectory() as folder:
        previous = os.getcwd()
        os.chdir(folder)  # the example saves m.keras
        try:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                for block in blocks:
                    exec(compile(block, str(doc), "exec"), {"__name__": "docs_keras_md"})
        finally:
            os.chdir(previous)
    return _Result(True, f"{len(blocks)} example(s) ran; printed {printed.getvalue().strip()!r}")


def check_namespace_contract() -> _Result:
    import sai_keras._ops_namespace as namespace
    from sai_core import NAMESPACE_CONTRACT

    provided = set(namespace.__all__)
    missing = [n for n in NAMESPACE_CONTRACT if not hasattr(namespace, n)]
    extra = sorted(provided - set(NAMESPACE_CONTRACT))
    return _Result(not missing and not extra, f"missing {missing}, beyond the contract {extra}")


def check_runner_discovery() -> _Result:
    import keras

    from sai_conformance import available_runners

    default = [r.name for r in available_runners()]
    isolated = [r.name for r in available_runners(include_isolated=True)]
    expected = f"keras-{keras.backend.backend()}"
    ok = expected in isolated and not any(n.startswith("keras") for n in default)
    return _Result(ok, f"default runners {default}; with isolated ones {isolated}")


def check_validation_errors() -> _Result:
    from sai_keras import SGDSaI

    cases = [
        ({"learning_rate": -1.0}, ValueError, ("learning_rate", "-1.0")),
        ({"momentum": 1.0}, ValueError, ("momentum", "1.0")),
        ({"weight_decay": -0.1}, ValueError, ("weight_decay", "-0.1")),
        ({"epsilon": -1e-8}, ValueError, ("epsilon", "-1e-08")),
        ({"maximize": "yes"}, ValueError, ("maximize", "'yes'")),
        ({"preset": "adam"}, ValueError, ("preset", "'adam'")),
        ({"std_correction": 2}, ValueError, ("std_correction", "2")),
        ({"exclude_from_weight_decay": "bias"}, ValueError, ("exclude_from_weight_decay", "'bias'")),
        ({"not_a_keyword": 1}, ValueError, ("not_a_keyword",)),
        # A passed None is refused (sai_core.validate_hyperparameters), named as Keras names it.
        ({"learning_rate": None}, ValueError, ("Invalid learning_rate: None",)),
        ({"momentum": None}, ValueError, ("Invalid momentum: None",)),
        ({"epsilon": None}, ValueError, ("Invalid epsilon: None",)),
    ]
    problems = []
    for kwargs, error, needles in cases:
        try:
            SGDSaI(**kwargs)
        except error as raised:
            missing = [n for n in needles if n not in str(raised)]
            if missing:
                problems.append(f"{kwargs}: message {str(raised)!r} lacks {missing}")
        else:
            problems.append(f"{kwargs}: no {error.__name__}")
    import keras

    optimizer = SGDSaI()
    optimizer.build([keras.Variable([1.0, 2.0])])
    try:
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        problems.append("exclude_from_weight_decay after build did not raise")
    except ValueError:
        pass
    # weight_decay=None stays Keras's "no weight decay".
    if SGDSaI(weight_decay=None).weight_decay is not None:
        problems.append("weight_decay=None is not Keras's no-decay")
    return _Result(
        not problems,
        "; ".join(problems) or f"{len(cases) + 1} invalid inputs rejected by name, weight_decay=None accepted",
    )


def check_config_round_trip() -> _Result:
    import keras

    from sai_keras import SGDSaI

    optimizer = SGDSaI(
        learning_rate=0.2,
        momentum=0.5,
        weight_decay=0.0,
        epsilon=1e-6,
        preset="paper",
        zero_gradient="degenerate",
        maximize=True,
        std_correction=0,
        exclude_from_weight_decay=["bias", "norm"],
        clipnorm=1.0,
        name="custom_sai",
    )
    config = optimizer.get_config()
    rebuilt = SGDSaI.from_config(dict(config)).get_config()
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))  # no custom_objects
    ok = rebuilt == config and type(restored) is SGDSaI and restored.get_config() == config
    ok = ok and config["std_correction"] == 0 and config["normalize"] == "max" and config["name"] == "custom_sai"
    ok = ok and config["zero_gradient"] == "degenerate" and config["preset"] == "paper"
    return _Result(ok, f"config {config}")


def check_optimizer_by_name() -> _Result:
    """``"sgd_sai"`` and ``"sai_keras>SGDSaI"`` resolve as Keras's built-in names do, in
    ``keras.optimizers.get`` and ``model.compile``; saving still writes the registered name."""
    import keras
    import numpy as np

    from sai_keras import SGDSaI

    problems = []
    defaults = {k: v for k, v in SGDSaI().get_config().items() if k != "name"}  # names are numbered
    for identifier in ("sgd_sai", "sai_keras>SGDSaI"):
        optimizer = keras.optimizers.get(identifier)
        if type(optimizer) is not SGDSaI:
            problems.append(f"get({identifier!r}) gave {type(optimizer).__name__}")
        elif {k: v for k, v in optimizer.get_config().items() if k != "name"} != defaults:
            problems.append(f"get({identifier!r}) is not SGDSaI() with the defaults: {optimizer.get_config()}")
    configured = keras.optimizers.get({"class_name": "sgd_sai", "config": {"learning_rate": 0.25, "preset": "paper"}})
    if configured.get_config()["learning_rate"] != 0.25 or configured.get_config()["preset"] != "paper":
        problems.append(f"get(dict) lost its config: {configured.get_config()}")
    registered = keras.optimizers.serialize(configured)["registered_name"]
    if registered != "sai_keras>SGDSaI":
        problems.append(f"serialize writes registered_name {registered!r}")
    # Keras's own names are untouched (the torch backend substitutes its own SGD subclass).
    if not isinstance(keras.optimizers.get("sgd"), keras.optimizers.SGD):
        problems.append("get('sgd') is no longer Keras's SGD")
    # Compiling with the name trains exactly as compiling with an instance.
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((8, 3)).astype("float32"), rng.standard_normal((8, 2)).astype("float32")
    kernel, bias = rng.standard_normal((3, 2)).astype("float32"), np.zeros(2, "float32")
    weights = {}
    for label, optimizer in (("name", "sgd_sai"), ("instance", SGDSaI())):
        model = _linear_model(kernel, bias, optimizer)
        model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
        weights[label] = model.get_weights()
        if type(model.optimizer) is not SGDSaI or not all(_np(f) for f in model.optimizer.initialized):
            problems.append(f"compile({optimizer!r}): optimizer {type(model.optimizer).__name__}, not initialized")
    if np.array_equal(weights["name"][0], kernel):
        problems.append("compile('sgd_sai') did not train")
    if not all(np.array_equal(a, b) for a, b in zip(weights["name"], weights["instance"])):
        problems.append("compile('sgd_sai') and compile(SGDSaI()) trained differently")
    return _Result(not problems, "; ".join(problems) or "get/compile by name = SGDSaI(); saved as sai_keras>SGDSaI")


def check_absent_gradient_none_equals_subset() -> _Result:
    import keras
    import numpy as np

    from sai_keras import SGDSaI

    rng = np.random.default_rng(5)
    shapes = [(4, 3), (5,), (2, 2)]
    initial = [rng.standard_normal(s).astype("float32") for s in shapes]
    grads = [[rng.standard_normal(s).astype("float32") for s in shapes] for _ in range(3)]
    finals = []
    for style in ("none", "subset"):
        variables = [keras.Variable(v, name=f"v{i}") for i, v in enumerate(initial)]
        optimizer = SGDSaI(learning_rate=0.1)
        optimizer.build(variables)
        for step, row in enumerate(grads):
            present = [i for i in range(len(shapes)) if not (i == 1 and step < 2)]  # block 1 late
            if style == "none":
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # Keras warns about the None gradients
                    optimizer.apply([row[i] if i in present else None for i in range(len(shapes))], variables)
            else:
                optimizer.apply([row[i] for i in present], [variables[i] for i in present])
        finals.append([_np(v) for v in variables] + [_np(v) for v in optimizer.variables])
    ok = all(np.array_equal(a, b) for a, b in zip(*finals))
    return _Result(ok, "None gradients and a variable subset give identical state" if ok else "states differ")


def check_gsnr_evaluated_once_per_variable() -> _Result:
    import keras
    import numpy as np

    import sai_keras._optimizer as optimizer_module
    from sai_keras import SGDSaI

    rng = np.random.default_rng(4)
    shapes = [(4, 3), (5,), (2, 2)]
    variables = [keras.Variable(rng.standard_normal(s).astype("float32"), name=f"v{i}") for i, s in enumerate(shapes)]
    optimizer = SGDSaI(learning_rate=0.1)
    optimizer.build(variables)
    calls = []
    original = optimizer_module.raw_gsnr

    def counting(grad, **kwargs):
        calls.append(tuple(grad.shape))
        return original(grad, **kwargs)

    optimizer_module.raw_gsnr = counting
    try:
        for step in range(4):  # block 1 first gets a gradient at step 3
            present = [i for i in range(3) if not (i == 1 and step < 2)]
            grads = [rng.standard_normal(shapes[i]).astype("float32") for i in present]
            optimizer.apply(grads, [variables[i] for i in present])
    finally:
        optimizer_module.raw_gsnr = original
    ok = sorted(calls) == sorted(shapes)
    return _Result(ok, f"g-SNR evaluations over 4 eager steps (one block late): {calls}")


def check_bfloat16_statistics_in_float32() -> _Result:
    import keras
    import numpy as np

    from sai_conformance import TOLERANCES
    from sai_conformance._cases import round_to_dtype
    from sai_core import ReferenceSGDSaI

    rng = np.random.default_rng(9)
    shapes = [(64, 64), (64,)]
    grads = [round_to_dtype(0.3 + rng.standard_normal(s), "bfloat16") for s in shapes]
    variables = [keras.Variable(np.ones(s), dtype="bfloat16", name=f"w{i}") for i, s in enumerate(shapes)]
    from sai_keras import SGDSaI

    optimizer = SGDSaI(learning_rate=0.1)
    optimizer.apply([keras.ops.convert_to_tensor(g, dtype="bfloat16") for g in grads], variables)
    reference = ReferenceSGDSaI([np.ones(s) for s in shapes], lr=0.1)
    reference.step(grads)
    # The scales are statistics of the exact bfloat16 gradient: computed in float32 they carry
    # float32 error only (a bfloat16 sum of 4096 elements would be off by ~1e-2).
    rtol = TOLERANCES["float32"].one_step
    got = [float(_np(s)) for s in optimizer.scales] + [float(_np(optimizer.max_gsnr))]
    want = [float(s) for s in reference.scale] + [float(reference.max_gsnr)]
    errors = [abs(g - w) / abs(w) for g, w in zip(got, want)]
    dtypes = {keras.backend.standardize_dtype(s.dtype) for s in optimizer.scales}
    ok = max(errors) <= rtol and dtypes == {"float32"}
    return _Result(ok, f"scale/M rel errors {errors} (rtol {rtol:g}, float32), scale dtypes {dtypes}")


def check_fit_matches_reference(variant_name: str) -> _Result:
    variant = REFERENCE_VARIANTS[variant_name]
    x, y, kernel, bias = _linear_data()
    optimizer = _make_optimizer(variant)
    model = _linear_model(kernel, bias, optimizer)
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    params, reference = _reference_fit(variant, x, y, kernel, bias, batch=8, epochs=2)
    rtol = _float32_trajectory_rtol()
    weights = _compare_blocks([_np(w) for w in model.weights], params, rtol, "weights")
    state = _optimizer_state(optimizer)
    scales = _compare_blocks(
        state["scales"] + [state["max_gsnr"]], list(reference.scale) + [reference.max_gsnr], rtol, "S and M"
    )
    return _Result(weights.ok and scales.ok and all(state["initialized"]), f"{weights.detail}; {scales.detail}")


# ----------------------------------------------------------------------------------------------
# Contract v2: defaults, deferred initialization, the overflow-safe statistic, zero-size variables.
# The apply-level checks run every APPLY_MODES mode of the backend, in float32 and (where the
# backend stores it) float64, with hand-made gradients.


def check_defaults() -> _Result:
    import keras

    from sai_core import DEFAULT_HYPERPARAMETERS, DEFAULT_PRESET
    from sai_keras import SGDSaI

    config = SGDSaI().get_config()
    want = {
        "preset": "sgd-sai",
        "momentum": 0.9,
        "weight_decay": 1e-2,
        "epsilon": 1e-8,
        "maximize": False,
        "normalize": "none",
        "zero_gradient": "defer",
    }
    problems = [f"{k}: {config[k]!r} != {v!r}" for k, v in want.items() if config[k] != v]
    # The learning rate lives in a floatx variable; get_config reads it back at that precision.
    lr = float(keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(1e-3, keras.config.floatx())))
    if config["learning_rate"] != lr:
        problems.append(f"learning_rate: {config['learning_rate']!r} != 1e-3 in {keras.config.floatx()}")
    # One place: the defaults are sai_core's.
    core = {"learning_rate": "lr", "epsilon": "eps"}
    for key in ("momentum", "weight_decay", "epsilon", "maximize"):
        if config[key] != DEFAULT_HYPERPARAMETERS[core.get(key, key)]:
            problems.append(f"{key}: {config[key]!r} is not sai_core.DEFAULT_HYPERPARAMETERS'")
    if DEFAULT_PRESET != config["preset"] or DEFAULT_HYPERPARAMETERS["lr"] != 1e-3:
        problems.append(f"sai_core defaults: {DEFAULT_PRESET!r}, {dict(DEFAULT_HYPERPARAMETERS)}")
    shown = {k: config[k] for k in ("preset", "learning_rate", *want)}
    return _Result(not problems, "; ".join(problems) or f"SGDSaI() config {shown}")


def _dtypes() -> list[str]:
    from sai_conformance.runners.keras_runner import stores_float64

    return ["float32", "float64"] if stores_float64() else ["float32"]


def _applier(optimizer, variables, mode: str) -> Callable[[list[Any]], None]:
    """``apply(grads)`` of ``optimizer`` on ``variables`` as ``mode`` runs it (``None``: no gradient)."""
    from sai_conformance.runners.keras_runner import applier

    optimizer.build(variables)
    run = applier(optimizer, variables, mode)

    def apply(grads):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Keras warns about every None gradient
            run(grads)

    return apply


@dataclasses.dataclass
class _State:
    """Everything an apply can change, as NumPy arrays in the stored dtype (bits comparable)."""

    params: list
    buffers: list
    scales: list
    flags: list
    max_gsnr: Any


def _state(optimizer, variables) -> _State:
    import keras
    import numpy as np

    def raw(x):
        return np.array(keras.ops.convert_to_numpy(x))

    return _State(
        params=[raw(v) for v in variables],
        buffers=[raw(b) for b in optimizer.momentums],
        scales=[raw(s) for s in optimizer.scales],
        flags=[bool(raw(f)) for f in optimizer.initialized],
        max_gsnr=raw(optimizer.max_gsnr),
    )


def _replay(mode: str, dtype: str, initial: list, steps: list[list], preset: str, **hyper: Any) -> list[_State]:
    """Applies ``steps`` (rows of float64 arrays or ``None``) to fresh ``dtype`` variables."""
    import keras

    from sai_conformance.runners.keras_runner import floatx
    from sai_keras import SGDSaI

    kwargs = {"learning_rate": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, **hyper}
    with floatx(dtype):
        variables = [keras.Variable(p, dtype=dtype, name=f"block{i}") for i, p in enumerate(initial)]
        optimizer = SGDSaI(preset=preset, **kwargs)
        apply = _applier(optimizer, variables, mode)
    states = [_state(optimizer, variables)]
    for row in steps:
        apply([None if g is None else keras.ops.convert_to_tensor(g, dtype=dtype) for g in row])
        states.append(_state(optimizer, variables))
    return states


def _reference_replay(initial: list, steps: list[list], preset: str, **hyper: Any):
    """The float64 reference on the same (dtype-rounded) values: its scales and M after each step."""
    from sai_core import ReferenceSGDSaI

    kwargs = {"lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY, **hyper}
    reference = ReferenceSGDSaI([p.copy() for p in initial], preset=preset, **kwargs)
    after = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NonFiniteGradientWarning: expected here
        for row in steps:
            reference.step(row)
            after.append(([None if s is None else float(s) for s in reference.scale], reference.max_gsnr))
    return after


def _rel(got: float, want: float) -> float:
    return abs(got - want) / abs(want) if want != 0 else abs(got)


def _bad_gradient(kind: str, shape: tuple, rng) -> Any:
    import numpy as np

    if kind == "none":
        return None
    if kind == "zero":
        return np.zeros(shape)
    values = rng.standard_normal(shape)
    values.reshape(-1)[3] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    return values


# The bad first gradient each preset is checked with; "none" is the apply it must equal.
_DEFERRAL_KINDS: dict[str, tuple[str, ...]] = {
    "sgd-sai": ("none", "nan", "inf", "zero"),
    "paper": ("none", "-inf", "zero"),
}


def _deferral_inputs(dtype: str, kind: str):
    import numpy as np

    from sai_conformance._cases import round_to_dtype

    # Block 1 is the bad one; the others have offsets so that their g-SNRs (and M) differ.
    shapes = [(8, 16), (4, 4), (7,), ()]
    rng = np.random.default_rng(21)
    initial = [round_to_dtype(rng.standard_normal(s), dtype) for s in shapes]
    rows = [[round_to_dtype(0.5 * i + rng.standard_normal(s), dtype) for i, s in enumerate(shapes)] for _ in range(2)]
    bad = _bad_gradient(kind, shapes[1], np.random.default_rng(22))
    rows[0][1] = None if bad is None else round_to_dtype(bad, dtype)
    return initial, rows


def deferral_checks(backend: str) -> dict[str, _Result]:
    """``first_gradient_deferred[mode]``: NaN / inf / all-zero first gradients, per apply mode.

    For each preset, dtype and bad kind, the apply with the bad first gradient of block 1 must
    leave every other block's scale, ``M``, parameters and buffer exactly (==) as the apply where
    block 1 has no gradient; block 1 itself stays bit-identical with its flag false, buffer zero
    and scale unset; at its first finite gradient (step 2) it initializes, with the float64
    reference's scale within the dtype's one-step tolerance. Under the port preset
    ``sgd-sai-1.0.3`` an all-zero first gradient initializes at once (``G = 0 / eps = 0``), as the
    reference says.
    """
    import numpy as np

    from sai_conformance import TOLERANCES

    results = {}
    for mode in APPLY_MODES[backend]:
        problems, count = [], 0
        for dtype in _dtypes():
            rtol = TOLERANCES[dtype].one_step
            for preset, kinds in _DEFERRAL_KINDS.items():
                runs = {}
                for kind in kinds:
                    initial, rows = _deferral_inputs(dtype, kind)
                    runs[kind] = _replay(mode, dtype, initial, rows, preset)
                    reference = _reference_replay(initial, rows, preset)
                    label = f"{dtype} {preset} {kind}"
                    start, first, second = runs[kind]
                    if first.flags[1] or not second.flags[1]:
                        problems.append(f"{label}: block 1 flag after steps 1, 2 = {first.flags[1]}, {second.flags[1]}")
                    if not all(second.flags):
                        problems.append(f"{label}: flags after step 2 {second.flags}")
                    ref_scales, ref_max = reference[1]
                    errors = [_rel(float(s), r) for s, r in zip(second.scales, ref_scales)]
                    errors.append(_rel(float(second.max_gsnr), float(ref_max)))
                    if max(errors) > rtol:
                        problems.append(f"{label}: step 2 scales/M vs reference rel errors {errors} (rtol {rtol:g})")
                    if kind == "none":
                        continue
                    count += 1
                    # Block 1 is untouched by the bad first gradient, bit for bit.
                    untouched = (
                        first.params[1].tobytes() == start.params[1].tobytes()
                        and first.buffers[1].tobytes() == start.buffers[1].tobytes()
                        and first.scales[1].tobytes() == start.scales[1].tobytes()
                    )
                    if not untouched:
                        problems.append(f"{label}: block 1 changed by its bad first gradient")
                    # Everything else is exactly as without block 1's gradient.
                    other = runs["none"][1]
                    same = (
                        first.flags == other.flags
                        and np.array_equal(first.max_gsnr, other.max_gsnr)
                        and all(
                            np.array_equal(getattr(first, f)[i], getattr(other, f)[i])
                            for f in ("params", "buffers", "scales")
                            for i in (0, 2, 3)
                        )
                    )
                    if not same:
                        problems.append(
                            f"{label}: step 1 differs from the apply without block 1's gradient: scales "
                            f"{[float(x) for x in first.scales]} vs {[float(x) for x in other.scales]}, "
                            f"M {float(first.max_gsnr)} vs {float(other.max_gsnr)}"
                        )
            # A port preset: the all-zero first gradient is a constant one and initializes.
            initial, rows = _deferral_inputs(dtype, "zero")
            states = _replay(mode, dtype, initial, rows, "sgd-sai-1.0.3")
            ref_scales, ref_max = _reference_replay(initial, rows, "sgd-sai-1.0.3")[0]
            errors = [_rel(float(s), r) for s, r in zip(states[1].scales, ref_scales)] + [
                _rel(float(states[1].max_gsnr), float(ref_max))
            ]
            count += 1
            if not all(states[1].flags) or max(errors) > rtol or float(states[1].scales[1]) != ref_scales[1]:
                problems.append(
                    f"{dtype} sgd-sai-1.0.3 zero: flags after step 1 {states[1].flags}, scale of block 1 "
                    f"{float(states[1].scales[1])} (reference {ref_scales[1]}), rel errors {errors}"
                )
        results[f"first_gradient_deferred[{mode}]"] = _Result(
            not problems and count > 0,
            "; ".join(problems) or f"{count} bad first gradients ({_dtypes()}) deferred as the reference defers",
        )
    return results


def overflow_checks(backend: str) -> dict[str, _Result]:
    """``overflow_statistic[mode]``: float32 first gradients ~1e30 (squares overflow) and ~1e-30.

    The scales and ``M`` equal the float64 reference's on the same float32 values within the
    float32 one-step tolerance, under ``sgd-sai`` and ``paper``; parameters stay finite.
    """
    import numpy as np

    from sai_conformance import TOLERANCES
    from sai_conformance._cases import round_to_dtype

    rng = np.random.default_rng(31)
    shapes = [(8, 16), (7,), (16, 1)]
    initial = [round_to_dtype(rng.standard_normal(s), "float32") for s in shapes]
    factors = [1e30, 1e-30, 1.0]
    rows = [
        [
            round_to_dtype(f * (0.5 * i + rng.standard_normal(s)), "float32")
            for i, (f, s) in enumerate(zip(factors, shapes))
        ]
    ]
    rows.append([round_to_dtype(rng.standard_normal(s), "float32") for s in shapes])
    rtol = TOLERANCES["float32"].one_step
    results = {}
    for mode in APPLY_MODES[backend]:
        problems, details = [], []
        for preset in ("sgd-sai", "paper"):
            states = _replay(mode, "float32", initial, rows, preset, weight_decay=0.0)
            ref_scales, ref_max = _reference_replay(initial, rows, preset, weight_decay=0.0)[0]
            got = [float(s) for s in states[1].scales] + [float(states[1].max_gsnr)]
            want = list(ref_scales) + [float(ref_max)]
            errors = [_rel(g, w) for g, w in zip(got, want)]
            finite = all(np.all(np.isfinite(p)) for s in states for p in s.params)
            details.append(f"{preset}: scales/M {got} vs reference {want}, rel errors {errors}")
            if max(errors) > rtol or not finite or not all(states[1].flags):
                problems.append(details[-1] + f", params finite {finite}, flags {states[1].flags}")
        results[f"overflow_statistic[{mode}]"] = _Result(
            not problems, "; ".join(problems or details) + f" (rtol {rtol:g})"
        )
    return results


def zero_size_checks(backend: str) -> dict[str, _Result]:
    """``zero_size_never_sets_m[mode]``: zero-size variables never initialize nor set ``M``.

    Step 1: the zero-size variables have (empty) gradients, the others none or all-zero ones
    (deferred), so nothing initializes and ``M`` stays unset. Step 2: ``M`` is the largest g-SNR
    of the other variables (the reference's, within tolerance); the zero-size ones stay
    uninitialized.
    """
    import numpy as np

    from sai_conformance import TOLERANCES
    from sai_conformance._cases import round_to_dtype

    shapes = [(0,), (8, 16), (2, 0, 3), (7,)]
    results = {}
    for mode in APPLY_MODES[backend]:
        problems, count = [], 0
        for dtype in _dtypes():
            rng = np.random.default_rng(41)
            initial = [round_to_dtype(rng.standard_normal(s), dtype) for s in shapes]
            for other in ("absent", "zero"):
                first = [np.zeros(s) if i in (0, 2) or other == "zero" else None for i, s in enumerate(shapes)]
                rows = [first, [round_to_dtype(0.5 * i + rng.standard_normal(s), dtype) for i, s in enumerate(shapes)]]
                states = _replay(mode, dtype, initial, rows, "paper")
                ref_scales, ref_max = _reference_replay(initial, rows, "paper")[1]
                count += 1
                label = f"{dtype}, others {other} at step 1"
                if any(states[1].flags) or float(states[1].max_gsnr) != 0.0:
                    problems.append(f"{label}: after step 1 flags {states[1].flags}, M {float(states[1].max_gsnr)}")
                if states[1].params[1].tobytes() != states[0].params[1].tobytes():
                    problems.append(f"{label}: block 1 changed at step 1")
                if states[2].flags != [False, True, False, True]:
                    problems.append(f"{label}: flags after step 2 {states[2].flags}")
                error = _rel(float(states[2].max_gsnr), float(ref_max))
                if error > TOLERANCES[dtype].one_step:
                    problems.append(f"{label}: M {float(states[2].max_gsnr)} vs reference {float(ref_max)}")
        results[f"zero_size_never_sets_m[{mode}]"] = _Result(
            not problems and count > 0,
            "; ".join(problems) or f"{count} runs ({_dtypes()}): zero-size variables never set M",
        )
    return results


@dataclasses.dataclass(frozen=True)
class _BadApply:
    desc: str
    second: tuple[str, Any]  # the second variable: (dtype, shape); the first is float32 (3, 4) "w"
    good: Callable[[], list]  # a valid first apply's gradients
    bad: Callable[[], list]  # the bad apply's gradients
    message: str  # a fragment the ValueError must contain


def _bad_applies() -> list[_BadApply]:
    import numpy as np

    w = np.linspace(-1.0, 2.0, 12, dtype="float32").reshape(3, 4)
    b = np.array([1.0, -2.0, 0.5], "float32")
    return [
        _BadApply(
            "integer variable",
            ("int32", (3,)),
            lambda: [w, None],
            lambda: [w, np.ones(3, "int32")],
            "Invalid variable 'x': dtype int32",
        ),
        _BadApply(
            "complex gradient (Keras would drop its imaginary part)",
            ("float32", (3,)),
            lambda: [w, b],
            lambda: [w, (b + 1j * b).astype("complex64")],
            "Invalid gradient for variable 'x': dtype complex64",
        ),
        _BadApply(
            "integer gradient",
            ("float32", (3,)),
            lambda: [w, b],
            lambda: [w, np.ones(3, "int32")],
            "Invalid gradient for variable 'x': dtype int32",
        ),
        _BadApply(
            "gradient of another shape, as many elements (was reshaped silently)",
            ("float32", (3,)),
            lambda: [w, b],
            lambda: [w.reshape(12), b],
            "Invalid gradient for variable 'w': shape (12,)",
        ),
        _BadApply(
            "gradient of another shape (1, 4)",
            ("float32", (3,)),
            lambda: [w, b],
            lambda: [w[:1], b],
            "Invalid gradient for variable 'w': shape (1, 4), but the variable has shape (3, 4)",
        ),
    ]


def bad_apply_checks(backend: str) -> dict[str, _Result]:
    """``bad_apply_changes_nothing[mode]``: an ``apply`` that raises changes nothing (SPEC.md step 0).

    Per case: a valid apply first (so that buffers, scales and ``M`` hold values), then a bad
    one, which must raise a ``ValueError`` naming the variable, leaving every variable and every
    optimizer variable (``iterations`` included) bit for bit as it was. Eagerly, a bad *first*
    apply must also leave the optimizer unbuilt.
    """
    import keras
    import numpy as np

    from sai_keras import SGDSaI

    def snapshot(optimizer, variables):
        return [np.array(keras.ops.convert_to_numpy(v)) for v in list(variables) + list(optimizer.variables)]

    def make(case):
        dtype, shape = case.second
        # trainable=False for the integer variable: torch cannot create a trainable one, and
        # Keras's apply does not look at the flag.
        second = keras.Variable(np.ones(shape), dtype=dtype, name="x", trainable=dtype.startswith("float"))
        return [keras.Variable(np.ones((3, 4)), dtype="float32", name="w"), second]

    results = {}
    for mode in APPLY_MODES[backend]:
        problems, count = [], 0
        for case in _bad_applies():
            variables = make(case)
            optimizer = SGDSaI(learning_rate=LR, weight_decay=WEIGHT_DECAY)
            apply = _applier(optimizer, variables, mode)
            apply(case.good())
            before = snapshot(optimizer, variables)
            try:
                apply(case.bad())
                problems.append(f"{case.desc}: no error")
            except ValueError as error:
                if case.message not in str(error):
                    problems.append(f"{case.desc}: message {str(error)[:300]!r} lacks {case.message!r}")
            after = snapshot(optimizer, variables)
            if len(before) != len(after) or any(a.tobytes() != b.tobytes() for a, b in zip(before, after)):
                problems.append(f"{case.desc}: a variable or optimizer variable changed")
            count += 1
            if mode == "eager":
                variables = make(case)
                fresh = SGDSaI()
                try:
                    fresh.apply(case.bad(), variables)
                    problems.append(f"{case.desc}: first apply, no error")
                except ValueError:
                    pass
                if fresh.built or any(np.any(keras.ops.convert_to_numpy(v) != 1) for v in variables):
                    problems.append(f"{case.desc}: a failed first apply built the optimizer or changed a variable")
        results[f"bad_apply_changes_nothing[{mode}]"] = _Result(
            not problems and count > 0, "; ".join(problems) or f"{count} bad applies raised by name and changed nothing"
        )
    return results


def _sparse_forms(backend: str, dense) -> dict[str, Any]:
    """The backend's sparse representations of ``dense`` (a 2-D float32 NumPy array)."""
    import numpy as np

    if backend == "jax":
        from jax.experimental import sparse

        return {"BCOO": sparse.BCOO.fromdense(dense)}
    import tensorflow as tf

    rows = np.flatnonzero(np.any(dense != 0, axis=1))
    # IndexedSlices may repeat an index (an Embedding looked up twice): the values add up.
    indices = np.concatenate([rows, rows[:1]])
    values = np.concatenate([dense[rows], np.zeros_like(dense[rows[:1]])])
    values[-1] = values[0] = 0.5 * dense[rows[0]]  # halves: exact in binary floating point
    nonzero = np.argwhere(dense != 0)
    return {
        "IndexedSlices": tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant(dense.shape)),
        "SparseTensor": tf.sparse.SparseTensor(nonzero, dense[dense != 0], dense.shape),
    }


def sparse_checks(backend: str) -> dict[str, _Result]:
    """``sparse_gradient_equals_dense[mode]``: sparse gradients give the dense gradient's result, exactly.

    An embedding-like (6, 4) variable gets gradients with zero rows as the backend's sparse
    tensors, a (3,) variable dense ones, for 3 applies (momentum 0.9 and 0); every variable and
    optimizer variable must equal, bit for bit, the run with the same gradients dense.
    """
    import keras
    import numpy as np

    from sai_keras import SGDSaI

    rng = np.random.default_rng(51)
    dense_rows = []
    for step in range(3):
        table = rng.standard_normal((6, 4)).astype("float32")
        table[[1, 4] if step else [0, 2, 5]] = 0.0
        dense_rows.append([table, rng.standard_normal(3).astype("float32")])
    results = {}
    for mode in APPLY_MODES[backend]:
        problems, count = [], 0
        for momentum in (MOMENTUM, 0.0):
            runs = {}
            for form in ["dense", *_sparse_forms(backend, dense_rows[0][0])]:
                variables = [
                    keras.Variable(np.ones((6, 4)), dtype="float32", name="table"),
                    keras.Variable(np.ones(3), dtype="float32", name="bias"),
                ]
                optimizer = SGDSaI(learning_rate=LR, momentum=momentum, weight_decay=WEIGHT_DECAY)
                apply = _applier(optimizer, variables, mode)
                try:
                    for table, bias in dense_rows:
                        apply([table if form == "dense" else _sparse_forms(backend, table)[form], bias])
                except Exception as error:  # reported, with the form that failed
                    problems.append(f"momentum {momentum} {form}: {type(error).__name__}: {str(error)[:300]}")
                    continue
                runs[form] = [np.array(keras.ops.convert_to_numpy(v)) for v in variables + list(optimizer.variables)]
            for form, state in runs.items():
                if form == "dense":
                    continue
                count += 1
                if any(a.tobytes() != b.tobytes() for a, b in zip(state, runs["dense"])):
                    problems.append(f"momentum {momentum} {form}: state differs from the dense gradients' run")
        results[f"sparse_gradient_equals_dense[{mode}]"] = _Result(
            not problems and count > 0, "; ".join(problems) or f"{count} sparse runs equal the dense ones bit for bit"
        )
    return results


def check_fit_zero_first_batch(mode_kwargs: dict[str, Any]) -> _Result:
    """``model.fit`` whose first batch is all zeros: the kernel's first gradient is exactly zero.

    The Dense kernel stays uninitialized and untouched (no decay) for that step while the bias
    initializes; training then matches the reference (which defers the same way) within the
    float32 trajectory tolerance.
    """
    import keras
    import numpy as np

    x, y, kernel, bias = _linear_data()
    x[:8] = 0.0
    model = _linear_model(kernel, bias, _make_optimizer({}), **mode_kwargs)
    optimizer = model.optimizer
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)
    after_first = _optimizer_state(optimizer)
    kernel_after = np.array(keras.ops.convert_to_numpy(model.weights[0]))
    untouched = kernel_after.tobytes() == kernel.tobytes() and after_first["initialized"] == [False, True]
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    params, reference = _reference_fit(
        {}, np.concatenate([x[:8], x, x]), np.concatenate([y[:8], y, y]), kernel, bias, batch=8, epochs=1
    )
    rtol = _float32_trajectory_rtol()
    weights = _compare_blocks([_np(w) for w in model.weights], params, rtol, "weights")
    state = _optimizer_state(optimizer)
    scales = _compare_blocks(
        state["scales"] + [state["max_gsnr"]], list(reference.scale) + [reference.max_gsnr], rtol, "S and M"
    )
    ok = untouched and weights.ok and scales.ok and all(state["initialized"])
    return _Result(
        ok, f"after the zero batch {after_first}, kernel untouched: {untouched}; {weights.detail}; {scales.detail}"
    )


def _fit_run(mode_kwargs: dict[str, Any], initial_weights) -> dict[str, Any]:
    from sai_keras import SGDSaI

    x, y = _mlp_data()
    model = _mlp(initial_weights)
    optimizer = SGDSaI(learning_rate=LR, weight_decay=WEIGHT_DECAY)
    model.compile(optimizer=optimizer, loss="mse", **mode_kwargs)
    model.fit(x[:8], y[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)  # exactly one step
    after_first = _optimizer_state(optimizer)
    weights_first = [_np(w) for w in model.weights]
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    return {
        "after_first": after_first,
        "final_state": _optimizer_state(optimizer),
        "weights_first": weights_first,
        "weights": [_np(w) for w in model.weights],
    }


def fit_mode_checks(backend: str) -> dict[str, _Result]:
    import numpy as np

    initial = [np.asarray(w) for w in _mlp().get_weights()]
    runs = {}
    results: dict[str, _Result] = {}
    for mode, kwargs in FIT_MODES[backend]:
        try:
            runs[mode] = _fit_run(kwargs, initial)
        except Exception:  # reported per check, not fatal to the other modes
            results[f"fit[{mode}]_scales_fixed_after_first_step"] = _Result(False, traceback.format_exc())
            continue
        run = runs[mode]
        first, final = run["after_first"], run["final_state"]
        moved = all(not np.array_equal(a, b) for a, b in zip(run["weights"], run["weights_first"]))
        moved_first = all(not np.array_equal(a, b) for a, b in zip(run["weights_first"], initial))
        ok = first == final and all(first["initialized"]) and min(first["scales"]) > 0 and moved and moved_first
        results[f"fit[{mode}]_scales_fixed_after_first_step"] = _Result(
            ok, f"after step 1 {first}; after 9 steps {final}; weights moved at step 1: {moved_first}, later: {moved}"
        )
    rtol = _float32_trajectory_rtol()
    for mode, _ in FIT_MODES[backend]:
        if mode == "eager":
            continue
        if mode not in runs or "eager" not in runs:
            results[f"fit[{mode}]_equals_eager"] = _Result(False, "a run failed (see the scales check)")
            continue
        weights = _compare_blocks(runs[mode]["weights"], runs["eager"]["weights"], rtol, "weights vs run_eagerly")
        scales = _compare_blocks(
            runs[mode]["final_state"]["scales"], runs["eager"]["final_state"]["scales"], rtol, "scales vs run_eagerly"
        )
        results[f"fit[{mode}]_equals_eager"] = _Result(weights.ok and scales.ok, f"{weights.detail}; {scales.detail}")
    return results


def check_save_load_continuation() -> _Result:
    import keras
    import numpy as np

    from sai_keras import SGDSaI

    x, y = _mlp_data()
    initial = [np.asarray(w) for w in _mlp().get_weights()]

    def compiled(model):
        model.compile(
            optimizer=SGDSaI(learning_rate=LR, weight_decay=WEIGHT_DECAY, exclude_from_weight_decay=["bias"]),
            loss="mse",
        )
        return model

    interrupted = compiled(_mlp(initial))
    interrupted.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.keras")
        interrupted.save(path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = keras.models.load_model(path)  # sai_keras is imported; no custom_objects
    skipped = [str(w.message) for w in caught if "Skipping variable loading" in str(w.message)]
    restored = all(
        np.array_equal(_np(a), _np(b)) for a, b in zip(interrupted.optimizer.variables, loaded.optimizer.variables)
    ) and len(interrupted.optimizer.variables) == len(loaded.optimizer.variables)
    same_config = loaded.optimizer.get_config() == interrupted.optimizer.get_config()
    loaded.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    uninterrupted = compiled(_mlp(initial))
    uninterrupted.fit(x, y, batch_size=8, epochs=4, shuffle=False, verbose=0)
    weights = _compare_blocks(
        [_np(w) for w in loaded.weights],
        [_np(w) for w in uninterrupted.weights],
        _float32_trajectory_rtol(),
        "2+2 vs 4 epochs",
    )
    state = _compare_blocks(
        [_np(v) for v in loaded.optimizer.variables],
        [_np(v) for v in uninterrupted.optimizer.variables],
        _float32_trajectory_rtol(),
        "optimizer variables",
    )
    ok = isinstance(loaded.optimizer, SGDSaI) and restored and same_config and not skipped and weights.ok and state.ok
    return _Result(
        ok,
        f"type {type(loaded.optimizer).__name__}, state restored exactly: {restored}, config equal: {same_config}, "
        f"skipped loads: {skipped}; {weights.detail}; {state.detail}",
    )


def _mixed_precision_run(policy: str) -> tuple[Any, Any, list[float]]:
    import keras

    from sai_keras import SGDSaI

    keras.mixed_precision.set_global_policy(policy)
    try:
        x, y = _mlp_data()
        model = _mlp()
        model.compile(optimizer=SGDSaI(learning_rate=LR, weight_decay=WEIGHT_DECAY), loss="mse")
        history = model.fit(x, y, batch_size=8, epochs=6, shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return model, model.optimizer, history.history["loss"]


def check_mixed_bfloat16() -> _Result:
    import keras
    import numpy as np

    model, optimizer, losses = _mixed_precision_run("mixed_bfloat16")
    compute = {layer.compute_dtype for layer in model.layers if layer.weights}
    state = _optimizer_state(optimizer)
    dtypes = {
        keras.backend.standardize_dtype(v.dtype) for v in [*optimizer.scales, optimizer.max_gsnr, *optimizer.momentums]
    }
    ok = (
        compute == {"bfloat16"}
        and dtypes == {"float32"}
        and all(state["initialized"])
        and 0 < min(state["scales"]) <= max(state["scales"]) == state["max_gsnr"]  # sgd-sai: S = G
        and bool(np.all(np.isfinite(losses)))
        and losses[-1] < losses[0]
    )
    return _Result(ok, f"compute dtypes {compute}, state dtypes {dtypes}, state {state}, losses {losses}")


def check_mixed_float16_loss_scaling() -> _Result:
    import keras
    import numpy as np

    from sai_keras import SGDSaI

    model, wrapper, losses = _mixed_precision_run("mixed_float16")
    inner = getattr(wrapper, "inner_optimizer", None)
    if not isinstance(wrapper, keras.optimizers.LossScaleOptimizer) or not isinstance(inner, SGDSaI):
        return _Result(False, f"optimizer {type(wrapper).__name__} / {type(inner).__name__}")
    state = _optimizer_state(inner)
    dtypes = {keras.backend.standardize_dtype(v.dtype) for v in [*inner.scales, inner.max_gsnr]}
    ok = (
        dtypes == {"float32"}
        and all(state["initialized"])
        and 0 < min(state["scales"]) <= max(state["scales"]) == state["max_gsnr"]  # sgd-sai: S = G
        and bool(np.all(np.isfinite(losses)))
        and losses[-1] < losses[0]
    )
    return _Result(
        ok, f"loss scale {float(_np(wrapper.dynamic_scale))}, state dtypes {dtypes}, state {state}, losses {losses}"
    )


def _distributed_vs_single(distributed: Callable[[], Any], batch: int) -> _Result:
    """Trains the same model on one device and inside ``distributed()`` (a context manager)."""
    import contextlib

    import numpy as np

    from sai_keras import SGDSaI

    x, y = _mlp_data()
    initial = [np.asarray(w) for w in _mlp().get_weights()]
    trained = []
    for context in (contextlib.nullcontext, distributed):
        with context():
            model = _mlp(initial)
            model.compile(optimizer=SGDSaI(learning_rate=LR, weight_decay=WEIGHT_DECAY), loss="mse")
            model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0)
            trained.append(([_np(w) for w in model.weights], _optimizer_state(model.optimizer)))
    # The replicas' gradients are summed in a different order than one device's batch.
    rtol = _float32_trajectory_rtol()
    weights = _compare_blocks(trained[1][0], trained[0][0], rtol, "weights vs one device")
    scales = _compare_blocks(trained[1][1]["scales"], trained[0][1]["scales"], rtol, "scales vs one device")
    return _Result(weights.ok and scales.ok, f"{weights.detail}; {scales.detail}")


def _distributed_zero_first_batch(distributed: Callable[[], Any]) -> _Result:
    """Deferral across replicas: a zero first batch leaves the kernel uninitialized, as on one device."""
    import contextlib

    import numpy as np

    x, y, kernel, bias = _linear_data()
    x[:8] = 0.0
    trained = []
    for context in (contextlib.nullcontext, distributed):
        with context():
            model = _linear_model(kernel, bias, _make_optimizer({}))
            model.fit(x[:8], y[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)
            first = _optimizer_state(model.optimizer)["initialized"]
            untouched = np.array_equal(_np(model.weights[0]), kernel)
            model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
            trained.append(([_np(w) for w in model.weights], _optimizer_state(model.optimizer), first, untouched))
    rtol = _float32_trajectory_rtol()
    weights = _compare_blocks(trained[1][0], trained[0][0], rtol, "zero first batch: weights vs one device")
    scales = _compare_blocks(trained[1][1]["scales"], trained[0][1]["scales"], rtol, "scales vs one device")
    deferred = trained[1][2] == [False, True] and trained[1][3]
    return _Result(
        weights.ok and scales.ok and deferred,
        f"{weights.detail}; {scales.detail}; flags after the zero batch {trained[1][2]}, kernel untouched {trained[1][3]}",
    )


def check_distribution_data_parallel_8() -> _Result:
    import contextlib

    import jax
    import keras

    devices = jax.devices()
    if len(devices) != 8:
        return _Result(False, f"{len(devices)} devices; run with XLA_FLAGS=--xla_force_host_platform_device_count=8")

    @contextlib.contextmanager
    def data_parallel():
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)

    result = _distributed_vs_single(data_parallel, batch=8)
    deferred = _distributed_zero_first_batch(data_parallel)
    return _Result(
        result.ok and deferred.ok,
        f"8 host devices, one sample of each batch of 8 per device; {result.detail}; {deferred.detail}",
    )


def check_distribution_mirrored_2() -> _Result:
    import tensorflow as tf

    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < 2:
        return _Result(False, f"logical CPU devices {devices}")
    strategy = tf.distribute.MirroredStrategy(devices[:2])
    result = _distributed_vs_single(strategy.scope, batch=8)
    deferred = _distributed_zero_first_batch(strategy.scope)
    return _Result(
        result.ok and deferred.ok, f"MirroredStrategy over {devices[:2]}; {result.detail}; {deferred.detail}"
    )


def conformance_results(compiled: bool, float64_only: bool) -> list[dict[str, Any]]:
    from sai_conformance import check_case, load_cases
    from sai_conformance._harness import MODES
    from sai_conformance.runners.keras_runner import KerasRunner

    runner = KerasRunner(compiled=compiled)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras warns about every None gradient of absent blocks
        for case in load_cases():
            if float64_only and case.dtype != "float64":
                continue
            for mode in MODES:
                out.append(dataclasses.asdict(check_case(runner, case, mode)))
    return out


# ----------------------------------------------------------------------------------------------


def _prepare_backend(backend: str) -> None:
    # Must run before anything initializes the backend's runtime.
    if backend == "tensorflow":
        import tensorflow as tf

        (cpu,) = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


def run(config: str, only: str | None) -> dict[str, Any]:
    backend = "jax" if config == "jax-x64" else config
    if os.environ.get("KERAS_BACKEND") != backend:
        raise SystemExit(f"KERAS_BACKEND={os.environ.get('KERAS_BACKEND')!r} but config {config!r} needs {backend!r}")
    _prepare_backend(backend)
    import keras

    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    checks: dict[str, dict[str, Any]] = {}
    wanted = [n for n in check_names(config) if only is None or only in n]

    def record(name: str, function: Callable[[], _Result]) -> None:
        t0 = time.perf_counter()
        try:
            result = function()
        except Exception:
            result = _Result(False, traceback.format_exc())
        checks[name] = {"ok": bool(result.ok), "detail": result.detail, "seconds": round(time.perf_counter() - t0, 2)}

    simple = {
        "doctests": check_doctests,
        "docs_example": check_docs_example,
        "namespace_contract": check_namespace_contract,
        "runner_discovery": check_runner_discovery,
        "validation_errors": check_validation_errors,
        "defaults": check_defaults,
        "config_round_trip": check_config_round_trip,
        "optimizer_by_name": check_optimizer_by_name,
        "absent_gradient_none_equals_subset": check_absent_gradient_none_equals_subset,
        "bfloat16_statistics_in_float32": check_bfloat16_statistics_in_float32,
        "gsnr_evaluated_once_per_variable": check_gsnr_evaluated_once_per_variable,
        "save_load_continuation": check_save_load_continuation,
        "mixed_bfloat16": check_mixed_bfloat16,
        "mixed_float16_loss_scaling": check_mixed_float16_loss_scaling,
        "distribution_data_parallel_8": check_distribution_data_parallel_8,
        "distribution_mirrored_2": check_distribution_mirrored_2,
    }
    simple.update(
        {f"fit_matches_reference[{v}]": (lambda v=v: check_fit_matches_reference(v)) for v in REFERENCE_VARIANTS}
    )
    simple.update(
        {
            f"fit[{mode}]_zero_first_batch_deferred": (lambda kwargs=kwargs: check_fit_zero_first_batch(kwargs))
            for mode, kwargs in FIT_MODES[backend]
        }
    )
    for name in wanted:
        if name in simple:
            record(name, simple[name])
    groups = {
        "first_gradient_deferred": deferral_checks,
        "overflow_statistic": overflow_checks,
        "zero_size_never_sets_m": zero_size_checks,
        "bad_apply_changes_nothing": bad_apply_checks,
        "sparse_gradient_equals_dense": sparse_checks,
    }
    for prefix, function in groups.items():
        names = [n for n in wanted if n.startswith(prefix + "[")]
        if not names:
            continue
        t0 = time.perf_counter()
        try:
            group_results = function(backend)
        except Exception:
            group_results = {n: _Result(False, traceback.format_exc()) for n in names}
        for name in names:
            result = group_results.get(name, _Result(False, f"{prefix} did not report {name}"))
            checks[name] = {
                "ok": bool(result.ok),
                "detail": result.detail,
                "seconds": round(time.perf_counter() - t0, 2),
            }
    if any(n.startswith("fit[") for n in wanted):
        t0 = time.perf_counter()
        try:
            mode_results = fit_mode_checks(backend)
        except Exception:
            mode_results = {n: _Result(False, traceback.format_exc()) for n in wanted if n.startswith("fit[")}
        for name, result in mode_results.items():
            checks[name] = {"ok": result.ok, "detail": result.detail, "seconds": round(time.perf_counter() - t0, 2)}
    conformance: dict[str, list[dict[str, Any]]] = {}
    if only is None or only == "conformance":
        for label, compiled in conformance_plan(config):
            t0 = time.perf_counter()
            conformance[label] = conformance_results(compiled, float64_only=(config == "jax-x64"))
            checks[f"conformance-{label}-seconds"] = {
                "ok": True,
                "detail": "",
                "seconds": round(time.perf_counter() - t0, 2),
            }
    return {
        "config": config,
        "backend": keras.backend.backend(),
        "checks": checks,
        "conformance": conformance,
        "seconds": round(time.perf_counter() - started, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="tensorflow, jax, jax-x64 or torch (default: KERAS_BACKEND)")
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--only", default=None, help="run only checks whose name contains this")
    args = parser.parse_args(argv)
    config = args.config or os.environ.get("KERAS_BACKEND", "")
    results = run(config, args.only)
    with open(args.out, "w") as handle:
        json.dump(results, handle, indent=1)
    failed = [n for n, c in results["checks"].items() if not c["ok"]]
    failed += [
        f"{r['runner']} {r['case']} {r['mode']}"
        for rows in results["conformance"].values()
        for r in rows
        if r["status"] not in ("pass", "n/a", "xfail")
    ]
    print(f"{config}: {len(results['checks'])} checks, {len(failed)} failed, {results['seconds']} s", file=sys.stderr)
    for name in failed:
        print(f"  FAILED {name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
