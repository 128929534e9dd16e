"""The g-SNR of a Keras model, variable by variable: ``gsnr_report`` (one gradient) and
``scale_report`` (the frozen scales of a model's ``SGDSaI``, e.g. after ``keras.models.load_model``).

Both return a :class:`sai_core.GsnrReport`; ``sai-gsnr`` renders it. The numbers are
``sai_core``'s (:func:`sai_core.report_from_gradients`, :func:`sai_core.report_from_scales`),
computed on NumPy copies of the gradients in the dtype the optimizer uses for its statistics
(float32, float64 for float64 variables): Keras has no backend-independent gradient, so only
taking the gradient depends on the backend.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from sai_core import (
    DEFAULT_HYPERPARAMETERS,
    DEFAULT_PRESET,
    GsnrReport,
    report_from_gradients,
    report_from_scales,
    resolve_config,
)

from ._optimizer import SGDSaI

__all__ = ["gsnr_report", "scale_report"]


def _gradients(model: Any, loss_fn: Callable[[Any], Any], variables: Sequence[Any]) -> list[Any]:
    """One gradient of ``loss_fn(model)`` per variable (``None`` where the loss does not use it).

    The only backend-specific step: TensorFlow records a tape, torch runs autograd on the
    variables' tensors, JAX differentiates a stateless call (the variables' values substituted
    through ``keras.StatelessScope``).
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = _checked_loss(loss_fn(model))
        return list(tape.gradient(loss, list(variables)))
    if backend == "torch":
        import torch

        loss = _checked_loss(loss_fn(model))
        return list(torch.autograd.grad(loss, [v.value for v in variables], allow_unused=True))
    if backend == "jax":
        import jax

        def loss_of(values: list[Any]) -> Any:
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return _checked_loss(loss_fn(model))

        return list(jax.grad(loss_of)([v.value for v in variables]))
    raise ValueError(f"Invalid Keras backend: {backend!r} (sai_keras.gsnr_report supports tensorflow, torch and jax)")


def _checked_loss(loss: Any) -> Any:
    shape = getattr(loss, "shape", None)
    dtype = getattr(loss, "dtype", None)
    if (
        shape is None
        or tuple(shape) not in ((), (1,))
        or not keras.backend.is_float_dtype(keras.backend.standardize_dtype(dtype))
    ):
        raise ValueError(f"Invalid loss_fn: loss_fn(model) returned {loss!r} (expected a scalar floating tensor)")
    return keras.ops.reshape(loss, ())


def _to_numpy(grad: Any) -> np.ndarray | None:
    if grad is None:
        return None
    array = keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(grad, sparse=False))
    # The statistic is computed in float32 for every dtype but float64 (bfloat16 included).
    return array if array.dtype == np.float64 else array.astype(np.float32)


def gsnr_report(
    model: keras.Model,
    loss_fn: Callable[[keras.Model], Any],
    *,
    preset: str = DEFAULT_PRESET,
    eps: float = DEFAULT_HYPERPARAMETERS["eps"],
    **knob_overrides: Any,
) -> GsnrReport:
    """The g-SNR ``G`` and scale ``S`` that ``SGDSaI`` would freeze if this were its first step.

    Differentiates ``loss_fn(model)`` with respect to ``model.trainable_variables`` (named by
    their paths), on whichever backend Keras runs.

    Args:
        model: a built Keras model (or layer).
        loss_fn: returns the scalar loss of one batch for ``model``.
        preset: the preset whose ``S`` is shown (``"sgd-sai"``: ``S = G``; ``"paper"``: ``G / M``).
        eps: the g-SNR denominator guard.
        **knob_overrides: knob values overriding the preset's.

    Returns:
        A :class:`sai_core.GsnrReport`.

    Raises:
        TypeError: ``model`` has no ``trainable_variables`` or ``loss_fn`` is not callable.
        ValueError: the model has no trainable variable (not built?), or ``loss_fn`` does not
            return a scalar floating tensor.

    Examples:
        >>> import keras, numpy as np
        >>> from sai_keras import gsnr_report
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=False, name="d")], name="net")
        >>> target = np.array([[1.0, 2.0], [3.0, 4.0]], "float32")
        >>> loss_fn = lambda m: keras.ops.sum(m.layers[0].kernel * target)   # gradient: target
        >>> [(r.name, r.shape, round(r.gsnr, 4)) for r in gsnr_report(model, loss_fn).rows]
        [('net/d/kernel', (2, 2), 4.2426)]
    """
    variables = getattr(model, "trainable_variables", None)
    if variables is None:
        raise TypeError(f"Invalid model: {type(model).__name__} (expected a Keras model or layer)")
    if not callable(loss_fn):
        raise TypeError(f"Invalid loss_fn: {loss_fn!r} (expected a callable returning the loss)")
    config = resolve_config(preset, **knob_overrides)
    variables = list(variables)
    if not variables:
        raise ValueError(f"Invalid model: {type(model).__name__} has no trainable variable (is it built?)")
    grads = [_to_numpy(g) for g in _gradients(model, loss_fn, variables)]
    return report_from_gradients([v.path for v in variables], grads, eps=eps, config=config, framework="keras")


def scale_report(model: Any) -> GsnrReport:
    """The frozen scales of a model compiled with :class:`sai_keras.SGDSaI` (or of the optimizer).

    Reads the optimizer's ``scales``, ``initialized`` flags and ``max_gsnr``: after ``model.fit``,
    or after ``keras.models.load_model`` of a ``.keras`` file (which restores them).

    Raises:
        ValueError: the model's optimizer is not an ``SGDSaI`` (another optimizer holds no
            scales), or the optimizer is not built yet.

    Examples:
        >>> import keras, numpy as np
        >>> from sai_keras import SGDSaI, scale_report
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1, name="d")], name="net")
        >>> model.compile(optimizer=SGDSaI(), loss="mse")
        >>> _ = model.fit(np.ones((4, 3), "float32"), np.ones((4, 1), "float32"), verbose=0)
        >>> [(r.name, r.shape, round(r.scale, 4)) for r in scale_report(model).rows]  # constant gradients: sqrt(n)
        [('net/d/kernel', (3, 1), 1.7321), ('net/d/bias', (1,), 1.0)]
    """
    optimizer = getattr(model, "optimizer", model)
    if not isinstance(optimizer, SGDSaI):
        kind = type(optimizer).__name__ if optimizer is not None else "no optimizer"
        raise ValueError(f"Invalid model: its optimizer is {kind}, not sai_keras.SGDSaI, so it holds no g-SNR scales")
    if not optimizer.built:
        raise ValueError("Invalid model: its SGDSaI optimizer is not built yet (no step taken, nothing loaded)")
    # The variables build() made the scales for, in order (Keras keeps them in a private list);
    # the model's own list, where it is the same, names them with their full paths.
    variables = list(optimizer._trainable_variables)
    model_variables = list(getattr(model, "trainable_variables", None) or [])
    if len(model_variables) == len(variables):
        variables = model_variables
    flags = [bool(keras.ops.convert_to_numpy(f)) for f in optimizer.initialized]
    entries = [
        (v.path, tuple(int(d) for d in v.shape), float(keras.ops.convert_to_numpy(s)) if done else None)
        for v, s, done in zip(variables, optimizer.scales, flags)
    ]
    max_gsnr = float(keras.ops.convert_to_numpy(optimizer.max_gsnr)) if any(flags) else None
    return report_from_scales(entries, max_gsnr, config=optimizer.sai_config, framework="keras")
