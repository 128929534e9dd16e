"""The g-SNR of a torch model, tensor by tensor: ``gsnr_report`` (one gradient) and ``scale_report``
(the frozen scales of an ``SGDSaI`` or its ``state_dict``).

Both return a :class:`sai_core.GsnrReport`; ``sai-gsnr`` renders it. The numbers are
``sai_core``'s (:func:`sai_core.report_from_gradients`, :func:`sai_core.report_from_scales`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from sai_core import (
    DEFAULT_HYPERPARAMETERS,
    DEFAULT_PRESET,
    KNOB_VALUES,
    GsnrReport,
    report_from_gradients,
    report_from_scales,
    resolve_config,
)

from ._optimizer import SGDSaI
from ._tensors import whole

__all__ = ["gsnr_report", "scale_report"]

# Tensor-state keys an SGDSaI state_dict may hold; anything else is another optimizer's.
_SAI_STATE_KEYS = frozenset({"momentum_buffer", "scale", "max_gsnr"})


def gsnr_report(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module], torch.Tensor],
    *,
    preset: str = DEFAULT_PRESET,
    eps: float = DEFAULT_HYPERPARAMETERS["eps"],
    **knob_overrides: Any,
) -> GsnrReport:
    """The g-SNR ``G`` and scale ``S`` that ``SGDSaI`` would freeze if this were its first step.

    Computes one gradient of ``loss_fn(model)`` with respect to every parameter that requires
    grad (``torch.autograd.grad``: the parameters' ``.grad`` are left as they were), in
    ``named_parameters`` order.

    Args:
        model: the model.
        loss_fn: returns the scalar loss of one batch for ``model``.
        preset: the preset whose ``S`` is shown (``"sgd-sai"``: ``S = G``; ``"paper"``: ``G / M``).
        eps: the g-SNR denominator guard.
        **knob_overrides: knob values overriding the preset's.

    Returns:
        A :class:`sai_core.GsnrReport`: per tensor its name, shape, ``G`` and ``S``, and ``M``.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module`` or ``loss_fn`` is not callable.
        ValueError: ``loss_fn(model)`` is not a one-element floating tensor, or the model has
            no parameter that requires grad.

    Examples:
        >>> import torch
        >>> from sai_torch import gsnr_report
        >>> model = torch.nn.Linear(2, 2, bias=False)
        >>> target = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> loss_fn = lambda m: (m.weight * target).sum()  # gradient: target, G = ||g|| / std(g)
        >>> row, = gsnr_report(model, loss_fn).rows
        >>> row.name, row.shape, round(row.gsnr, 4), round(row.sqrt_numel, 4)
        ('weight', (2, 2), 4.2426, 2.0)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"Invalid model: {type(model).__name__} (expected a torch.nn.Module)")
    if not callable(loss_fn):
        raise TypeError(f"Invalid loss_fn: {loss_fn!r} (expected a callable returning the loss)")
    config = resolve_config(preset, **knob_overrides)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"Invalid model: {type(model).__name__} has no parameter that requires grad")
    loss = loss_fn(model)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        described = (
            f"a tensor of shape {tuple(loss.shape)} and dtype {loss.dtype}"
            if isinstance(loss, torch.Tensor)
            else repr(loss)
        )
        raise ValueError(f"Invalid loss_fn: loss_fn(model) returned {described} (expected a scalar floating tensor)")
    grads = torch.autograd.grad(loss.reshape(()), [p for _, p in named], allow_unused=True)
    return report_from_gradients(
        [name for name, _ in named],
        [None if g is None else whole(g.detach()) for g in grads],
        eps=eps,
        config=config,
        framework="torch",
    )


def scale_report(optimizer: SGDSaI | Mapping[str, Any]) -> GsnrReport:
    """The frozen scales of an :class:`sai_torch.SGDSaI`, or of its ``state_dict()`` (loaded from a file).

    Names come from ``named_parameters`` when the optimizer was given them (``param_names`` in the
    state dict), else ``"parameter {index}"``; a state dict records shapes only through momentum
    buffers (``None`` with ``momentum=0``).

    Raises:
        ValueError: the state dict is another optimizer's (``torch.optim.AdamW``'s, a published
            port's) or not an optimizer state dict at all; the message says which.

    Examples:
        >>> import torch
        >>> from sai_torch import SGDSaI, scale_report
        >>> model = torch.nn.Linear(2, 2, bias=False)
        >>> opt = SGDSaI(model.named_parameters())
        >>> model.weight.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
        >>> opt.step()
        >>> [(row.name, round(row.scale, 4)) for row in scale_report(opt.state_dict()).rows]
        [('weight', 4.2426)]
        >>> scale_report(torch.optim.AdamW(model.parameters()).state_dict())
        Traceback (most recent call last):
        ...
        ValueError: Invalid state_dict: it has no "sai_config"; its parameter groups hold ['amsgrad', 'betas', ...
    """
    if isinstance(optimizer, SGDSaI):
        entries, max_gsnr, index = [], None, 0
        for group in optimizer.param_groups:
            names = group.get("param_names")
            for position, p in enumerate(group["params"]):
                state = optimizer.state.get(p, {})
                name = names[position] if names else f"parameter {index}"
                entries.append((name, tuple(p.shape), state.get("scale")))
                max_gsnr = state.get("max_gsnr", max_gsnr)
                index += 1
        return report_from_scales(entries, max_gsnr, config=optimizer.config, framework="torch")
    if not isinstance(optimizer, Mapping) or "state" not in optimizer or "param_groups" not in optimizer:
        described = (
            f"a dict with keys {sorted(map(str, optimizer))}"
            if isinstance(optimizer, Mapping)
            else type(optimizer).__name__
        )
        raise ValueError(
            f"Invalid optimizer: {described} (expected an SGDSaI or its state_dict(), with 'state' and 'param_groups')"
        )
    return _report_from_state_dict(optimizer)


def _report_from_state_dict(state_dict: Mapping[str, Any]) -> GsnrReport:
    saved = state_dict.get("sai_config")
    groups = state_dict["param_groups"]
    tensor_keys = sorted({key for entry in state_dict["state"].values() for key in entry})
    if saved is None:
        group_keys = sorted({key for group in groups for key in group} - {"params", "param_names"})
        if "gsnr" in tensor_keys:
            what = "a published port's (pytorch_optimizer.SGDSaI or sgd_sai.SGD_sai: tensor state holds 'gsnr')"
            hint = "load it into sai_torch.SGDSaI with the port's preset (docs/torch.md) and save that"
        else:
            what = f"its parameter groups hold {group_keys} and its tensor state {tensor_keys}"
            hint = "it is not an SGDSaI checkpoint (another optimizer's, e.g. torch.optim.AdamW), so it holds no g-SNR scales"
        raise ValueError(f'Invalid state_dict: it has no "sai_config"; {what}: {hint}')
    foreign = sorted(set(tensor_keys) - _SAI_STATE_KEYS)
    if foreign:
        raise ValueError(f"Invalid state_dict: tensor state holds {foreign}, which SGDSaI never writes")
    knobs = {name: saved[name] for name in KNOB_VALUES if name in saved}
    config = resolve_config(saved.get("preset", DEFAULT_PRESET), **knobs)
    entries, max_gsnr = [], None
    for group in groups:
        names = group.get("param_names")
        for position, index in enumerate(group["params"]):
            state = state_dict["state"].get(index, {})
            buffer = state.get("momentum_buffer")
            name = names[position] if names else f"parameter {index}"
            entries.append((name, None if buffer is None else tuple(buffer.shape), state.get("scale")))
            max_gsnr = state.get("max_gsnr", max_gsnr)
    return report_from_scales(entries, max_gsnr, config=config, framework="torch")
