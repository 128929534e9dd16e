"""The reference SGD-SaI optimizer: the oracle every backend is measured against.

It applies the math of :mod:`sai_core._math` block by block, eagerly, in float64 NumPy by default.
Any array-API namespace can be passed as ``xp=`` (the conformance suite runs it under
``array_api_strict`` to prove the core uses only the standard).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ._config import DEFAULT_HYPERPARAMETERS, DEFAULT_PRESET, SaIConfig, resolve_config, validate_hyperparameters
from ._math import (
    NonFiniteGradientWarning,
    is_informative,
    raw_gsnr,
    scale_from_gsnr,
    update_momentum,
    update_param,
)

__all__ = ["ReferenceSGDSaI"]

Array = Any

# Hyperparameters a parameter group may override (the knobs are optimizer-wide).
GROUP_HYPERPARAMETERS: tuple[str, ...] = ("lr", "momentum", "weight_decay", "eps", "maximize")


class ReferenceSGDSaI:
    """SGD-SaI over a list of arrays, exactly as ``docs/spec.md`` states it.

    For each block ``i`` with a gradient ``g`` at this step (``None`` leaves it untouched):

    .. math::

        G_i &= \\lVert g \\rVert_2 / (\\operatorname{std}(g) + \\epsilon)
            \\quad\\text{(at the block's first informative gradient)} \\\\
        S_i &= G_i \\quad (\\text{preset "paper": } G_i / M, \\ M = \\max_j G_j
            \\text{ over the blocks initialized first}) \\\\
        m_i &\\leftarrow \\mu m_i + (1 - \\mu) g \\quad (m_i = g \\text{ at initialization}) \\\\
        \\theta_i &\\leftarrow \\theta_i - \\eta \\lambda \\theta_i - \\eta S_i m_i

    A first gradient that is not informative (a NaN or inf element, or all zeros under
    ``zero_gradient="defer"``) leaves the block uninitialized and untouched, as if it had none; a
    non-finite one also warns (:class:`sai_core.NonFiniteGradientWarning`, once per block). A
    zero-size block never initializes and never changes.

    Args:
        params: a list of arrays, or a list of torch-style group dicts
            (``{"params": [...], "lr": 0.1}``) whose keys override the defaults below.
        lr: learning rate ``eta >= 0`` (default ``1e-3``). Under the default preset ``"sgd-sai"``
            a block's step is ``lr * G`` (about ``lr * sqrt(n)``) times its momentum; under
            ``"paper"`` the same run needs ``lr * M``.
        momentum: ``mu`` in ``[0, 1)``; ``0`` stores no buffer.
        weight_decay: decoupled weight decay ``lambda >= 0`` (not scaled by ``S``); under
            ``"paper"`` the same decay as ``"sgd-sai"`` needs ``weight_decay / M``.
        eps: g-SNR denominator guard.
        preset: a name from :data:`sai_core.PRESETS` (default ``"sgd-sai"``).
        maximize: ascend instead of descend.
        xp: array namespace (default NumPy).
        dtype: dtype of the optimizer's arrays (default float64).
        **knob_overrides: knob values overriding the preset's.

    Attributes:
        params: the current arrays, flattened across groups in order.
        param_groups: one dict per group; ``"params"`` holds indices into :attr:`params`.
            Change hyperparameters here between steps to run a schedule.

    Examples:
        >>> import numpy as np
        >>> opt = ReferenceSGDSaI([np.ones((2, 2)), np.ones(3)], lr=0.01, weight_decay=0.0)
        >>> opt.step([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([1.0, 0.0, -1.0])])
        >>> [round(float(s), 4) for s in opt.scale]  # G = ||g|| / std(g)
        [4.2426, 1.4142]
        >>> opt.params[1].round(4).tolist()
        [0.9859, 1.0, 1.0141]
    """

    def __init__(
        self,
        params: Iterable[Array] | Iterable[Mapping[str, Any]],
        *,
        lr: float = DEFAULT_HYPERPARAMETERS["lr"],
        momentum: float = DEFAULT_HYPERPARAMETERS["momentum"],
        weight_decay: float = DEFAULT_HYPERPARAMETERS["weight_decay"],
        eps: float = DEFAULT_HYPERPARAMETERS["eps"],
        preset: str = DEFAULT_PRESET,
        maximize: bool = False,
        xp: Any = None,
        dtype: Any = None,
        **knob_overrides: Any,
    ) -> None:
        self.config: SaIConfig = resolve_config(preset, **knob_overrides)
        self.xp = np if xp is None else xp
        self.dtype = self.xp.float64 if dtype is None else dtype
        defaults: dict[str, Any] = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eps": eps,
            "maximize": maximize,
        }
        validate_hyperparameters(**defaults)
        self.defaults = defaults
        entries = list(params)
        if not entries:
            raise ValueError("Invalid params: an empty list (the optimizer needs parameters)")
        if not isinstance(entries[0], Mapping):
            entries = [{"params": entries}]
        self.params: list[Array] = []
        self.param_groups: list[dict[str, Any]] = []
        for group in entries:
            unknown = sorted(set(group) - {"params", *GROUP_HYPERPARAMETERS})
            if unknown:
                raise ValueError(f"Invalid param group keys: {unknown}")
            merged = {**defaults, **{k: v for k, v in group.items() if k != "params"}}
            validate_hyperparameters(**merged)
            start = len(self.params)
            self.params.extend(self.xp.asarray(p, dtype=self.dtype) for p in group["params"])
            merged["params"] = list(range(start, len(self.params)))
            self.param_groups.append(merged)
        count = len(self.params)
        self.scale: list[Array | None] = [None] * count
        self.momentum_buffer: list[Array | None] = [None] * count
        self.max_gsnr: Array | None = None
        self.step_count = 0
        self._warned_nonfinite: set[int] = set()

    def _block_hyperparameters(self) -> list[dict[str, Any]]:
        per_block: list[dict[str, Any]] = [{}] * len(self.params)
        for group in self.param_groups:
            validate_hyperparameters(**{k: group[k] for k in GROUP_HYPERPARAMETERS})
            for index in group["params"]:
                per_block[index] = group
        return per_block

    def step(self, grads: Sequence[Array | None]) -> None:
        """Applies one step. ``grads[i]`` is block ``i``'s gradient or ``None`` (no gradient)."""
        if len(grads) != len(self.params):
            raise ValueError(f"Invalid grads: {len(grads)} entries for {len(self.params)} parameters")
        xp, config = self.xp, self.config
        hyper = self._block_hyperparameters()
        present: dict[int, Array] = {}
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            grad = xp.asarray(grad, dtype=self.dtype)
            if tuple(grad.shape) != tuple(self.params[i].shape):
                raise ValueError(
                    f"Invalid grads[{i}]: shape {tuple(grad.shape)} for a parameter of shape "
                    f"{tuple(self.params[i].shape)}"
                )
            present[i] = -grad if hyper[i]["maximize"] else grad
        self.step_count += 1

        # A first gradient initializes its block only when informative; an uninformative one
        # leaves the block untouched this step, exactly as if it had no gradient.
        new_blocks = []
        for i in [i for i in present if self.scale[i] is None]:
            if bool(is_informative(present[i], config=config, xp=xp)):
                new_blocks.append(i)
                continue
            grad = present.pop(i)
            if i not in self._warned_nonfinite and not bool(xp.all(xp.isfinite(grad))):
                self._warned_nonfinite.add(i)
                block = f"parameter {i} (shape {tuple(self.params[i].shape)})"
                warnings.warn(NonFiniteGradientWarning.message(block), NonFiniteGradientWarning, stacklevel=2)
        gsnrs = {i: raw_gsnr(present[i], eps=hyper[i]["eps"], config=config, xp=xp) for i in new_blocks}
        if self.max_gsnr is None and gsnrs:
            # M is frozen at the first step where any block initializes, across all groups.
            max_gsnr = None
            for value in gsnrs.values():
                max_gsnr = value if max_gsnr is None else xp.where(value > max_gsnr, value, max_gsnr)
            self.max_gsnr = max_gsnr
        for i, value in gsnrs.items():
            self.scale[i] = scale_from_gsnr(value, self.max_gsnr, config=config, xp=xp)

        for i, grad in present.items():
            h = hyper[i]
            first = self.momentum_buffer[i] is None
            direction = update_momentum(
                self.momentum_buffer[i], grad, momentum=h["momentum"], first=first, config=config, xp=xp
            )
            if h["momentum"] != 0 or not first:
                # With momentum 0 no buffer is created; an existing one keeps being updated.
                self.momentum_buffer[i] = direction
            self.params[i] = update_param(
                self.params[i], direction, self.scale[i], lr=h["lr"], weight_decay=h["weight_decay"], xp=xp
            )

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the optimizer state (arrays copied), loadable with :meth:`load_state_dict`."""
        state = {}
        for i in range(len(self.params)):
            entry = {}
            if self.scale[i] is not None:
                entry["scale"] = self.scale[i]
            if self.momentum_buffer[i] is not None:
                entry["momentum_buffer"] = self.momentum_buffer[i]
            if entry:
                state[i] = entry
        return copy.deepcopy(
            {
                "state": state,
                "max_gsnr": self.max_gsnr,
                "step": self.step_count,
                "param_groups": self.param_groups,
                "config": self.config.knobs(),
            }
        )

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores a :meth:`state_dict` (parameters themselves are not part of it)."""
        groups = state_dict["param_groups"]
        if [g["params"] for g in groups] != [g["params"] for g in self.param_groups]:
            raise ValueError("Invalid state_dict: its param_groups do not match this optimizer's")
        if state_dict["config"] != self.config.knobs():
            raise ValueError(
                f"Invalid state_dict: saved knobs {state_dict['config']} differ from "
                f"this optimizer's {self.config.knobs()}"
            )
        saved = copy.deepcopy(dict(state_dict))
        self.param_groups = saved["param_groups"]
        self.max_gsnr = saved["max_gsnr"]
        self.step_count = saved["step"]
        count = len(self.params)
        self.scale = [saved["state"].get(i, {}).get("scale") for i in range(count)]
        self.momentum_buffer = [saved["state"].get(i, {}).get("momentum_buffer") for i in range(count)]
