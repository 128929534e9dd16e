"""The protocol: which optimizers, which learning rates, which seeds; one training run; the jobs.

Every grid is fixed here, before any run, and printed on the page: seven log-spaced points half a
decade apart (``center * 10**(k/2)``, ``k = -3..3``), centred on each optimizer's documented default
learning rate, except SGD's (see ``OPTIMIZERS``). ``paper`` runs the ``sgd-sai`` grid converted with
SPEC's rule (``lr * M``, ``weight_decay / M``, ``M`` measured on each model's first batch), plus one run
at its literal defaults (``lr=1e-3``, ``weight_decay=1e-2``, unconverted).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sai_core import GsnrReport
from sai_demo._gpt import optimizer_state_bytes
from sai_torch import SGDSaI, gsnr_report

from ._tasks import Task, TaskSize, make_task

__all__ = ["OPTIMIZERS", "PROFILES", "OptimizerSpec", "Profile", "RunResult", "grid", "run_job"]


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer under test.

    Attributes:
        key: short name (``sgd-sai``, ``paper``, ``adamw``, ``sgd``).
        label: what the page and the charts call it.
        center: the learning rate the grid is centred on.
        default_lr: its documented default learning rate (the default-settings run).
        weight_decay: the weight decay of every run (its documented default).
        note: how the grid and the defaults were chosen.
    """

    key: str
    label: str
    center: float
    default_lr: float
    weight_decay: float
    note: str


OPTIMIZERS: tuple[OptimizerSpec, ...] = (
    OptimizerSpec(
        "sgd-sai",
        "SGDSaI sgd-sai",
        1e-3,
        1e-3,
        1e-2,
        "sai_torch.SGDSaI(preset='sgd-sai'), momentum 0.9, weight decay 1e-2: the defaults",
    ),
    OptimizerSpec(
        "paper",
        "SGDSaI paper",
        1e-3,
        1e-3,
        1e-2,
        "sai_torch.SGDSaI(preset='paper') at lr_paper = lr * M and weight_decay = 1e-2 / M (SPEC), "
        "M = the largest g-SNR at the first step, measured per model and seed; lr below is the sgd-sai-"
        "equivalent lr. Its default-settings run is lr 1e-3, weight decay 1e-2, unconverted",
    ),
    OptimizerSpec(
        "adamw",
        "AdamW",
        1e-3,
        1e-3,
        1e-2,
        "torch.optim.AdamW, betas (0.9, 0.999), weight decay 1e-2: the defaults",
    ),
    OptimizerSpec(
        "sgd",
        "SGD momentum 0.9",
        10**-1.5,
        1e-3,
        0.0,
        "torch.optim.SGD(momentum=0.9), no weight decay (torch's default). Its grid starts at torch's "
        "default lr 1e-3 and is centred 1.5 decades higher, at 3.2e-2, because plain SGD's usual rates are "
        "1e-2 to 1e-1; chosen before any run",
    ),
)
_BY_KEY = {spec.key: spec for spec in OPTIMIZERS}


@dataclasses.dataclass(frozen=True)
class Profile:
    """One configuration of the whole check (``full``, ``quick`` or ``smoke``)."""

    name: str
    sizes: dict[str, TaskSize]
    offsets: tuple[int, ...]  # grid points: center * 10**(offset / 2)
    seeds: tuple[int, ...]
    gpt_layers: int


PROFILES: dict[str, Profile] = {
    "full": Profile(
        "full",
        {"gpt": TaskSize(800, 16, 100), "mlp": TaskSize(1500, 32, 100), "cnn": TaskSize(1200, 32, 100)},
        (-3, -2, -1, 0, 1, 2, 3),
        (0, 1, 2),
        2,
    ),
    "quick": Profile(
        "quick",
        {"gpt": TaskSize(60, 16, 20), "mlp": TaskSize(300, 32, 50), "cnn": TaskSize(200, 32, 50)},
        (-2, 0, 2),
        (0,),
        2,
    ),
    "smoke": Profile(
        "smoke",
        {"gpt": TaskSize(6, 4, 3), "mlp": TaskSize(20, 32, 10), "cnn": TaskSize(12, 32, 6)},
        (0, 2),
        (0,),
        1,
    ),
}


def grid(spec: OptimizerSpec, offsets: Sequence[int]) -> list[float]:
    """The learning rates of ``spec``'s grid (for ``paper``: in sgd-sai units, before ``* M``).

    Examples:
        >>> [f"{lr:.2g}" for lr in grid(OPTIMIZERS[0], (-3, -2, -1, 0, 1, 2, 3))]
        ['3.2e-05', '0.0001', '0.00032', '0.001', '0.0032', '0.01', '0.032']
    """
    return [spec.center * 10 ** (k / 2) for k in offsets]


@dataclasses.dataclass
class RunResult:
    """One training run: its settings and what it measured."""

    task: str
    optimizer: str
    lr: float  # the grid lr (sgd-sai units for paper); the literal lr for paper's default run
    lr_used: float  # the lr the optimizer was given
    weight_decay_used: float
    seed: int
    default: bool  # the optimizer's default-settings run
    on_grid: bool  # part of the lr grid (paper's unconverted default run is not)
    initial_val_loss: float
    eval_steps: list[int]
    val_loss: list[float]
    val_accuracy: list[float]
    diverged: bool
    stopped_at: int | None  # the step whose training loss was non-finite (training stopped there)
    state_bytes: int
    param_bytes: int
    max_gsnr: float | None  # M, as SGDSaI froze it (None for other optimizers)
    seconds: float

    @property
    def final_loss(self) -> float:
        """Validation loss after the last step (NaN for a run stopped by a non-finite loss)."""
        return math.nan if self.stopped_at is not None else self.val_loss[-1]

    @property
    def best_loss(self) -> float:
        """Lowest validation loss over the evaluations (NaN if none was finite)."""
        finite = [v for v in self.val_loss[1:] if math.isfinite(v)]
        return min(finite) if finite else math.nan

    @property
    def final_accuracy(self) -> float:
        """Validation accuracy after the last step (NaN for a stopped run)."""
        return math.nan if self.stopped_at is not None else self.val_accuracy[-1]

    @property
    def best_accuracy(self) -> float:
        """Highest validation accuracy over the evaluations after step 0."""
        finite = [v for v in self.val_accuracy[1:] if math.isfinite(v)]
        return max(finite) if finite else math.nan


def first_max_gsnr(task: Task, model: torch.nn.Module, seed: int) -> float:
    """``M`` that SGDSaI will freeze at the first step of ``model`` on ``seed``'s first batch."""
    report = gsnr_report(model, lambda m: task.loss(m, task.batch(seed, 0)))
    assert report.max_gsnr is not None
    return report.max_gsnr


def make_optimizer(
    key: str, model: torch.nn.Module, lr: float, *, convert: Callable[[], float] | None
) -> tuple[torch.optim.Optimizer, float, float]:
    """The optimizer ``key`` for ``model`` at grid lr ``lr``: ``(optimizer, lr used, weight decay used)``.

    For ``paper``, ``convert`` returns ``M`` (SPEC: ``lr * M``, ``weight_decay / M``); ``None``
    means the literal, unconverted values.
    """
    spec = _BY_KEY[key]
    lr_used, wd_used = lr, spec.weight_decay
    if key == "sgd-sai":
        return SGDSaI(model.named_parameters(), lr=lr, weight_decay=wd_used), lr_used, wd_used
    if key == "paper":
        if convert is not None:
            max_gsnr = convert()
            lr_used, wd_used = lr * max_gsnr, wd_used / max_gsnr
        optimizer = SGDSaI(model.named_parameters(), lr=lr_used, weight_decay=wd_used, preset="paper")
        return optimizer, lr_used, wd_used
    if key == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd_used), lr_used, wd_used
    if key == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd_used), lr_used, wd_used
    raise ValueError(f"Invalid optimizer: {key!r} (expected one of {sorted(_BY_KEY)})")


def train_run(
    task: Task, key: str, lr: float, seed: int, *, default: bool, on_grid: bool = True
) -> tuple[RunResult, torch.nn.Module]:
    """Trains one fresh model of ``task`` with optimizer ``key`` at grid lr ``lr`` on ``seed``.

    Divergence: a non-finite training loss stops the run (diverged), and a run whose final
    validation loss is above its initial one (step 0, before any update) diverged too.
    """
    began = time.perf_counter()
    model = task.build(seed)
    convert = (lambda: first_max_gsnr(task, model, seed)) if on_grid else None
    optimizer, lr_used, wd_used = make_optimizer(key, model, lr, convert=convert)
    model.eval()
    initial_loss, initial_accuracy = task.evaluate(model)
    model.train()
    steps, losses, accuracies = [0], [initial_loss], [initial_accuracy]
    stopped_at = None
    size = task.size
    for step in range(size.steps):
        loss = task.loss(model, task.batch(seed, step))
        if not math.isfinite(loss.item()):
            stopped_at = step + 1
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if (step + 1) % size.eval_every == 0 or step + 1 == size.steps:
            model.eval()
            val_loss, accuracy = task.evaluate(model)
            model.train()
            steps.append(step + 1)
            losses.append(val_loss)
            accuracies.append(accuracy)
    final = losses[-1]
    diverged = stopped_at is not None or not math.isfinite(final) or final > initial_loss
    max_gsnr = None
    if isinstance(optimizer, SGDSaI):
        max_gsnr = next((s["max_gsnr"] for s in optimizer.state.values() if "max_gsnr" in s), None)
    result = RunResult(
        task.name,
        key,
        lr,
        lr_used,
        wd_used,
        seed,
        default,
        on_grid,
        initial_loss,
        steps,
        losses,
        accuracies,
        diverged,
        stopped_at,
        optimizer_state_bytes(optimizer),
        sum(p.numel() * p.element_size() for p in model.parameters()),
        max_gsnr,
        time.perf_counter() - began,
    )
    return result, model


@dataclasses.dataclass(frozen=True)
class Job:
    """The runs of one (task, seed, optimizer): every lr of its grid, plus extras."""

    task: str
    seed: int
    optimizer: str
    profile: str
    with_gsnr: bool  # also the g-SNR reports (at initialization and after the default run)

    def cost(self) -> float:
        """A rough relative cost, to start the longest jobs first."""
        return {"gpt": 10.0, "mlp": 1.0, "cnn": 2.0}[self.task] * (2 if self.optimizer == "paper" else 1)


def jobs(profile: Profile, tasks: Sequence[str]) -> list[Job]:
    """Every job of ``profile`` on ``tasks``, the most expensive first."""
    found = [
        Job(task, seed, spec.key, profile.name, with_gsnr=(seed == profile.seeds[0] and spec.key == "sgd-sai"))
        for task in tasks
        for seed in profile.seeds
        for spec in OPTIMIZERS
    ]
    return sorted(found, key=lambda job: -job.cost())


def load_task(profile: Profile, name: str) -> Task:
    """The task ``name`` at ``profile``'s size."""
    options = {"n_layer": profile.gpt_layers} if name == "gpt" else {}
    return make_task(name, profile.sizes[name], **options)


def _reports(task: Task, seed: int, trained: torch.nn.Module) -> dict[str, GsnrReport]:
    """The g-SNR per tensor of a fresh model on the first batch and of ``trained`` on the last one."""
    last = task.size.steps - 1
    return {
        "init": gsnr_report(task.build(seed), lambda m: task.loss(m, task.batch(seed, 0))),
        "trained": gsnr_report(trained, lambda m: task.loss(m, task.batch(seed, last))),
    }


def run_job(job: Job, threads: int = 1) -> dict[str, Any]:
    """Runs ``job`` (in a worker process): its results, and the g-SNR reports if asked.

    Returns:
        ``{"runs": [RunResult, ...], "gsnr": {"init": GsnrReport, "trained": GsnrReport} | None,
        "title": str, "describe": dict, "pid": int}``.
    """
    torch.set_num_threads(threads)
    profile = PROFILES[job.profile]
    task = load_task(profile, job.task)
    spec = _BY_KEY[job.optimizer]
    runs, gsnr = [], None
    rates = grid(spec, profile.offsets)
    for lr in rates:
        is_default = math.isclose(lr, spec.default_lr, rel_tol=1e-9)
        result, model = train_run(task, job.optimizer, lr, job.seed, default=is_default and job.optimizer != "paper")
        runs.append(result)
        if job.with_gsnr and is_default:
            gsnr = _reports(task, job.seed, model)
    if job.optimizer == "paper":  # the literal defaults, unconverted
        result, _ = train_run(task, "paper", spec.default_lr, job.seed, default=True, on_grid=False)
        runs.append(result)
    elif not any(math.isclose(lr, spec.default_lr, rel_tol=1e-9) for lr in rates):  # a short grid without it
        result, _ = train_run(task, job.optimizer, spec.default_lr, job.seed, default=True, on_grid=False)
        runs.append(result)
    return {
        "runs": runs,
        "gsnr": gsnr,
        "title": task.title,
        "describe": task.describe(task.build(0)),
        "pid": os.getpid(),
    }
