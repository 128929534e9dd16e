"""Writes the golden vectors from the NumPy float64 reference.

Run ``python -m sai_conformance.generate [--out DIR]``; the default target is the package's own
``golden/`` folder. Files are deterministic, so a test regenerates them into a temporary folder
and requires byte equality with the committed ones.
"""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sai_core import NonFiniteGradientWarning, ReferenceSGDSaI, resolve_config

from ._cases import CASE_TABLE, CaseSpec, build_inputs
from ._golden import GOLDEN_PACKAGE_DIR, Case, Group, Snapshot, dump_case

__all__ = ["build_case", "generate", "main", "snapshot_of"]


def snapshot_of(opt: ReferenceSGDSaI) -> Snapshot:
    """The reference optimizer's state as a float64 :class:`Snapshot`."""

    def as_float(x):
        return None if x is None else float(x)

    def as_array(x):
        return None if x is None else np.asarray(x, dtype=np.float64).copy()

    return Snapshot(
        params=[as_array(p) for p in opt.params],
        momentum_buffer=[as_array(b) for b in opt.momentum_buffer],
        scale=[as_float(s) for s in opt.scale],
        max_gsnr=as_float(opt.max_gsnr),
        step=opt.step_count,
    )


def build_case(spec: CaseSpec) -> Case:
    """Runs the reference on a case's inputs and records its state after every step."""
    inputs = build_inputs(spec)
    groups = [Group(tuple(params), tuple(hyper)) for params, hyper in inputs["groups"]]
    opt = ReferenceSGDSaI(
        [{"params": [inputs["initial"][i] for i in g.params], **g.hyper[0]} for g in groups],
        preset=spec.preset,
    )
    order = [i for g in groups for i in g.params]
    if order != list(range(len(order))):
        raise ValueError(f"case {spec.name}: groups must list blocks in order, got {order}")
    expected = []
    for step, grads in enumerate(inputs["grads"]):
        for group, case_group in zip(opt.param_groups, groups):
            group.update(case_group.hyper[step])
        with warnings.catch_warnings():
            # Non-finite first gradients are part of the cases; their warning is expected.
            warnings.simplefilter("ignore", NonFiniteGradientWarning)
            opt.step(grads)
        expected.append(snapshot_of(opt))
    return Case(
        name=spec.name,
        description=inputs["description"],
        scenario=spec.scenario,
        dtype=spec.dtype,
        preset=spec.preset,
        knobs=resolve_config(spec.preset).knobs(),
        shapes=tuple(inputs["shapes"]),
        groups=tuple(groups),
        initial_params=tuple(inputs["initial"]),
        grads=tuple(tuple(row) for row in inputs["grads"]),
        expected=tuple(expected),
    )


def generate(out_dir: Path | str = GOLDEN_PACKAGE_DIR) -> list[Path]:
    """Writes every case of :data:`CASE_TABLE` into ``out_dir``; returns the written paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("*.json"):
        stale.unlink()
    paths = []
    for spec in CASE_TABLE:
        path = out / f"{spec.name}.json"
        path.write_text(dump_case(build_case(spec)))
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sai_conformance.generate", description=__doc__)
    parser.add_argument("--out", type=Path, default=GOLDEN_PACKAGE_DIR, help="target folder")
    args = parser.parse_args(argv)
    paths = generate(args.out)
    print(f"wrote {len(paths)} golden cases to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
