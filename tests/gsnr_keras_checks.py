"""The g-SNR inspector on Keras, run in a process of its own (Keras fixes its backend per process).

``tests/test_gsnr_keras.py`` starts one process per backend:

    KERAS_BACKEND=jax python tests/gsnr_keras_checks.py --out results.json

and asserts each check's result. A check returns ``(ok, detail)``; the script writes every result
as JSON and never raises, so one failing check does not hide the others. Run it directly to debug.
Only the standard library is imported at module level: the pytest process imports this file to
read the check names without importing Keras.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Gradients built from a +-1 pattern plus a constant c: sum(d) = 0 and sum(d^2) = n, so
# ||g||^2 = n (c^2 + 1) and s^2 = n / (n - 1), hence G = sqrt((n - 1) (c^2 + 1)) exactly.
# Every value (+-1 + 0.5) and every partial sum is exact in float32, so the computed G is
# within a few roundings (two square roots, one division) of the exact value.
OFFSET = 0.5
# 4 float32 ulps: the three correctly rounded operations above (half an ulp each) with margin.
RTOL = 4 * 2.0**-23
SHAPES = {"kernel": (8, 6), "bias": (6,)}  # a Dense(6) layer on 8 inputs


def pattern(shape: tuple[int, ...]) -> Any:
    import numpy as np

    n = math.prod(shape)
    signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0)  # n even: balanced, mean exactly 0
    return (signs + OFFSET).reshape(shape).astype("float32")


def expected_gsnr(shape: tuple[int, ...], eps: float = 1e-8) -> float:
    """``||g|| / (s + eps)`` in closed form: ``sqrt((n - 1) (c^2 + 1))`` up to the eps term."""
    n = math.prod(shape)
    return math.sqrt(n * (OFFSET**2 + 1)) / (math.sqrt(n / (n - 1)) + eps)


def _model(name: str, optimizer: Any = None) -> Any:
    import keras

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="dense")], name=name)
    if optimizer is not None:
        model.compile(optimizer=optimizer, loss="mse")
    return model


def _loss_fn(model: Any) -> Any:
    import keras

    layer = model.get_layer("dense")
    return keras.ops.sum(layer.kernel * pattern(SHAPES["kernel"])) + keras.ops.sum(layer.bias * pattern(SHAPES["bias"]))


def _close(got: float | None, want: float) -> bool:
    return got is not None and abs(got - want) <= RTOL * want


def check_constructed_gradient() -> tuple[bool, str]:
    from sai_keras import gsnr_report

    report = gsnr_report(_model("constructed"), _loss_fn)
    rows = {row.name.split("/")[-1]: row for row in report.rows}
    problems = []
    for key, shape in SHAPES.items():
        row = rows[key]
        want = expected_gsnr(shape)
        if row.shape != shape or row.numel != math.prod(shape):
            problems.append(f"{key}: shape {row.shape}, n {row.numel}")
        if not _close(row.gsnr, want) or not _close(row.scale, want):
            problems.append(f"{key}: G {row.gsnr}, S {row.scale}, expected {want}")
        if not _close(row.ratio, want / math.sqrt(math.prod(shape) - 1)):
            problems.append(f"{key}: G/sqrt(n-1) {row.ratio}")
        if row.sqrt_numel != math.sqrt(math.prod(shape)):
            problems.append(f"{key}: sqrt(n) {row.sqrt_numel}")
    if not _close(report.max_gsnr, expected_gsnr(SHAPES["kernel"])):
        problems.append(f"M {report.max_gsnr}")
    paper = gsnr_report(_model("constructed_paper"), _loss_fn, preset="paper")
    bias = [r for r in paper.rows if r.name.endswith("bias")][0]
    want_ratio = expected_gsnr(SHAPES["bias"]) / expected_gsnr(SHAPES["kernel"])
    if not _close(bias.scale, want_ratio):
        problems.append(f"paper: bias S {bias.scale}, expected G/M {want_ratio}")
    return not problems, "; ".join(problems) or f"G {[r.gsnr for r in report.rows]}"


def _fit_sgdsai(path: Path) -> Any:
    import numpy as np

    from sai_keras import SGDSaI, gsnr_report, scale_report

    model = _model("saved", SGDSaI())
    x = np.random.default_rng(0).standard_normal((16, 8)).astype("float32")
    y = np.random.default_rng(1).standard_normal((16, 6)).astype("float32")
    import keras

    target = keras.ops.convert_to_tensor(y)
    # The loss "mse" compiles to: the same value (and gradient) as this one.
    before = gsnr_report(model, lambda m: keras.ops.mean(keras.ops.square(m(x) - target)))
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # one step: the same batch, the same gradient
    model.save(path)
    return before, scale_report(model)


def check_scale_report_after_fit(workdir: Path) -> tuple[bool, str]:
    before, after = _fit_sgdsai(workdir / "fit.keras")
    problems = []
    for live, frozen in zip(before.rows, after.rows):
        # The same gradient (one full batch), statistics in float32 on both sides; the fit's
        # gradient comes from a compiled step whose reductions may be ordered differently.
        if frozen.scale is None or abs(frozen.scale - live.gsnr) > 1e-5 * live.gsnr:
            problems.append(f"{frozen.name}: frozen S {frozen.scale} vs one-gradient G {live.gsnr}")
    return not problems, "; ".join(problems) or f"{len(after.rows)} scales agree"


def _cli(argv: list[str]) -> tuple[int, str, str]:
    from sai_gsnr._cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def check_cli_keras_file(workdir: Path) -> tuple[bool, str]:
    path = workdir / "cli.keras"
    _, frozen = _fit_sgdsai(path)
    code, out, err = _cli([str(path), "--json"])
    if code != 0:
        return False, f"exit {code}: {err}"
    document = json.loads(out)
    got = [row["scale"] for row in document["rows"]]
    want = [row.scale for row in frozen.rows]
    ok = document["source"] == "checkpoint" and document["framework"] == "keras" and got == want
    return ok, f"scales {got} vs {want}, source {document['source']}"


def check_cli_refuses_other_optimizer(workdir: Path) -> tuple[bool, str]:
    import keras
    import numpy as np

    path = workdir / "adamw.keras"
    model = _model("adamw", keras.optimizers.AdamW())
    model.fit(np.ones((4, 8), "float32"), np.ones((4, 6), "float32"), verbose=0)
    model.save(path)
    code, out, err = _cli([str(path)])
    ok = code == 2 and out == "" and err.count("\n") == 1 and "AdamW" in err and "not sai_keras.SGDSaI" in err
    return ok, f"exit {code}, stderr {err!r}"


def check_cli_module_function(workdir: Path) -> tuple[bool, str]:
    module = workdir / "keras_target_module.py"
    module.write_text(
        "import keras\n"
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from gsnr_keras_checks import _loss_fn, _model\n"
        "def make():\n"
        "    return _model('cli_target'), _loss_fn\n"
    )
    sys.path.insert(0, str(workdir))
    code, out, err = _cli(["keras_target_module:make", "--json"])
    if code != 0:
        return False, f"exit {code}: {err}"
    rows = {row["name"].split("/")[-1]: row for row in json.loads(out)["rows"]}
    ok = all(_close(rows[key]["gsnr"], expected_gsnr(shape)) for key, shape in SHAPES.items())
    return ok, f"rows {rows}"


def check_doctests() -> tuple[bool, str]:
    import doctest

    import sai_keras._report

    result = doctest.testmod(sai_keras._report, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    return result.failed == 0 and result.attempted > 0, f"{result.attempted} examples, {result.failed} failed"


CHECKS: dict[str, Callable[..., tuple[bool, str]]] = {
    "constructed_gradient": check_constructed_gradient,
    "scale_report_after_fit": check_scale_report_after_fit,
    "cli_keras_file": check_cli_keras_file,
    "cli_refuses_other_optimizer": check_cli_refuses_other_optimizer,
    "cli_module_function": check_cli_module_function,
    "doctests": check_doctests,
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    import keras

    results: dict[str, Any] = {"backend": keras.backend.backend(), "checks": {}}
    with tempfile.TemporaryDirectory() as workdir:
        for name, check in CHECKS.items():
            try:
                wants_dir = check.__code__.co_argcount == 1
                ok, detail = check(Path(workdir)) if wants_dir else check()
            except Exception:
                ok, detail = False, traceback.format_exc()[-3000:]
            results["checks"][name] = {"ok": bool(ok), "detail": detail}
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
