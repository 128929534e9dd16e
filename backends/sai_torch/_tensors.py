"""Small tensor helpers shared by the SGD-SaI update paths: local shards and whole tensors.

The update is elementwise once a block's scale ``S`` is known, so every path works on the local
data of a parameter: for a ``DTensor`` (FSDP2, tensor parallel) that is its local shard, changed in
place through :func:`local`. Only the g-SNR needs the whole tensor (:func:`whole`).
"""

from __future__ import annotations

from typing import Any, cast

import torch

__all__ = ["is_dtensor", "local", "local_all", "whole"]


def _dtensor_type() -> type | None:
    # torch.distributed is optional in torch builds; without it no tensor can be a DTensor.
    if not torch.distributed.is_available():
        return None
    from torch.distributed.tensor import DTensor

    return DTensor


_DTENSOR = _dtensor_type()


def is_dtensor(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor``."""
    return _DTENSOR is not None and isinstance(tensor, _DTENSOR)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor whose elements this process stores: a DTensor's local shard (a view), else itself.

    Examples:
        >>> t = torch.zeros(3)
        >>> local(t) is t
        True
    """
    return cast(Any, tensor).to_local() if is_dtensor(tensor) else tensor


def local_all(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """:func:`local` of every tensor; the list itself when none is a DTensor (the common case)."""
    # One pass in C over the types (map/set), not an isinstance call per tensor: this runs for
    # every tensor list of every step.
    if _DTENSOR is None or not any(issubclass(kind, _DTENSOR) for kind in set(map(type, tensors))):
        return tensors
    return [local(t) for t in tensors]


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """The full logical tensor: a DTensor is gathered from every rank (a collective), else itself.

    Used only for the statistics of a block not yet initialized, so that they are the ones of the
    whole parameter and not of this process's shard.
    """
    return cast(Any, tensor).full_tensor() if is_dtensor(tensor) else tensor
