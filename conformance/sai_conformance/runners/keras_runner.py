"""The Keras 3 runner: ``sai_keras.SGDSaI`` on the Keras backend of this process.

Keras fixes its backend per process (``KERAS_BACKEND``), so this module is ``ISOLATED``: it is only
loaded with ``available_runners(include_isolated=True)``, inside the subprocess that owns one
backend, and its runner is named after it: ``keras-tensorflow``, ``keras-jax`` or ``keras-torch``.
Nothing here imports Keras until :func:`runners` is called.

Each step is one ``apply`` call, traced and compiled the way that backend's ``model.fit`` runs it
(``compiled=True``: a ``tf.function`` on TensorFlow, ``jax.jit`` of ``stateless_apply`` on JAX;
torch runs eagerly, as its ``fit`` does by default), or eagerly (``compiled=False``). A block
without a gradient at a step is passed as ``None``, which Keras's ``apply`` filters out: the block
is left untouched and keeps no gradient for that step.

Not applicable, by design:

* several parameter groups: a Keras optimizer has one set of hyperparameters for all its
  variables, and two optimizers, one per group, would each freeze their own ``M`` instead of one
  global one;
* a hyperparameter other than the learning rate changing between steps: Keras optimizers read
  ``momentum``, ``weight_decay``, ``epsilon`` and ``maximize`` as Python constants (only the
  learning rate is a variable or schedule);
* float64 on a backend that cannot store float64 variables (JAX without ``jax_enable_x64``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .._golden import Case, Snapshot

REQUIRES = ("keras",)
ISOLATED = True

# Hyperparameters that Keras optimizers hold as Python constants (not per-step variables).
_CONSTANT_HYPERPARAMETERS = ("momentum", "weight_decay", "eps", "maximize")


class KerasRunner:
    """Replays golden cases on ``sai_keras.SGDSaI`` under this process's Keras backend.

    Args:
        compiled: run each ``apply`` inside the backend's compiled step (see the module docstring).
    """

    def __init__(self, *, compiled: bool = True) -> None:
        import keras

        self.backend = keras.backend.backend()
        self.name = f"keras-{self.backend}"
        self.compiled = compiled
        self._float64 = stores_float64()
        self._cached: tuple[str, tuple[list[Any], Any, Callable[[list[Any]], None]]] | None = None

    def not_applicable(self, case: Case) -> str | None:
        if len(case.groups) > 1:
            return (
                "Keras optimizers have one set of hyperparameters (no parameter groups); two "
                "optimizers would each freeze their own M"
            )
        hyper = case.groups[0].hyper
        changing = [k for k in _CONSTANT_HYPERPARAMETERS if any(h[k] != hyper[0][k] for h in hyper)]
        if changing:
            return f"{changing} change between steps; Keras optimizers hold them as Python constants"
        if case.dtype == "float64" and not self._float64:
            return f"the {self.backend} backend stores float64 variables as float32 here (enable x64 for JAX)"
        return None

    def run(self, case: Case, start: Snapshot, first_step: int, num_steps: int) -> list[Snapshot]:
        import keras

        variables, optimizer, apply = self._session(case)
        for variable, values in zip(variables, start.params):
            variable.assign(np.asarray(values))
        _load_state(optimizer, start)
        snapshots = []
        for step in range(first_step, first_step + num_steps):
            optimizer.learning_rate = case.hyper_at(step)[0]["lr"]
            grads = [
                None if g is None else keras.ops.convert_to_tensor(np.asarray(g), dtype=case.dtype)
                for g in case.grads[step]
            ]
            apply(grads)
            snapshots.append(_snapshot(optimizer, variables))
        return snapshots

    def _session(self, case: Case) -> tuple[list[Any], Any, Callable[[list[Any]], None]]:
        # One optimizer (and one compiled step) per case, reloaded before every run: a one-step
        # replay then compiles once per pattern of absent gradients, not once per step.
        if self._cached is not None and self._cached[0] == case.name:
            return self._cached[1]
        import keras

        from sai_keras import SGDSaI

        hyper = case.hyper_at(0)[0]
        with floatx(case.dtype):
            # The learning-rate variable has floatx's dtype: float64 cases need it in float64.
            variables = [
                keras.Variable(np.asarray(p, dtype=np.float64), dtype=case.dtype, name=f"block{i}")
                for i, p in enumerate(case.initial_params)
            ]
            optimizer = SGDSaI(
                learning_rate=hyper["lr"],
                momentum=hyper["momentum"],
                weight_decay=hyper["weight_decay"],
                epsilon=hyper["eps"],
                maximize=hyper["maximize"],
                preset=case.preset,
                **case.knobs,
            )
            optimizer.build(variables)
        apply = _compiled_apply(optimizer, variables) if self.compiled else _eager_apply(optimizer, variables)
        self._cached = (case.name, (variables, optimizer, apply))
        return self._cached[1]


def runners() -> list[KerasRunner]:
    """The runner of this process's Keras backend."""
    return [KerasRunner()]


def stores_float64() -> bool:
    # Asked of the backend itself rather than by its name: JAX without x64 silently stores float32.
    import keras

    probe = keras.ops.convert_to_tensor(keras.Variable(np.zeros(()), dtype="float64"))
    return keras.backend.standardize_dtype(probe.dtype) == "float64"


@contextlib.contextmanager
def floatx(dtype: str) -> Iterator[None]:
    # The optimizer's learning-rate variable takes floatx: float64 runs need it in float64.
    import keras

    previous = keras.config.floatx()
    keras.config.set_floatx("float64" if dtype == "float64" else previous)
    try:
        yield
    finally:
        keras.config.set_floatx(previous)


def _load_state(optimizer: Any, start: Snapshot) -> None:
    for i, variable in enumerate(optimizer.scales):
        variable.assign(0.0 if start.scale[i] is None else start.scale[i])
        optimizer.initialized[i].assign(start.scale[i] is not None)
    for i, buffer in enumerate(optimizer.momentums):
        values = start.momentum_buffer[i]
        buffer.assign(np.zeros(buffer.shape) if values is None else np.asarray(values))
    optimizer.max_gsnr.assign(0.0 if start.max_gsnr is None else start.max_gsnr)
    optimizer.iterations.assign(start.step)


def _eager_apply(optimizer: Any, variables: list[Any]) -> Callable[[list[Any]], None]:
    return applier(optimizer, variables, "eager")


def _compiled_apply(optimizer: Any, variables: list[Any]) -> Callable[[list[Any]], None]:
    # How each backend's trainer compiles its train step (keras/src/backend/*/trainer.py); torch's
    # fit runs eagerly by default.
    import keras

    mode = {"tensorflow": "graph", "jax": "jit"}.get(keras.backend.backend(), "eager")
    return applier(optimizer, variables, mode)


def applier(optimizer: Any, variables: list[Any], mode: str) -> Callable[[list[Any]], None]:
    """``apply(grads)`` of a built ``optimizer`` on ``variables``, run the way ``mode`` runs it.

    Modes: ``"eager"``; ``"graph"`` and ``"xla"`` (TensorFlow: a ``tf.function`` without / with
    ``jit_compile``); ``"jit"`` (JAX: ``jax.jit`` of ``stateless_apply``, the new values assigned
    back, as the JAX trainer does).
    """
    if mode == "eager":

        def eager(grads: list[Any]) -> None:
            optimizer.apply(grads, variables)

        return eager
    if mode in ("graph", "xla"):
        import tensorflow as tf

        function = tf.function(lambda grads: optimizer.apply(grads, variables), jit_compile=(mode == "xla"))

        def traced(grads: list[Any]) -> None:
            function(grads)

        return traced
    if mode == "jit":
        import jax

        stateless = jax.jit(optimizer.stateless_apply)

        def jitted(grads: list[Any]) -> None:
            new_values, new_state = stateless(
                [v.value for v in optimizer.variables], grads, [v.value for v in variables]
            )
            for variable, value in zip(variables, new_values):
                variable.assign(value)
            for variable, value in zip(optimizer.variables, new_state):
                variable.assign(value)

        return jitted
    raise ValueError(f"Invalid mode: {mode!r} (expected 'eager', 'graph', 'xla' or 'jit')")


def _to_numpy(x: Any) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x)).astype(np.float64)


def _snapshot(optimizer: Any, variables: list[Any]) -> Snapshot:
    initialized = [bool(_to_numpy(f)) for f in optimizer.initialized]
    buffers = [None] * len(variables)
    for i, buffer in enumerate(optimizer.momentums):
        buffers[i] = _to_numpy(buffer) if initialized[i] else None
    return Snapshot(
        params=[_to_numpy(v) for v in variables],
        momentum_buffer=buffers,
        scale=[float(_to_numpy(s)) if done else None for s, done in zip(optimizer.scales, initialized)],
        max_gsnr=float(_to_numpy(optimizer.max_gsnr)) if any(initialized) else None,
        step=int(_to_numpy(optimizer.iterations)),
    )
