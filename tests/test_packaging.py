"""The wheel installs exactly the sai_* packages, with the golden vectors inside."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _source_packages() -> set[str]:
    roots = [ROOT, ROOT / "backends", ROOT / "conformance"]
    return {p.parent.name for root in roots for p in root.glob("sai_*/__init__.py")}


def test_containers_are_not_packages():
    assert not (ROOT / "backends" / "__init__.py").exists()
    assert not (ROOT / "conformance" / "__init__.py").exists()


def test_wheel_top_level_names_are_the_sai_packages(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = tmp_path.glob("sai_optim-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    expected = _source_packages()
    assert {"sai_core", "sai_conformance"} <= expected
    assert top_level == expected
    golden = [n for n in names if n.startswith("sai_conformance/golden/") and n.endswith(".json")]
    committed = list((ROOT / "conformance" / "sai_conformance" / "golden").glob("*.json"))
    assert len(golden) == len(committed) > 0
    assert "sai_core/py.typed" in names
