"""``sai_keras`` on Keras's torch backend: the multi-tensor update equals the generic one bit for bit.

On the torch backend ``SGDSaI`` updates through ``sai_torch``'s multi-tensor kernels
(``sai_keras/_torch_backend.py``); the generic path (``keras.ops`` per variable, what the other
backends run) stays the definition. Both run the same steps here, in a subprocess (Keras fixes its
backend per process), over a table of cases: a deferred NaN first gradient, an all-zero one, a 0-d
variable, a weight-decay exclusion, ``maximize``, ``momentum=0``, the ``zeros`` momentum init, the
``paper`` preset and float64 variables. Parameters, buffers, scales and flags must be equal exactly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

CASES = [
    {"desc": "defaults", "kwargs": {}},
    {"desc": "maximize", "kwargs": {"maximize": True}},
    {"desc": "momentum 0", "kwargs": {"momentum": 0.0}},
    {"desc": "momentum_init zeros", "kwargs": {"preset": "pytorch-optimizer-4"}},
    {"desc": "paper preset", "kwargs": {"preset": "paper"}},
    {"desc": "float64 variables", "kwargs": {}, "dtype": "float64"},
]

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, keras, torch
    from keras import ops
    from sai_keras import SGDSaI

    class Generic(SGDSaI):
        # The generic path of SGDSaI._backend_update_step, as on the TensorFlow and JAX backends.
        def _backend_update_step(self, grads, variables, lr):
            grads = [ops.reshape(g, tuple(v.shape)) for g, v in zip(grads, variables)]
            gates = self._initialize_scales(grads, variables)
            for g, v, gate in zip(grads, variables, gates):
                self._update_variable(g, v, lr, gate)

    shapes = [(40, 50), (50,), (3,), (), (7, 1)]

    def run(cls, case):
        rng = np.random.default_rng(0)
        dtype = case.get("dtype", "float32")
        vs = [keras.Variable(rng.standard_normal(s).astype(dtype), dtype=dtype, name=f"v{i}") for i, s in enumerate(shapes)]
        opt = cls(0.01, weight_decay=0.1, exclude_from_weight_decay=["v1"], **case["kwargs"])
        for step in range(6):
            gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
            if step == 0:
                gs[2][0] = np.nan  # deferred: initializes at step 2
                gs[4][:] = 0.0  # deferred under zero_gradient="defer"
            opt.apply([torch.tensor(g) for g in gs], vs)
        return [ops.convert_to_numpy(v) for v in [*vs, *opt.momentums, *opt.scales, *opt.initialized, opt.max_gsnr]]

    out = {}
    for case in json.loads(sys.argv[1]):
        fast, generic = run(SGDSaI, case), run(Generic, case)
        out[case["desc"]] = [
            i for i, (a, b) in enumerate(zip(fast, generic)) if a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=True)
        ]
    print("RESULT " + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def differing() -> dict[str, list[int]]:
    if any(importlib.util.find_spec(name) is None for name in ("keras", "torch")):
        pytest.skip("keras or torch not installed")
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)],
        env={**os.environ, "KERAS_BACKEND": "torch"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1].split(" ", 1)[1])


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[case["desc"] for case in CASES])
def test_torch_multi_tensor_path_equals_generic_path(differing: dict[str, list[int]], case: dict) -> None:
    # Indices into [variables..., buffers..., scales..., flags..., M] that differ.
    assert differing[case["desc"]] == []
