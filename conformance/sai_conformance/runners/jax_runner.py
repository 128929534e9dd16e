"""The JAX/optax runners: ``sai_jax.sgd_sai`` (one group) or ``sgd_sai_groups`` (several), eager
("jax") and under ``jax.jit`` ("jax-jit"), in float64, float32 and bfloat16.

float64 cases run inside ``jax.enable_x64(True)`` and the others inside ``jax.enable_x64(False)``:
the setting is a thread-local context here, never the process-global flag, so replaying cases
does not change the dtype defaults of anything else in the process.

The eager runner passes every hyperparameter as a Python float (rebuilding the optimizer for each
step's values, as a user changing hyperparameters would); the jit runner compiles one step per
case structure, with ``lr``, ``weight_decay`` and ``eps`` as traced arrays (so a learning-rate
schedule does not recompile) and ``momentum`` and ``maximize`` static (a momentum of 0 keeps no
buffer only when it is known at trace time).

JAX has no absent gradient: cases whose plan omits a block's gradient are not applicable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._golden import Case, Snapshot

REQUIRES = ("jax", "optax")

_NOT_APPLICABLE_ABSENT = (
    "needs an absent gradient: a JAX pytree gives every leaf a gradient at every step (an unused "
    "parameter gets zeros, which leave it uninitialized and untouched under the default "
    'zero_gradient="defer"; docs/jax.md)'
)


def _group_labels(case: Case) -> list[str]:
    labels = [""] * len(case.shapes)
    for index, group in enumerate(case.groups):
        for block in group.params:
            labels[block] = str(index)
    return labels


class JaxRunner:
    """Replays golden cases on ``sai_jax``.

    Args:
        name: runner name in reports.
        jit: compile the step with ``jax.jit`` (hyperparameters then enter as arrays).
    """

    DTYPES: tuple[str, ...] = ("float64", "float32", "bfloat16")

    def __init__(self, name: str, *, jit: bool) -> None:
        self.name = name
        self.jit = jit
        self._compiled: dict[Any, Any] = {}

    def not_applicable(self, case: Case) -> str | None:
        if case.dtype not in self.DTYPES:
            return f"{self.name} has no {case.dtype} dtype"
        if any(grad is None for row in case.grads for grad in row):
            return _NOT_APPLICABLE_ABSENT
        return None

    # -- building the optimizer -------------------------------------------------------------

    @staticmethod
    def _optimizer(case: Case, hyper: list[dict[str, Any]]) -> Any:
        import sai_jax

        if len(case.groups) == 1:
            (h,) = hyper
            return sai_jax.sgd_sai(
                h["lr"],
                momentum=h["momentum"],
                weight_decay=h["weight_decay"],
                eps=h["eps"],
                maximize=h["maximize"],
                preset=case.preset,
                **case.knobs,
            )
        groups = {
            str(index): {
                "learning_rate": h["lr"],
                "momentum": h["momentum"],
                "weight_decay": h["weight_decay"],
                "eps": h["eps"],
                "maximize": h["maximize"],
            }
            for index, h in enumerate(hyper)
        }
        return sai_jax.sgd_sai_groups(groups, _group_labels(case), preset=case.preset, **case.knobs)

    def _step_function(self, case: Case, hyper: list[dict[str, Any]], compute_dtype: Any) -> tuple[Any, Any]:
        """``(step, arguments)``: ``step(params, state, grads, arguments) -> (params, state)``."""
        import jax
        import jax.numpy as jnp
        import optax

        def apply(params, state, grads, values):
            opt = self._optimizer(case, values)
            updates, state = opt.update(grads, state, params)
            return optax.apply_updates(params, updates), state

        if not self.jit:
            return apply, hyper
        static = tuple((h["momentum"], h["maximize"]) for h in hyper)
        key = (case.name, static)
        if key not in self._compiled:

            def traced(params, state, grads, arrays):
                values = [
                    {**a, "momentum": momentum, "maximize": maximize} for a, (momentum, maximize) in zip(arrays, static)
                ]
                return apply(params, state, grads, values)

            self._compiled[key] = jax.jit(traced)
        arrays = [{name: jnp.asarray(h[name], compute_dtype) for name in ("lr", "weight_decay", "eps")} for h in hyper]
        return self._compiled[key], arrays

    # -- state in and out --------------------------------------------------------------------

    @staticmethod
    def _load(opt: Any, params: list[Any], start: Snapshot) -> Any:
        import jax
        import jax.numpy as jnp

        from sai_jax import ScaleBySaIState

        # A block is initialized exactly when the reference holds its scale; M is set exactly
        # when some block is initialized (the state derives "M unset" from the flags).
        flags = [scale is not None for scale in start.scale]
        if (start.max_gsnr is not None) != any(flags):
            raise RuntimeError(
                f"snapshot at step {start.step} has max_gsnr={start.max_gsnr} with initialized blocks "
                f"{[i for i, flag in enumerate(flags) if flag]}: not expressible"
            )

        def replace(node: Any) -> Any:
            if not isinstance(node, ScaleBySaIState):
                return node
            treedef = jax.tree.structure(node.scale)
            scale = treedef.unflatten(
                [
                    jnp.zeros_like(old) if s is None else jnp.asarray(s, old.dtype)
                    for s, old in zip(start.scale, treedef.flatten_up_to(node.scale))
                ]
            )
            initialized = treedef.unflatten([jnp.asarray(flag) for flag in flags])
            buffers = node.momentum_buffer
            if buffers is not None:
                old = treedef.flatten_up_to(buffers)
                new = []
                for block, (saved, current, flag) in enumerate(zip(start.momentum_buffer, old, flags)):
                    if saved is not None and current is None:
                        raise RuntimeError(f"block {block}: the snapshot has a buffer, the state keeps none")
                    if saved is None and current is not None and flag:
                        raise RuntimeError(f"block {block}: initialized without a buffer, the state keeps one")
                    if current is None:
                        new.append(None)
                    elif saved is None:  # uninitialized: no buffer in the reference, zeros in the state
                        new.append(jnp.zeros_like(current))
                    else:
                        new.append(jnp.asarray(saved, current.dtype))
                buffers = treedef.unflatten(new)
            elif any(b is not None for b in start.momentum_buffer):
                raise RuntimeError("snapshot has momentum buffers, the state keeps none")
            max_gsnr = 0.0 if start.max_gsnr is None else start.max_gsnr
            return ScaleBySaIState(
                count=jnp.asarray(start.step, jnp.int32),
                max_gsnr=jnp.asarray(max_gsnr, node.max_gsnr.dtype),
                scale=scale,
                initialized=initialized,
                momentum_buffer=buffers,
            )

        state = opt.init(params)
        return jax.tree.map(replace, state, is_leaf=lambda node: isinstance(node, ScaleBySaIState))

    @staticmethod
    def _snapshot(params: list[Any], state: Any, step: int) -> Snapshot:
        import jax

        from sai_jax import ScaleBySaIState

        is_sai = lambda node: isinstance(node, ScaleBySaIState)  # noqa: E731
        (sai,) = [node for node in jax.tree.leaves(state, is_leaf=is_sai) if is_sai(node)]
        treedef = jax.tree.structure(sai.scale)
        flags = [bool(flag) for flag in treedef.flatten_up_to(sai.initialized)]
        if sai.momentum_buffer is None:
            buffers = [None] * len(params)
        else:
            buffers = treedef.flatten_up_to(sai.momentum_buffer)
        # Read from the flags, not from count: a block initializes at its first informative
        # gradient, and M is unset until some block has.
        return Snapshot(
            params=[np.asarray(p).astype(np.float64) for p in params],
            momentum_buffer=[
                None if b is None or not flag else np.asarray(b).astype(np.float64) for b, flag in zip(buffers, flags)
            ],
            scale=[float(s) if flag else None for s, flag in zip(treedef.flatten_up_to(sai.scale), flags)],
            max_gsnr=float(sai.max_gsnr) if any(flags) else None,
            step=step,
        )

    # -- the protocol --------------------------------------------------------------------------

    def run(self, case: Case, start: Snapshot, first_step: int, num_steps: int) -> list[Snapshot]:
        import jax
        import jax.numpy as jnp

        with jax.enable_x64(case.dtype == "float64"):
            dtype = jnp.dtype(case.dtype)
            compute = jnp.float64 if case.dtype == "float64" else jnp.float32
            params = [jnp.asarray(p, dtype) for p in start.params]
            state = self._load(self._optimizer(case, case.hyper_at(first_step)), params, start)
            snapshots = []
            for step in range(first_step, first_step + num_steps):
                grads = [jnp.asarray(g, dtype) for g in case.grads[step]]
                function, arguments = self._step_function(case, case.hyper_at(step), compute)
                params, state = function(params, state, grads, arguments)
                snapshots.append(self._snapshot(params, state, start.step + step - first_step + 1))
            return snapshots


def runners() -> list[JaxRunner]:
    return [JaxRunner("jax", jit=False), JaxRunner("jax-jit", jit=True)]
