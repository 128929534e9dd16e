"""Benchmark: ``sai_keras.SGDSaI.apply`` vs ``keras.optimizers.SGD(momentum=0.9)``, same weight decay.

Times one optimizer ``apply`` on an MLP-shaped set of variables (default ~20M parameters), compiled
the way each backend's ``model.fit`` compiles its train step: a ``tf.function`` (``jit_compile``
False, Keras's default on CPU, and True), ``jax.jit`` of ``stateless_apply`` with the state donated
(as the JAX trainer does), and eager torch (Keras's default for torch). Gradients are fixed random
tensors, so only the optimizer is timed; the first calls (g-SNR initialization, compilation) are
warm-up. Rounds alternate between the two optimizers so that background load hits both alike, and
the ratio of the medians is printed. Each backend runs in its own subprocess (Keras fixes the
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


def _child(args: argparse.Namespace) -> dict:
    import numpy as np

    import keras

    from sai_keras import SGDSaI

    backend = keras.backend.backend()
    modes = {"tensorflow": ("graph", "xla"), "jax": ("jit",), "torch": ("eager",)}[backend]
    shapes = _shapes(args.params, args.width)
    rng = np.random.default_rng(0)
    results = {"backend": backend, "params": int(sum(np.prod(s) for s in shapes)), "modes": {}}
    for mode in modes:
        steps = {}
        for label, factory in (
            ("sgd", lambda: keras.optimizers.SGD(LEARNING_RATE, momentum=0.9, weight_decay=WEIGHT_DECAY)),
            ("sgd_sai", lambda: SGDSaI(LEARNING_RATE, momentum=0.9, weight_decay=WEIGHT_DECAY)),
        ):
            variables = [keras.Variable(rng.standard_normal(s).astype("float32") * 0.01) for s in shapes]
            grads = [keras.ops.convert_to_tensor(rng.standard_normal(s).astype("float32")) for s in shapes]
            steps[label] = _make_step(factory(), variables, grads, mode)
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
        results["modes"][mode] = {"sgd_ms": 1e3 * sgd, "sgd_sai_ms": 1e3 * sai, "ratio": sai / sgd}
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=float, default=20e6, help="approximate parameter count (default 20e6)")
    parser.add_argument("--width", type=int, default=2048, help="width of the square weight matrices")
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per optimizer")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (compile, g-SNR init)")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated Keras backends")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("KERAS_APPLY_RESULT " + json.dumps(_child(args)), flush=True)
        return 0
    print(f"optimizer apply, median of {args.repeats} rounds, ~{args.params:.3g} parameters, weight decay {WEIGHT_DECAY}")
    print(f"{'backend':<11} {'mode':<6} {'params':>10} {'SGD ms':>9} {'SaI ms':>9} {'ratio':>6}")
    failed = False
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
        for mode, row in result["modes"].items():
            print(
                f"{backend:<11} {mode:<6} {result['params']:>10,} {row['sgd_ms']:>9.2f} "
                f"{row['sgd_sai_ms']:>9.2f} {row['ratio']:>6.3f}"
            )
    return 1 if failed else 0


def _forwarded(args: argparse.Namespace) -> list[str]:
    return ["--params", str(args.params), "--width", str(args.width), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]


if __name__ == "__main__":
    raise SystemExit(main())
