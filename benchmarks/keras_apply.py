"""Benchmark: ``sai_keras.SGDSaI.apply`` vs ``keras.optimizers.SGD(momentum=0.9)``, same weight decay.

Times one optimizer ``apply`` on an MLP-shaped set of variables (default ~20M parameters), compiled
the way each backend's ``model.fit`` compiles its train step: a ``tf.function`` (``jit_compile``
False, Keras's default on CPU, and True), ``jax.jit`` of ``stateless_apply`` with the state donated
(as the JAX trainer does), and eager torch (Keras's default for torch). Gradients are fixed random
tensors, so only the optimizer is timed; the first calls (g-SNR initialization, compilation) are
warm-up. Rounds alternate between the two optimizers and an in-place scaling of every variable
(compiled the same way: the yardstick of the bandwidth fraction) so that background load hits all
alike, and the ratio of the medians is printed. ``--json FILE`` also writes every number, with the
optimizer state bytes of SaI, SGD and AdamW (``benchmarks/report.py`` reads it). Each backend runs in its own subprocess (Keras fixes the
backend per process).

Usage::

    python benchmarks/keras_apply.py                      # all backends, ~20M parameters
    python benchmarks/keras_apply.py --params 2e6 --repeats 10 --backends jax
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BACKENDS = ("tensorflow", "jax", "torch")
WEIGHT_DECAY = 1e-2
LEARNING_RATE = 1e-2


def _shapes(params: float, width: int) -> list[tuple[int, ...]]:
    # Dense layers width x width with biases until the target size is reached (at least one).
    shapes: list[tuple[int, ...]] = []
    total = 0
    while total < params or not shapes:
        shapes += [(width, width), (width,)]
        total += width * width + width
    return shapes


def _make_step(optimizer, variables, grads, mode: str):
    """A zero-argument callable running one compiled apply and waiting for it to finish."""
    import keras

    backend = keras.backend.backend()
    optimizer.build(variables)
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda: optimizer.apply(grads, variables), jit_compile=(mode == "xla"))

        def step():
            function()
            optimizer.iterations.numpy()  # waits for the step

        return step
    if backend == "jax":
        import jax

        # As the JAX trainer: the state is donated, so the update can happen in place. The
        # gradients are an argument (closed over, they would be compiled in as constants).
        update = jax.jit(
            lambda opt_state, weights, gradients: optimizer.stateless_apply(opt_state, gradients, weights),
            donate_argnums=(0, 1),
        )
        state = {"opt": [v.value for v in optimizer.variables], "weights": [v.value for v in variables]}

        def step():
            weights, opt = update(state["opt"], state["weights"], grads)
            jax.block_until_ready(weights)
            state["opt"], state["weights"] = opt, weights

        return step
    import torch

    def step():
        with torch.no_grad():
            optimizer.apply(grads, variables)

    return step


def _make_inplace_pass(variables, mode: str):
    """One in-place scaling of every variable, compiled as the optimizers are: the yardstick of
    the bandwidth fraction (it reads and writes each variable once; an SGD step moves 2.5 times
    that: reads p, g, m and writes p, m)."""
    import keras

    backend = keras.backend.backend()
    factors = [2.0, 0.5]  # alternate so that the values stay where they are
    if backend == "tensorflow":
        import tensorflow as tf

        function = tf.function(lambda c: [v.value.assign(v.value * c) for v in variables], jit_compile=(mode == "xla"))

        def step():
            factors.reverse()
            function(tf.constant(factors[0]))
            variables[0].value.numpy()  # waits for the pass

        return step
    if backend == "jax":
        import jax

        scale = jax.jit(lambda values, c: [v * c for v in values], donate_argnums=(0,))
        state = {"values": [keras.ops.copy(v.value) for v in variables]}

        def step():
            factors.reverse()
            state["values"] = scale(state["values"], factors[0])
            jax.block_until_ready(state["values"])

        return step
    import torch

    def step():
        factors.reverse()
        with torch.no_grad():
            torch._foreach_mul_([v.value for v in variables], factors[0])

    return step


def _state_bytes(optimizer) -> int:
    """Bytes of the optimizer's variables except the iteration counter and learning rate."""
    import keras
    import numpy as np

    total = 0
    for variable in optimizer.variables:
        if variable.name in ("iteration", "learning_rate"):
            continue
        itemsize = np.dtype(keras.backend.standardize_dtype(variable.dtype)).itemsize
        total += int(np.prod(variable.shape)) * itemsize
    return total


def _child(args: argparse.Namespace) -> dict:
    import keras
    import numpy as np

    from sai_keras import SGDSaI

    backend = keras.backend.backend()
    modes = {"tensorflow": ("graph", "xla"), "jax": ("jit",), "torch": ("eager",)}[backend]
    shapes = _shapes(args.params, args.width)
    rng = np.random.default_rng(0)
    results = {
        "backend": backend,
        "params": int(sum(np.prod(s) for s in shapes)),
        "modes": {},
        "keras": keras.__version__,
    }
    results["param_bytes"] = 4 * results["params"]
    reference_variables = [keras.Variable(np.zeros(s, "float32")) for s in shapes]
    for label, optimizer in (
        ("sgd", keras.optimizers.SGD(LEARNING_RATE, momentum=0.9, weight_decay=WEIGHT_DECAY)),
        ("sgd_sai", SGDSaI(LEARNING_RATE, momentum=0.9, weight_decay=WEIGHT_DECAY)),
        ("adamw", keras.optimizers.AdamW(LEARNING_RATE, weight_decay=WEIGHT_DECAY)),
    ):
        optimizer.build(reference_variables)
        results[f"{label}_state_bytes"] = _state_bytes(optimizer)
    del reference_variables
    for mode in modes:
        steps = {}
        for label, factory in (
            ("sgd", lambda: keras.optimizers.SGD(LEARNING_RATE, momentum=0.9, weight_decay=WEIGHT_DECAY)),
            ("sgd_sai", lambda: SGDSaI(LEARNING_RATE, momentum=0.9, weight_decay=WEIGHT_DECAY)),
        ):
            variables = [keras.Variable(rng.standard_normal(s).astype("float32") * 0.01) for s in shapes]
            grads = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32")) for s in shapes]
            steps[label] = _make_step(factory(), variables, grads, mode)
        steps["inplace"] = _make_inplace_pass(variables, mode)
        for step in steps.values():
            for _ in range(args.warmup):
                step()
        times = {label: [] for label in steps}
        for _ in range(args.repeats):
            for label, step in steps.items():
                started = time.perf_counter()
                step()
                times[label].append(time.perf_counter() - started)
        sgd, sai = statistics.median(times["sgd"]), statistics.median(times["sgd_sai"])
        inplace = statistics.median(times["inplace"])
        results["modes"][mode] = {
            "sgd_ms": 1e3 * sgd,
            "sgd_sai_ms": 1e3 * sai,
            "ratio": sai / sgd,
            "inplace_ms": 1e3 * inplace,
            # Bandwidth of each step as a fraction of the in-place pass's (2.5x its traffic).
            "sgd_sai_bandwidth_fraction": 2.5 * inplace / sai,
            "sgd_bandwidth_fraction": 2.5 * inplace / sgd,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=20e6, help="approximate parameter count (default 20e6)")
    parser.add_argument("--width", type=int, default=2048, help="width of the square weight matrices")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per optimizer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (compile, g-SNR init)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated Keras backends")
    parser.add_argument("--json", metavar="FILE", help="also write every measured number as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("KERAS_APPLY_RESULT " + json.dumps(_child(args)), flush=True)
        return 0
    print(
        f"optimizer apply, median of {args.repeats} rounds, ~{args.params:.3g} parameters, weight decay {WEIGHT_DECAY}"
    )
    print(f"{'backend':<11} {'mode':<6} {'params':>10} {'SGD ms':>9} {'SaI ms':>9} {'ratio':>6}")
    failed = False
    collected = []
    for backend in args.backends.split(","):
        if backend not in BACKENDS:
            parser.error(f"Invalid backend: {backend!r} (expected some of {BACKENDS})")
        command = [sys.executable, os.path.abspath(__file__), "--child", *_forwarded(args)]
        done = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("KERAS_APPLY_RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"{backend}: failed (exit {done.returncode})\n{done.stderr[-3000:]}")
            failed = True
            continue
        result = json.loads(lines[-1].split(" ", 1)[1])
        collected.append(result)
        for mode, row in result["modes"].items():
            print(
                f"{backend:<11} {mode:<6} {result['params']:>10,} {row['sgd_ms']:>9.2f} "
                f"{row['sgd_sai_ms']:>9.2f} {row['ratio']:>6.3f}"
            )
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"repeats": args.repeats, "results": collected}, out, indent=1)
    return 1 if failed else 0


def _forwarded(args: argparse.Namespace) -> list[str]:
    return [
        "--params",
        str(args.params),
        "--width",
        str(args.width),
        "--repeats",
        str(args.repeats),
        "--warmup",
        str(args.warmup),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
