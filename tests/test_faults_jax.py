"""Bad input to the optax transformations: a clear error naming the culprit, and nothing changed.

SPEC.md step 0: a gradient or parameter that is not real floating point (integer, bool, complex,
JAX ``float0``), a gradient that does not fit its parameter, a state made for other parameters and
an invalid hyperparameter raise before anything is computed. JAX arrays are immutable, so
"nothing changed" means: the state and parameters handed to the failing call are still exactly
what they were, and an update from them afterwards equals the update the failing call was never
made before. ``FAULTS`` is the table; each row is run eagerly and, where ``jit`` says so, under
``jax.jit`` (the checks read only static shapes and dtypes, so they fire while tracing).

The second half pins the one state structure with and without ``optax.inject_hyperparams``: with
``static_args=("momentum",)`` (docs/jax.md) the injected optimizer's inner state is the plain one,
also for momentum 0, and a checkpoint of either continues identically in the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")
jnp = jax.numpy

from jax_helpers import restore, save  # noqa: E402

import sai_jax  # noqa: E402

PARAMS = {"w": jnp.arange(12.0).reshape(4, 3) / 7, "b": jnp.array([0.5, -1.0, 2.0])}
GRADS = {"w": jnp.linspace(-1.0, 2.0, 12).reshape(4, 3), "b": jnp.array([1.0, 0.0, -1.0])}


def _float0_gradient() -> Any:
    # What jax.grad gives an integer input (allow_int=True): a float0 leaf.
    def loss(tree):
        return jnp.sum(tree["w"] ** 2) + jnp.sum(tree["b"]) + 0.0 * tree["steps"]

    return jax.grad(loss, allow_int=True)({**PARAMS, "steps": jnp.asarray(3)})


def _with(tree: dict, **changes: Any) -> dict:
    return {**tree, **changes}


@dataclasses.dataclass(frozen=True)
class Fault:
    desc: str
    make: Callable[[], Any]  # the optimizer (raising here: a construction error)
    grads: Callable[[], Any] | None = None  # the bad update's gradients (None: init raises)
    params: Callable[[], Any] = lambda: PARAMS  # what init gets
    update_params: Callable[[], Any] | None = None  # what the bad update gets (default: params)
    state: Callable[[], Any] | None = None  # a state made elsewhere (default: init of params)
    exception: type[Exception] = ValueError
    message: str = ""
    jit: bool = True


def _injected(**kwargs: Any) -> Any:
    return optax.inject_hyperparams(sai_jax.sgd_sai)(**kwargs)


def _plain_momentum0_state_in_injected() -> Any:
    # A plain momentum-0 state (no buffer) spliced into an injected optimizer's state, as a
    # restore that ignores the structures would do.
    injected = _injected(momentum=0.0).init(PARAMS)
    return injected._replace(inner_state=sai_jax.sgd_sai(momentum=0.0).init(PARAMS))


FAULTS = [
    # Leaves that are not real floating point.
    Fault(
        "complex gradient (its imaginary part used to be dropped silently)",
        sai_jax.sgd_sai,
        lambda: _with(GRADS, w=GRADS["w"].astype(jnp.complex64)),
        message="Invalid gradient at ['w']: dtype complex64",
    ),
    Fault(
        "complex parameter",
        sai_jax.sgd_sai,
        params=lambda: _with(PARAMS, b=PARAMS["b"].astype(jnp.complex64)),
        message="Invalid parameter at ['b']: dtype complex64",
    ),
    Fault(
        "float0 gradient of an integer input (used to be 'setting an array element with a sequence')",
        sai_jax.sgd_sai,
        _float0_gradient,
        params=lambda: _with(PARAMS, steps=jnp.zeros(())),
        message="Invalid gradient at ['steps']: dtype [('float0', 'V')]",
    ),
    Fault(
        "integer gradient",
        sai_jax.sgd_sai,
        lambda: _with(GRADS, b=jnp.ones(3, jnp.int32)),
        message="Invalid gradient at ['b']: dtype int32",
    ),
    Fault(
        "bool parameter",
        sai_jax.sgd_sai,
        params=lambda: _with(PARAMS, mask=jnp.ones(3, bool)),
        message="Invalid parameter at ['mask']: dtype bool",
    ),
    Fault(
        "complex gradient, parameter groups",
        lambda: sai_jax.sgd_sai_groups({"a": {}, "b": {"momentum": 0.0}}, {"w": "a", "b": "b"}),
        lambda: _with(GRADS, b=GRADS["b"].astype(jnp.complex64)),
        message="Invalid gradient at ['b']: dtype complex64",
    ),
    # Gradients that do not fit the parameters or the state.
    Fault(
        "gradient of the wrong shape (used to broadcast silently)",
        sai_jax.sgd_sai,
        lambda: _with(GRADS, w=GRADS["w"][:1]),
        message="Invalid gradient at ['w']: shape (1, 3), but the parameter has shape (4, 3)",
    ),
    Fault(
        "gradient of the wrong shape, momentum 0 (checked against params)",
        lambda: sai_jax.sgd_sai(momentum=0.0),
        lambda: _with(GRADS, b=GRADS["b"][:1]),
        message="Invalid gradient at ['b']: shape (1,), but the parameter has shape (3,)",
    ),
    Fault(
        "gradient tree without a leaf of the state",
        sai_jax.sgd_sai,
        lambda: {"w": GRADS["w"]},
        update_params=lambda: {"w": PARAMS["w"]},
        message="Invalid gradients: structure PyTreeDef({'w': *}) does not match",
    ),
    Fault(
        "plain momentum-0 state in an injected optimizer",
        lambda: _injected(momentum=0.0),
        lambda: GRADS,
        state=_plain_momentum0_state_in_injected,
        message='static_args=("momentum",)',
        jit=False,
    ),
    # Hyperparameters (sai_core.validate_hyperparameters refuses a passed None).
    Fault("momentum None", lambda: sai_jax.sgd_sai(momentum=None), message="Invalid momentum: None"),
    Fault("eps None", lambda: sai_jax.sgd_sai(eps=None), message="Invalid eps: None"),
    Fault("learning_rate None", lambda: sai_jax.sgd_sai(learning_rate=None), message="Invalid learning_rate: None"),
    Fault("weight_decay None", lambda: sai_jax.sgd_sai(weight_decay=None), message="Invalid weight_decay: None"),
    Fault("injected momentum None", lambda: _injected(momentum=None).init(PARAMS), message="Invalid momentum: None"),
    Fault(
        "a group's momentum None",
        lambda: sai_jax.sgd_sai_groups({"a": {"momentum": None}}, {"w": "a", "b": "a"}),
        message="groups['a']: Invalid momentum: None",
    ),
    Fault("momentum 1", lambda: sai_jax.sgd_sai(momentum=1.0), message="Invalid momentum: 1.0"),
]


def _snapshot(tree: Any) -> list[np.ndarray]:
    return [np.array(leaf) for leaf in jax.tree.leaves(tree)]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def _run_fault(fault: Fault, compiled: bool) -> None:
    if fault.grads is None:  # construction or init raises
        with pytest.raises(fault.exception) as info:
            opt = fault.make()
            opt.init(fault.params())
        assert fault.message in str(info.value)
        return
    opt = fault.make()
    params = fault.params()
    state = fault.state() if fault.state is not None else opt.init(params)
    update_params = fault.update_params() if fault.update_params is not None else params
    before_state, before_params = _snapshot(state), _snapshot(update_params)
    update = jax.jit(opt.update) if compiled else opt.update
    with pytest.raises(fault.exception) as info:
        update(fault.grads(), state, update_params)
    assert fault.message in str(info.value), str(info.value)
    # Nothing changed: the inputs are bit for bit what they were ...
    assert _same(_snapshot(state), before_state) and _same(_snapshot(update_params), before_params)
    if fault.state is not None:
        return
    # ... and a valid update from them equals one from a state that never saw the bad call.
    good = {k: v for k, v in GRADS.items() if k in params}
    good.update({k: jnp.ones_like(v) for k, v in params.items() if k not in GRADS})
    after_failure = opt.update(good, state, params)
    fresh = opt.update(good, opt.init(params), params)
    assert _same(_snapshot(after_failure), _snapshot(fresh))


@pytest.mark.parametrize("fault", FAULTS, ids=[f.desc for f in FAULTS])
def test_fault_raises_clearly_and_changes_nothing(fault):
    _run_fault(fault, compiled=False)


JIT_FAULTS = [f for f in FAULTS if f.grads is not None and f.jit]


@pytest.mark.parametrize("fault", JIT_FAULTS, ids=[f.desc for f in JIT_FAULTS])
def test_fault_raises_while_tracing_under_jit(fault):
    _run_fault(fault, compiled=True)


def test_complex_leaf_is_not_silently_made_real():
    # Before contract v2's step 0 a complex gradient lost its imaginary part: the update of a
    # complex parameter was computed from the real part only. Now neither init nor update runs.
    opt = sai_jax.sgd_sai()
    z = {"z": jnp.array([1 + 2j, 3 - 1j], jnp.complex64)}
    with pytest.raises(ValueError, match=r"Invalid parameter at \['z'\]: dtype complex64"):
        opt.init(z)
    state = opt.init({"z": jnp.ones(2)})
    with pytest.raises(ValueError, match=r"Invalid gradient at \['z'\]: dtype complex64.*real floating-point"):
        opt.update(z, state)


# ----------------------------------------------------------------------------------------------
# One state structure with and without optax.inject_hyperparams (docs/jax.md).


class _Plain:
    """sgd_sai itself: its whole state is the checkpoint."""

    def __init__(self, momentum: float) -> None:
        self.opt = sai_jax.sgd_sai(0.01, momentum=momentum, weight_decay=0.1)

    def sai_state(self, state: Any) -> Any:
        return state

    def with_sai_state(self, state: Any, sai_state: Any) -> Any:
        return sai_state


class _Injected:
    """inject_hyperparams(sgd_sai): its inner state is the optimizer's checkpoint."""

    def __init__(self, momentum: float, static: bool) -> None:
        factory = optax.inject_hyperparams(sai_jax.sgd_sai, static_args=("momentum",) if static else ())
        self.opt = factory(0.01, momentum=momentum, weight_decay=0.1)

    def sai_state(self, state: Any) -> Any:
        return state.inner_state

    def with_sai_state(self, state: Any, sai_state: Any) -> Any:
        return state._replace(inner_state=sai_state)


INTERCHANGES = [
    pytest.param(0.0, True, id="momentum 0, static_args=('momentum',)"),
    pytest.param(0.9, True, id="momentum 0.9, static_args=('momentum',)"),
    pytest.param(0.9, False, id="momentum 0.9, injected array"),
]


def _problem() -> tuple[dict, list[dict]]:
    rng = np.random.default_rng(3)
    params = {
        "w": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32),
        "b": jnp.asarray(rng.standard_normal(4), jnp.float32),
    }
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) + 0.2, p.dtype), params) for _ in range(6)]
    grads[0]["b"] = jnp.zeros(4)  # b waits for its first informative gradient (step 2)
    return params, grads


def _train(wrapper: Any, params: dict, state: Any, grads: list[dict]) -> tuple[dict, Any]:
    @jax.jit
    def step(params, state, g):
        updates, state = wrapper.opt.update(g, state, params)
        return optax.apply_updates(params, updates), state

    for g in grads:
        params, state = step(params, state, g)
    return params, state


@pytest.mark.parametrize("momentum, static", INTERCHANGES)
def test_injected_and_plain_states_have_one_structure(momentum, static):
    params, _ = _problem()
    plain, injected = _Plain(momentum), _Injected(momentum, static)
    plain_state = plain.sai_state(plain.opt.init(params))
    injected_state = injected.sai_state(injected.opt.init(params))
    assert jax.tree.structure(plain_state) == jax.tree.structure(injected_state)
    assert (plain_state[0].momentum_buffer is None) == (momentum == 0.0)


@pytest.mark.parametrize("direction", ["plain to injected", "injected to plain"])
@pytest.mark.parametrize("momentum, static", INTERCHANGES)
def test_a_checkpoint_of_one_continues_identically_in_the_other(momentum, static, direction, tmp_path):
    params0, grads = _problem()
    plain, injected = _Plain(momentum), _Injected(momentum, static)
    first, second = (plain, injected) if direction == "plain to injected" else (injected, plain)
    uninterrupted, _ = _train(first, params0, first.opt.init(params0), grads)

    params, state = _train(first, params0, first.opt.init(params0), grads[:3])
    save(tmp_path / "params.npz", params)
    save(tmp_path / "sai.npz", first.sai_state(state))
    template = second.opt.init(params0)
    restored = restore(tmp_path / "sai.npz", second.sai_state(template))
    resumed, _ = _train(
        second, restore(tmp_path / "params.npz", params0), second.with_sai_state(template, restored), grads[3:]
    )
    for name in params0:
        np.testing.assert_array_equal(np.asarray(resumed[name]), np.asarray(uninterrupted[name]), err_msg=name)


def test_injected_array_momentum_0_keeps_a_buffer_and_refuses_a_plain_checkpoint(tmp_path):
    # Without static_args the injected momentum is an array that may change later, so every leaf
    # keeps a buffer: a plain momentum-0 checkpoint does not fit (one leaf per parameter fewer).
    params0, grads = _problem()
    plain = _Plain(0.0)
    _, state = _train(plain, params0, plain.opt.init(params0), grads[:2])
    save(tmp_path / "sai.npz", state)
    injected = _Injected(0.0, static=False)
    template = injected.sai_state(injected.opt.init(params0))
    assert template[0].momentum_buffer is not None
    with pytest.raises(ValueError, match="checkpoint has 6 leaves, the template 8"):
        restore(tmp_path / "sai.npz", template)
