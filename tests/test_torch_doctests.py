"""Runs the docstring examples of ``sai_torch`` (``backends/`` is not a pytest testpath) and the
Python blocks of ``docs/torch.md``."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

pytest.importorskip("torch")

MODULES = ["sai_torch._tensors", "sai_torch._gsnr", "sai_torch._functional", "sai_torch._fused", "sai_torch._optimizer"]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name: str) -> None:
    module = importlib.import_module(module_name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0, f"{module_name} has no examples"


def _python_blocks(path: Path) -> list[str]:
    blocks, current = [], None
    for line in path.read_text().splitlines():
        if current is None and line.strip() == "```python":
            current = []
        elif current is not None and line.strip() == "```":
            blocks.append("\n".join(current))
            current = None
        elif current is not None:
            current.append(line)
    return blocks


DOC = Path(__file__).resolve().parents[1] / "docs" / "torch.md"


@pytest.mark.parametrize("index", range(len(_python_blocks(DOC))))
def test_docs_torch_md_python_blocks_run(index: int) -> None:
    namespace: dict = {"__name__": "__docs__"}
    exec(compile(_python_blocks(DOC)[index], f"docs/torch.md block {index + 1}", "exec"), namespace)
    if index == 0:  # the training loop must actually train
        assert namespace["loss"].item() < 0.1
