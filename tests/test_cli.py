"""The `sai-conformance` command line: run, check, usage errors and the default command.

Each test drives ``main(argv)`` in-process on a few small cases; `identify` and `ports` are
covered by tests/test_identify.py.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shlex
import subprocess
import sys

import numpy as np
import pytest

from sai_conformance import _cli
from sai_conformance._cli import build_parser, main
from sai_conformance.runners._core import CoreRunner


def _main(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors (choices)
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@dataclasses.dataclass(frozen=True)
class UsageError:
    desc: str
    argv: list[str]
    message: str  # must appear on stderr


USAGE_ERRORS = [
    UsageError("TARGET without a colon", ["identify", "sgd_sai"], "Invalid TARGET: 'sgd_sai' (expected module:attr"),
    UsageError("TARGET whose module is missing", ["identify", "no_such_port:SGD"], "cannot import 'no_such_port'"),
    UsageError(
        "TARGET whose attribute is missing", ["check", "sgd_sai:Nope", "--preset", "paper"], "has no attribute 'Nope'"
    ),
    UsageError(
        "TARGET that is no optimizer", ["identify", "collections:OrderedDict"], "is a type, not a torch.optim.Optimizer"
    ),
    UsageError("unknown preset", ["check", "sgd_sai:SGD_sai", "--preset", "adam"], "invalid choice: 'adam'"),
    UsageError("unknown kind", ["identify", "sgd_sai:SGD_sai", "--kind", "mxnet"], "invalid choice: 'mxnet'"),
    UsageError("unknown backend", ["run", "--backend", "cuda"], "Invalid --backend: 'cuda'"),
    UsageError("unknown case", ["run", "--case", "no-such-case*"], "Invalid --case: 'no-such-case*'"),
    UsageError(
        "--kwargs that is not JSON",
        ["identify", "sgd_sai:SGD_sai", "--kwargs", "{lr: 1}"],
        "Invalid --kwargs: '{lr: 1}' is not JSON",
    ),
    UsageError(
        "--kwargs setting a hyperparameter",
        ["identify", "sgd_sai:SGD_sai", "--kwargs", '{"lr": 0.1}'],
        "Invalid --kwargs: ['lr'] are hyperparameters",
    ),
    UsageError(
        "TARGET whose module raises while imported",
        ["identify", "planted_ports.broken_import:SGDSaI"],
        "Invalid TARGET: 'planted_ports.broken_import:SGDSaI' (importing 'planted_ports.broken_import' raised "
        "RuntimeError: this port needs a GPU driver that is not installed)",
    ),
    UsageError(
        "--timeout that is not positive",
        ["identify", "sai_torch:SGDSaI", "--timeout", "0"],
        "Invalid --timeout: '0' (expected a number of seconds > 0)",
    ),
    UsageError(
        "--timeout that is no number",
        ["ports", "--timeout", "soon"],
        "Invalid --timeout: 'soon' (expected a number of seconds > 0)",
    ),
]


@pytest.mark.parametrize("error", USAGE_ERRORS, ids=[e.desc for e in USAGE_ERRORS])
def test_usage_errors_name_the_argument_and_value(capsys, error):
    code, out, err = _main(capsys, error.argv)
    assert code == 2, f"{error.desc}: exit status {code}, stderr {err!r}"
    assert error.message in err, f"{error.desc}: stderr {err!r} does not say {error.message!r}"
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("sai-conformance") and error.message in last, (
        f"{error.desc}: not one line naming the argument: {err!r}"
    )


def test_no_arguments_means_run(monkeypatch):
    calls = []
    monkeypatch.setattr(_cli, "cmd_run", lambda args: calls.append(args) or 0)
    assert main([]) == 0
    (args,) = calls
    assert args.command == "run" and args.backend is None and args.case is None


def test_run_writes_table_json_and_markdown(capsys, tmp_path):
    out_json, out_md = tmp_path / "run.json", tmp_path / "run.md"
    code, out, _ = _main(
        capsys,
        [
            "run",
            "--backend",
            "numpy",
            "--case",
            "shapes-paper-float64",
            "--json",
            str(out_json),
            "--markdown",
            str(out_md),
        ],
    )
    assert code == 0, out
    assert "1 golden cases x 1 runners (numpy) x 2 modes" in out and "PASS" in out
    document = json.loads(out_json.read_text())
    assert document["passed"] and [r["status"] for r in document["results"]] == ["pass", "pass"]
    assert "| numpy | 1/1 | 1/1 | 0 | 0 | PASS |" in out_md.read_text()


class _WrongRunner:
    """A deliberately wrong backend: the paper case replayed with the biased std."""

    name = "biased-std"

    def __init__(self, crash: bool = False):
        self.inner = CoreRunner(self.name, np, {"float64": np.float64, "float32": np.float32})
        self.crash = crash

    def not_applicable(self, case):
        return self.inner.not_applicable(case)

    def run(self, case, start, first_step, num_steps):
        if self.crash:
            raise RuntimeError("backend exploded")
        altered = dataclasses.replace(case, knobs={**case.knobs, "std_correction": 0})
        return self.inner.run(altered, start, first_step, num_steps)


@pytest.mark.parametrize("crash", [False, True], ids=["wrong numbers", "raises"])
def test_run_failure_says_where_and_how_to_rerun(capsys, monkeypatch, crash):
    monkeypatch.setattr(_cli, "available_runners", lambda: [_WrongRunner(crash)])
    argv = ["run", "--backend", "biased-std", "--case", "shapes-paper-float64", "--mode", "one_step"]
    code, out, _ = _main(capsys, argv)
    assert code == 1 and "FAIL" in out
    rerun = "sai-conformance run --backend biased-std --case shapes-paper-float64 --mode one_step"
    assert rerun in out, out
    if crash:
        assert "raised RuntimeError: backend exploded" in out
    else:
        for needle in ("case shapes-paper-float64", "step 1", "block", "max abs err", "max rel err"):
            assert needle in out, f"{needle!r} missing from {out}"
    # The rerun command selects exactly that runner, case and mode.
    args = build_parser().parse_args(shlex.split(rerun)[1:])
    assert (args.backend, args.case, args.mode) == (["biased-std"], ["shapes-paper-float64"], ["one_step"])


@pytest.mark.skipif(
    importlib.util.find_spec("keras") is None or importlib.util.find_spec("tensorflow") is None,
    reason="keras with tensorflow is not installed",
)
def test_run_replays_isolated_runners_in_their_own_process(capsys, tmp_path):
    out_json = tmp_path / "run.json"
    _main(
        capsys,
        [
            "run",
            "--backend",
            "keras-tensorflow",
            "--case",
            "shapes-paper-float32",
            "--mode",
            "trajectory",
            "--json",
            str(out_json),
        ],
    )
    (result,) = json.loads(out_json.read_text())["results"]
    assert result["runner"] == "keras-tensorflow" and result["case"] == "shapes-paper-float32"
    assert "subprocess exited" not in result["detail"], result["detail"]


@dataclasses.dataclass(frozen=True)
class CheckCase:
    desc: str
    argv: list[str]
    code: int
    says: tuple[str, ...]


CHECKS = [
    CheckCase(
        "pytorch-optimizer 4.1.0 is its preset, but for the NaN first gradient it does not defer",
        ["check", "pytorch_optimizer:SGDSaI", "--preset", "pytorch-optimizer-4"],
        1,
        (
            "7/9 cases pass",
            "first_gradients-pytorch-optimizer-4-float64  fail    step 1, block 1 (7,)",
            "max abs err inf",
        ),
    ),
    CheckCase(
        "sgd-sai 1.0.3 is not the contract's sgd-sai",
        ["check", "sgd_sai:SGD_sai", "--preset", "sgd-sai", "--dtype", "float64"],
        1,
        (
            "maximize-sgd-sai-float64",
            "sgd_sai:SGD_sai has no `maximize` argument",
            "step 1, block",
            "max rel err",
            "rerun two_groups-sgd-sai-float64: sai-conformance check sgd_sai:SGD_sai --preset sgd-sai "
            "--case two_groups-sgd-sai-float64",
        ),
    ),
    CheckCase(
        "sgd-sai 1.0.3 crashes on its own late-block case",
        ["check", "sgd_sai:SGD_sai", "--preset", "sgd-sai-1.0.3"],
        1,
        ("late_and_absent-sgd-sai-1.0.3-float64", "step 3 raised KeyError: 'gsnr'", "6/9 cases pass"),
    ),
    CheckCase(
        "our optax adapter on float32 shapes",
        [
            "check",
            "sai_jax:sgd_sai",
            "--preset",
            "sgd-sai",
            "--case",
            "shapes-*",
            "late_and_absent-sgd-sai-float32",
            "--dtype",
            "float32",
        ],
        0,
        ("shapes-sgd-sai-float32", "needs an absent gradient", "1/1 cases pass, 1 not applicable"),
    ),
]


@pytest.mark.parametrize("check", CHECKS, ids=[c.desc for c in CHECKS])
def test_check(capsys, check):
    module = check.argv[1].split(":")[0]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed")
    code, out, err = _main(capsys, check.argv)
    assert code == check.code, f"{check.desc}: exit status {code}\n{out}{err}"
    for needle in check.says:
        assert needle in out, f"{check.desc}: {needle!r} missing from\n{out}"


@dataclasses.dataclass(frozen=True)
class IdentifyCase:
    desc: str
    target: str
    code: int
    says: tuple[str, ...]  # in this order in the output: the verdict first, then the deviations


IDENTIFY_CASES = [
    IdentifyCase(
        "our torch adapter agrees with its preset",
        "sai_torch:SGDSaI",
        0,
        (
            "verdict: matches preset sgd-sai exactly",
            "no deviation from preset sgd-sai",
            "exit status 0",
            "golden cases per preset",
        ),
    ),
    IdentifyCase(
        "pytorch-optimizer 4.1.0 is its preset exactly, yet deviates on edge cases (exit 1)",
        "pytorch_optimizer:SGDSaI",
        1,
        (
            "verdict: matches preset pytorch-optimizer-4 exactly",
            "3 deviations from preset pytorch-optimizer-4:",
            "! non-finite first grad: non-finite parameters (pytorch-optimizer-4: defers)",
            "! maximize: ascends, negates .grad",
            "! bf16 statistics: bf16 statistics",
            "relative deviation",
            "exit status 1",
            "golden cases per preset",
        ),
    ),
    IdentifyCase(
        "a golden case that raises makes identify exit 1 (sgd-sai 1.0.3)",
        "sgd_sai:SGD_sai",
        1,
        (
            "verdict: matches preset sgd-sai-1.0.3 exactly (2/3 golden cases; 1 raised)",
            "golden cases of sgd-sai-1.0.3: 1/3 did not pass: late_and_absent-sgd-sai-1.0.3-float64: step 3 raised "
            "KeyError",
            "exit status 1",
        ),
    ),
]


@pytest.mark.parametrize("case", IDENTIFY_CASES, ids=[c.desc for c in IDENTIFY_CASES])
def test_identify_prints_the_verdict_then_deviations(capsys, tmp_path, case):
    if importlib.util.find_spec(case.target.split(":")[0]) is None:
        pytest.skip(f"{case.target} is not installed")
    out_json = tmp_path / "identify.json"
    code, out, _ = _main(capsys, ["identify", case.target, "--json", str(out_json)])
    assert code == case.code, f"{case.desc}: exit status {code}\n{out}"
    position = 0
    for needle in case.says:
        found = out.find(needle, position)
        assert found >= 0, f"{case.desc}: {needle!r} missing (or out of order) in\n{out}"
        position = found
    document = json.loads(out_json.read_text())
    assert out.split("matches preset ")[1].startswith(document["preset"] + " ")
    assert (not document["deviations"]) == (case.code == 0), document["deviations"]


def test_check_and_identify_report_a_hanging_port_as_timed_out(capsys):
    """A step() that never returns: both commands give up after --timeout and say where."""
    pytest.importorskip("torch")
    target = "planted_ports.torch_ports:HangsAtStep2"
    # 3 s: building the optimizer and step 1 must finish in time on a loaded 2-core machine.
    code, out, _ = _main(
        capsys,
        [
            "check",
            target,
            "--preset",
            "sgd-sai",
            "--case",
            "shapes-sgd-sai-float64",
            "momentum_0-sgd-sai-float64",
            "--timeout",
            "3",
        ],
    )
    assert code == 1
    assert "momentum_0-sgd-sai-float64  timeout  timeout: step 2 did not return within 3 s (--timeout)" in out, out
    assert "shapes-sgd-sai-float64      timeout  timeout: not run: step 2 did not return" in out, out
    code, out, _ = _main(capsys, ["identify", target, "--timeout", "3"])
    assert code == 1 and "verdict: no preset: the target timed out (step 2 did not return within 3 s" in out, out


def test_check_table_keeps_its_columns_with_long_case_names(capsys):
    """Case names of 36+ characters (43 here) widen the first column; every row stays aligned."""
    pytest.importorskip("pytorch_optimizer")
    code, out, _ = _main(
        capsys,
        [
            "check",
            "pytorch_optimizer:SGDSaI",
            "--preset",
            "pytorch-optimizer-4",
            "--case",
            "late_and_absent-pytorch-optimizer-4-float64",
            "shapes-*",
            "--dtype",
            "float64",
        ],
    )
    rows = out.splitlines()[1:4]  # the header, then one row per case
    assert max(len(row.split()[0]) for row in rows) >= 36, rows
    columns = {row.index(row.split()[1], len(row.split()[0])) for row in rows}
    assert len(columns) == 1, f"the result column moves: {rows}"


@pytest.mark.skipif(importlib.util.find_spec("optax") is None, reason="optax is not installed")
def test_identify_of_an_optimizer_it_cannot_drive_says_so(capsys):
    code, out, _ = _main(capsys, ["identify", "optax:adam"])
    assert code == 1
    assert "optax:adam has no `momentum` argument" in out and "verdict: no preset: nothing could be measured" in out
    assert "no probe could run on this target" in out


def test_python_dash_m_runs_the_command():
    completed = subprocess.run(
        [sys.executable, "-m", "sai_conformance", "run", "--backend", "numpy", "--case", "shapes-paper-float64"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "numpy" in completed.stdout and "PASS" in completed.stdout
