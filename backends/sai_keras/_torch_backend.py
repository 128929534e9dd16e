"""The update of :class:`sai_keras.SGDSaI` on Keras's torch backend, through ``sai_torch``'s kernels.

Keras runs the torch backend eagerly, so the generic path (``keras.ops`` per variable) launches a
dozen small kernels per variable and step, and pays a host sync per ``keras.ops.cond``. Keras's own
torch optimizers replace that loop by multi-tensor (``torch._foreach_*``) kernels over all
variables at once; this module does the same for SGD-SaI with :func:`sai_torch._functional.sgd_sai`,
the multi-tensor path of ``sai_torch.SGDSaI`` (cache-tiled on CPU, the same roundings as
:func:`sai_core.update_momentum` and :func:`sai_core.update_param`).

Nothing moves out of Keras's optimizer variables: the momentum buffers are updated in place through
their torch tensors, and the scales, ``M`` and the ``initialized`` flags stay Keras variables, set
at initialization by the generic :meth:`SGDSaI._initialize_scales` (``sai_core``'s rules, one ``M``
over the call). So ``model.save`` / ``load_model`` and the conformance runs see the same state as on
the other backends. A steady step reads ``lr``, the scales and the flags on the host with one
transfer (the multi-tensor kernels take ``lr * S`` as Python floats) and launches
``sai_torch``'s kernels; a step in which a variable is still uninitialized runs the generic
initialization first (one more transfer for its gates).

How a variable is stepped, from its gates (see :meth:`SGDSaI._update_variable`):

* uninitialized after this call: left out (no decay, buffer and variable unchanged);
* initialized in this call: its buffer is exactly zero, so a steady update with momentum ``0``
  (``momentum_init="grad"``) gives ``m = g`` and with ``mu`` (``"zeros"``) gives ``(1 - mu) g``,
  bit for bit the first-gradient rule (``0 * 0 + w g`` rounds once, as ``w g``);
* otherwise: the steady update ``m <- mu m + (1 - mu) g``.

The results equal the generic path's on this backend bit for bit (``tests/test_keras_torch_path.py``),
so a model trained on one Keras backend continues identically on another.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sai_torch._functional import sgd_sai


def _tensor(value: Any) -> torch.Tensor:
    """The torch tensor behind a Keras variable (or a tensor itself), not a copy."""
    value = getattr(value, "value", value)
    return value if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def _host_values(tensors: Sequence[torch.Tensor]) -> list[float]:
    """0-d tensors as Python floats, one transfer per device (float64 holds float32 and bool exactly)."""
    by_device: dict[torch.device, list[int]] = {}
    for index, value in enumerate(tensors):
        by_device.setdefault(value.device, []).append(index)
    floats = [0.0] * len(tensors)
    for indices in by_device.values():
        stacked = torch.stack([tensors[i].detach().reshape(()).to(torch.float64) for i in indices]).tolist()
        for i, value in zip(indices, stacked):
            floats[i] = value
    return floats


@torch.no_grad()
def torch_update_step(optimizer: Any, grads: Sequence[Any], variables: Sequence[Any], learning_rate: Any) -> None:
    """One ``apply``'s update of ``variables`` (the torch backend's ``_backend_update_step``).

    Args:
        optimizer: the :class:`sai_keras.SGDSaI`, built.
        grads: one dense gradient per variable (Keras has dropped the ``None`` ones).
        variables: the Keras variables of this call.
        learning_rate: this step's learning rate (a Keras variable or a torch tensor).
    """
    if not variables:
        return
    indices = [optimizer._get_variable_index(v) for v in variables]
    flags = [_tensor(optimizer.initialized[i]) for i in indices]
    count = len(indices)
    # lr, the flags and the scales in one transfer (a steady step's only one).
    values = _host_values([_tensor(learning_rate), *flags, *(_tensor(optimizer.scales[i]) for i in indices)])
    lr, scales = values[0], values[1 + count :]
    if all(values[1 : 1 + count]):
        # Steady: every variable of the call is initialized (the generic path's outer cond would
        # take its "keep" branch and assign the same values back).
        active, first = [True] * count, [False] * count
    else:
        gates = optimizer._initialize_scales(list(grads), list(variables))
        gate_values = _host_values(
            [g for gate in gates for g in gate] + [_tensor(optimizer.scales[i]) for i in indices]
        )
        active = [bool(v) for v in gate_values[0 : 2 * count : 2]]
        first = [bool(v) for v in gate_values[1 : 2 * count : 2]]
        scales = gate_values[2 * count :]
    config = optimizer.sai_config
    # Rows that share the kernels' arguments: (first, decays, float64); each group is one sgd_sai call.
    groups: dict[tuple[bool, bool, bool], list[int]] = {}
    for k, index in enumerate(indices):
        if active[k]:
            float64 = _tensor(variables[k]).dtype == torch.float64
            groups.setdefault((first[k], optimizer._decays[index], float64), []).append(k)
    for (is_first, decays, float64), rows in groups.items():
        params = [_tensor(variables[k]) for k in rows]
        grad_list = [_as_param_dtype(_tensor(grads[k]), params[j]) for j, k in enumerate(rows)]
        if optimizer.momentum != 0:
            buffers: list[torch.Tensor | None] = [_tensor(optimizer.momentums[indices[k]]) for k in rows]
            # A fresh buffer is exactly zero: momentum 0 there gives m = g, mu gives (1 - mu) g.
            momentum = 0.0 if is_first and config.momentum_init == "grad" else optimizer.momentum
            if config.momentum_init == "grad" and not float64:
                # The generic path's mu is then a tensor of the compute dtype (a where on the first
                # step), so 1 - mu is formed in float32 too: the same coefficients here, so that
                # every Keras backend computes the same buffers bit for bit.
                momentum = float(np.float32(momentum))
        else:
            buffers = [None] * len(rows)
            momentum = 0.0
        sgd_sai(
            params,
            grad_list,
            buffers,
            [scales[k] for k in rows],
            lr=_in_dtype(lr, params[0].dtype),
            momentum=momentum,
            weight_decay=float(optimizer.weight_decay or 0.0) if decays else 0.0,
            maximize=optimizer.maximize,
            momentum_init=config.momentum_init,
            foreach=True,
        )


def _as_param_dtype(grad: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    # The generic path casts the gradient to the variable's compute dtype; the kernels take the
    # variable's dtype (low-precision rows are computed in float32 there).
    if grad.dtype != param.dtype or grad.device != param.device:
        grad = grad.to(device=param.device, dtype=param.dtype)
    return grad.reshape(param.shape)


def _in_dtype(lr: float, dtype: torch.dtype) -> float:
    # The generic path casts lr to the variable's compute dtype before any product: the same value here.
    if dtype == torch.float64:
        return lr
    return float(np.float32(lr))
