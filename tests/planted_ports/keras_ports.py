"""Planted Keras 3 ports: :class:`PlantedSaI` is clean (preset ``sgd-sai``, graph- and jit-safe:
only ``keras.ops``, no Python branch on a tensor); each subclass plants one mistake. Imports Keras:
use it in a process whose ``KERAS_BACKEND`` is set."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

MISTAKES: dict[str, str] = {
    "decay_after": "decoupled weight decay applied after the update instead of before it",
    "decay_times_s": "weight decay multiplied by the variable's scale S",
    "zero_sqrt_n": "an all-zero first gradient initializes the variable with G = sqrt(n), buffer 0",
    "nonfinite_poisons": "a non-finite first gradient initializes the variable (G = nan)",
    "bf16_stats": "the statistic computed in the variable's dtype (bfloat16 stays bfloat16)",
    "python_flag": "a Python branch on a tensor's value (works eagerly; fails under model.fit compiled)",
}


class PlantedSaI(keras.optimizers.Optimizer):
    """SGD-SaI (docs/spec.md, contract v2, preset sgd-sai) in ``keras.ops``; ``MISTAKES`` plants mistakes.

    Decay is done here (not by the base class), before the update, with this step's learning rate.
    """

    MISTAKES: frozenset[str] = frozenset()

    def __init__(
        self,
        learning_rate=1e-3,
        momentum=0.9,
        weight_decay=1e-2,
        epsilon=1e-8,
        maximize=False,
        name="planted_sai",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum, self.decay, self.epsilon, self.maximize = momentum, weight_decay, epsilon, maximize

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.buffers = [self.add_variable_from_reference(v, "buffer") for v in variables]
        self.scales = [self.add_variable((), dtype=self._wide(v), name=f"scale_{i}") for i, v in enumerate(variables)]
        self.flags = [self.add_variable((), dtype=self._wide(v), name=f"flag_{i}") for i, v in enumerate(variables)]

    @staticmethod
    def _wide(variable) -> str:
        return "float64" if keras.backend.standardize_dtype(variable.dtype) == "float64" else "float32"

    def _statistic(self, grad, n: int, dtype: str):
        work = ops.cast(grad, dtype)
        mean = ops.mean(work)
        std = ops.sqrt(ops.sum(ops.square(work - mean)) / max(n - 1, 1))
        norm = ops.sqrt(ops.sum(ops.square(work)))
        return norm / (std + ops.convert_to_tensor(self.epsilon, dtype=dtype))

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        wide = self._wide(variable)
        flag_var, scale_var, buffer_var = self.flags[index], self.scales[index], self.buffers[index]
        flag, scale, buffer = (ops.convert_to_tensor(v) for v in (flag_var, scale_var, buffer_var))
        if "python_flag" in self.MISTAKES and float(ops.convert_to_numpy(flag)) == 0.0:
            pass  # decides in Python whether this is the first step: needs a concrete value
        g = ops.cast(gradient, wide)
        if self.maximize:
            g = -g
        n = int(np.prod(variable.shape))
        finite = ops.all(ops.isfinite(g))
        nonzero = ops.any(ops.not_equal(g, 0.0))
        informative = ops.logical_and(finite, nonzero)
        if "zero_sqrt_n" in self.MISTAKES:
            informative = finite
        if "nonfinite_poisons" in self.MISTAKES:
            informative = ops.logical_or(nonzero, ops.logical_not(finite))
        first = ops.logical_and(ops.equal(flag, 0.0), informative)
        active = ops.logical_or(ops.greater(flag, 0.0), first)
        usable = g if "nonfinite_poisons" in self.MISTAKES else ops.where(ops.isfinite(g), g, ops.zeros_like(g))
        stat_dtype = keras.backend.standardize_dtype(variable.dtype) if "bf16_stats" in self.MISTAKES else wide
        constant = ops.equal(ops.max(usable), ops.min(usable))
        degenerate = ops.convert_to_tensor(math.sqrt(n), dtype=wide)  # not via float32
        if n == 1:
            value = degenerate
        else:
            value = ops.where(constant, degenerate, ops.cast(self._statistic(usable, n, stat_dtype), wide))
        new_scale = ops.where(first, value, scale)
        new_buffer = ops.where(first, g, self.momentum * ops.cast(buffer, wide) + (1 - self.momentum) * g)
        if self.momentum == 0:
            new_buffer = g
        lr = ops.cast(learning_rate, wide)
        theta = ops.cast(ops.convert_to_tensor(variable), wide)
        decay = lr * self.decay * (new_scale if "decay_times_s" in self.MISTAKES else 1.0)
        if "decay_after" in self.MISTAKES:
            new_theta = (theta - lr * new_scale * new_buffer) * (1 - decay)
        else:
            new_theta = theta * (1 - decay) - lr * new_scale * new_buffer
        self.assign(variable, ops.cast(ops.where(active, new_theta, theta), variable.dtype))
        self.assign(buffer_var, ops.cast(ops.where(active, new_buffer, ops.cast(buffer, wide)), buffer_var.dtype))
        self.assign(scale_var, new_scale)
        self.assign(flag_var, ops.where(active, ops.ones_like(flag), flag))

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "weight_decay": self.decay, "epsilon": self.epsilon, "maximize": self.maximize}
        )
        return config


def _planted(name: str, *mistakes: str) -> type:
    doc = "; ".join(MISTAKES[m] for m in mistakes)
    return type(
        name, (PlantedSaI,), {"MISTAKES": frozenset(mistakes), "__doc__": f"Planted: {doc}.", "__module__": __name__}
    )


DecayAfterUpdate = _planted("DecayAfterUpdate", "decay_after")
DecayTimesScale = _planted("DecayTimesScale", "decay_times_s")
ZeroGradSqrtN = _planted("ZeroGradSqrtN", "zero_sqrt_n")
NonFinitePoisons = _planted("NonFinitePoisons", "nonfinite_poisons")
Bf16Statistics = _planted("Bf16Statistics", "bf16_stats")
PythonFlag = _planted("PythonFlag", "python_flag")
