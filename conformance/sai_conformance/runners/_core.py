"""A runner that replays cases on :class:`sai_core.ReferenceSGDSaI` in any array namespace."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from sai_core import NonFiniteGradientWarning, ReferenceSGDSaI

from .._golden import Case, Snapshot


class CoreRunner:
    """Runs the core math eagerly under ``xp`` in the case's dtype.

    Args:
        name: runner name in reports.
        xp: the array namespace.
        dtypes: case dtype name -> ``xp`` dtype, for the dtypes this namespace has.
    """

    def __init__(self, name: str, xp: Any, dtypes: dict[str, Any]) -> None:
        self.name = name
        self.xp = xp
        self.dtypes = dtypes

    def not_applicable(self, case: Case) -> str | None:
        if case.dtype not in self.dtypes:
            return f"{self.name} has no {case.dtype} dtype"
        return None

    def _array(self, values: np.ndarray | None, dtype: Any) -> Any:
        return None if values is None else self.xp.asarray(values, dtype=dtype)

    def run(self, case: Case, start: Snapshot, first_step: int, num_steps: int) -> list[Snapshot]:
        xp, dtype = self.xp, self.dtypes[case.dtype]
        hyper = case.hyper_at(first_step)
        groups = [{"params": [start.params[i] for i in group.params], **h} for group, h in zip(case.groups, hyper)]
        opt = ReferenceSGDSaI(groups, preset=case.preset, xp=xp, dtype=dtype, **case.knobs)
        state = opt.state_dict()
        state["state"] = {}
        for i in range(len(case.shapes)):
            entry = {}
            if start.scale[i] is not None:
                entry["scale"] = xp.asarray(start.scale[i], dtype=dtype)
            if start.momentum_buffer[i] is not None:
                entry["momentum_buffer"] = self._array(start.momentum_buffer[i], dtype)
            if entry:
                state["state"][i] = entry
        state["max_gsnr"] = None if start.max_gsnr is None else xp.asarray(start.max_gsnr, dtype=dtype)
        state["step"] = start.step
        opt.load_state_dict(state)
        snapshots = []
        for step in range(first_step, first_step + num_steps):
            for group, h in zip(opt.param_groups, case.hyper_at(step)):
                group.update(h)
            with warnings.catch_warnings():
                # Non-finite first gradients are part of the cases; their warning is expected.
                warnings.simplefilter("ignore", NonFiniteGradientWarning)
                opt.step([self._array(g, dtype) for g in case.grads[step]])
            snapshots.append(_snapshot(opt))
        return snapshots


def _to_numpy(x: Any) -> np.ndarray | None:
    if x is None:
        return None
    # DLPack is the standard's way out of a namespace (array_api_strict refuses __array__).
    # NumPy operations on 0-d arrays return NumPy scalars, which carry no __dlpack__.
    if isinstance(x, (np.ndarray, np.generic)):
        return np.asarray(x, dtype=np.float64)
    return np.from_dlpack(x).astype(np.float64)


def _snapshot(opt: ReferenceSGDSaI) -> Snapshot:
    return Snapshot(
        params=[_to_numpy(p) for p in opt.params],
        momentum_buffer=[_to_numpy(b) for b in opt.momentum_buffer],
        scale=[None if s is None else float(_to_numpy(s)) for s in opt.scale],
        max_gsnr=None if opt.max_gsnr is None else float(_to_numpy(opt.max_gsnr)),
        step=opt.step_count,
    )
