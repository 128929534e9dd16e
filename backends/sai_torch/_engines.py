"""Engines that hand the optimizer flattened or partial tensors instead of the user's: refused.

A tensor's g-SNR is a statistic of the whole tensor as the user registered it. An engine that
gives the optimizer a flattened concatenation of several tensors, or one rank's slice of it,
would get the statistic of the wrong tensor, silently. What is checked, per tensor:

- FSDP1 ``FlatParameter`` (``FullyShardedDataParallel``, default ``use_orig_params=False``): the
  attribute ``_is_flat_param`` (what ``isinstance(t, FlatParameter)`` itself tests).
- FSDP1 ``use_orig_params=True``: the user's ``Parameter`` objects stay, but their data becomes
  1-D views into this rank's shard of the flat parameter; FSDP marks each with
  ``_fsdp_flattened`` (also set on the ``FlatParameter`` and by FSDP1's tensor-parallel
  extension). FSDP2 (``fully_shard``) does not set it: its parameters are DTensors of the user's
  shape, which SGDSaI supports.
- DeepSpeed ZeRO stage 3 partitions: any of ``ds_id``, ``ds_status``, ``ds_numel``,
  ``ds_shape``, ``ds_tensor`` (the attributes ``deepspeed.zero.Init`` / stage 3 set on the
  parameters they partition).
- DeepSpeed ZeRO stages 1 and 2 mark nothing: they replace each group's ``params`` list of the
  client optimizer with one flat fp32 partition by assigning to ``param_group["params"]``. That
  tensor never went through the constructor or ``add_param_group``, so a tensor reaching its
  initialization without having been registered is refused too.

The attribute checks run when a group is added (``ValueError``) and, for the tensors being
initialized, at ``step()`` (``RuntimeError``, before anything changes): the g-SNR is computed
only then, so a tensor flattened after construction but before its first gradient is caught,
and steady steps pay nothing.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import Any

import torch

__all__ = ["check_added", "check_initializing", "engine_of"]

_DEEPSPEED_ATTRIBUTES = ("ds_id", "ds_status", "ds_numel", "ds_shape", "ds_tensor")
_SUPPORTED = (
    "use FSDP2 (torch.distributed.fsdp.fully_shard), whose DTensor parameters keep each tensor's shape "
    "and for which SGDSaI computes the g-SNR of the whole tensor; DDP and tensor parallelism work too "
    "(docs/torch.md, 'Distributed')"
)
# Where an optimizer keeps weak references to the tensors it was given (by id). Not optimizer
# state: not pickled (torch.optim's __getstate__ keeps only defaults, state and param_groups),
# rebuilt from param_groups when absent.
_REGISTRY = "_sai_registered_params"


def engine_of(tensor: torch.Tensor) -> str | None:
    """Which unsupported engine flattened or partitioned ``tensor``, in words; ``None`` if none did.

    Examples:
        >>> engine_of(torch.nn.Parameter(torch.zeros(2, 2))) is None
        True
    """
    if getattr(tensor, "_is_flat_param", False):
        return (
            "an FSDP1 FlatParameter (torch.distributed.fsdp.FullyShardedDataParallel): several tensors "
            "flattened into one 1-D shard"
        )
    if getattr(tensor, "_fsdp_flattened", False):
        return (
            "a parameter managed by FSDP1 with use_orig_params=True (FullyShardedDataParallel): its data "
            "is this rank's 1-D slice of a flattened parameter"
        )
    found = [name for name in _DEEPSPEED_ATTRIBUTES if hasattr(tensor, name)]
    if found:
        return f"a DeepSpeed ZeRO stage 3 partition (it carries {', '.join(found)})"
    return None


def _message(describe: str, engine: str) -> str:
    return (
        f"SGDSaI cannot optimize {describe}: it is {engine}. The g-SNR must be computed over the whole "
        f"tensor as the model defines it, and this engine hands the optimizer a flattened or partial "
        f"view, so the statistic would silently be the wrong tensor's. Instead, {_SUPPORTED}."
    )


def _registry(optimizer: Any) -> dict[int, weakref.ref]:
    registry = optimizer.__dict__.get(_REGISTRY)
    if registry is None:
        registry = {id(p): weakref.ref(p) for group in optimizer.param_groups for p in group["params"]}
        optimizer.__dict__[_REGISTRY] = registry
    return registry


def check_added(optimizer: Any, params: Iterable[torch.Tensor], describe: Any) -> None:
    """Raises ``ValueError`` for a tensor of a group being added that an engine flattened;
    otherwise records the group's tensors as the optimizer's own."""
    params = list(params)
    for p in params:
        engine = engine_of(p)
        if engine is not None:
            raise ValueError(f"Invalid params: {_message(describe(p), engine)}")
    registry = _registry(optimizer)
    for p in params:
        registry[id(p)] = weakref.ref(p)


def check_initializing(optimizer: Any, params: Iterable[torch.Tensor], describe: Any) -> None:
    """Raises ``RuntimeError`` for a tensor about to be initialized that an engine flattened or
    that was put into a parameter group behind the optimizer's back."""
    registry = _registry(optimizer)
    for p in params:
        engine = engine_of(p)
        if engine is not None:
            raise RuntimeError(_message(describe(p), engine))
        ref = registry.get(id(p))
        if ref is None or ref() is not p:
            raise RuntimeError(
                f"SGDSaI cannot optimize {describe(p)}: it was put into a parameter group without going "
                "through SGDSaI(...) or add_param_group, as DeepSpeed ZeRO stages 1 and 2 do when they "
                "replace the optimizer's parameters with one flattened fp32 partition per group; its "
                f"g-SNR would be that of a flat slice of many tensors. Instead, {_SUPPORTED}. To "
                "change a group's tensors yourself, add them with add_param_group."
            )
