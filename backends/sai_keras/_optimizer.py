"""``SGDSaI``: the SGD-SaI optimizer as a Keras 3 optimizer (TensorFlow, JAX and torch backends).

The math is :mod:`sai_core`'s, run on backend tensors through the ``keras.ops`` namespace of
:mod:`sai_keras._ops_namespace`. The class only decides *when* each piece runs, without a Python
flag evaluated at trace time:

* ``_initialize_scales`` (once per ``apply``, before any variable is updated) decides, inside a
  ``keras.ops.cond`` taken only while some variable of this call is still uninitialized, which
  variables initialize now (their gradient is their first informative one: finite and, under
  ``zero_gradient="defer"``, not all zero), computes their raw g-SNR and, at the first call where
  any variable initializes, the normaliser ``M``: the largest g-SNR over the variables initializing
  then. Scales, ``M`` and the ``initialized`` flags live in optimizer variables and are set there,
  together. It hands each variable two 0-d gates: ``active`` (initialized) and ``first``.
* ``_update_variable`` (once per variable) updates the momentum buffer, the first gradient being a
  step whose momentum is 0 (a scalar ``keras.ops.where`` on ``first``), then the variable, with
  decoupled weight decay fused into the same expression (see :class:`SGDSaI`). An uninitialized
  variable is left exactly as it was (scalar gates, one NaN-safe select on the gradient).

On the TensorFlow backend the gradients are all-reduced under ``tf.distribute`` after
``_backend_update_step`` starts, so there the scales are set in the backend's per-strategy update
hook, from the reduced gradients, identically on every replica.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

from sai_core import (
    DEFAULT_HYPERPARAMETERS,
    DEFAULT_PRESET,
    KNOB_VALUES,
    compute_dtype,
    is_informative,
    raw_gsnr,
    resolve_config,
    scale_from_gsnr,
    update_momentum,
    update_param,
    validate_hyperparameters,
)

from . import _ops_namespace as xp

__all__ = ["SGDSaI"]

# sai_core names two hyperparameters differently from Keras; errors must name the argument the
# user actually passed.
_CORE_NAMES: dict[str, str] = {"learning_rate": "lr", "epsilon": "eps"}
_KERAS_NAMES: dict[str, str] = {core: keras_name for keras_name, core in _CORE_NAMES.items()}


def _validate(name: str, value: Any) -> None:
    validate_hyperparameters(**{_CORE_NAMES.get(name, name): value}, names=_KERAS_NAMES)


@keras.saving.register_keras_serializable(package="sai_keras", name="SGDSaI")
class SGDSaI(keras.optimizers.Optimizer):
    """SGD with momentum whose step is scaled, per variable, by its g-SNR at initialization.

    For every variable ``theta`` with a gradient ``g`` in an ``apply`` call (``g <- -g`` when
    ``maximize``); ``n`` is the variable's number of elements:

    .. math::

        G &= \\lVert g \\rVert_2 / (\\operatorname{std}(g) + \\epsilon)
            \\quad\\text{at the variable's first informative gradient only}
            \\quad(\\sqrt{n} \\text{ if } n = 1 \\text{ or } g \\text{ is constant}) \\\\
        S &= G \\quad(\\text{preset } \\texttt{"paper"}\\text{: } S = G / M,
            \\ M = \\max G \\text{ over the variables initialized first, then frozen}) \\\\
        m &\\leftarrow \\mu m + (1 - \\mu) g \\quad (m = g \\text{ at initialization}) \\\\
        \\theta &\\leftarrow \\theta - \\eta \\lambda \\theta - \\eta S m

    The default preset ``"sgd-sai"`` is the algorithm as its authors released it and ran it for
    the paper's experiments: no max-normalisation, so a variable's step is about
    ``lr * sqrt(n)`` times its momentum, and learning rates and weight decays taken from the
    paper, the published ports and (roughly) AdamW mean what they meant there. Under ``"paper"``
    (Algorithm 1, max-normalised) the same training needs ``learning_rate * M`` and
    ``weight_decay / M`` (``M`` is 256 for a 0.8M-parameter GPT, about 6,000 for GPT-2 small);
    see ``docs/keras.md``.

    A first gradient that is not informative (a NaN or inf element, or all zeros under
    ``zero_gradient="defer"``) leaves the variable uninitialized and untouched, exactly as if it
    had no gradient: no decay, buffer and variable unchanged, other variables and ``M``
    unaffected. It initializes at its first informative gradient. (No warning is issued: the
    decision is data inside the compiled step.) A variable whose gradient stays zero forever is
    never updated, not even decayed, and each step pays a check of its gradient (a few reductions
    over that one tensor). A zero-size variable never initializes.

    The scales ``S``, ``M``, the momentum buffers and one ``initialized`` flag per variable are
    optimizer variables: ``model.save`` / ``keras.models.load_model`` restore them and training
    continues exactly. A variable without a gradient in a call (``None``, or left out of
    ``apply``'s variable list) is untouched, and gets its scale at its first informative gradient
    (under ``"paper"`` divided by the frozen ``M``). Statistics and updates are computed in
    float32 (float64 for float64 variables), also for bfloat16/float16 variables and gradients.

    Weight decay uses Keras's ``weight_decay`` and ``exclude_from_weight_decay`` (by variable name
    or object), decoupled, with the step's learning rate and not scaled by ``S``. Keras would apply
    it in a separate pass in the variable's dtype; here it is fused into the update and rounded once
    (in bfloat16 a separate ``lr * wd`` of 1e-4 would be rounded away entirely).

    Args:
        learning_rate: ``eta >= 0`` (default ``1e-3``): a float, a
            ``keras.optimizers.schedules.LearningRateSchedule`` or a callable returning the value.
            Under ``"sgd-sai"`` a variable's step is about ``sqrt(n)`` times its momentum; the
            ``"paper"`` equivalent of ``lr`` is ``lr * M`` (see ``docs/keras.md``).
        momentum: ``mu`` in ``[0, 1)`` (default ``0.9``); with ``0`` no buffer is kept.
        weight_decay: decoupled weight decay ``lambda >= 0`` (default ``1e-2``); ``None`` or ``0``
            disables it. The ``"paper"`` equivalent of ``weight_decay`` is ``weight_decay / M``.
        epsilon: the g-SNR denominator guard, ``>= 0`` (default ``1e-8``).
        preset: ``"sgd-sai"`` (default), ``"paper"``, ``"sgd-sai-1.0.3"``, ``"sgd-sai-1.0.4"``,
            ``"sgd-sai-1.1.0"`` or ``"pytorch-optimizer-4"`` (see :data:`sai_core.PRESETS`).
        maximize: ascend the objective instead of descending it.
        exclude_from_weight_decay: variable-name substrings (regular expressions) to exclude from
            weight decay, as ``var_names`` of the Keras method of the same name; unlike exclusions
            by object, these are part of ``get_config`` and survive ``model.save``.
        clipnorm, clipvalue, global_clipnorm, use_ema, ema_momentum, ema_overwrite_frequency,
        loss_scale_factor, gradient_accumulation_steps, name: as for every Keras optimizer. The
            g-SNR is computed from the gradient after unscaling, accumulation and clipping.
        **knob_overrides: ``snr``, ``normalize``, ``std_correction``, ``degenerate``,
            ``vector_rule``, ``momentum_init``, ``zero_gradient``: override the preset's value of
            that knob.

    Attributes:
        momentums: one buffer per variable (empty when ``momentum == 0``).
        scales: one 0-d scale ``S`` per variable (float32; float64 for float64 variables).
        initialized: one 0-d bool per variable, true once the variable had an informative gradient.
        max_gsnr: the 0-d normaliser ``M`` (float64 if any variable is float64, else float32); it
            is set (under every preset) at the first step where a variable initializes.
        sai_config: the resolved :class:`sai_core.SaIConfig`.

    Raises:
        ValueError: naming the argument and the value, for an invalid hyperparameter (``None``
            included, except ``weight_decay=None``: no decay), preset, knob value or
            ``exclude_from_weight_decay``; Keras's base class raises it for a keyword it does not
            recognise. ``apply`` raises it, naming the variable, for a variable or gradient that
            is not real floating point or a gradient of another shape, before anything changes.

    Examples:
        >>> import keras, numpy as np
        >>> from sai_keras import SGDSaI
        >>> w = keras.Variable(np.ones((2, 2)), dtype="float32", name="w")
        >>> b = keras.Variable(np.ones(3), dtype="float32", name="b")
        >>> opt = SGDSaI(learning_rate=0.01, weight_decay=0.0)  # preset "sgd-sai"
        >>> opt.apply([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 0.0, -1.0])], [w, b])
        >>> [round(float(keras.ops.convert_to_numpy(s)), 4) for s in opt.scales]  # S = G = ||g|| / std(g)
        [4.2426, 1.4142]
        >>> [round(float(v), 4) for v in keras.ops.convert_to_numpy(b)]  # 1 - 0.01 * 1.4142 * g
        [0.9859, 1.0, 1.0141]

        An all-zero or non-finite first gradient defers the variable's initialization:

        >>> v = keras.Variable(np.ones(2), dtype="float32", name="v")
        >>> opt = SGDSaI()
        >>> opt.apply([np.array([np.nan, 1.0])], [v])
        >>> bool(keras.ops.convert_to_numpy(opt.initialized[0])), keras.ops.convert_to_numpy(v).tolist()
        (False, [1.0, 1.0])

        In ``model.compile`` (the scales are fixed by the first batch's gradients):

        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        >>> model.compile(optimizer=SGDSaI(), loss="mse")
        >>> x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
        >>> history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
        >>> int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        4
    """

    def __init__(
        self,
        learning_rate: Any = DEFAULT_HYPERPARAMETERS["lr"],
        momentum: float = DEFAULT_HYPERPARAMETERS["momentum"],
        weight_decay: float | None = DEFAULT_HYPERPARAMETERS["weight_decay"],
        epsilon: float = DEFAULT_HYPERPARAMETERS["eps"],
        *,
        preset: str = DEFAULT_PRESET,
        maximize: bool = DEFAULT_HYPERPARAMETERS["maximize"],
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
        if learning_rate is None or isinstance(learning_rate, (int, float)) or _is_numpy_scalar(learning_rate):
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
                self.add_variable(shape=(), dtype=compute_dtype(variable, xp=xp), name=f"{prefix}_gsnr_scale")
            )
            self.initialized.append(self.add_variable(shape=(), dtype="bool", name=f"{prefix}_gsnr_initialized"))
        any_float64 = any(xp.isdtype(v.dtype, xp.float64) for v in variables)
        self.max_gsnr = self.add_variable(shape=(), dtype=xp.float64 if any_float64 else xp.float32, name="max_gsnr")
        # Which variables decay is fixed here, from the Keras variables (inside update_step the
        # TensorFlow backend passes tf.Variables, whose names differ); the rate is read per trace.
        self._decays = [self._use_weight_decay(v) for v in variables]

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None) -> None:
        """Keras's ``apply``, after the checks of SPEC.md step 0 (nothing changes when they raise).

        Every variable and every gradient must be real floating point and each gradient must have
        its variable's shape; otherwise a ``ValueError`` names the variable before anything is
        built or assigned (Keras itself would cast a complex gradient to real, silently dropping
        its imaginary part, and this optimizer's reshape would accept a gradient of another shape
        with as many elements). Sparse gradients (a JAX ``BCOO``, a ``tf.SparseTensor``) are
        densified: the g-SNR and the momentum buffer are statistics of the whole tensor, so the
        result equals the dense gradient's exactly. (``tf.IndexedSlices`` are densified later, by
        the reshape in ``_backend_update_step``, with the same result.)
        """
        grads = [None if g is None else _dense(g) for g in grads]
        variables = (
            list(trainable_variables)
            if trainable_variables is not None
            else list(getattr(self, "_trainable_variables", []))
        )
        if trainable_variables is not None and len(grads) != len(variables):
            raise ValueError(
                f"Invalid apply: {len(grads)} gradients for {len(variables)} variables (one gradient, or None, per variable)"
            )
        for grad, variable in zip(grads, variables):
            _check_gradient(grad, variable)
        super().apply(grads, trainable_variables)

    def _apply_weight_decay(self, variables: Sequence[Any]) -> None:
        # Fused into update_step (one rounding, in the compute dtype); see the class docstring.
        del variables

    def _direction_sign(self, grad: Any) -> Any:
        return -grad if self.maximize else grad

    def _backend_update_step(
        self, grads: Sequence[Any], trainable_variables: Sequence[Any], learning_rate: Any
    ) -> None:
        # TensorFlow gives Embedding gradients as tf.IndexedSlices; a reshape to the variable's
        # shape makes them dense (the g-SNR and the buffer are statistics of the whole tensor) and
        # is a no-op for dense gradients on every backend.
        grads = [ops.reshape(g, tuple(v.shape)) for g, v in zip(grads, trainable_variables)]
        if keras.backend.backend() == "torch":
            # Eager torch: sai_torch's multi-tensor kernels instead of a keras.ops loop per variable.
            from ._torch_backend import torch_update_step

            torch_update_step(self, grads, trainable_variables, learning_rate)
            return
        if hasattr(super(), "_distributed_tf_update_step"):
            # TensorFlow: the gradients are all-reduced (tf.distribute) inside the backend's
            # _backend_update_step, which then calls the hook below; the g-SNR must see them.
            super()._backend_update_step(grads, trainable_variables, learning_rate)
            return
        gates = self._initialize_scales(grads, trainable_variables)
        for grad, variable, gate in zip(grads, trainable_variables, gates):
            self._update_variable(grad, variable, learning_rate, gate)

    def _distributed_tf_update_step(self, distribution: Any, grads_and_vars: Any, learning_rate: Any) -> None:
        # TensorFlow only (it replaces the backend's loop of update_step calls, to hand each
        # variable its gates): tf.distribute all-reduces the gradients inside the backend's
        # _backend_update_step, so the g-SNR is taken here, from the all-reduced gradients, once
        # per replica (every replica computes the same values).
        import tensorflow as tf  # only reached on the TensorFlow backend

        grads, variables = (list(pairs) for pairs in zip(*grads_and_vars))
        if tf.distribute.in_cross_replica_context():
            # Per-replica gates; extended.update hands each device's copy of a variable its own.
            gates = distribution.extended.call_for_each_replica(self._initialize_scales, args=(grads, variables))
        else:  # no merge call (default strategy): already in the one replica's context
            gates = self._initialize_scales(grads, variables)
        for grad, variable, gate in zip(grads, variables, gates):
            distribution.extended.update(
                variable, self._update_variable_for_update, args=(grad, learning_rate, gate), group=False
            )

    def _update_variable_for_update(self, variable: Any, grad: Any, learning_rate: Any, gate: Any) -> None:
        # tf.distribute's extended.update passes the variable first. In a graph without XLA the
        # update branches on the gate instead of selecting (see sai_keras._tensorflow_backend).
        from ._tensorflow_backend import update_variable

        update_variable(self, grad, variable, learning_rate, gate)

    def _initialize_scales(self, grads: Sequence[Any], variables: Sequence[Any]) -> list[tuple[Any, Any]]:
        """Initializes every variable of this call whose gradient is its first informative one.

        A variable initializes (``init_now``) when its flag is false and its gradient is
        informative (:func:`sai_core.is_informative`: finite and, under ``zero_gradient="defer"``,
        not all zero); it then gets its scale ``S`` and its flag becomes ``flag | init_now``. ``M``
        is set at the first call where any variable initializes (the largest g-SNR among those)
        and frozen after. A zero-size variable never initializes.

        Branch-free on values: an outer ``keras.ops.cond`` is taken only while some variable of
        the call is uninitialized (so an initialized model pays a few scalar ops per step), and
        inside it nested ``cond`` calls evaluate ``is_informative`` only for an uninitialized
        variable and the g-SNR only for one whose gradient is informative.

        Returns:
            Per variable of the call, its gates for this step as 0-d bools: ``active`` (the
            variable is initialized after this call: it is updated) and ``first`` (it initialized
            in this call: its buffer starts from the gradient).
        """
        indices = [self._get_variable_index(v) for v in variables]
        flags = [_read(self.initialized[i]) for i in indices]
        scales = [_read(self.scales[i]) for i in indices]
        max_gsnr = _read(self.max_gsnr)
        call_flags = dict(zip(indices, flags))
        # M is frozen once any variable is initialized (flags and M are set together), counting
        # the flags of variables absent from this call.
        every_flag = [call_flags[i] if i in call_flags else _read(f) for i, f in enumerate(self.initialized)]
        max_is_set = functools.reduce(ops.logical_or, every_flag)
        any_new = ops.logical_not(functools.reduce(ops.logical_and, flags))
        never = ops.zeros((), dtype="bool")

        def probe(flag: Any, grad: Any, variable: Any) -> tuple[Any, Any]:
            """``(init_now, G)``; ``G`` is 0 (discarded) unless the variable initializes now."""
            dtype = compute_dtype(grad, xp=xp)
            zero = ops.zeros((), dtype=dtype)
            if math.prod(tuple(variable.shape)) == 0:
                return never, zero  # static: a zero-size variable never initializes

            def first_gradient() -> tuple[Any, Any]:
                g = self._direction_sign(ops.cast(grad, dtype))
                informative = is_informative(g, config=self.sai_config, xp=xp)
                gsnr = ops.cond(
                    informative, lambda: raw_gsnr(g, eps=self.epsilon, config=self.sai_config, xp=xp), lambda: zero
                )
                return informative, gsnr

            return ops.cond(flag, lambda: (never, zero), first_gradient)

        def initialize() -> tuple[list[Any], list[Any], list[Any], Any]:
            probes = [probe(flag, grad, v) for flag, grad, v in zip(flags, grads, variables)]
            # The largest G over the variables initializing now, folded as the reference folds
            # it (in order, starting from the first of them).
            largest, found = ops.cast(max_gsnr, self.max_gsnr.dtype), never
            for init_now, value in probes:
                value = ops.cast(value, self.max_gsnr.dtype)
                take = ops.logical_and(init_now, ops.logical_or(ops.logical_not(found), value > largest))
                largest = ops.where(take, value, largest)
                found = ops.logical_or(found, init_now)
            new_max = ops.where(ops.logical_or(max_is_set, ops.logical_not(found)), max_gsnr, largest)
            new_scales, new_flags, firsts = [], [], []
            for flag, scale, (init_now, value) in zip(flags, scales, probes):
                fresh = scale_from_gsnr(value, ops.cast(new_max, value.dtype), config=self.sai_config, xp=xp)
                new_scales.append(ops.where(init_now, ops.cast(fresh, scale.dtype), scale))
                new_flags.append(ops.logical_or(flag, init_now))
                firsts.append(init_now)
            return new_scales, new_flags, firsts, new_max

        def keep() -> tuple[list[Any], list[Any], list[Any], Any]:
            return list(scales), list(flags), [never for _ in flags], max_gsnr

        new_scales, new_flags, firsts, new_max = ops.cond(any_new, initialize, keep)
        # Assigned outside the conds: JAX's stateless tracing cannot assign inside a branch.
        for index, scale, flag in zip(indices, new_scales, new_flags):
            self.assign(self.scales[index], scale)
            self.assign(self.initialized[index], flag)
        self.assign(self.max_gsnr, new_max)
        return list(zip(new_flags, firsts))

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        """One variable's whole step: initialization (as an ``apply`` of this variable alone), update.

        ``apply`` does not call this: it initializes every variable of the call first (one ``M``
        over all of them), then updates each with :meth:`_update_variable`.
        """
        (gate,) = self._initialize_scales([gradient], [variable])
        self._update_variable(gradient, variable, learning_rate, gate)

    def _update_variable(self, gradient: Any, variable: Any, learning_rate: Any, gate: tuple[Any, Any]) -> None:
        """Updates one variable's momentum buffer and the variable, gated by ``(active, first)``.

        An uninitialized variable (``active`` false) is left exactly as it was: no decay, buffer
        and variable unchanged. Cost is the design constraint here (a steady step should cost what
        SGD with momentum costs), so the gating is scalar wherever it can be:

        * the learning rate is ``where(active, lr, 0)``, a scalar: with it the decay
          ``lr * wd * theta`` and the update ``lr * S * m`` are exact zeros, and ``theta`` is
          unchanged bit for bit (for finite ``theta``);
        * the momentum coefficient is a scalar ``where`` on ``first`` (see :meth:`_step_momentum`);
          the buffer of an uninitialized variable is exactly zero, so a zero gradient leaves it zero.

        The one elementwise select is the gradient's, ``where(active, g, 0)``: a first gradient
        with a NaN or inf element must not reach the buffer, and a scalar gate cannot stop it
        there (``0 * nan`` is ``nan``). It is the only place a non-finite value can enter the
        state, so it is the only full-tensor select. Under XLA (TensorFlow ``jit_compile``,
        ``jax.jit``) it is fused into the buffer update's loop and costs no memory pass; in
        TensorFlow graphs and torch it is one more elementwise kernel per variable. A per-variable
        ``cond`` instead would be free in TensorFlow graphs but makes XLA copy the gradient (the
        branch returns its operand; seen in the compiled HLO) and costs torch a host sync per
        variable, so the select is the cheaper choice on every backend but one.
        """
        active, first = gate
        index = self._get_variable_index(variable)
        dtype = compute_dtype(variable, xp=xp)
        grad = self._direction_sign(ops.cast(gradient, dtype))
        if active is True:  # the caller branched on the gate already (sai_keras._tensorflow_backend)
            lr = ops.cast(learning_rate, dtype)
        else:
            grad = ops.where(active, grad, ops.zeros((), dtype=dtype))
            lr = ops.where(active, ops.cast(learning_rate, dtype), ops.zeros((), dtype=dtype))
        if self.momentum != 0:
            buffer = self.momentums[index]
            direction = update_momentum(
                ops.cast(buffer, dtype),
                grad,
                momentum=self._step_momentum(first, dtype),
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
            lr=lr,
            weight_decay=(self.weight_decay or 0.0) if self._decays[index] else 0.0,
            xp=xp,
        )
        self.assign(variable, new_value)

    def _step_momentum(self, first: Any, dtype: str) -> Any:
        """This step's ``mu`` in ``m <- mu m + (1 - mu) g``: the first gradient is a momentum change.

        The buffer is exactly zero until the variable initializes, so ``mu = 0`` there gives
        ``m = g`` (``momentum_init="grad"``) and ``mu`` itself gives ``(1 - mu) g`` (``"zeros"``),
        bit for bit as :func:`sai_core.update_momentum`'s first-gradient branch. A scalar select
        instead of an elementwise one saves a full pass over the tensor at every step.
        """
        if self.sai_config.momentum_init == "zeros":
            return self.momentum
        momentum = ops.convert_to_tensor(self.momentum, dtype=dtype)
        return ops.where(first, ops.zeros((), dtype=dtype), momentum)

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


def _dense(grad: Any) -> Any:
    """``grad`` as a dense tensor when it is a backend's sparse tensor (JAX ``BCOO``, ``tf.SparseTensor``).

    ``keras.ops.convert_to_tensor(..., sparse=False)`` densifies those and hands dense backend
    tensors back unchanged; anything else (NumPy arrays, ``tf.IndexedSlices``) is left as it is.
    """
    if not ops.is_tensor(grad):
        return grad
    return ops.convert_to_tensor(grad, sparse=False)


def _variable_name(variable: Any) -> str:
    return str(getattr(variable, "path", None) or getattr(variable, "name", None) or variable)


def _static_shape(value: Any) -> tuple[int | None, ...] | None:
    """The static shape of a tensor, array or variable (``None`` where unknown, as in TF graphs)."""
    shape = getattr(value, "shape", None)
    if shape is None:
        return None
    try:
        return tuple(None if d is None else int(d) for d in shape)
    except (TypeError, ValueError):  # no shape, or a TensorShape of unknown rank
        return None


def _check_real_floating(what: str, value: Any, variable: Any) -> None:
    dtype = getattr(value, "dtype", None)
    name = keras.backend.standardize_dtype(dtype) if dtype is not None else type(value).__name__
    if dtype is None or not keras.backend.is_float_dtype(name):
        raise ValueError(
            f"Invalid {what} {_variable_name(variable)!r}: dtype {name} (SGD-SaI needs real "
            "floating-point variables and gradients; make integer, bool and complex variables non-trainable "
            "or leave them out of the optimizer)"
        )


def _check_gradient(grad: Any, variable: Any) -> None:
    """SPEC.md step 0 for one variable of an ``apply``: raises ``ValueError`` naming it.

    A variable without a gradient (``None``) is skipped by Keras and left alone here too.
    """
    if grad is None:
        return
    _check_real_floating("variable", variable, variable)
    if not hasattr(grad, "dtype"):  # a nested list: what Keras would convert it to
        grad = ops.convert_to_tensor(grad)
    _check_real_floating("gradient for variable", grad, variable)
    got, want = _static_shape(grad), _static_shape(variable)
    if got is None or want is None:
        return
    if len(got) != len(want) or any(g is not None and g != w for g, w in zip(got, want)):
        raise ValueError(
            f"Invalid gradient for variable {_variable_name(variable)!r}: shape {got}, but the variable has shape {want}"
        )


def _is_numpy_scalar(value: Any) -> bool:
    dtype = getattr(value, "dtype", None)
    return getattr(value, "shape", None) == () and getattr(dtype, "kind", "") in ("f", "i", "u")


def _exclusion_names(names: Any) -> list[str]:
    if names is None:
        return []
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"Invalid exclude_from_weight_decay: {names!r} (expected a list of variable-name strings)")
    return list(names)


# The short name Keras resolves like its built-ins' "adam" and "sgd": keras.optimizers.get (which
# model.compile calls on a string) looks the string up in Keras's own table and then in the global
# custom-object registry, where the decorator above put "sai_keras>SGDSaI". That registry, filled
# through keras.saving.get_custom_objects(), is Keras's public way to add a name; serialization
# still writes the registered name, so a saved model never depends on this alias.
_SHORT_NAME = "sgd_sai"
keras.saving.get_custom_objects()[_SHORT_NAME] = SGDSaI
