"""Test helpers shared by the JAX test modules: a plain pytree checkpoint (``numpy.savez``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def save(path: Path, tree: Any) -> None:
    """Writes a pytree's leaves (raw arrays, in flattening order)."""
    np.savez(path, *[np.asarray(leaf) for leaf in jax.tree.leaves(tree)])


def restore(path: Path, template: Any) -> Any:
    """Reads leaves back into ``template``'s structure and dtypes.

    NumPy stores bfloat16 (an ml_dtypes type) as raw 2-byte records, so each leaf is viewed
    back as the template leaf's dtype.

    Raises:
        ValueError: when the checkpoint's leaf count differs from the template's.
    """
    leaves, treedef = jax.tree.flatten(template)
    with np.load(path) as data:
        stored = [data[f"arr_{i}"] for i in range(len(data.files))]
    if len(stored) != len(leaves):
        raise ValueError(f"checkpoint has {len(stored)} leaves, the template {len(leaves)}")
    return treedef.unflatten([jnp.asarray(s.view(t.dtype)) for s, t in zip(stored, leaves)])
