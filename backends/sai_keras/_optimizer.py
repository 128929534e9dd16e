"""``SGDSaI``: the SGD-SaI optimizer as a Keras 3 optimizer (TensorFlow, JAX and torch backends).

The math is :mod:`sai_core`'s, run on backend tensors through the ``keras.ops`` namespace of
:mod:`sai_keras._ops_namespace`. The class only decides *when* each piece runs, without a Python
flag evaluated at trace time:

* ``_backend_update_step`` (once per ``apply``, before any variable is updated) computes, inside a
  ``keras.ops.cond`` taken only while some variable of this call still lacks its scale, the raw
  g-SNR of every such variable and, at the first step, the normaliser ``M``: the largest g-SNR over
  *all* variables the call updates. Scales and ``M`` live in optimizer variables.
* ``update_step`` (once per variable) updates the momentum buffer, the first gradient being a step
  whose momentum is 0 (a scalar ``keras.ops.where`` on the variable's ``initialized`` flag), then
  the variable, with decoupled weight decay fused into the same expression (see :class:`SGDSaI`).

On the TensorFlow backend under ``tf.distribute`` the gradients are all-reduced after
``_backend_update_step`` starts, so there the scales are set in the backend's per-strategy update
hook, from the reduced gradients, identically on every replica.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from sai_core import KNOB_VALUES
from sai_core import compute_dtype
from sai_core import raw_gsnr
from sai_core import resolve_config
from sai_core import scale_from_gsnr
from sai_core import update_momentum
from sai_core import update_param
from sai_core import validate_hyperparameters

from . import _ops_namespace as xp

__all__ = ["SGDSaI"]

# sai_core names two hyperparameters differently from Keras; errors must name the argument the
# user actually passed.
_CORE_NAMES: dict[str, str] = {"learning_rate": "lr", "epsilon": "eps"}


def _validate(name: str, value: Any) -> None:
    core_name = _CORE_NAMES.get(name, name)
    try:
        validate_hyperparameters(**{core_name: value})
    except ValueError as error:
        message = re.sub(rf"\b{core_name}\b", name, str(error))
        raise ValueError(message) from None


@keras.saving.register_keras_serializable(package="sai_keras", name="SGDSaI")
class SGDSaI(keras.optimizers.Optimizer):
    """SGD with momentum whose step is scaled, per variable, by its g-SNR at initialization.

    For every variable ``theta`` with a gradient ``g`` in an ``apply`` call (``g <- -g`` when
    ``maximize``); ``n`` is the variable's number of elements:

    .. math::

        G &= \\lVert g \\rVert_2 / (\\operatorname{std}(g) + \\epsilon)
            \\quad\\text{at the variable's first gradient only}
            \\quad(\\sqrt{n} \\text{ if } n = 1 \\text{ or } g \\text{ is constant}) \\\\
        S &= G / M, \\quad M = \\max G \\text{ over all variables of the first step, then frozen} \\\\
        m &\\leftarrow \\mu m + (1 - \\mu) g \\quad (m = g \\text{ at the first gradient}) \\\\
        \\theta &\\leftarrow \\theta - \\eta \\lambda \\theta - \\eta S m

    The scales ``S``, ``M``, the momentum buffers and one ``initialized`` flag per variable are
    optimizer variables: ``model.save`` / ``keras.models.load_model`` restore them and training
    continues exactly. A variable without a gradient in a call (``None``, or left out of
    ``apply``'s variable list) is untouched, and gets its scale at its first gradient, divided by
    the frozen ``M``. Statistics and updates are computed in float32 (float64 for float64
    variables), also for bfloat16/float16 variables and gradients.

    Weight decay uses Keras's ``weight_decay`` and ``exclude_from_weight_decay`` (by variable name
    or object), decoupled, with the step's learning rate and not scaled by ``S``. Keras would apply
    it in a separate pass in the variable's dtype; here it is fused into the update and rounded once
    (in bfloat16 a separate ``lr * wd`` of 1e-4 would be rounded away entirely).

    Args:
        learning_rate: ``eta >= 0``: a float, a ``keras.optimizers.schedules.LearningRateSchedule``
            or a callable returning the value. Under an unnormalised preset a variable's step is
            about ``sqrt(n)`` times larger (see ``docs/keras.md``).
        momentum: ``mu`` in ``[0, 1)``; with ``0`` no buffer is kept.
        weight_decay: decoupled weight decay ``lambda >= 0``; ``None`` or ``0`` disables it.
        epsilon: the g-SNR denominator guard, ``>= 0``.
        preset: ``"paper"`` (default), ``"sgd-sai-1.0.3"``, ``"sgd-sai-1.0.4"``, ``"sgd-sai-1.1.0"``
            or ``"pytorch-optimizer-4"`` (see :data:`sai_core.PRESETS`).
        maximize: ascend the objective instead of descending it.
        exclude_from_weight_decay: variable-name substrings (regular expressions) to exclude from
            weight decay, as ``var_names`` of the Keras method of the same name; unlike exclusions
            by object, these are part of ``get_config`` and survive ``model.save``.
        clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, ema_overwrite_frequency,
        loss_scale_factor, gradient_accumulation_steps, name: as for every Keras optimizer. The
            g-SNR is computed from the gradient after unscaling, accumulation and clipping.
        **knob_overrides: ``snr``, ``normalize``, ``std_correction``, ``degenerate``,
            ``vector_rule``, ``momentum_init``: override the preset's value of that knob.

    Attributes:
        momentums: one buffer per variable (empty when ``momentum == 0``).
        scales: one 0-d scale ``S`` per variable (float32; float64 for float64 variables).
        initialized: one 0-d bool per variable, true once the variable had a gradient.
        max_gsnr: the 0-d normaliser ``M`` (float64 if any variable is float64, else float32).
        sai_config: the resolved :class:`sai_core.SaIConfig`.

    Raises:
        ValueError: naming the argument and the value, for an invalid hyperparameter, preset,
            knob value or ``exclude_from_weight_decay``; Keras's base class raises it for a
            keyword it does not recognise.

    Examples:
        >>> import keras, numpy as np
        >>> from sai_keras import SGDSaI
        >>> w = keras.Variable(np.ones((2, 2)), dtype="float32", name="w")
        >>> b = keras.Variable(np.ones(3), dtype="float32", name="b")
        >>> opt = SGDSaI(learning_rate=0.1, weight_decay=0.0)
        >>> opt.apply([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 0.0, -1.0])], [w, b])
        >>> [round(float(keras.ops.convert_to_numpy(s)), 4) for s in opt.scales]  # S = G / max G
        [1.0, 0.3333]
        >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(b)]
        [0.9667, 1.0, 1.0333]

        In ``model.compile`` (the scales are fixed by the first batch's gradients):

        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=SGDSaI(learning_rate=0.1), loss="mse")
        >>> x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
        >>> history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
        >>> int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        4
    """

    def __init__(
        self,
        learning_rate: Any = 1e-2,
        momentum: float = 0.9,
        weight_decay: float | None = 1e-2,
        epsilon: float = 1e-8,
        *,
        preset: str = "paper",
        maximize: bool = False,
        exclude_from_weight_decay: Sequence[str] | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        knob_overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in KNOB_VALUES}
        sai_config = resolve_config(preset, **knob_overrides)
        if isinstance(learning_rate, (int, float)) or _is_numpy_scalar(learning_rate):
            _validate("learning_rate", learning_rate)
            learning_rate = float(learning_rate)
        _validate("momentum", momentum)
        if weight_decay is not None:
            _validate("weight_decay", weight_decay)
            weight_decay = float(weight_decay)
        _validate("epsilon", epsilon)
        validate_hyperparameters(maximize=maximize)
        names = _exclusion_names(exclude_from_weight_decay)
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **kwargs,
        )
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.maximize = maximize
        self.sai_config = sai_config
        self._excluded_names: list[str] = []
        if names:
            self.exclude_from_weight_decay(var_names=names)

    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """Excludes variables from weight decay (Keras's method; call it before ``build``).

        Args:
            var_list: variables to exclude (by object; not kept by ``get_config``).
            var_names: regular expressions; a variable whose name matches one is excluded.

        Raises:
            ValueError: when the optimizer is already built (its decay mask is fixed then).
        """
        if self.built:
            raise ValueError(
                "Invalid exclude_from_weight_decay call: the optimizer is already built; "
                "configure exclusions before the first apply / model.fit"
            )
        names = _exclusion_names(var_names)
        super().exclude_from_weight_decay(var_list=var_list, var_names=names or None)
        self._excluded_names = names

    def build(self, variables: Sequence[Any]) -> None:
        """Creates the optimizer variables: buffers, scales, flags and ``M``."""
        if self.built:
            return
        super().build(variables)
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")
        else:
            self.momentums = []
        self.scales = []
        self.initialized = []
        for variable in variables:
            prefix = variable.path.replace("/", "_") if hasattr(variable, "path") else variable.name
            self.scales.append(
                self.add_variable(
                    shape=(), dtype=compute_dtype(variable, xp=xp), name=f"{prefix}_gsnr_scale"
                )
            )
            self.initialized.append(
                self.add_variable(shape=(), dtype="bool", name=f"{prefix}_gsnr_initialized")
            )
        any_float64 = any(xp.isdtype(v.dtype, xp.float64) for v in variables)
        self.max_gsnr = self.add_variable(
            shape=(), dtype=xp.float64 if any_float64 else xp.float32, name="max_gsnr"
        )
        # Which variables decay is fixed here, from the Keras variables (inside update_step the
        # TensorFlow backend passes tf.Variables, whose names differ); the rate is read per trace.
        self._decays = [self._use_weight_decay(v) for v in variables]

    def _apply_weight_decay(self, variables: Sequence[Any]) -> None:
        # Fused into update_step (one rounding, in the compute dtype); see the class docstring.
        del variables

    def _direction_sign(self, grad: Any) -> Any:
        return -grad if self.maximize else grad

    def _backend_update_step(self, grads: Sequence[Any], trainable_variables: Sequence[Any], learning_rate: Any) -> None:
        # TensorFlow gives Embedding gradients as tf.IndexedSlices; a reshape to the variable's
        # shape makes them dense (the g-SNR and the buffer are statistics of the whole tensor) and
        # is a no-op for dense gradients on every backend.
        grads = [ops.reshape(g, tuple(v.shape)) for g, v in zip(grads, trainable_variables)]
        # The g-SNR must see the final gradients. Only the TensorFlow backend reduces them later
        # (tf.distribute, inside its _backend_update_step), and it then calls the hook below.
        if not hasattr(super(), "_distributed_tf_update_step"):
            self._initialize_scales(grads, trainable_variables)
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def _distributed_tf_update_step(self, distribution: Any, grads_and_vars: Any, learning_rate: Any) -> None:
        # TensorFlow only: tf.distribute all-reduces the gradients inside the backend's
        # _backend_update_step, so the g-SNR is taken here, from the all-reduced gradients, once
        # per replica (every replica computes the same values).
        import tensorflow as tf  # only reached on the TensorFlow backend

        grads, variables = (list(pairs) for pairs in zip(*grads_and_vars))
        if tf.distribute.in_cross_replica_context():
            distribution.extended.call_for_each_replica(self._initialize_scales, args=(grads, variables))
        else:  # no merge call (default strategy): already in the one replica's context
            self._initialize_scales(grads, variables)
        super()._distributed_tf_update_step(distribution, grads_and_vars, learning_rate)

    def _initialize_scales(self, grads: Sequence[Any], variables: Sequence[Any]) -> None:
        """Sets ``S`` of every variable of this call that has none yet, and ``M`` at the first step.

        Branch-free on values: an outer ``keras.ops.cond`` is taken only while some variable of
        the call lacks its scale (so an initialized model pays a few scalar ops per step), and
        inside it one ``cond`` per variable evaluates the g-SNR only for a variable at its first
        gradient. ``M`` is the largest g-SNR of the first step over every variable of the call.
        """
        indices = [self._get_variable_index(v) for v in variables]
        present = {i: _read(self.initialized[i]) for i in indices}
        flags = [present[i] for i in indices]
        scales = [_read(self.scales[i]) for i in indices]
        max_gsnr = _read(self.max_gsnr)
        any_new = ops.logical_not(functools.reduce(ops.logical_and, flags))
        # M is frozen at the first step; flags of variables absent from this call count too.
        every_flag = [present[i] if i in present else _read(f) for i, f in enumerate(self.initialized)]
        max_is_set = functools.reduce(ops.logical_or, every_flag)

        def gsnr_if_new(flag: Any, grad: Any) -> Any:
            dtype = compute_dtype(grad, xp=xp)

            def first_gradient() -> Any:
                g = self._direction_sign(ops.cast(grad, dtype))
                return raw_gsnr(g, eps=self.epsilon, config=self.sai_config, xp=xp)

            # An initialized variable's value is discarded below; 0 never exceeds a g-SNR (>= 0).
            return ops.cond(flag, lambda: ops.zeros((), dtype=dtype), first_gradient)

        def initialize() -> tuple[list[Any], Any]:
            gsnrs = [gsnr_if_new(flag, grad) for flag, grad in zip(flags, grads)]
            largest = None  # folded as the reference folds it
            for value in gsnrs:
                value = ops.cast(value, self.max_gsnr.dtype)
                largest = value if largest is None else ops.where(value > largest, value, largest)
            new_max = ops.where(max_is_set, max_gsnr, largest)
            new_scales = []
            for flag, scale, value in zip(flags, scales, gsnrs):
                fresh = scale_from_gsnr(value, ops.cast(new_max, value.dtype), config=self.sai_config, xp=xp)
                new_scales.append(ops.where(flag, scale, ops.cast(fresh, scale.dtype)))
            return new_scales, new_max

        def keep() -> tuple[list[Any], Any]:
            return list(scales), max_gsnr

        new_scales, new_max = ops.cond(any_new, initialize, keep)
        for index, value in zip(indices, new_scales):
            self.assign(self.scales[index], value)
        self.assign(self.max_gsnr, new_max)

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """Updates one variable's momentum buffer and the variable (its scale is already set)."""
        index = self._get_variable_index(variable)
        dtype = compute_dtype(variable, xp=xp)
        grad = self._direction_sign(ops.cast(gradient, dtype))
        initialized = _read(self.initialized[index])
        if self.momentum != 0:
            buffer = self.momentums[index]
            direction = update_momentum(
                ops.cast(buffer, dtype),
                grad,
                momentum=self._step_momentum(initialized, dtype),
                first=False,
                config=self.sai_config,
                xp=xp,
            )
            self.assign(buffer, ops.cast(direction, buffer.dtype))
        else:
            # No buffer: the direction is the gradient (times 1 - 0 under momentum_init="zeros").
            direction = update_momentum(None, grad, momentum=0.0, first=True, config=self.sai_config, xp=xp)
        new_value = update_param(
            variable,
            direction,
            _read(self.scales[index]),
            lr=ops.cast(learning_rate, dtype),
            weight_decay=(self.weight_decay or 0.0) if self._decays[index] else 0.0,
            xp=xp,
        )
        self.assign(variable, new_value)
        self.assign(self.initialized[index], ops.ones((), dtype="bool"))

    def _step_momentum(self, initialized: Any, dtype: str) -> Any:
        """This step's ``mu`` in ``m <- mu m + (1 - mu) g``: the first gradient is a momentum change.

        The buffer is exactly zero until the variable's first gradient, so ``mu = 0`` there gives
        ``m = g`` (``momentum_init="grad"``) and ``mu`` itself gives ``(1 - mu) g`` (``"zeros"``),
        bit for bit as :func:`sai_core.update_momentum`'s first-gradient branch. A scalar select
        instead of an elementwise one saves a full pass over the tensor at every step.
        """
        if self.sai_config.momentum_init == "zeros":
            return self.momentum
        momentum = ops.convert_to_tensor(self.momentum, dtype=dtype)
        return ops.where(initialized, momentum, ops.zeros((), dtype=dtype))

    def get_config(self) -> dict[str, Any]:
        """The constructor arguments; every knob is written out, so a saved model keeps its math."""
        config = super().get_config()
        config.update(
            {
                "momentum": self.momentum,
                "epsilon": self.epsilon,
                "preset": self.sai_config.preset,
                "maximize": self.maximize,
                "exclude_from_weight_decay": list(self._excluded_names) or None,
                **self.sai_config.knobs(),
            }
        )
        return config


def _read(variable: Any) -> Any:
    # The variable's current value as a backend tensor. (keras.ops.convert_to_tensor hands a
    # TensorFlow-backend Keras variable back unchanged, which tf's smart_cond cannot take.)
    return ops.cast(variable, variable.dtype)


def _is_numpy_scalar(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return getattr(value, "shape", None) == () and getattr(dtype, "kind", "") in ("f", "i", "u")


def _exclusion_names(names: Any) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(
            f"Invalid exclude_from_weight_decay: {names!r} (expected a list of variable-name strings)"
        )
    return list(names)

