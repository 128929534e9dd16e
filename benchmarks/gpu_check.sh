#!/usr/bin/env bash
# The GPU check (issue 12), for a machine with one CUDA GPU and no network. From the repository root:
#
#     benchmarks/gpu_check.sh                 # conformance on the GPU + step benchmarks, one table (< 8 min)
#     benchmarks/gpu_check.sh --device cpu    # the same pipeline on the CPU at tiny sizes (its test)
#
# Python: $PYTHON, else .venv/bin/python, else python3. What the check imports and the machine lacks
# is installed from carried wheels, never from the network: $SAI_WHEELS (default shared/wheels, then
# wheels/), e.g. `pip download array-api-compat==1.16.0 optax ... -d shared/wheels` on a machine with
# network. The GPU's torch / jaxlib (CUDA builds) are the machine's own or carried the same way.
# Other arguments are passed to benchmarks/gpu_check.py (--json FILE, --skip-bench, ...).
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS="${SAI_WHEELS:-}"
if [ -z "$WHEELS" ]; then
    for candidate in shared/wheels wheels; do
        if [ -d "$candidate" ]; then WHEELS="$candidate"; break; fi
    done
fi

# module:distribution pairs the check needs (the project's own packages come from this checkout).
missing=()
if ! "$PY" -c "import numpy, array_api_compat, torch, jax, optax" 2>/dev/null; then
    for pair in numpy:numpy array_api_compat:array-api-compat torch:torch jax:jax optax:optax; do
        module="${pair%%:*}"
        "$PY" -c "import $module" 2>/dev/null || missing+=("${pair#*:}")
    done
fi
if [ "${#missing[@]}" -gt 0 ]; then
    if [ -z "$WHEELS" ]; then
        echo "gpu_check: missing ${missing[*]} and no carried wheels (set SAI_WHEELS or add shared/wheels)" >&2
        exit 2
    fi
    echo "gpu_check: installing ${missing[*]} from $WHEELS (no network)"
    # Pins from requirements-dev.txt where it has them, so the check runs the tested versions.
    specs=()
    for dist in "${missing[@]}"; do
        pin="$(grep -i -E "^${dist//-/[-_]}==" requirements-dev.txt | head -1 || true)"
        specs+=("${pin:-$dist}")
    done
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" "${specs[@]}"
fi
if ! "$PY" -c "import sai_core, sai_torch, sai_jax, sai_conformance" 2>/dev/null; then
    # This checkout's packages, without dependencies or build isolation (nothing is downloaded).
    "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation -e .
fi

# 8 minutes at most: the check itself prints where it stands if it gets there.
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"
