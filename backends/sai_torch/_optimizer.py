"""``SGDSaI``: the torch.optim shell around :func:`sai_torch.sgd_sai` and the g-SNR initialization."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.optimizer import Optimizer, ParamsT

from sai_core import (
    DEFAULT_HYPERPARAMETERS,
    DEFAULT_PRESET,
    KNOB_VALUES,
    NonFiniteGradientWarning,
    SaIConfig,
    resolve_config,
    validate_hyperparameters,
)

from . import _checkpoints, _engines
from ._functional import sgd_sai
from ._gsnr import initial_scales

__all__ = ["SGDSaI"]

Tensor = torch.Tensor

# Group entries added after the first release get their default here when an old checkpoint or
# pickle is loaded (torch.optim's __setstate__ convention).
_FLAG_DEFAULTS: dict[str, Any] = {"maximize": False, "foreach": None, "fused": None}


def _validate_lr(lr: Any) -> None:
    if isinstance(lr, Tensor):
        if lr.numel() != 1 or not lr.dtype.is_floating_point:
            raise ValueError(
                f"Invalid lr: a tensor lr must be a real floating tensor with one element, "
                f"got shape {tuple(lr.shape)} and dtype {lr.dtype}"
            )
        if lr.requires_grad:
            raise ValueError("Invalid lr: a tensor lr must not require grad (differentiable lr is not supported)")
        # Read once at construction (not per step): a negative or non-finite lr is a bug.
        value = float(lr.detach().to("cpu", torch.float64))
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"Invalid lr: {lr!r} (must satisfy lr >= 0)")
        return
    validate_hyperparameters(lr=lr)


def _validate_flag(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (must be None, True or False)")


# torch.optim keywords accepted for compatibility with code written for torch.optim, whose only
# supported value is False, and why True is refused (docs/torch.md, "torch.optim keywords").
_FALSE_ONLY_FLAGS: dict[str, str] = {
    "differentiable": (
        "step() runs under torch.no_grad and each tensor's scale is a Python float fixed at its first "
        "gradient, so autograd cannot differentiate through the update"
    ),
    "capturable": (
        "a step that initializes a tensor reads its g-SNR on the host, which CUDA graph capture "
        "forbids (steady steps already do no host sync without it)"
    ),
}


def _validate_false_only(name: str, value: Any) -> None:
    if value is not False:
        raise ValueError(f"Invalid {name}: {value!r} (SGDSaI supports only {name}=False: {_FALSE_ONLY_FLAGS[name]})")


# The keys every parameter group holds (torch.optim fills them from ``defaults`` when a group is
# added; a group edited afterwards, or loaded from a foreign checkpoint, may lack one).
_GROUP_KEYS = ("lr", "momentum", "weight_decay", "eps", "maximize", "foreach", "fused")


def _validate_group(group: dict[str, Any], *, check_lr: bool = True, index: int | None = None) -> None:
    """Raises ``ValueError`` naming the key (and the group's index) for a missing or invalid entry."""
    missing = [key for key in _GROUP_KEYS if key not in group]
    if missing:
        where = "a parameter group" if index is None else f"param_groups[{index}]"
        raise ValueError(
            f"Invalid {where}: no value for {', '.join(map(repr, missing))} (every group holds "
            f"{list(_GROUP_KEYS)}; put the key back, e.g. from opt.defaults)"
        )
    if check_lr:
        _validate_lr(group["lr"])
    validate_hyperparameters(
        momentum=group["momentum"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"]
    )
    _validate_flag("foreach", group["foreach"])
    _validate_flag("fused", group["fused"])
    for name in _FALSE_ONLY_FLAGS.keys() & group.keys():  # a group copied from a torch.optim optimizer
        _validate_false_only(name, group[name])
    if group["foreach"] and group["fused"]:
        raise ValueError("Invalid foreach/fused: foreach=True and fused=True cannot be combined")


@dataclasses.dataclass
class _GroupWork:
    """One parameter group's tensors that have a gradient this step, and their state.

    ``states[i]`` is ``None`` for a tensor that is not initialized yet (it has no state entry: one
    is created only when it initializes); ``scales[i]`` is then ``None`` too.
    """

    group: dict[str, Any]
    params: list[Tensor]
    grads: list[Tensor]
    states: list[dict[str, Any] | None]
    momentum_buffers: list[Tensor | None]
    scales: list[float | None]

    def drop_uninitialized(self) -> None:
        """Removes the tensors still without a scale: they are left untouched this step."""
        keep = [i for i, scale in enumerate(self.scales) if scale is not None]
        if len(keep) == len(self.scales):
            return
        for name in ("params", "grads", "states", "momentum_buffers", "scales"):
            column = getattr(self, name)
            setattr(self, name, [column[i] for i in keep])


class SGDSaI(Optimizer):
    r"""SGD with momentum whose step is scaled, per tensor, by its gradient SNR at initialization.

    SGD-SaI (arXiv 2412.11768) as specified in ``docs/spec.md``. For every parameter ``theta``
    with a gradient ``g`` at this step (``g <- -g`` when ``maximize``; a parameter without a
    gradient is left untouched), with ``n`` its number of elements:

    .. math::

        G &= \frac{\lVert g \rVert_2}{\operatorname{std}(g) + \epsilon}
            \quad\text{at the tensor's first informative gradient } (\sqrt{n} \text{ if } n = 1
            \text{ or } g \text{ is constant}) \\
        S &= G \quad (\text{preset "paper": } S = G / M, \ M = \max G
            \text{ over the tensors initialized first, all groups}) \\
        m &\leftarrow \mu m + (1 - \mu) g \quad (m = g \text{ at initialization}) \\
        \theta &\leftarrow \theta - \eta \lambda \theta - \eta S m

    ``S`` and ``M`` are frozen: a tensor initialized later uses the same ``M``. A first gradient
    that is not informative (a NaN or inf element, or, with ``zero_gradient="defer"``, all zeros)
    leaves the tensor uninitialized and untouched that step, as if it had no gradient; a
    non-finite one warns once per tensor (:class:`sai_core.NonFiniteGradientWarning`, naming its
    index, name and shape). A tensor with no elements is never initialized and never changed.
    State per tensor: ``momentum_buffer`` (none when ``momentum == 0``), ``scale`` (``S``) and
    ``max_gsnr`` (``M``), the last two as Python floats, so ``state_dict`` restores them exactly
    and a steady step reads no value from the device.

    The default preset ``"sgd-sai"`` is the authors' released algorithm (no max-normalisation):
    a tensor's step is ``lr * G``, about ``lr * sqrt(n)``, times its momentum, so learning rates
    and weight decays from the paper, the published ports and (roughly) AdamW mean what they mean
    there. Under ``"paper"`` the same run needs ``lr_paper = lr * M`` and
    ``weight_decay_paper = weight_decay / M`` (``M``, the largest first g-SNR, is
    ``opt.state[p]["max_gsnr"]`` under every preset; 256 for a 0.8M-parameter GPT, where
    ``lr=1e-2`` under ``"paper"`` is ``3.9e-5`` in the authors' units, too small to train).

    Args:
        params: parameters, ``model.named_parameters()`` (names then appear in warnings), or
            parameter groups (dicts whose ``lr``, ``momentum``, ``weight_decay``, ``eps``,
            ``maximize``, ``foreach``, ``fused`` override the defaults).
        lr: learning rate ``eta >= 0`` (default ``1e-3``); a float or a 1-element tensor
            (schedulers work with both).
        momentum: ``mu`` in ``[0, 1)`` (default ``0.9``); ``0`` stores no buffer.
        weight_decay: decoupled weight decay ``lambda >= 0`` (default ``1e-2``), applied with this
            step's ``lr`` and not scaled by ``S``.
        eps: g-SNR denominator guard ``>= 0`` (default ``1e-8``).
        preset: ``"sgd-sai"`` (default), ``"paper"`` (max-normalised, Algorithm 1: convert ``lr``
            and ``weight_decay`` as above) or a published port's behaviour: ``"sgd-sai-1.0.3"``,
            ``"sgd-sai-1.0.4"``, ``"sgd-sai-1.1.0"``, ``"pytorch-optimizer-4"``.
        maximize: ascend the objective instead of descending it.
        foreach: multi-tensor path (``None``: yes on every device; ``False``: the per-tensor path
            built on ``sai_core``'s functions).
        fused: the compiled single-pass kernel (``torch.compile``; compiles on first use).
        capturable: accepted for torch.optim compatibility; only ``False`` (CUDA graph capture
            is not supported: the step that initializes a tensor reads its g-SNR on the host).
        differentiable: accepted for torch.optim compatibility; only ``False`` (the step is not
            differentiable: it runs under ``torch.no_grad`` with host-side scales).
        **knob_overrides: ``snr``, ``normalize``, ``std_correction``, ``degenerate``,
            ``vector_rule``, ``momentum_init``, ``zero_gradient``, overriding the preset's values.

    Raises:
        ValueError: an invalid hyperparameter, preset or knob value, ``capturable`` or
            ``differentiable`` other than ``False`` (also in a parameter group), or a parameter
            that is not real floating point (the message names it); at ``step()``, a group whose
            value was changed to an invalid one or that lacks a key.
        TypeError: a keyword that is neither an argument nor a knob.
        RuntimeError: at ``step()``, a gradient it cannot use (sparse, integer, bool, complex) or a
            tensor it cannot initialize (a meta tensor). A step that raises changes nothing.

    Examples:
        >>> import torch
        >>> from sai_torch import SGDSaI
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Linear(4, 2)
        >>> opt = SGDSaI(model.parameters())
        >>> loss = model(torch.randn(8, 4)).square().mean()
        >>> loss.backward()
        >>> opt.step()
        >>> [round(opt.state[p]["scale"], 4) for p in model.parameters()]  # S = G = ||g|| / std(g)
        [2.6844, 25.1726]
        >>> round(opt.state[model.weight]["max_gsnr"], 4)  # M; preset="paper" would use S = G / M
        25.1726
        >>> opt.zero_grad()
    """

    def __init__(
        self,
        params: ParamsT,
        lr: float | Tensor = DEFAULT_HYPERPARAMETERS["lr"],
        momentum: float = DEFAULT_HYPERPARAMETERS["momentum"],
        weight_decay: float = DEFAULT_HYPERPARAMETERS["weight_decay"],
        eps: float = DEFAULT_HYPERPARAMETERS["eps"],
        *,
        preset: str = DEFAULT_PRESET,
        maximize: bool = DEFAULT_HYPERPARAMETERS["maximize"],
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        **knob_overrides: Any,
    ) -> None:
        self.config: SaIConfig = resolve_config(preset, **knob_overrides)
        _validate_false_only("capturable", capturable)
        _validate_false_only("differentiable", differentiable)
        # Tensors whose non-finite first gradient was already reported (by id; not optimizer
        # state: a restored optimizer may warn once more).
        self._warned_nonfinite: set[int] = set()
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eps": eps,
            "maximize": maximize,
            "foreach": foreach,
            "fused": fused,
        }
        _validate_group(defaults)
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Adds a group (also after the first step: its tensors initialize at their first
        informative gradient, with the frozen ``M``), validating its hyperparameters."""
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _validate_group(group)
            for p in group["params"]:
                if torch.is_complex(p):
                    raise ValueError(
                        f"Invalid params: a complex parameter of shape {tuple(p.shape)}; the g-SNR is "
                        "defined for real tensors (optimize torch.view_as_real(p) instead)"
                    )
                if not p.is_floating_point():
                    raise ValueError(
                        f"Invalid params: {self._describe(p)} has dtype {p.dtype}; SGDSaI updates "
                        "floating-point tensors only (an integer or bool tensor cannot take a fractional step)"
                    )
            _engines.check_added(self, group["params"], self._describe)  # FSDP1 / DeepSpeed: refused
        except ValueError:
            self.param_groups.pop()
            raise

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["config"] = self.config
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Unpickling brings "config" in state; load_state_dict keeps the existing attribute; a
        # pickle from before knobs existed gets the paper's (the only behaviour there was then).
        self.__dict__.setdefault("config", resolve_config("paper"))
        self.__dict__.setdefault("_warned_nonfinite", set())
        for group in self.param_groups:
            for name, default in _FLAG_DEFAULTS.items():
                group.setdefault(name, default)

    def state_dict(self) -> dict[str, Any]:
        """torch.optim's state dict plus ``"sai_config"``: the preset and knob values it was made with."""
        state = super().state_dict()
        state["sai_config"] = {"preset": self.config.preset, **self.config.knobs()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores buffers, scales and ``M`` exactly.

        Refuses (``ValueError``, nothing loaded) a checkpoint made with other knobs, one made
        before a knob existed (``zero_gradient`` is new in contract v2), and one whose tensor
        state holds a momentum buffer without a scale or a scale without ``M``. A published port's
        checkpoint is converted (or refused) and another optimizer's refused: ``_checkpoints``.
        """
        state_dict = _checkpoints.prepare_state_dict(self, state_dict)
        saved = state_dict.get("sai_config")
        if saved is not None:
            missing = [name for name in KNOB_VALUES if name not in saved]
            if missing:
                raise ValueError(
                    f"Invalid state_dict: its sai_config has no value for the knob(s) {missing}: it was "
                    "saved by an older sai_torch (0.1.0, before contract v2), whose behaviour for an "
                    "all-zero first gradient was zero_gradient='degenerate'. Add the value the run "
                    "should continue with to state_dict['sai_config'] (and build the optimizer with "
                    f"it) to load it; this optimizer has {self.config.knobs()} (preset "
                    f"{self.config.preset!r})"
                )
            saved_knobs = {name: saved[name] for name in KNOB_VALUES}
            if saved_knobs != self.config.knobs():
                raise ValueError(
                    f"Invalid state_dict: saved with knobs {saved_knobs} (preset {saved.get('preset')!r}), "
                    f"this optimizer has {self.config.knobs()} (preset {self.config.preset!r})"
                )
        for index, entry in state_dict.get("state", {}).items():
            if "momentum_buffer" in entry and "scale" not in entry:
                raise ValueError(
                    f"Invalid state_dict: parameter {index} has a momentum buffer but no scale; a "
                    "tensor's scale is fixed at its first gradient and cannot be recomputed later"
                )
            if ("scale" in entry) != ("max_gsnr" in entry):
                raise ValueError(
                    f"Invalid state_dict: parameter {index} has {'a scale' if 'scale' in entry else 'max_gsnr'} "
                    f"but no {'max_gsnr' if 'scale' in entry else 'scale'}; both are set at initialization"
                )
        super().load_state_dict(state_dict)

    def _frozen_max_gsnr(self) -> float | None:
        for state in self.state.values():
            if "max_gsnr" in state:
                return state["max_gsnr"]
        return None

    def _describe(self, param: Tensor) -> str:
        """How warnings and errors name a tensor: its index across all groups (as in
        ``state_dict``), its name where the optimizer was given one, and its shape."""
        index = 0
        for group in self.param_groups:
            names = group.get("param_names")
            for position, p in enumerate(group["params"]):
                if p is param:
                    name = f" {names[position]!r}" if names else ""
                    return f"parameter {index}{name} (shape {tuple(param.shape)})"
                index += 1
        return f"a parameter of shape {tuple(param.shape)}"

    def _collect_group(self, group: dict[str, Any], index: int) -> _GroupWork:
        """The group's tensors that have a gradient, with their state (validated on the way).

        Zero-size tensors are left out: they are never initialized and never change. Nothing is
        written here, so a step that raises during collection changes no state.
        """
        _validate_group(group, check_lr=not isinstance(group.get("lr"), Tensor), index=index)
        params = [p for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        # This runs at every step: look at the distinct layouts and dtypes (sets built in one pass),
        # and walk the tensors one by one only to name the one that is refused.
        layouts, dtypes = {g.layout for g in grads}, {g.dtype for g in grads}
        if layouts - {torch.strided} or not all(d.is_floating_point for d in dtypes):
            self._refuse_gradients(params, grads)
        if 0 in map(Tensor.numel, params):
            params = [p for p in params if p.numel() != 0]
            grads = [p.grad for p in params]
        states = [self.state.get(p) for p in params]
        return _GroupWork(
            group,
            params,
            grads,
            states,
            [None if state is None else state.get("momentum_buffer") for state in states],
            [None if state is None else state.get("scale") for state in states],
        )

    def _refuse_gradients(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Raises for the first gradient SGDSaI cannot use (sparse, complex, not floating point)."""
        for p, grad in zip(params, grads):
            if grad.is_sparse:
                raise RuntimeError(
                    f"SGDSaI does not support sparse gradients ({self._describe(p)}); "
                    "use a dense gradient (e.g. nn.Embedding(sparse=False))"
                )
            if grad.is_complex():
                raise RuntimeError(
                    f"SGDSaI does not support complex gradients ({self._describe(p)}); "
                    "the g-SNR is defined for real tensors: optimize torch.view_as_real(p) instead"
                )
            if not grad.dtype.is_floating_point:
                raise RuntimeError(
                    f"SGDSaI needs floating-point gradients; {self._describe(p)} has a {grad.dtype} gradient"
                )

    def _refuse_uninitializable(self, params: list[Tensor], grads: list[Tensor]) -> None:
        """Raises, before anything is written, for a tensor that cannot be initialized now.

        Checked only for tensors still waiting for their scale (none in a steady step, so this
        costs nothing there): a parameter that is not floating point (one put into
        ``param_groups`` by hand, past ``add_param_group``'s check) and a meta tensor.
        """
        for p, grad in zip(params, grads):
            if not p.is_floating_point():
                raise RuntimeError(
                    f"SGDSaI updates floating-point tensors only; {self._describe(p)} has dtype {p.dtype}"
                )
            if p.is_meta or grad.is_meta:
                raise RuntimeError(
                    f"SGDSaI cannot initialize {self._describe(p)} on the meta device: its scale is a "
                    "statistic of the gradient's values, which a meta tensor does not have. Materialize "
                    "the parameters (e.g. module.to_empty(device=...) and initialize them) before the "
                    "first step; a tensor whose scale is known (state loaded) steps shape-only on meta"
                )

    def _initialize(self, work: list[_GroupWork]) -> None:
        """Initializes every tensor at its first informative gradient; the others sit this step out.

        Computes ``S`` (and, at the first step that initializes any tensor, ``M``) with one host
        transfer per device; warns once per tensor about a non-finite first gradient.
        """
        pending = [(w, i) for w in work for i, scale in enumerate(w.scales) if scale is None]
        if not pending:
            return
        self._refuse_uninitializable([w.params[i] for w, i in pending], [w.grads[i] for w, i in pending])
        _engines.check_initializing(self, [w.params[i] for w, i in pending], self._describe)
        init = initial_scales(
            [w.grads[i] for w, i in pending],
            [w.group["eps"] for w, _ in pending],
            max_gsnr=self._frozen_max_gsnr(),
            config=self.config,
        )
        for (w, i), scale, nonfinite in zip(pending, init.scales, init.nonfinite):
            param = w.params[i]
            if scale is None:
                if nonfinite and id(param) not in self._warned_nonfinite:
                    self._warned_nonfinite.add(id(param))
                    # stacklevel: warn <- _initialize <- step <- no_grad <- torch's step hook <- caller
                    warnings.warn(
                        NonFiniteGradientWarning.message(self._describe(param)), NonFiniteGradientWarning, stacklevel=5
                    )
                continue
            state = self.state[param]
            state["scale"] = scale
            state["max_gsnr"] = init.max_gsnr
            w.states[i] = state
            w.scales[i] = scale
        for w in work:
            w.drop_uninitialized()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Performs one optimization step.

        Args:
            closure: re-evaluates the model and returns the loss; called exactly once.

        Returns:
            The closure's loss, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = [self._collect_group(group, index) for index, group in enumerate(self.param_groups)]
        self._initialize(work)
        for w in work:
            if not w.params:
                continue
            group, lr = w.group, w.group["lr"]
            sgd_sai(
                w.params,
                w.grads,
                w.momentum_buffers,
                w.scales,  # type: ignore[arg-type]  # every remaining tensor has its scale
                # NumPy scalars become Python floats: they would turn torch expressions into arrays.
                lr=lr if isinstance(lr, Tensor) else float(lr),
                momentum=float(group["momentum"]),
                weight_decay=float(group["weight_decay"]),
                maximize=group["maximize"],
                momentum_init=self.config.momentum_init,
                foreach=group["foreach"],
                fused=group["fused"],
            )
            for state, buffer in zip(w.states, w.momentum_buffers):
                if buffer is not None and "momentum_buffer" not in state:  # type: ignore[operator]
                    state["momentum_buffer"] = buffer  # type: ignore[index]  # created by this step
        return loss
