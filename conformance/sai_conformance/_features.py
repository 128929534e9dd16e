"""What a golden case exercises, read off its data (not off its name or description)."""

from __future__ import annotations

import numpy as np

from ._golden import Case

__all__ = ["case_features"]


def _first_gradients(case: Case) -> dict[int, np.ndarray]:
    first: dict[int, np.ndarray] = {}
    for row in case.grads:
        for block, grad in enumerate(row):
            if grad is not None and block not in first:
                first[block] = grad
    return first


def case_features(case: Case) -> set[str]:
    """The features of SPEC.md "Conformance" that ``case`` covers.

    Examples:
        >>> from sai_conformance import load_cases
        >>> case = next(c for c in load_cases() if c.name == "first_gradients-sgd-sai-bfloat16")
        >>> sorted(f for f in case_features(case) if "first gradient" in f or f.startswith("dtype"))
        ['NaN first gradient', 'all-zero first gradient', 'dtype bfloat16', 'inf first gradient']
    """
    features = {f"shape {tuple(shape)}" for shape in case.shapes}
    features.add(f"preset {case.preset}")
    features.add(f"dtype {case.dtype}")
    if any(int(np.prod(shape)) == 0 for shape in case.shapes):
        features.add("zero-size block")
    step1 = [g for g in case.grads[0] if g is not None]
    if step1 and all(g.size == 0 for g in step1):
        features.add("zero-size block alone at step 1")
    for grad in _first_gradients(case).values():
        if grad.size == 0:
            continue
        if np.any(np.isnan(grad)):
            features.add("NaN first gradient")
        if np.any(np.isinf(grad)):
            features.add("inf first gradient")
        largest = float(np.max(np.abs(grad)))
        if not np.any(grad):
            features.add("all-zero first gradient")
        elif grad.size > 1 and grad.max() == grad.min():
            features.add("constant first gradient")
        if 1e29 <= largest < np.inf:
            features.add("first gradient scale 1e30")
        if 0 < largest <= 1e-29:
            features.add("first gradient scale 1e-30")
    for block in range(len(case.shapes)):
        late = case.grads[0][block] is None
        scales = [snap.scale[block] for snap in case.expected if snap.scale[block] is not None]
        if late and scales and case.expected[-1].max_gsnr is not None:
            # G > M: S > 1 under max-normalisation, S = G > M without it.
            bound = 1.0 if case.knobs["normalize"] == "max" else case.expected[-1].max_gsnr
            if scales[0] > bound:
                features.add("late block with G above M")
    for block in range(len(case.shapes)):
        present = [row[block] is not None for row in case.grads]
        if not present[0] and any(present):
            features.add("block absent at step 1, gradient later")
        if present[0] and not all(present):
            features.add("block absent at a later step")
        magnitudes = [np.max(np.abs(row[block])) for row in case.grads if row[block] is not None and row[block].size]
        if magnitudes and max(magnitudes) <= 1e-5 and min(magnitudes) > 0:
            features.add("gradient scale 1e-6")
        if magnitudes and min(magnitudes) >= 1e5:
            features.add("gradient scale 1e6")
    for group in case.groups:
        lrs = [h["lr"] for h in group.hyper]
        if 0.0 in lrs and any(lr > 0 for lr in lrs):
            features.add("lr schedule with a zero-lr step")
        for h in group.hyper:
            features.add(f"momentum {h['momentum']:g}")
            features.add(f"weight decay {h['weight_decay']:g}")
            if h["maximize"]:
                features.add("maximize")
    if len(case.groups) >= 2 and any(g.hyper != case.groups[0].hyper for g in case.groups[1:]):
        features.add("two groups with different hyperparameters")
    return features
