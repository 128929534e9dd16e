"""The ``sai-gsnr`` command (also ``python -m sai_gsnr``): what the g-SNR does to each tensor of a model.

``sai-gsnr MODULE:FUNCTION``: ``FUNCTION()`` returns ``(model, loss_fn)`` (a ``torch.nn.Module``,
a Keras model, or a JAX pytree of arrays, and a function with ``loss_fn(model)`` the scalar loss of
one batch). One gradient is computed and, per tensor in registration order, the table shows its
name, shape, ``n``, ``G``, ``sqrt(n)``, ``G / sqrt(n - 1)`` and the scale ``S`` under ``--preset``,
with ``M``. The current directory is importable, as with ``python -m``.

``sai-gsnr CHECKPOINT``: the frozen scales in a saved ``SGDSaI.state_dict()`` (``torch.save``), a
``.keras`` file compiled with ``sai_keras.SGDSaI``, or an optax state saved as ``docs/jax.md``
shows (``.npz``).

Only the framework the target needs is imported. Exit status 0, or 2 with a one-line error on
stderr for bad input (no such module or file, a function returning something else, a checkpoint
of another optimizer).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sai_core import DEFAULT_HYPERPARAMETERS, PRESETS, GsnrReport

from ._files import CheckpointError, read_checkpoint
from ._render import format_report, plot_report, report_json

__all__ = ["main"]


class CliError(Exception):
    """Bad input: printed as ``sai-gsnr: error: ...`` with exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sai-gsnr",
        description="Show the g-SNR G, sqrt(n) and the SGD-SaI scale S of every tensor of a model "
        "(from one gradient) or of a saved optimizer state.",
    )
    parser.add_argument(
        "target",
        metavar="TARGET",
        help="MODULE:FUNCTION (FUNCTION() returns (model, loss_fn)) or a checkpoint file "
        "(torch.save of SGDSaI.state_dict(), a .keras file, an .npz of an optax state)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="the preset whose scale S is shown (default sgd-sai: S = G; paper: S = G / M). A torch or "
        "Keras checkpoint records its own; an optax .npz does not",
    )
    parser.add_argument("--eps", type=float, default=DEFAULT_HYPERPARAMETERS["eps"], help="g-SNR denominator guard")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw G against sqrt(n) per tensor into this PNG")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def _describe(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _load_function(target: str) -> tuple[Any, Any]:
    module_name, _, function_name = target.partition(":")
    if not module_name or not function_name:
        raise CliError(f"Invalid TARGET: {target!r} (expected MODULE:FUNCTION or an existing checkpoint file)")
    # As `python -m` does: modules next to the user are importable from a console script too.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # ImportError, or the module itself failing
        raise CliError(f"Invalid TARGET: cannot import {module_name!r}: {type(error).__name__}: {error}") from error
    function = getattr(module, function_name, None)
    if function is None:
        raise CliError(f"Invalid TARGET: module {module_name!r} has no attribute {function_name!r}")
    if not callable(function):
        raise CliError(f"Invalid TARGET: {target} is a {_describe(function)}, not a function")
    try:
        result = function()
    except Exception as error:
        raise CliError(f"Invalid TARGET: {target}() raised {type(error).__name__}: {error}") from error
    if not isinstance(result, tuple) or len(result) != 2 or not callable(result[1]):
        raise CliError(
            f"Invalid TARGET: {target}() returned {_describe(result)}; expected a tuple (model, loss_fn) "
            "with loss_fn(model) the scalar loss of one batch"
        )
    return result


def _framework(model: Any) -> str:
    """Which adapter handles ``model``, judged from the frameworks the user's module imported."""
    keras = sys.modules.get("keras")
    # Checked first: on Keras's torch backend a Keras model is also a torch.nn.Module.
    if keras is not None and isinstance(model, keras.layers.Layer):
        return "keras"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(model, torch.nn.Module):
        return "torch"
    jax = sys.modules.get("jax")
    if jax is not None and any(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(model)):
        return "jax"
    raise CliError(
        f"Invalid TARGET: the model is a {_describe(model)}; expected a torch.nn.Module, a Keras model "
        "or a JAX pytree of arrays"
    )


def _live_report(target: str, preset: str, eps: float) -> GsnrReport:
    model, loss_fn = _load_function(target)
    framework = _framework(model)
    if framework == "torch":
        from sai_torch import gsnr_report
    elif framework == "keras":
        from sai_keras import gsnr_report
    else:
        from sai_jax import gsnr_report
    try:
        return gsnr_report(model, loss_fn, preset=preset, eps=eps)
    except (TypeError, ValueError) as error:
        raise CliError(f"{target}: {' '.join(str(error).split())}") from error


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        notes: list[str] = []
        if Path(args.target).is_file():
            report, notes = read_checkpoint(args.target, preset=args.preset)
        elif Path(args.target).exists():
            raise CliError(f"Invalid CHECKPOINT: {args.target!r} is not a file")
        else:
            report = _live_report(args.target, args.preset or "sgd-sai", args.eps)
        if args.json:
            print(report_json(report))
        else:
            for note in notes:
                print(f"# {note}")
            print(format_report(report))
        if args.plot:
            plot_report(report, args.plot)
            if not args.json:
                print(f"plot: {args.plot}")
    except (CliError, CheckpointError) as error:
        print(f"sai-gsnr: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    return 0
