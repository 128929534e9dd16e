"""A minimal array namespace over ``keras.ops``, so that :mod:`sai_core`'s math runs on Keras tensors.

``keras.ops`` is not an array-API namespace (no ``astype``, ``asarray`` or ``isdtype``, dtypes are
strings), and the tensors it returns (TF tensors, JAX arrays, torch tensors) are resolved by
``array_api_compat`` to their own libraries, not to Keras. The core therefore receives this module
as ``xp=``. It provides exactly the names in :data:`sai_core.NAMESPACE_CONTRACT`, each with the array
API meaning, and nothing backend-specific: the backend is whatever ``keras.ops`` dispatches to.

Examples:
    >>> import numpy as np
    >>> from sai_core import gsnr
    >>> from sai_keras import _ops_namespace as xp
    >>> round(float(gsnr(xp.asarray(np.array([1.0, 2.0, 3.0]), dtype=xp.float32), xp=xp)), 5)
    3.74166
"""

from __future__ import annotations

from typing import Any

from keras import backend as _backend
from keras import ops as _ops

from sai_core import NAMESPACE_CONTRACT

# Exactly the core's contract; the Keras tests check that every name below is defined.
__all__ = list(NAMESPACE_CONTRACT)

# Keras names dtypes by string on every backend.
float32 = "float32"
float64 = "float64"

# The array API's dtype kinds (``isdtype(dtype, "real floating")``), in Keras dtype names.
_KINDS: dict[str, frozenset[str]] = {
    "bool": frozenset({"bool"}),
    "signed integer": frozenset({"int8", "int16", "int32", "int64"}),
    "unsigned integer": frozenset({"uint8", "uint16", "uint32", "uint64"}),
    "real floating": frozenset({"float16", "bfloat16", "float32", "float64"}),
    "complex floating": frozenset({"complex64", "complex128"}),
}
_KINDS["integral"] = _KINDS["signed integer"] | _KINDS["unsigned integer"]
_KINDS["numeric"] = _KINDS["integral"] | _KINDS["real floating"] | _KINDS["complex floating"]


def all(x: Any, /) -> Any:  # noqa: A001 - the array API name
    """Whether every element of ``x`` is true (a 0-d bool tensor; true for an empty ``x``)."""
    return _ops.all(x)


def asarray(obj: Any, /, *, dtype: Any = None) -> Any:
    """``obj`` as a backend tensor (``keras.ops.convert_to_tensor``), cast to ``dtype`` if given."""
    return _ops.convert_to_tensor(obj, dtype=dtype)


def astype(x: Any, dtype: Any, /) -> Any:
    """``x`` cast to ``dtype`` (``keras.ops.cast``)."""
    return _ops.cast(x, dtype)


def isdtype(dtype: Any, kind: Any) -> bool:
    """Whether ``dtype`` is ``kind``: a dtype, an array-API kind name, or a tuple of those.

    Backend dtype objects (``tf.float32``, ``torch.float32``, NumPy dtypes) and Keras dtype strings
    are compared after ``keras.backend.standardize_dtype``.
    """
    if isinstance(kind, tuple):
        return any(isdtype(dtype, k) for k in kind)
    name = _backend.standardize_dtype(dtype)
    if isinstance(kind, str) and kind in _KINDS:
        return name in _KINDS[kind]
    return name == _backend.standardize_dtype(kind)


def isfinite(x: Any, /) -> Any:
    """Elementwise: true where ``x`` is neither NaN nor infinite."""
    return _ops.isfinite(x)


def max(x: Any, /) -> Any:  # noqa: A001 - the array API name
    """The largest element of ``x`` (a 0-d tensor)."""
    return _ops.max(x)


def min(x: Any, /) -> Any:  # noqa: A001 - the array API name
    """The smallest element of ``x`` (a 0-d tensor)."""
    return _ops.min(x)


def sqrt(x: Any, /) -> Any:
    """Elementwise square root."""
    return _ops.sqrt(x)


def sum(x: Any, /) -> Any:  # noqa: A001 - the array API name
    """The sum of all elements of ``x`` (a 0-d tensor, in ``x``'s dtype)."""
    return _ops.sum(x)


def where(condition: Any, x1: Any, x2: Any, /) -> Any:
    """Elementwise ``x1`` where ``condition`` else ``x2`` (broadcasting)."""
    return _ops.where(condition, x1, x2)
