"""docs/spec.md's worked example, checked number by number against the reference."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from sai_core import ReferenceSGDSaI, gsnr

DOC = Path(__file__).resolve().parents[1] / "docs" / "spec.md"
# The document prints 7 significant digits: its rounding error is at most 5e-7 relative to the
# largest number of a quantity.
DOC_RTOL = 5e-7


def _worked_example() -> dict[str, np.ndarray]:
    block = re.search(r"```worked-example\n(.*?)```", DOC.read_text(), re.S)
    assert block, "docs/spec.md lost its worked-example block"
    values = {}
    for line in block.group(1).splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = (part.strip() for part in line.split("=", 1))
            values[name] = np.asarray(ast.literal_eval(value), dtype=np.float64)
    return values


LR, MU, WD = 0.01, 0.9, 0.01  # the page's hyperparameters (preset sgd-sai, the default)


def _computed(doc: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    lr, mu, wd = LR, MU, WD
    opt = ReferenceSGDSaI([doc["W0"], doc["b0"]], lr=lr, momentum=mu, weight_decay=wd)
    out = {}
    for name in ("W", "b"):
        g = doc[f"g1_{name}"]
        out[f"norm_{name}"] = np.sqrt(np.sum(g * g))
        out[f"std_{name}"] = np.std(g, ddof=1)
        out[f"G_{name}"] = gsnr(g)
    out["decayed1_W"] = doc["W0"] - lr * wd * doc["W0"]
    out["decayed1_b"] = doc["b0"] - lr * wd * doc["b0"]
    opt.step([doc["g1_W"], doc["g1_b"]])
    out.update(M=opt.max_gsnr, S_W=opt.scale[0], S_b=opt.scale[1], W1=opt.params[0], b1=opt.params[1])
    out.update(m1_W=opt.momentum_buffer[0], m1_b=opt.momentum_buffer[1])
    opt.step([doc["g2_W"], doc["g2_b"]])
    out.update(W2=opt.params[0], b2=opt.params[1], m2_W=opt.momentum_buffer[0], m2_b=opt.momentum_buffer[1])
    return out


DOC_VALUES = _worked_example()
COMPUTED = _computed(DOC_VALUES)


@pytest.mark.parametrize("name", sorted(COMPUTED))
def test_worked_example_number(name):
    assert name in DOC_VALUES, f"docs/spec.md does not show {name}"
    want, got = DOC_VALUES[name], np.asarray(COMPUTED[name], dtype=np.float64)
    assert want.shape == got.shape
    assert np.max(np.abs(want - got)) <= DOC_RTOL * np.max(np.abs(got)), (name, want, got)


def test_every_documented_number_is_checked():
    inputs = {"W0", "b0", "g1_W", "g1_b", "g2_W", "g2_b"}
    assert set(DOC_VALUES) - inputs == set(COMPUTED)


def test_paper_with_converted_lr_and_weight_decay_is_the_same_run():
    # docs/spec.md, "Learning rate and weight decay across presets": lr * M and wd / M.
    grads = [[DOC_VALUES["g1_W"], DOC_VALUES["g1_b"]], [DOC_VALUES["g2_W"], DOC_VALUES["g2_b"]]]
    m = float(COMPUTED["M"])
    paper = ReferenceSGDSaI(
        [DOC_VALUES["W0"], DOC_VALUES["b0"]], lr=LR * m, momentum=MU, weight_decay=WD / m, preset="paper"
    )
    for g in grads:
        paper.step(g)
    for name, value in zip(("W2", "b2"), paper.params):
        np.testing.assert_allclose(value, COMPUTED[name], rtol=1e-13, atol=0)
    # The same numbers unconverted are a different run: the conversion is what makes them equal.
    unconverted = ReferenceSGDSaI(
        [DOC_VALUES["W0"], DOC_VALUES["b0"]], lr=LR, momentum=MU, weight_decay=WD, preset="paper"
    )
    for g in grads:
        unconverted.step(g)
    assert np.max(np.abs(unconverted.params[0] - COMPUTED["W2"])) > 1e-2


def test_readme_python_examples_run():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    assert blocks, "README.md lost its Python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    # The example's claim: S = G = ||g|| / std(g) under the default preset.
    assert [round(float(s), 4) for s in namespace["opt"].scale] == [4.2426, 1.4142]
