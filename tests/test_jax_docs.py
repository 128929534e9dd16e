"""docs/jax.md runs as written, and the docstring examples of sai_jax run.

The python blocks of the page run in order in one namespace, as a reader would paste them. A block
whose first line is ``# requires: MODULE`` runs on its own, and is skipped when MODULE is not
installed. ``backends/`` is outside pytest's doctest paths, so the docstrings are run here.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

pytest.importorskip("jax")
pytest.importorskip("optax")

PAGE = Path(__file__).resolve().parents[1] / "docs" / "jax.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
REQUIRES = re.compile(r"^# requires: (\S+)")


def _blocks() -> list[str]:
    return BLOCK.findall(PAGE.read_text())


def _optional_blocks() -> list[tuple[str, str]]:
    found = []
    for block in _blocks():
        match = REQUIRES.match(block)
        if match:
            found.append((match.group(1), block))
    return found


def test_page_has_a_training_loop_and_the_learning_rate_caveat():
    text = PAGE.read_text()
    assert "optimizer.update(grads, opt_state, params)" in text
    assert "sqrt(n)" in text and "not interchangeable" in text


def test_python_blocks_run_in_order():
    namespace: dict = {"__name__": "docs_jax"}
    blocks = [b for b in _blocks() if not REQUIRES.match(b)]
    assert len(blocks) >= 3
    for index, block in enumerate(blocks):
        code = compile(block, f"{PAGE.name} python block {index}", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples


@pytest.mark.parametrize("module, block", _optional_blocks(), ids=[m for m, _ in _optional_blocks()])
def test_blocks_for_optional_libraries_run(module, block):
    # The libraries these blocks need are pinned in requirements-dev.txt, so the examples run in CI.
    exec(compile(block, f"{PAGE.name} ({module})", "exec"), {"__name__": "docs_jax"})  # noqa: S102


@pytest.mark.parametrize("module", ["sai_jax._transform", "sai_jax._alias", "sai_jax._hyperparameters"])
def test_docstring_examples_run(module):
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    if module != "sai_jax._hyperparameters":
        assert result.attempted > 0
