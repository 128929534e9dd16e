"""Drive a third-party optimizer through golden cases and probes, as its users would call it.

A *target* is named ``module:attr`` and is one of three kinds:

* ``torch``: a ``torch.optim.Optimizer`` subclass, built as ``cls(param_groups, **hyperparameters)``;
* ``optax``: a factory returning an ``optax.GradientTransformation``, built as
  ``factory(**hyperparameters)`` and driven with ``init`` / ``update`` / ``optax.apply_updates``;
* ``keras``: a ``keras.optimizers.Optimizer`` subclass, built as ``cls(**hyperparameters)`` and
  driven with ``apply(grads, variables)`` on the Keras backend of this process.

Hyperparameters are passed by keyword under the target's own names (``lr`` or ``learning_rate``,
``eps`` or ``epsilon``), read from its signature. A hyperparameter the signature does not name
cannot be set, so the cases that need it are *not applicable* (with that reason), never run with
a guessed default. A target is compared on what any port exposes, its parameters, replayed from
the initial state (a *trajectory*): a third party's state layout is its own business, so the
one-step comparison, which loads the reference's state, is left to the project's own runners.

Internally a fourth kind, ``reference``, wraps :class:`sai_core.ReferenceSGDSaI` under a preset;
the probes use it to know what each preset does on them.

Every call into the target (building the optimizer, a step, reading the parameters, saving and
loading, a ``model.fit``) runs in the target's own *worker thread* and is waited for at most
``Target.timeout`` seconds (``--timeout``). A call that does not return is abandoned: it raises
:class:`TargetTimeout` here, the worker (a daemon thread, so it never keeps the process alive) is
left behind, and the target is not called again (:class:`TargetHung`), because the abandoned call
may still hold or change the target's state. A thread rather than a subprocess: the target's
tensors, its state and its framework's per-thread settings stay in one process, so a call costs
microseconds instead of a framework import, and Keras keeps the backend of this process. The price
is that an abandoned call that spins in Python keeps competing for the GIL until the process exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import io
import json
import queue
import shlex
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from sai_core import DEFAULT_PRESET, ReferenceSGDSaI, resolve_config

from ._golden import Case
from ._harness import CaseResult, _compare_array
from ._tolerances import TOLERANCES

__all__ = [
    "DEFAULT_TIMEOUT",
    "KINDS",
    "TargetHung",
    "TargetTimeout",
    "describe_error",
    "module_version",
    "NotExpressible",
    "Session",
    "Target",
    "reference_target",
    "replay_case",
    "resolve_target",
]

KINDS: tuple[str, ...] = ("torch", "optax", "keras")
# Seconds one call into a target may take (``--timeout``). The slowest legitimate call is a first
# compiled step or a graph-mode ``model.fit`` (a few seconds on 2 CPU cores, tracing included); 60 s
# leaves a wide margin and still ends a hung port's identification within a minute.
DEFAULT_TIMEOUT = 60.0
HYPERPARAMETERS: tuple[str, ...] = ("lr", "momentum", "weight_decay", "eps", "maximize")

# The names each framework's optimizers use for a hyperparameter, in order of preference.
_ALIASES: dict[str, dict[str, tuple[str, ...]]] = {
    "torch": {"lr": ("lr", "learning_rate"), "eps": ("eps", "epsilon")},
    "optax": {"lr": ("learning_rate", "lr"), "eps": ("eps", "epsilon")},
    "keras": {"lr": ("learning_rate",), "eps": ("epsilon", "eps")},
}

Groups = Sequence[tuple[Sequence[int], Mapping[str, Any]]]


def describe_error(error: BaseException) -> str:
    """``Type: message`` on one line (the last line of a multi-line message, e.g. a traced TF error).

    Examples:
        >>> describe_error(KeyError("gsnr"))
        "KeyError: 'gsnr'"
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[-1] if lines else ""
    prefix = f"{type(error).__name__}: "
    message = message[len(prefix) :] if message.startswith(prefix) else message
    return f"{prefix}{message[:300]}"


class NotExpressible(Exception):
    """A case or probe needs something the target's framework cannot express (the message says what)."""


class TargetTimeout(Exception):
    """A call into the target did not return within ``Target.timeout`` seconds (it was abandoned)."""


class TargetHung(Exception):
    """The target timed out earlier; it is not called again (the message says which call hung)."""


class _Worker:
    """One daemon thread that runs a target's calls in order (abandoned when a call hangs)."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name=f"sai-conformance target {name}", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            self.jobs.get()()

    def call(self, function: Any, args: tuple, timeout: float) -> tuple[bool, Any, BaseException | None]:
        """``(finished, value, error)`` of ``function(*args)`` run on the worker thread."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            try:
                box["value"] = function(*args)
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
                box["error"] = exc
            finally:
                done.set()

        self.jobs.put(job)
        if not done.wait(timeout):
            return False, None, None
        return True, box.get("value"), box.get("error")


class _ThreadQuietStdout(io.TextIOBase):
    """``sys.stdout`` that drops what the thread which installed it writes, and passes on the rest.

    ``contextlib.redirect_stdout`` swaps the process-wide ``sys.stdout``: a target call that hangs
    inside it would silence the whole report. This one silences only the target's worker thread.
    """

    def __init__(self, real: Any) -> None:
        self.real, self.owner = real, threading.get_ident()

    def write(self, text: str) -> int:
        return len(text) if threading.get_ident() == self.owner else self.real.write(text)

    def flush(self) -> None:
        if threading.get_ident() != self.owner:
            self.real.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # Some ports print on their first step (sgd-sai 1.0.3 prints a "warmup" banner) or warn from
    # inside their statistics (torch's std of one element); the report owns the terminal.
    previous = sys.stdout
    quiet = _ThreadQuietStdout(previous)
    sys.stdout = quiet
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if sys.stdout is quiet:  # a later writer replaced it: leave theirs in place
            sys.stdout = previous


class Session:
    """One optimizer instance over float64 NumPy blocks (the interface the cases and probes use)."""

    dtype: str
    #: torch only: whether the last :meth:`step` changed the ``.grad`` tensors it was given.
    grads_modified: bool | None = None

    def step(self, grads: Sequence[np.ndarray | None], hyper: Sequence[Mapping[str, Any]]) -> None:
        """One step with one gradient per block (``None``: no gradient) and each group's hyperparameters."""
        raise NotImplementedError

    def params(self) -> list[np.ndarray]:
        """The current parameters, as float64 NumPy arrays."""
        raise NotImplementedError

    def save(self) -> Any:
        """The optimizer state, serialised the framework's way."""
        raise NotImplementedError

    def resume(self, saved: Any, hyper: Sequence[Mapping[str, Any]]) -> Session:
        """A new optimizer over copies of the current parameters with ``saved`` loaded into it."""
        raise NotImplementedError

    def step_with_closure(self, grads: Sequence[np.ndarray | None], hyper: Sequence[Mapping[str, Any]]) -> int:
        """One ``step(closure)`` whose closure sets ``grads``; returns how often it was called."""
        raise NotExpressible("this framework's optimizers take no closure")


@dataclasses.dataclass
class Target:
    """A third-party optimizer and how to build it.

    Attributes:
        name: how reports name it (the ``module:attr`` it was resolved from).
        kind: ``"torch"``, ``"optax"``, ``"keras"`` (or ``"reference"``).
        obj: the class or factory.
        kwargs: extra constructor arguments (``--kwargs``); never a hyperparameter.
        kind_given: whether ``kind`` was given rather than detected (for rerun commands).
        timeout: seconds one call into the target may take (see the module docstring).
        hung: which call timed out, once one has (the target is then never called again).
    """

    name: str
    kind: str
    obj: Any
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    kind_given: bool = False
    timeout: float = DEFAULT_TIMEOUT
    hung: str | None = dataclasses.field(default=None, compare=False)
    _worker: _Worker | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    # -- calling the target ------------------------------------------------------------------

    def call(self, what: str, function: Any, *args: Any) -> Any:
        """``function(*args)`` on the target's worker thread, abandoned after :attr:`timeout` seconds.

        Args:
            what: the call in words, for the message (``"step 2"``).
            function: what to run; it may raise (the exception is re-raised here).

        Raises:
            TargetTimeout: the call did not return in time (the target is then marked hung).
            TargetHung: an earlier call timed out, so this one is not made.
        """
        if self.hung is not None:
            raise TargetHung(f"not run: {self.hung}")
        if self._worker is None:
            self._worker = _Worker(self.name)
        finished, value, error = self._worker.call(function, args, self.timeout)
        if not finished:
            self._worker = None  # abandoned with its thread
            self.hung = f"{what} did not return within {self.timeout:g} s (--timeout)"
            raise TargetTimeout(self.hung)
        if error is not None:
            raise error
        return value

    @property
    def has_groups(self) -> bool:
        """Whether the framework has parameter groups (torch's ``param_groups``)."""
        return self.kind in ("torch", "reference")

    # -- what the target can express ---------------------------------------------------------

    def _signature_names(self) -> set[str]:
        function = self.obj.__init__ if inspect.isclass(self.obj) else self.obj
        return set(inspect.signature(function).parameters)

    def argument(self, hyper: str) -> str | None:
        """The target's keyword for ``hyper`` (one of ``lr, momentum, weight_decay, eps, maximize``)."""
        names = self._signature_names()
        for alias in _ALIASES.get(self.kind, {}).get(hyper, (hyper,)):
            if alias in names:
                return alias
        return None

    def named(self, hyper: Mapping[str, Any]) -> dict[str, Any]:
        """``hyper`` under the target's keywords (``maximize=False`` dropped where it has none)."""
        named = {}
        for key, value in hyper.items():
            alias = self.argument(key)
            if alias is None:
                if key == "maximize" and not value:
                    continue  # an optimizer without `maximize` minimises
                raise NotExpressible(f"{self.name} has no `{key}` argument")
            named[alias] = value
        return named

    @property
    def description(self) -> str:
        what = {
            "torch": "torch.optim.Optimizer subclass",
            "optax": "optax transformation factory",
            "keras": "Keras optimizer class",
            "reference": "sai_core.ReferenceSGDSaI",
        }[self.kind]
        if self.kind == "keras":
            what += f", {_keras_backend()} backend"
        version = _version_of(self.obj)
        return f"{what}{f', {version}' if version else ''}"

    def dtypes(self) -> tuple[str, ...]:
        """The dtypes this target can hold parameters in."""
        if self.kind == "keras" and not _keras_stores_float64():
            return ("float32", "bfloat16")
        return ("float64", "float32", "bfloat16")

    def probe_dtype(self) -> str:
        """The most precise dtype available (the probes measure scales from parameter updates)."""
        return self.dtypes()[0]

    def cannot_express(self, case: Case) -> str | None:
        """Why this target cannot run ``case``, or ``None``."""
        if case.dtype not in self.dtypes():
            return f"{self.name} cannot hold {case.dtype} parameters here"
        groups_differ = any(g.hyper != case.groups[0].hyper for g in case.groups[1:])
        if self.kind in ("optax", "keras") and groups_differ:
            return f"a {self.kind} optimizer has one set of hyperparameters (no parameter groups)"
        if self.kind == "optax" and any(g is None for row in case.grads for g in row):
            return "needs an absent gradient: an optax update takes a gradient for every leaf"
        for name in HYPERPARAMETERS:
            values = {h[name] for group in case.groups for h in group.hyper}
            if self.argument(name) is None and values != {False}:
                return f"{self.name} has no `{name}` argument (the case sets {name}={sorted(values)})"
            changes = any(len({h[name] for h in g.hyper}) > 1 for g in case.groups)
            if changes and name != "lr" and self.kind == "keras":
                return f"{name} changes between steps; Keras optimizers hold it as a Python constant"
            if changes and name == "maximize":
                return "maximize changes between steps"
        return None

    def open(self, initial: Sequence[np.ndarray], groups: Groups, dtype: str) -> Session:
        """A fresh optimizer over copies of ``initial`` (float64 values cast to ``dtype``).

        Args:
            initial: one array per block.
            groups: ``(block indices, hyperparameters at the first step)`` per parameter group.
            dtype: ``"float64"``, ``"float32"`` or ``"bfloat16"``.
        """
        if dtype not in self.dtypes():
            raise NotExpressible(f"{self.name} cannot hold {dtype} parameters here")
        indices = [list(i) for i, _ in groups]
        hyper = [dict(h) for _, h in groups]
        if self.kind in ("optax", "keras") and any(h != hyper[0] for h in hyper[1:]):
            raise NotExpressible(f"a {self.kind} optimizer has one set of hyperparameters (no parameter groups)")
        session_class = {
            "torch": _TorchSession,
            "optax": _OptaxSession,
            "keras": _KerasSession,
            "reference": _ReferenceSession,
        }[self.kind]
        values = [np.asarray(p, dtype=np.float64) for p in initial]
        return _GuardedSession(
            self, self.call("building the optimizer", session_class, self, values, indices, hyper, dtype)
        )

    def fit(self, hyper: Mapping[str, Any], mode: str, steps: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Trains a small Keras model with ``model.fit`` (Keras targets only).

        Args:
            hyper: the hyperparameters (our names).
            mode: ``"eager"`` (``run_eagerly=True``) or ``"compiled"`` (``fit``'s default: a
                ``tf.function`` on TensorFlow, ``jax.jit`` on JAX; eager on torch).
            steps: optimizer steps (one full batch per epoch).

        Returns:
            The weights before and after training, as float64 NumPy arrays.
        """
        if self.kind != "keras":
            raise NotExpressible("only a Keras optimizer is trained with model.fit")
        return self.call(f"model.fit ({mode})", _keras_fit, self, dict(hyper), mode, steps)

    def rerun(self, *arguments: str) -> str:
        """The ``sai-conformance`` command line for this target with ``arguments`` added."""
        words = ["sai-conformance", *arguments[:1], self.name, *arguments[1:]]
        if self.kind_given:
            words += ["--kind", self.kind]
        if self.kwargs:
            words += ["--kwargs", json.dumps(self.kwargs, sort_keys=True)]
        return " ".join(shlex.quote(w) for w in words)


def module_version(module: str) -> str | None:
    """``"distribution version"`` of the installed distribution that provides ``module``.

    Examples:
        >>> module_version("numpy").startswith("numpy ")
        True
    """
    from importlib import metadata

    top = module.split(".")[0]
    for distribution in metadata.packages_distributions().get(top, []):
        try:
            return f"{distribution} {metadata.version(distribution)}"
        except metadata.PackageNotFoundError:  # pragma: no cover - a broken installation
            continue
    return None


def _version_of(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None) or ""
    return module_version(module) if module else None


# -- resolving TARGET ------------------------------------------------------------------------


def _detect_kind(obj: Any) -> str | None:
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer):
        return "torch"
    keras = sys.modules.get("keras")
    if keras is not None and inspect.isclass(obj) and issubclass(obj, keras.optimizers.Optimizer):
        return "keras"
    if "optax" in sys.modules and callable(obj) and not inspect.isclass(obj):
        # A factory is only known by what it returns; it must at least take a learning rate.
        try:
            names = set(inspect.signature(obj).parameters)
        except (TypeError, ValueError):
            return None
        if names & {"learning_rate", "lr"}:
            return "optax"
    return None


def resolve_target(
    spec: Any, *, kind: str | None = None, kwargs: Mapping[str, Any] | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Target:
    """Imports ``module:attr`` (or takes an object) and decides its kind.

    Args:
        spec: ``"module:attr"`` (``attr`` may be dotted), or the class / factory itself.
        kind: ``"torch"``, ``"optax"`` or ``"keras"``; detected when ``None``.
        kwargs: extra constructor arguments (not hyperparameters, which each case sets).
        timeout: seconds one call into the target may take (``> 0``).

    Raises:
        ValueError: naming the argument and value: a malformed or unimportable TARGET (also one
            whose module raises while imported), an unknown kind, a kind that cannot be detected,
            ``kwargs`` setting a hyperparameter, or a timeout that is not a positive number.

    Examples:
        >>> resolve_target("numpy")
        Traceback (most recent call last):
        ...
        ValueError: Invalid TARGET: 'numpy' (expected module:attr, e.g. sgd_sai:SGD_sai)
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"Invalid kind: {kind!r} (expected one of {list(KINDS)})")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"Invalid timeout: {timeout!r} (expected a number of seconds > 0)")
    kwargs = dict(kwargs or {})
    if not isinstance(spec, str):
        obj, name = spec, f"{getattr(spec, '__module__', '?')}:{getattr(spec, '__qualname__', repr(spec))}"
    else:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ValueError(f"Invalid TARGET: {spec!r} (expected module:attr, e.g. sgd_sai:SGD_sai)")
        try:
            obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"Invalid TARGET: {spec!r} (cannot import {module_name!r}: {exc})") from exc
        except (Exception, SystemExit) as exc:  # the module itself raised while being imported
            raise ValueError(
                f"Invalid TARGET: {spec!r} (importing {module_name!r} raised {describe_error(exc)})"
            ) from exc
        for part in attr.split("."):
            if not hasattr(obj, part):
                owner = getattr(obj, "__name__", repr(obj))
                raise ValueError(f"Invalid TARGET: {spec!r} ({owner} has no attribute {part!r})")
            obj = getattr(obj, part)
        name = spec
    detected = _detect_kind(obj)
    if kind is None and detected is None:
        raise ValueError(
            f"Invalid TARGET: {name!r} is a {type(obj).__name__}, not a torch.optim.Optimizer subclass, an "
            "optax transformation factory or a Keras optimizer class (pass --kind to say which)"
        )
    target = Target(name, kind or detected, obj, kwargs, kind_given=kind is not None, timeout=float(timeout))
    clashing = sorted(k for k in kwargs if k in {target.argument(h) for h in HYPERPARAMETERS} | set(HYPERPARAMETERS))
    if clashing:
        raise ValueError(
            f"Invalid --kwargs: {clashing} are hyperparameters that every case and probe sets itself; "
            "pass only other constructor arguments"
        )
    return target


def reference_target(preset: str = DEFAULT_PRESET, **knob_overrides: Any) -> Target:
    """The NumPy reference under ``preset`` as a target (what each preset does on a probe).

    Examples:
        >>> reference_target("sgd-sai-1.0.3").name
        'reference[sgd-sai-1.0.3]'
    """
    resolve_config(preset, **knob_overrides)
    suffix = "".join(f",{k}={v}" for k, v in sorted(knob_overrides.items()))
    return Target(f"reference[{preset}{suffix}]", "reference", ReferenceSGDSaI, {"preset": preset, **knob_overrides})


# -- sessions --------------------------------------------------------------------------------


class _ReferenceSession(Session):
    # bfloat16 (no NumPy type): the contract's low-precision path, statistics and update in float64
    # (>= float32) and each parameter rounded once when stored.
    def __init__(self, target: Target, initial, indices, hyper, dtype) -> None:
        self.target, self.indices, self.dtype = target, indices, dtype
        self.rounding = dtype == "bfloat16"
        compute = np.float64 if self.rounding else np.dtype(dtype).type
        groups = [{"params": [initial[i] for i in idx], **h} for idx, h in zip(indices, hyper)]
        self.optimizer = ReferenceSGDSaI(groups, dtype=compute, **target.kwargs)

    def step(self, grads, hyper) -> None:
        for group, h in zip(self.optimizer.param_groups, hyper):
            group.update(h)
        with _quiet():  # the reference warns about a non-finite first gradient
            self.optimizer.step(list(grads))
        if self.rounding:
            from ._cases import round_to_dtype

            self.optimizer.params = [round_to_dtype(p, "bfloat16") for p in self.optimizer.params]

    def params(self) -> list[np.ndarray]:
        return [np.asarray(p, dtype=np.float64).copy() for p in self.optimizer.params]

    def save(self) -> Any:
        return self.optimizer.state_dict()

    def resume(self, saved, hyper) -> Session:
        fresh = _ReferenceSession(self.target, self.params(), self.indices, hyper, self.dtype)
        fresh.optimizer.load_state_dict(saved)
        return fresh


class _TorchSession(Session):
    def __init__(self, target: Target, initial, indices, hyper, dtype) -> None:
        import torch

        self.torch, self.target, self.indices, self.dtype = torch, target, indices, dtype
        self.torch_dtype = getattr(torch, dtype)
        self.tensors = [torch.nn.Parameter(torch.tensor(p).to(self.torch_dtype)) for p in initial]
        groups = [{"params": [self.tensors[i] for i in idx], **target.named(h)} for idx, h in zip(indices, hyper)]
        with _quiet():
            self.optimizer = target.obj(groups, **target.kwargs, **target.named(hyper[0]))

    def _tensor(self, grad: np.ndarray):
        # A copy: a port that negates .grad in place must not reach the caller's NumPy array.
        return self.torch.tensor(np.asarray(grad, dtype=np.float64)).to(self.torch_dtype)

    def _set_hyper(self, hyper) -> None:
        for group, h in zip(self.optimizer.param_groups, hyper):
            group.update(self.target.named(h))

    def step(self, grads, hyper) -> None:
        self._set_hyper(hyper)
        given = []
        for tensor, grad in zip(self.tensors, grads):
            tensor.grad = None if grad is None else self._tensor(grad)
            given.append(None if grad is None else tensor.grad.clone())
        with _quiet():
            self.optimizer.step()
        self.grads_modified = any(
            g is not None and (t.grad is None or not self.torch.equal(t.grad, g)) for t, g in zip(self.tensors, given)
        )

    def step_with_closure(self, grads, hyper) -> int:
        if "closure" not in inspect.signature(self.optimizer.step).parameters:
            raise NotExpressible(f"{self.target.name}.step takes no closure")
        self._set_hyper(hyper)
        calls = 0

        def closure():
            nonlocal calls
            calls += 1
            for tensor, grad in zip(self.tensors, grads):
                tensor.grad = None if grad is None else self._tensor(grad)
            return self.torch.zeros(())

        for tensor in self.tensors:
            tensor.grad = None
        with _quiet():
            self.optimizer.step(closure)
        return calls

    def params(self) -> list[np.ndarray]:
        return [t.detach().to(self.torch.float64).numpy().copy() for t in self.tensors]

    def save(self) -> bytes:
        buffer = io.BytesIO()
        self.torch.save(self.optimizer.state_dict(), buffer)
        return buffer.getvalue()

    def resume(self, saved, hyper) -> Session:
        fresh = _TorchSession(self.target, self.params(), self.indices, hyper, self.dtype)
        state = self.torch.load(io.BytesIO(saved), weights_only=True)
        with _quiet():
            fresh.optimizer.load_state_dict(state)
        return fresh


@contextlib.contextmanager
def _jax_precision(dtype: str) -> Iterator[None]:
    # A thread-local switch (not the process-wide flag), as the project's JAX runner does.
    import jax

    with jax.enable_x64(dtype == "float64"):
        yield


class _OptaxSession(Session):
    def __init__(self, target: Target, initial, indices, hyper, dtype) -> None:
        import jax.numpy as jnp

        self.target, self.indices, self.dtype = target, indices, dtype
        self.hyper = dict(hyper[0])
        with _jax_precision(dtype), _quiet():
            self.values = [jnp.asarray(p, dtype=dtype) for p in initial]
            self.transformation = self._build(self.hyper)
            self.state = self.transformation.init(self.values)

    def _build(self, hyper) -> Any:
        import optax

        transformation = self.target.obj(**self.target.kwargs, **self.target.named(hyper))
        if not isinstance(transformation, optax.GradientTransformation):
            raise TypeError(
                f"{self.target.name} returned a {type(transformation).__name__}, not an optax.GradientTransformation"
            )
        return transformation

    def step(self, grads, hyper) -> None:
        import jax.numpy as jnp
        import optax

        if any(g is None for g in grads):
            raise NotExpressible("an optax update takes a gradient for every leaf (no absent gradient)")
        with _jax_precision(self.dtype), _quiet():
            if dict(hyper[0]) != self.hyper:
                # A new hyperparameter value: rebuild the transformation and keep its state, as a
                # user changing hyperparameters between steps would.
                self.hyper = dict(hyper[0])
                self.transformation = self._build(self.hyper)
            updates, self.state = self.transformation.update(
                [jnp.asarray(g, dtype=self.dtype) for g in grads], self.state, self.values
            )
            self.values = optax.apply_updates(self.values, updates)

    def params(self) -> list[np.ndarray]:
        return [np.asarray(v).astype(np.float64) for v in self.values]

    def save(self) -> Any:
        import jax

        # The way checkpoint libraries store an optax state: its leaves as host arrays, restored
        # into the structure of a freshly initialised state.
        return [np.asarray(leaf) for leaf in jax.tree.leaves(self.state)]

    def resume(self, saved, hyper) -> Session:
        import jax
        import jax.numpy as jnp

        fresh = _OptaxSession(self.target, self.params(), self.indices, hyper, self.dtype)
        treedef = jax.tree.structure(fresh.state)
        if treedef.num_leaves != len(saved):
            raise ValueError(f"the saved state has {len(saved)} leaves, a fresh one {treedef.num_leaves}")
        with _jax_precision(self.dtype):
            fresh.state = jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in saved])
        return fresh


def _keras_backend() -> str:
    import keras

    return keras.backend.backend()


@functools.cache
def _keras_stores_float64() -> bool:
    from .runners.keras_runner import stores_float64  # lazy: imports keras

    return stores_float64()


def _keras_floatx(dtype: str) -> contextlib.AbstractContextManager[None]:
    from .runners.keras_runner import floatx  # lazy: imports keras

    return floatx(dtype)


class _KerasSession(Session):
    def __init__(self, target: Target, initial, indices, hyper, dtype) -> None:
        import keras

        self.keras, self.target, self.indices, self.dtype = keras, target, indices, dtype
        self.hyper = dict(hyper[0])
        with _keras_floatx(dtype), _quiet():
            self.variables = [keras.Variable(p, dtype=dtype, name=f"block{i}") for i, p in enumerate(initial)]
            self.optimizer = target.obj(**target.kwargs, **target.named(self.hyper))
            self.optimizer.build(self.variables)

    def step(self, grads, hyper) -> None:
        changed = sorted(k for k in hyper[0] if hyper[0][k] != self.hyper[k])
        if any(k != "lr" for k in changed):
            raise NotExpressible(f"{changed} change between steps; Keras optimizers hold them as Python constants")
        if changed:
            self.optimizer.learning_rate = hyper[0]["lr"]
            self.hyper = dict(hyper[0])
        with _quiet():
            convert = self.keras.ops.convert_to_tensor
            tensors = [None if g is None else convert(np.asarray(g), dtype=self.dtype) for g in grads]
            self.optimizer.apply(tensors, self.variables)

    def params(self) -> list[np.ndarray]:
        return [np.asarray(self.keras.ops.convert_to_numpy(v)).astype(np.float64) for v in self.variables]

    def save(self) -> dict[str, np.ndarray]:
        store: dict[str, Any] = {}
        self.optimizer.save_own_variables(store)
        return {key: np.array(value) for key, value in store.items()}

    def resume(self, saved, hyper) -> Session:
        fresh = _KerasSession(self.target, self.params(), self.indices, hyper, self.dtype)
        with _quiet():
            fresh.optimizer.load_own_variables(dict(saved))
        return fresh


class _GuardedSession(Session):
    """A session whose every call runs through :meth:`Target.call` (timeouts, see the module docstring)."""

    def __init__(self, target: Target, inner: Session) -> None:
        self.target, self.inner, self.dtype = target, inner, inner.dtype
        self.steps = 0

    @property
    def grads_modified(self) -> bool | None:  # type: ignore[override]
        return self.inner.grads_modified

    def step(self, grads, hyper) -> None:
        self.steps += 1
        self.target.call(f"step {self.steps}", self.inner.step, grads, hyper)

    def params(self) -> list[np.ndarray]:
        return self.target.call("reading the parameters", self.inner.params)

    def save(self) -> Any:
        return self.target.call("saving the optimizer state", self.inner.save)

    def resume(self, saved, hyper) -> Session:
        fresh = _GuardedSession(
            self.target, self.target.call("loading the optimizer state", self.inner.resume, saved, hyper)
        )
        fresh.steps = self.steps
        return fresh

    def step_with_closure(self, grads, hyper) -> int:
        self.steps += 1
        return self.target.call(f"step {self.steps} (with a closure)", self.inner.step_with_closure, grads, hyper)


def _keras_fit(
    target: Target, hyper: dict[str, Any], mode: str, steps: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    # A Dense(4) layer on 32 fixed samples, full batch, mean squared error: every weight gets a
    # gradient at every step, and the same initial weights and data for both modes.
    import keras

    rng = np.random.default_rng(120)
    inputs = rng.standard_normal((32, 8)).astype("float32")
    targets = rng.standard_normal((32, 4)).astype("float32")
    initial = [rng.standard_normal((8, 4)).astype("float32"), rng.standard_normal((4,)).astype("float32")]
    with _quiet():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
        model.set_weights(initial)
        optimizer = target.obj(**target.kwargs, **target.named(hyper))
        model.compile(optimizer=optimizer, loss="mean_squared_error", run_eagerly=(mode == "eager"))
        model.fit(inputs, targets, batch_size=32, epochs=steps, shuffle=False, verbose=0)
        after = [np.asarray(w, dtype=np.float64) for w in model.get_weights()]
    return [w.astype(np.float64) for w in initial], after


# -- golden cases ----------------------------------------------------------------------------


def replay_case(target: Target, case: Case) -> CaseResult:
    """Runs ``case`` on ``target`` from the initial parameters and compares the parameters.

    Returns a :class:`CaseResult` in mode ``"trajectory"`` with status ``pass``, ``fail``,
    ``error`` (the target raised; ``detail`` says at which step and what) or ``n/a``.
    """
    reason = target.cannot_express(case)
    if reason is not None:
        return CaseResult(target.name, case.name, "trajectory", "n/a", reason)
    tolerance = TOLERANCES[case.dtype]
    rtol = tolerance.trajectory
    rerun = target.rerun("check", "--preset", case.preset, "--case", case.name)
    groups = [(g.params, g.hyper[0]) for g in case.groups]
    step = 0
    try:
        session = target.open(case.initial_params, groups, case.dtype)
        for step in range(case.num_steps):
            session.step(list(case.grads[step]), case.hyper_at(step))
            got = session.params()
            worst = None
            for block, (actual, expected) in enumerate(zip(got, case.expected[step].params)):
                abs_err, rel_err, ok = _compare_array(actual, expected, rtol, tolerance.tiny)
                if not ok and (worst is None or rel_err > worst[2]):
                    worst = (block, abs_err, rel_err)
            if worst is not None:
                block, abs_err, rel_err = worst
                detail = (
                    f"target {target.name}, case {case.name} ({case.dtype}, trajectory): step {step + 1}, "
                    f"block {block} {case.shapes[block]}, params: max abs err {abs_err:.3g}, "
                    f"max rel err {rel_err:.3g} (rtol {rtol:g}). Rerun: {rerun}"
                )
                return CaseResult(
                    target.name, case.name, "trajectory", "fail", detail, step, block, "params", abs_err, rel_err
                )
    except NotExpressible as exc:
        return CaseResult(target.name, case.name, "trajectory", "n/a", str(exc))
    except (TargetTimeout, TargetHung) as exc:
        detail = f"target {target.name}, case {case.name} ({case.dtype}, trajectory): timeout: {exc}. Rerun: {rerun}"
        return CaseResult(target.name, case.name, "trajectory", "timeout", detail, step)
    except Exception as exc:  # a crashing target is a finding, not a crash of the suite
        detail = (
            f"target {target.name}, case {case.name} ({case.dtype}, trajectory): step {step + 1} raised "
            f"{describe_error(exc)}. Rerun: {rerun}"
        )
        return CaseResult(target.name, case.name, "trajectory", "error", detail, step)
    return CaseResult(target.name, case.name, "trajectory", "pass")
