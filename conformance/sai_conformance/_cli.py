"""The ``sai-conformance`` command (also ``python -m sai_conformance``).

Subcommands:

* ``run``: replay every golden case on every installed runner, one-step and trajectory (the
  default when no subcommand is given; ``make demo`` runs it);
* ``check TARGET --preset NAME``: replay one preset's golden cases on a third-party optimizer;
* ``identify TARGET``: which preset a port implements, its knobs, and the behaviour probes;
* ``ports``: the report card of every known port that is installed (``docs/ports.md``).

Exit status: 0 when everything agrees, 1 when a case fails or ``identify`` finds a deviation
(or no exact preset), 2 for a usage error (a bad TARGET, also one whose module raises while
imported, preset, backend, ``--kwargs`` or ``--timeout``).

``check``, ``identify`` and ``ports`` call the target under ``--timeout SECONDS`` per call (default
:data:`~sai_conformance._targets.DEFAULT_TIMEOUT`): each call runs in a worker thread that is
abandoned when it does not return in time, and the target is reported as timed out.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import importlib
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sai_core import PRESETS

from ._golden import Case, load_cases
from ._harness import MODES, CaseResult, Runner, _declared, available_runners, check_case, format_table, rerun_command

__all__ = ["KNOWN_PORTS", "main"]

DTYPES: tuple[str, ...] = ("float64", "float32", "bfloat16")

# Runner modules that declare ISOLATED = True own a whole process: how to start each one. Keras 3
# fixes its backend per process, selected by KERAS_BACKEND; each backend needs its framework.
_ISOLATION: dict[str, tuple[str, str, dict[str, str]]] = {
    # module: (environment variable, runner name template, backend -> import it requires)
    "keras_runner": ("KERAS_BACKEND", "keras-{}", {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}),
}

# The ports the report card knows: (TARGET, whether each Keras backend gets its own row).
KNOWN_PORTS: tuple[tuple[str, bool], ...] = (
    ("sgd_sai:SGD_sai", False),
    ("pytorch_optimizer:SGDSaI", False),
    ("sai_torch:SGDSaI", False),
    ("sai_jax:sgd_sai", False),
    ("sai_keras:SGDSaI", True),
)

_RESULT_PREFIX = "@@sai-conformance-result "


class CliError(Exception):
    """A usage error: printed as ``sai-conformance: error: ...`` with exit status 2."""


# -- helpers -----------------------------------------------------------------------------------


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _isolated_runners() -> dict[str, tuple[str, str, str]]:
    """Runner name -> (module, environment variable, value) for every installed isolated runner."""
    from . import runners as package

    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        spec = importlib.util.find_spec(f"{package.__name__}.{info.name}")
        if not _declared(spec, "ISOLATED", False):
            continue
        if not all(_installed(r) for r in _declared(spec, "REQUIRES", ())):
            continue
        if info.name not in _ISOLATION:
            raise CliError(f"runner module {spec.name} is ISOLATED, but sai-conformance does not know how to start it")
        variable, template, backends = _ISOLATION[info.name]
        for backend, required in backends.items():
            if _installed(required):
                found[template.format(backend)] = (info.name, variable, backend)
    return found


def _select_cases(cases: list[Case], patterns: Sequence[str] | None, dtypes: Sequence[str] | None) -> list[Case]:
    if patterns:
        known = [c.name for c in cases]
        for pattern in patterns:
            if not fnmatch.filter(known, pattern):
                raise CliError(f"Invalid --case: {pattern!r} matches no golden case (e.g. {known[0]!r})")
        cases = [c for c in cases if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if dtypes:
        cases = [c for c in cases if c.dtype in dtypes]
    return cases


def _with_rerun(result: CaseResult) -> CaseResult:
    # Failures built here (a crashing runner, a dead subprocess) get the rerun command that
    # check_case already puts into its own failure details.
    if result.ok or " Rerun: " in result.detail:
        return result
    return dataclasses.replace(
        result, detail=f"{result.detail} Rerun: {rerun_command(result.runner, result.case, result.mode)}"
    )


def _check_one(runner: Runner, case: Case, mode: str) -> CaseResult:
    try:
        return check_case(runner, case, mode)
    except Exception as exc:  # a crashing runner is a failure of that case, not of the whole run
        from ._targets import describe_error

        detail = f"backend {runner.name}, case {case.name} ({case.dtype}, {mode}): raised {describe_error(exc)}."
        return _with_rerun(CaseResult(runner.name, case.name, mode, "fail", detail))


def _write_json(path: str, document: Any) -> None:
    Path(path).write_text(json.dumps(document, indent=1, sort_keys=True, default=str) + "\n")


def _parse_kwargs(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"Invalid --kwargs: {text!r} is not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise CliError(f"Invalid --kwargs: {text!r} (expected a JSON object, e.g. '{{\"nesterov\": false}}')")
    return value


def _target(args: argparse.Namespace):
    from ._targets import resolve_target

    try:
        return resolve_target(args.target, kind=args.kind, kwargs=_parse_kwargs(args.kwargs), timeout=args.timeout)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


# -- run -------------------------------------------------------------------------------------


def _run_worker(args: argparse.Namespace, cases: list[Case], modes: Sequence[str]) -> int:
    """Inside an isolated runner's own process: replay, stream one JSON line per result."""
    isolated = _isolated_runners()
    for name in args.backend or []:
        module_name = isolated[name][0]
        module = importlib.import_module(f"sai_conformance.runners.{module_name}")
        runners = [r for r in module.runners() if r.name == name]
        if not runners:
            raise CliError(f"{module_name} did not provide runner {name!r} in this process")
        for case in cases:
            for mode in modes:
                result = _check_one(runners[0], case, mode)
                print(_RESULT_PREFIX + json.dumps(dataclasses.asdict(result)), flush=True)
    return 0


def _run_isolated(
    name: str, where: tuple[str, str, str], args: argparse.Namespace, cases: list[Case], modes: Sequence[str], progress
) -> list[CaseResult]:
    _, variable, backend = where
    command = [sys.executable, "-m", "sai_conformance", "run", "--worker", "--backend", name]
    for pattern in args.case or []:
        command += ["--case", pattern]
    for dtype in args.dtype or []:
        command += ["--dtype", dtype]
    for mode in modes:
        command += ["--mode", mode]
    env = {**os.environ, variable: backend}
    progress.show(f"{name}: starting a {variable}={backend} process")
    results: list[CaseResult] = []
    with tempfile.TemporaryFile(mode="w+") as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith(_RESULT_PREFIX):
                result = CaseResult(**json.loads(line[len(_RESULT_PREFIX) :]))
                results.append(result)
                progress.advance(f"{name} {result.case}")
        code = process.wait()
        errors.seek(0)
        tail = errors.read()[-2000:]
    expected = len(cases) * len(modes)
    if code != 0 or len(results) != expected:
        done = {(r.case, r.mode) for r in results}
        reason = (
            f"the {variable}={backend} subprocess exited with status {code} after {len(results)}/{expected} "
            f"results: {tail.strip()}"
        )
        for case in cases:
            for mode in modes:
                if (case.name, mode) not in done:
                    results.append(_with_rerun(CaseResult(name, case.name, mode, "fail", reason)))
                    progress.advance(name)
    return results


def cmd_run(args: argparse.Namespace) -> int:
    cases = _select_cases(load_cases(), args.case, args.dtype)
    modes = tuple(args.mode) if args.mode else MODES
    if args.worker:
        return _run_worker(args, cases, modes)
    isolated = _isolated_runners()
    in_process = available_runners()
    available = [r.name for r in in_process] + list(isolated)
    if args.backend:
        unknown = [b for b in args.backend if b not in available]
        if unknown:
            raise CliError(f"Invalid --backend: {unknown[0]!r} (available here: {available})")
        in_process = [r for r in in_process if r.name in args.backend]
        isolated = {k: v for k, v in isolated.items() if k in args.backend}
    if not cases:
        raise CliError("no golden case left after --case/--dtype filtering")
    names = [r.name for r in in_process] + list(isolated)
    print(
        f"sai-conformance: {len(cases)} golden cases x {len(names)} runners ({', '.join(names)}) x {len(modes)} modes",
        flush=True,
    )
    started = time.perf_counter()
    from ._report import Progress, markdown_run_table

    progress = Progress(len(cases) * len(names) * len(modes), enabled=args.progress)
    results: list[CaseResult] = []
    try:
        for runner in in_process:
            for case in cases:
                for mode in modes:
                    progress.show(f"{runner.name} {case.name} {mode}")
                    results.append(_check_one(runner, case, mode))
                    progress.advance(f"{runner.name} {case.name} {mode}")
        for name, where in isolated.items():
            results += _run_isolated(name, where, args, cases, modes, progress)
    finally:
        progress.close()
    print(format_table(results))
    passed = all(r.ok for r in results)
    print(f"{'PASS' if passed else 'FAIL'} ({time.perf_counter() - started:.1f} s)")
    if args.json:
        _write_json(args.json, {"passed": passed, "results": [dataclasses.asdict(r) for r in results]})
    if args.markdown:
        Path(args.markdown).write_text(markdown_run_table(results))
    return 0 if passed else 1


# -- check / identify / ports ----------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from ._report import Progress, format_check
    from ._targets import replay_case

    target = _target(args)
    cases = [c for c in _select_cases(load_cases(), args.case, args.dtype) if c.preset == args.preset]
    if not cases:
        raise CliError(f"no golden case of preset {args.preset!r} left after --case/--dtype filtering")
    print(
        f"sai-conformance check {target.name} ({target.description}) against preset {args.preset}: "
        f"{len(cases)} golden cases, trajectory from the initial parameters",
        flush=True,
    )
    progress = Progress(len(cases), enabled=args.progress)
    results = []
    try:
        for case in cases:
            progress.show(case.name)
            results.append(replay_case(target, case))
            progress.advance(case.name)
    finally:
        progress.close()
    print(format_check(target.name, args.preset, results))
    if args.json:
        _write_json(
            args.json,
            {"target": target.name, "preset": args.preset, "results": [dataclasses.asdict(r) for r in results]},
        )
    ran = [r for r in results if r.status != "n/a"]
    return 0 if ran and all(r.ok for r in results) else 1


def cmd_identify(args: argparse.Namespace) -> int:
    from ._identify import identify
    from ._report import format_identification

    target = _target(args)
    result = identify(target)
    print(format_identification(result))
    if args.json:
        _write_json(args.json, result.to_json())
    return 0 if result.agrees else 1


def _port_version(spec: str) -> str:
    from ._targets import module_version

    return module_version(spec.split(":")[0]) or "?"


# A whole identification in a subprocess makes a few hundred calls, each bounded by --timeout
# once it runs; this bounds the rest (a hang that holds the interpreter itself).
_SUBPROCESS_CALLS = 20


def _identify_in_subprocess(spec: str, env: dict[str, str], timeout: float):
    from ._identify import Identification

    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "identify.json")
        try:
            completed = subprocess.run(
                [sys.executable, "-m", "sai_conformance", "identify", spec, "--json", out, "--timeout", str(timeout)],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=_SUBPROCESS_CALLS * timeout + 120,
            )
        except subprocess.TimeoutExpired:
            return f"timeout: the identify subprocess did not finish within {_SUBPROCESS_CALLS * timeout + 120:g} s"
        if not os.path.exists(out):  # identify itself failed (exit status 1 still writes the JSON)
            lines = (completed.stderr or completed.stdout).strip().splitlines()
            return lines[-1] if lines else f"exit status {completed.returncode}"
        return Identification.from_json(json.loads(Path(out).read_text()))


def _planned_ports() -> tuple[list[tuple[str, str | None]], list[str]]:
    """``(TARGET, Keras backend or None)`` for every row the report card will have, and what is missing."""
    planned, missing = [], []
    for spec, per_keras_backend in KNOWN_PORTS:
        if not _installed(spec.split(":")[0]):
            missing.append(spec)
        elif per_keras_backend:
            backends = [b for b, required in _ISOLATION["keras_runner"][2].items() if _installed(required)]
            planned += [(spec, backend) for backend in backends]
        else:
            planned.append((spec, None))
    return planned, missing


def port_entries(progress=None, timeout: float | None = None) -> tuple[list[tuple[str, str, str, Any]], list[str]]:
    """Identify every installed known port.

    Args:
        progress: a :class:`~sai_conformance._report.Progress` bar, or ``None``.
        timeout: seconds one call into a port may take (default ``DEFAULT_TIMEOUT``).

    Returns:
        ``(port, version, runs on, identification or error text)`` rows, and the known ports
        that are not installed. Each Keras backend is identified in its own process.
    """
    from ._identify import identify
    from ._targets import DEFAULT_TIMEOUT

    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    planned, missing = _planned_ports()
    entries = []
    for spec, keras_backend in planned:
        label = spec if keras_backend is None else f"{spec} keras/{keras_backend}"
        if progress:
            progress.show(label)
        if keras_backend is not None:
            result = _identify_in_subprocess(spec, {"KERAS_BACKEND": keras_backend}, timeout)
            runs_on = f"keras/{keras_backend}"
        else:
            try:
                result = identify(spec, timeout=timeout)
                runs_on = {"torch": "torch", "optax": "jax/optax"}.get(result.kind, result.kind)
            except Exception as exc:  # a port that cannot even be built is a row, not a crash
                from ._targets import describe_error

                result, runs_on = describe_error(exc), "?"
        entries.append((spec, _port_version(spec), runs_on, result))
        if progress:
            progress.advance(label)
    return entries, missing


def cmd_ports(args: argparse.Namespace) -> int:
    from ._report import Progress, ports_markdown, ports_text

    started = time.perf_counter()
    progress = Progress(len(_planned_ports()[0]), enabled=args.progress)
    try:
        entries, missing = port_entries(progress, timeout=args.timeout)
    finally:
        progress.close()
    print(ports_text(entries))
    if missing:
        print(f"not installed: {', '.join(missing)}")
    print(f"({time.perf_counter() - started:.1f} s)")
    if args.markdown:
        Path(args.markdown).write_text(ports_markdown(entries, missing=missing))
        print(f"wrote {args.markdown}")
    return 0


# -- argument parsing ------------------------------------------------------------------------


def _add_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw a progress bar on stderr (default: when stderr is a terminal)",
    )


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"Invalid --timeout: {text!r} (expected a number of seconds > 0)")
    return value


def _add_timeout(parser: argparse.ArgumentParser) -> None:
    from ._targets import DEFAULT_TIMEOUT

    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help=f"seconds one call into the target may take before it is abandoned and reported "
        f"as timed out (default {DEFAULT_TIMEOUT:g})",
    )


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="module:attr of a torch.optim.Optimizer subclass, an optax factory or a Keras optimizer class",
    )
    parser.add_argument(
        "--kind", choices=("torch", "optax", "keras"), help="the TARGET's framework (default: detected)"
    )
    parser.add_argument("--kwargs", metavar="JSON", help="extra constructor arguments as a JSON object")
    _add_timeout(parser)


_CASE_HELP = "only these cases (shell-style patterns, e.g. 'shapes-*')"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sai-conformance",
        description="Validate SGD-SaI implementations against the reference's golden vectors and behaviour probes.",
        epilog="Without a subcommand: `run`. Exit status 0 all agree, 1 a case fails or a deviation, 2 a usage error.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser("run", help="replay every golden case on every installed runner")
    run.add_argument(
        "--backend", action="extend", nargs="+", metavar="NAME", help="only these runners (e.g. numpy torch keras-jax)"
    )
    run.add_argument("--dtype", action="extend", nargs="+", choices=DTYPES, help="only cases of these dtypes")
    run.add_argument("--case", action="extend", nargs="+", metavar="NAME", help=_CASE_HELP)
    run.add_argument("--mode", action="extend", nargs="+", choices=MODES, help="only these comparison modes")
    run.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    run.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    run.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    _add_progress(run)
    run.set_defaults(handler=cmd_run)

    check = commands.add_parser("check", help="replay one preset's golden cases on a third-party optimizer")
    _add_target(check)
    check.add_argument(
        "--preset", required=True, choices=list(PRESETS), help="the preset the TARGET claims to implement"
    )
    check.add_argument("--dtype", action="extend", nargs="+", choices=DTYPES, help="only cases of these dtypes")
    check.add_argument("--case", action="extend", nargs="+", metavar="NAME", help=_CASE_HELP)
    check.add_argument("--json", metavar="FILE", help="also write every result as JSON")
    _add_progress(check)
    check.set_defaults(handler=cmd_check)

    ident = commands.add_parser("identify", help="name the preset a port implements and probe its behaviour")
    _add_target(ident)
    ident.add_argument("--json", metavar="FILE", help="also write the identification as JSON")
    ident.set_defaults(handler=cmd_identify)

    ports = commands.add_parser("ports", help="the report card of every known port installed here")
    ports.add_argument("--markdown", metavar="FILE", help="write the report card as Markdown (docs/ports.md)")
    _add_timeout(ports)
    _add_progress(ports)
    ports.set_defaults(handler=cmd_ports)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Examples:
        >>> main(["check", "numpy", "--preset", "paper"])
        2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv or ["run"])
    try:
        return args.handler(args)
    except CliError as exc:
        print(f"sai-conformance: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
