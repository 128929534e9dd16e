"""Checkpoints that ``SGDSaI.load_state_dict`` receives from elsewhere: the published ports' and others'.

:func:`prepare_state_dict` runs before anything is loaded. It returns an ``SGDSaI`` state dict
unchanged; converts one written by a published port (``sgd_sai.SGD_sai`` 1.0.3, or
``pytorch_optimizer.SGDSaI`` 4.x) when the optimizer's knobs are exactly that port's preset,
keeping the port's stored g-SNR bit for bit as ``scale``; and raises ``ValueError`` (nothing
loaded) for a port checkpoint that cannot be kept exactly or for another optimizer's checkpoint.

What the ports store (read off their ``state_dict()``; their code is not used here):

- ``sgd_sai.SGD_sai`` 1.0.3: groups ``{lr, momentum, eps, weight_decay}``; per tensor ``gsnr`` (a
  0-d tensor in the parameter's dtype) and ``momentum_buffer`` (started at ``g``, then
  ``mu m + (1 - mu) g``: ``momentum_init="grad"``). Whether its g-SNR was computed lives in a
  Python attribute, not in the state dict, so ``SGD_sai`` itself recomputes the g-SNR after a
  resume; ``SGDSaI`` keeps the checkpoint's.
- ``pytorch_optimizer.SGDSaI`` 4.x: groups ``{lr, foreach, momentum, weight_decay,
  weight_decouple, eps, step}`` (``maximize`` is an attribute of the optimizer, not saved); per
  tensor ``gsnr`` and, with ``momentum > 0``, ``momentum_buffer`` (started at zeros, then
  ``lerp``: after its first step it holds ``(1 - mu) g``, which is ``momentum_init="zeros"``).

Neither port normalises by ``M``; ``max_gsnr`` (``M``, recorded only under their presets) is set
to the largest stored g-SNR.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from sai_core import resolve_config, validate_hyperparameters

__all__ = ["prepare_state_dict"]

# The keys SGDSaI's own state dict holds per tensor, and the hyperparameters every group holds.
_OWN_STATE_KEYS = frozenset({"momentum_buffer", "scale", "max_gsnr"})
_HYPERPARAMETERS = ("lr", "momentum", "weight_decay", "eps")
# Group entries that are the optimizer's own settings, not the checkpoint's (a port has none of
# them, or means another thing by them): kept from the optimizer that loads.
_OWN_FLAGS = {"maximize": False, "foreach": None, "fused": None}


@dataclasses.dataclass(frozen=True)
class _Port:
    name: str
    preset: str
    group_keys: frozenset[str]  # keys besides "params" that only this port's groups have
    dropped_group_keys: frozenset[str]  # port-only group keys that mean nothing to SGDSaI


_PYTORCH_OPTIMIZER = _Port(
    name="pytorch_optimizer.SGDSaI (pytorch-optimizer 4.x)",
    preset="pytorch-optimizer-4",
    group_keys=frozenset({"weight_decouple"}),
    dropped_group_keys=frozenset({"weight_decouple", "step", "foreach"}),
)
_SGD_SAI = _Port(
    name="sgd_sai.SGD_sai (sgd-sai 1.0.3)",
    preset="sgd-sai-1.0.3",
    group_keys=frozenset(),
    dropped_group_keys=frozenset(),
)

# Optimizer-specific names that tell what a foreign checkpoint is, for the error message.
_FOREIGN_HINTS = (
    ("exp_avg_sq", "an Adam-family optimizer's (torch.optim.Adam/AdamW or similar)"),
    ("exp_avg", "an Adam-family optimizer's"),
    ("square_avg", "RMSprop's or Adadelta's"),
    ("sum", "Adagrad's"),
    ("nesterov", "torch.optim.SGD's"),
    ("dampening", "torch.optim.SGD's"),
    ("betas", "an Adam-family optimizer's"),
)


def _identify_port(state_dict: dict[str, Any]) -> _Port | None:
    """The port that wrote ``state_dict``, or ``None`` when it does not look like a port's."""
    if "sai_config" in state_dict:
        return None
    groups = state_dict.get("param_groups", [])
    entries = list(state_dict.get("state", {}).values())
    if any("weight_decouple" in group for group in groups):
        return _PYTORCH_OPTIMIZER
    if any("gsnr" in entry for entry in entries):
        # SGD_sai's groups hold exactly its four hyperparameters (and what a scheduler adds).
        if all(not (set(group) & {"maximize", "foreach", "fused", "nesterov", "betas"}) for group in groups):
            return _SGD_SAI
        raise ValueError(
            "Invalid state_dict: its tensor state holds 'gsnr' but its parameter groups hold "
            f"{sorted(set().union(*map(set, groups)) - {'params'})}: an SGD-SaI implementation other than "
            "the two published ports SGDSaI converts (sgd_sai.SGD_sai 1.0.3, pytorch_optimizer.SGDSaI 4.x). "
            "Its g-SNR cannot be kept exactly without knowing its rules: load only the model's weights "
            "and start SGDSaI fresh (scales are then fixed at the next gradient). Nothing was loaded."
        )
    return None


def _refuse_foreign(state_dict: dict[str, Any]) -> None:
    """Raises for a checkpoint that is not SGDSaI's (nor a port's): another optimizer's."""
    groups = state_dict.get("param_groups", [])
    foreign_state = sorted(
        {key for entry in state_dict.get("state", {}).values() for key in entry} - _OWN_STATE_KEYS, key=str
    )
    missing = sorted({name for group in groups for name in _HYPERPARAMETERS if name not in group})
    if not foreign_state and not missing:
        return
    names = set(foreign_state) | {key for group in groups for key in group}
    what = next((hint for key, hint in _FOREIGN_HINTS if key in names), "another optimizer's")
    details = []
    if foreign_state:
        details.append(f"its tensor state holds {foreign_state}")
    if missing:
        details.append(f"its parameter groups have no {missing}")
    raise ValueError(
        f"Invalid state_dict: this is not an SGDSaI checkpoint ({'; '.join(details)}): it looks like "
        f"{what}. SGD-SaI's scales are each tensor's g-SNR at its first gradient and cannot be derived "
        "from another optimizer's state: load only the model's weights and start SGDSaI fresh (scales "
        "are then fixed at the next gradient). Nothing was loaded."
    )


def _scale(index: Any, gsnr: Any, port: _Port) -> float:
    if isinstance(gsnr, torch.Tensor):
        if gsnr.numel() != 1:
            raise ValueError(
                f"Invalid state_dict: parameter {index}'s 'gsnr' has {gsnr.numel()} elements; {port.name} "
                "stores one number per tensor. Nothing was loaded."
            )
        value = gsnr.detach().to("cpu", torch.float64).item()  # exact: float64 holds every narrower float
    else:
        value = float(gsnr)
    if not math.isfinite(value):
        raise ValueError(
            f"Invalid state_dict: parameter {index}'s stored g-SNR is {value} ({port.name} computed it from a "
            "first gradient with a NaN or inf element, and that tensor's parameters are non-finite from "
            "then on); it cannot be resumed. Load the model's weights from before that step, or start "
            "SGDSaI fresh (it waits for a tensor's first finite gradient). Nothing was loaded."
        )
    return value


def _convert(optimizer: Any, state_dict: dict[str, Any], port: _Port) -> dict[str, Any]:
    expected = resolve_config(port.preset).knobs()
    knobs = optimizer.config.knobs()
    if knobs != expected:
        differ = {name: (knobs[name], expected[name]) for name in expected if knobs[name] != expected[name]}
        raise ValueError(
            f"Invalid state_dict: this is a checkpoint of {port.name}, whose stored g-SNRs follow the rules "
            f"that preset {port.preset!r} reproduces; this optimizer (preset {optimizer.config.preset!r}) "
            "differs in "
            + ", ".join(f"{name}={mine!r} (the port: {theirs!r})" for name, (mine, theirs) in differ.items())
            + f". To resume that run exactly build SGDSaI(..., preset={port.preset!r}) without knob overrides "
            "and load the checkpoint into it; to switch to another preset, load only the model's weights "
            "and start SGDSaI fresh (scales are then fixed at the next gradient). Nothing was loaded."
        )
    groups: list[dict[str, Any]] = []
    momentum_of: dict[Any, float] = {}
    for position, saved in enumerate(state_dict.get("param_groups", [])):
        if saved.get("weight_decouple", True) is not True:
            raise ValueError(
                f"Invalid state_dict: this is a checkpoint of {port.name} with weight_decouple=False "
                f"(parameter group {position}): coupled L2 weight decay, which SGDSaI does not implement "
                "(its weight decay is decoupled), so the run cannot continue exactly. Nothing was loaded."
            )
        missing = [name for name in _HYPERPARAMETERS if name not in saved]
        if missing:
            raise ValueError(
                f"Invalid state_dict: parameter group {position} of this {port.name} checkpoint has no "
                f"{missing}. Nothing was loaded."
            )
        try:
            validate_hyperparameters(momentum=saved["momentum"], weight_decay=saved["weight_decay"], eps=saved["eps"])
        except ValueError as error:
            raise ValueError(
                f"Invalid state_dict: parameter group {position} of this {port.name} checkpoint: {error}. "
                "Nothing was loaded."
            ) from None
        group = {key: value for key, value in saved.items() if key not in port.dropped_group_keys}
        current = optimizer.param_groups[position] if position < len(optimizer.param_groups) else {}
        for flag, default in _OWN_FLAGS.items():
            group[flag] = current.get(flag, default)
        groups.append(group)
        for index in saved.get("params", []):
            momentum_of[index] = float(saved["momentum"])

    entries: dict[Any, dict[str, Any]] = {}
    for index, saved in state_dict.get("state", {}).items():
        unknown = sorted(set(saved) - {"gsnr", "momentum_buffer"}, key=str)
        if unknown:
            raise ValueError(
                f"Invalid state_dict: parameter {index} of this {port.name} checkpoint holds {unknown}, which "
                "that port does not write. Nothing was loaded."
            )
        if "gsnr" not in saved:
            if "momentum_buffer" in saved:
                raise ValueError(
                    f"Invalid state_dict: parameter {index} of this {port.name} checkpoint has a momentum "
                    "buffer but no 'gsnr': its g-SNR was fixed at its first gradient and cannot be "
                    "recomputed later. Nothing was loaded."
                )
            continue
        entry: dict[str, Any] = {"scale": _scale(index, saved["gsnr"], port)}
        # With momentum 0 SGDSaI keeps no buffer (the update uses the gradient itself).
        if "momentum_buffer" in saved and momentum_of.get(index, 1.0) != 0.0:
            entry["momentum_buffer"] = saved["momentum_buffer"]
        entries[index] = entry
    if entries:
        max_gsnr = max(entry["scale"] for entry in entries.values())
        for entry in entries.values():
            entry["max_gsnr"] = max_gsnr
    return {"state": entries, "param_groups": groups, "sai_config": {"preset": port.preset, **expected}}


def prepare_state_dict(optimizer: Any, state_dict: dict[str, Any]) -> dict[str, Any]:
    """The state dict ``optimizer.load_state_dict`` should load, or ``ValueError`` (nothing changed).

    ``state_dict`` itself is never modified. An ``SGDSaI`` checkpoint (with or without
    ``"sai_config"``) is returned as given, for the optimizer's own checks.
    """
    if not isinstance(state_dict, dict):
        return state_dict
    port = _identify_port(state_dict)
    if port is not None:
        return _convert(optimizer, state_dict, port)
    if "sai_config" not in state_dict:
        _refuse_foreign(state_dict)
    return state_dict
