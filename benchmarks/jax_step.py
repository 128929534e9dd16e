"""Step time and state size of ``sai_jax.sgd_sai`` against optax SGD and AdamW (issue 4).

Every row is the same jitted function, ``step(params, state, grads) -> (params, state)`` =
``opt.update`` + ``optax.apply_updates``, compiled with ``jax.jit(..., donate_argnums=(0, 1))``
(parameters and optimizer state updated in place) on a GPT-2-small-shaped parameter tree
(124,439,808 parameters in 148 leaves by default). Rows are interleaved round by round in one
process and summarised by their medians:

* ``sgd``:          ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr, momentum=0.9))``
* ``sai``:          ``sai_jax.sgd_sai(lr, momentum=0.9, weight_decay=wd)``, steady state
* ``sai first``:    the same compiled ``sai`` step on a state whose initialized flags are reset,
                    so the ``lax.cond`` takes the initialization branch (informativeness checks
                    and statistics of every leaf, then ``M``)
* ``adamw``:        ``optax.adamw(lr, weight_decay=wd)``
* ``stream``:       ``p <- p + c * g`` in place: the achievable in-place bandwidth on this machine
                    (2 reads + 1 write per element), the yardstick of the bandwidth fraction

Printed checks: sai / sgd <= 1.05, sai / adamw <= 0.5, sai first / sai <= 3, and state bytes =
parameter bytes + at most 16 bytes per leaf (AdamW's printed beside). ``sai`` moves 5 arrays per
step (reads p, g, m; writes p, m); its bandwidth is ``5 * param bytes / time``.

Usage::

    python benchmarks/jax_step.py                       # GPT-2 small, float32 (a few minutes on CPU)
    python benchmarks/jax_step.py --layers 2 --d-model 256 --vocab 8192 --rounds 5   # quick
    python benchmarks/jax_step.py --check               # exit status 1 if a check fails
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import sai_jax

LEARNING_RATE = 1e-3
WEIGHT_DECAY = 1e-2
# Bytes moved per parameter element and step, for the bandwidth figures (4-byte float32 units
# scaled by the dtype's itemsize): SaI and SGD read p, g, m and write p, m; the stream kernel
# reads p, g and writes p.
ARRAYS_MOVED = {"sgd": 5, "sai": 5, "adamw": 7, "stream": 3}


def gpt2_shapes(layers: int, d_model: int, vocab: int, context: int) -> dict[str, Any]:
    """The parameter shapes of GPT-2 (tied embeddings): 2 + 12 * layers + 2 leaves."""

    def linear(fan_in: int, fan_out: int) -> dict[str, tuple[int, ...]]:
        return {"w": (fan_in, fan_out), "b": (fan_out,)}

    def norm() -> dict[str, tuple[int, ...]]:
        return {"g": (d_model,), "b": (d_model,)}

    blocks = {
        f"h{i:02d}": {
            "ln_1": norm(),
            "attn": {"c_attn": linear(d_model, 3 * d_model), "c_proj": linear(d_model, d_model)},
            "ln_2": norm(),
            "mlp": {"c_fc": linear(d_model, 4 * d_model), "c_proj": linear(4 * d_model, d_model)},
        }
        for i in range(layers)
    }
    return {"wte": (vocab, d_model), "wpe": (context, d_model), **blocks, "ln_f": norm()}


def _is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(d, int) for d in x)


def make_tree(shapes: Any, dtype: Any, seed: int) -> Any:
    leaves, treedef = jax.tree.flatten(shapes, is_leaf=_is_shape)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([0.02 * jax.random.normal(k, s, dtype) for k, s in zip(keys, leaves)])


def nbytes(tree: Any) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


def compiled_step(opt: optax.GradientTransformation) -> Callable:
    def step(params, state, grads):
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return jax.jit(step, donate_argnums=(0, 1))


class Row:
    """One benchmarked function with its own (donated) parameters and state."""

    def __init__(self, name: str, step: Callable, params: Any, state: Any, prepare: Callable | None = None):
        self.name, self.step, self.params, self.state = name, step, params, state
        self.prepare = prepare  # untimed state edit before each timed call
        self.times: list[float] = []

    def run(self, grads: Any, timed: bool) -> None:
        if self.prepare is not None:
            self.state = self.prepare(self.state)
            jax.block_until_ready(self.state)
        start = time.perf_counter()
        self.params, self.state = self.step(self.params, self.state, grads)
        jax.block_until_ready((self.params, self.state))
        if timed:
            self.times.append(time.perf_counter() - start)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def _reset_initialization(state: Any) -> Any:
    # The SaI state with every leaf uninitialized (and count 0): the next update takes the
    # initialization branch of the lax.cond, as the very first update does.
    def reset(node: Any) -> Any:
        if not isinstance(node, sai_jax.ScaleBySaIState):
            return node
        return node._replace(
            count=jnp.zeros_like(node.count), initialized=jax.tree.map(jnp.zeros_like, node.initialized)
        )

    return jax.tree.map(reset, state, is_leaf=lambda node: isinstance(node, sai_jax.ScaleBySaIState))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--d-model", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds (each times every row once)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds after compilation")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a check fails")
    parser.add_argument("--json", metavar="FILE", help="also write every measured number as JSON")
    args = parser.parse_args(argv)

    dtype = jnp.dtype(args.dtype)
    shapes = gpt2_shapes(args.layers, args.d_model, args.vocab, args.context)
    params = make_tree(shapes, dtype, 0)
    grads = make_tree(shapes, dtype, 1)
    leaves = len(jax.tree.leaves(params))
    count = sum(x.size for x in jax.tree.leaves(params))
    param_bytes = nbytes(params)

    sgd = optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(LEARNING_RATE, momentum=0.9))
    sai = sai_jax.sgd_sai(LEARNING_RATE, momentum=0.9, weight_decay=WEIGHT_DECAY)
    adamw = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def stream(params, state, grads):
        return jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads), state

    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731 - each row owns its buffers
    sai_step = compiled_step(sai)
    adamw_step = compiled_step(adamw)
    sai_state = sai.init(params)
    sai_state_bytes = nbytes(sai_state)
    adamw_state = adamw.init(params)
    adamw_state_bytes = nbytes(adamw_state)
    sai_row = Row("sai", sai_step, copy(params), sai_state)
    rows = [
        Row("sgd", compiled_step(sgd), copy(params), sgd.init(params)),
        sai_row,
        Row("adamw", adamw_step, copy(params), adamw_state),
        Row("stream", jax.jit(stream, donate_argnums=(0, 1)), copy(params), ()),
    ]
    # The first-step row shares the sai row's compiled function and buffers: the state's flags
    # are reset before each timed call, so the very same executable runs the g-SNR branch.
    first = Row("sai first", sai_step, None, None)
    # Memory a step needs beyond parameters and gradients: its state plus XLA's temporaries (the
    # sai executable holds both branches of its lax.cond, so this bounds its first step too).
    temp_bytes = {
        name: step.lower(params, state, grads).compile().memory_analysis().temp_size_in_bytes
        for name, step, state in (("sai", sai_step, sai_state), ("adamw", adamw_step, adamw_state))
    }
    del params

    print(
        f"jax {jax.__version__}, optax {optax.__version__}, device {jax.devices()[0].device_kind} x{len(jax.devices())}, "
        f"{platform.processor() or platform.machine()}, python {platform.python_version()}"
    )
    print(
        f"GPT-2-shaped tree: {count:,} parameters in {leaves} leaves, {args.dtype}, {param_bytes / 1e6:.1f} MB; "
        f"jit with donate_argnums=(0, 1) for every row; {args.rounds} interleaved rounds, medians"
    )
    started = time.perf_counter()
    for row in rows:  # compile (the sai row compiles once: the first call is the first step)
        row.run(grads, timed=False)
    compile_seconds = time.perf_counter() - started

    def one_round(timed: bool) -> None:
        for row in rows:
            row.run(grads, timed)
        # First step: same buffers as the sai row, flags reset (untimed), then timed.
        first.params, first.state = sai_row.params, _reset_initialization(sai_row.state)
        jax.block_until_ready(first.state)
        first.run(grads, timed)
        sai_row.params, sai_row.state = first.params, first.state

    for _ in range(args.warmup):
        one_round(False)
    for _ in range(args.rounds):
        one_round(True)
    total = time.perf_counter() - started

    timings = {row.name: row for row in [*rows, first]}
    print()
    print(f"{'row':<10} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'GB/s':>7}")
    for name, row in timings.items():
        moved = ARRAYS_MOVED.get(name.split()[0], 0) * param_bytes
        bandwidth = f"{moved / row.median / 1e9:7.1f}" if name != "sai first" else "      -"
        print(
            f"{name:<10} {1e3 * row.median:10.2f} {1e3 * min(row.times):9.2f} {1e3 * max(row.times):9.2f} {bandwidth}"
        )

    t = {name: row.median for name, row in timings.items()}
    stream_bandwidth = ARRAYS_MOVED["stream"] * param_bytes / t["stream"]
    sai_bandwidth = ARRAYS_MOVED["sai"] * param_bytes / t["sai"]
    overhead_per_leaf = (sai_state_bytes - param_bytes) / leaves
    checks = [
        ("sai / sgd step time", t["sai"] / t["sgd"], 1.05),
        ("sai / adamw step time", t["sai"] / t["adamw"], 0.5),
        ("sai first step / sai step", t["sai first"] / t["sai"], 3.0),
        ("sai state bytes over params, per leaf", overhead_per_leaf, 16.0),
    ]
    print()
    for label, value, limit in checks:
        print(f"{label:<40} {value:8.3f}  (limit {limit:g})  {'PASS' if value <= limit else 'FAIL'}")
    print(
        f"{'sai bandwidth / in-place stream bandwidth':<40} {sai_bandwidth / stream_bandwidth:8.3f}  "
        f"({sai_bandwidth / 1e9:.1f} of {stream_bandwidth / 1e9:.1f} GB/s)"
    )
    # When both steps are bound by memory traffic, their time ratio tends to the ratio of the
    # arrays they move: SaI 5 (p, g, m read; p, m written), AdamW 7 (plus mu, nu read and written).
    print(
        f"{'sai / adamw if both are memory-bound':<40} {ARRAYS_MOVED['sai'] / ARRAYS_MOVED['adamw']:8.3f}  "
        f"(traffic ratio 5/7; adamw reaches {ARRAYS_MOVED['adamw'] * param_bytes / t['adamw'] / stream_bandwidth:.3f} "
        f"of the stream bandwidth)"
    )
    print()
    print(
        f"state bytes: params {param_bytes:,}; sai {sai_state_bytes:,} "
        f"(params + {sai_state_bytes - param_bytes:,} = {overhead_per_leaf:.2f} B/leaf); "
        f"adamw {adamw_state_bytes:,} ({adamw_state_bytes / param_bytes:.3f}x params)"
    )
    print(f"(compile {compile_seconds:.1f} s, total {total:.1f} s)")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {
                    "meta": {
                        "jax": jax.__version__,
                        "optax": optax.__version__,
                        "device": jax.devices()[0].device_kind,
                        "platform": jax.devices()[0].platform,
                        "rounds": args.rounds,
                        "dtype": args.dtype,
                    },
                    "leaves": leaves,
                    "numel": count,
                    "param_bytes": param_bytes,
                    "medians_s": t,
                    "sai_state_bytes": sai_state_bytes,
                    "adamw_state_bytes": adamw_state_bytes,
                    "temp_bytes": temp_bytes,
                },
                out,
                indent=1,
            )
    failed = [label for label, value, limit in checks if value > limit]
    return 1 if args.check and failed else 0


if __name__ == "__main__":
    sys.exit(main())
