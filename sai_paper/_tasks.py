"""The three tasks of the paper check, none of which downloads anything.

- ``gpt``: the demo's character-level GPT (:mod:`sai_demo._gpt`, imported, not copied) on the help
  text that ships with Python (``pydoc_data.topics``); validation on fixed held-out windows.
- ``mlp``: an MLP on scikit-learn's bundled digits (8x8 images, 10 classes).
- ``cnn``: a small convolutional net on the same digits, as 1x8x8 images.

A task is deterministic given the seed: ``build(seed)`` gives the initial weights of
``torch.manual_seed(seed)`` and ``batch(seed, step)`` the training batches of that seed, so every
optimizer trained on one seed starts from the same weights and sees the same batches in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from sai_demo._gpt import GPT, VAL_WINDOWS, CharData, GPTConfig, evaluate, load_text

__all__ = ["Task", "TaskSize", "make_task"]

# The digits split is fixed (not per seed): 360 of the 1,797 images, drawn once with this seed,
# are the validation set of every run, so seeds differ only in initial weights and batch order.
_DIGITS_SPLIT_SEED = 1234
_DIGITS_VAL = 360
# The GPT's validation windows are fixed the same way (the demo's 128 windows of 64 characters).
_GPT_VAL_SEED = 1234


@dataclasses.dataclass(frozen=True)
class TaskSize:
    """How long one run of a task trains: ``steps`` optimizer steps of ``batch_size`` examples,
    evaluated on the validation set every ``eval_every`` steps (and at step 0 and the last step)."""

    steps: int
    batch_size: int
    eval_every: int


class Task:
    """One model on one data set: ``build``, ``batch``, ``loss`` and ``evaluate``.

    Attributes:
        name: short key (``gpt``, ``mlp``, ``cnn``).
        title: what the page calls it.
        size: the training length.
    """

    name: str = ""
    title: str = ""

    def __init__(self, size: TaskSize) -> None:
        self.size = size

    def build(self, seed: int) -> nn.Module:
        """A fresh model with the initial weights of ``torch.manual_seed(seed)``."""
        raise NotImplementedError

    def batch(self, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch of ``step`` (0-based) for ``seed``: the same for every optimizer."""
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """Mean cross-entropy of ``model`` on ``batch``."""
        x, y = batch
        logits = model(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """Validation loss (mean cross-entropy) and accuracy on the task's fixed validation set."""
        raise NotImplementedError

    def describe(self, model: nn.Module) -> dict[str, Any]:
        """Parameter count and tensor count of ``model``, for the page."""
        return {
            "parameters": sum(p.numel() for p in model.parameters()),
            "tensors": sum(1 for _ in model.parameters()),
        }


class GPTTask(Task):
    """The demo's GPT (2 layers here, to fit 3 seeds x 4 optimizers x 7 learning rates in the budget)."""

    name = "gpt"

    def __init__(self, size: TaskSize, n_layer: int = 2) -> None:
        super().__init__(size)
        self.data = CharData.from_text(load_text())
        self.config = GPTConfig(vocab_size=len(self.data.vocabulary), n_layer=n_layer)
        generator = torch.Generator().manual_seed(_GPT_VAL_SEED)
        high = len(self.data.val) - self.config.block_size - 1
        self.val_starts = torch.randint(0, high, (VAL_WINDOWS,), generator=generator)
        self.title = (
            f"char GPT on pydoc_data.topics ({n_layer} layers, d_model {self.config.d_model}, "
            f"{size.steps} steps of {size.batch_size}x{self.config.block_size} characters)"
        )

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return GPT(self.config)

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a few seeds per process; the task lives as long as the process
    def _starts(self, seed: int) -> torch.Tensor:
        return self.data.batch_starts(self.size.steps, self.size.batch_size, self.config.block_size, seed)

    def batch(self, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data.windows(self.data.train, self._starts(seed)[step], self.config.block_size)

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        assert isinstance(model, GPT)
        return evaluate(model, self.data, self.val_starts)


class _DigitsTask(Task):
    """scikit-learn's digits (pixels scaled to [0, 1]), a fixed split, a seeded epoch order."""

    def __init__(self, size: TaskSize) -> None:
        super().__init__(size)
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.int64)
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
        val, train = order[:_DIGITS_VAL], order[_DIGITS_VAL:]
        self.train_x, self.train_y = self.inputs(images[train]), labels[train]
        self.val_x, self.val_y = self.inputs(images[val]), labels[val]

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The model's input for ``[N, 8, 8]`` images."""
        raise NotImplementedError

    @functools.lru_cache(maxsize=8)  # noqa: B019 - see GPTTask._starts
    def _indices(self, seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        count, per_epoch = len(self.train_y), len(self.train_y) // self.size.batch_size
        epochs = -(-self.size.steps // per_epoch)
        batches = []
        for _ in range(epochs):  # a fresh permutation per epoch; the last partial batch is dropped
            order = torch.randperm(count, generator=generator)
            batches.append(order[: per_epoch * self.size.batch_size].view(per_epoch, self.size.batch_size))
        return torch.cat(batches)[: self.size.steps]

    def batch(self, seed: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = self._indices(seed)[step]
        return self.train_x[index], self.train_y[index]

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        logits = model(self.val_x)
        loss = F.cross_entropy(logits, self.val_y).item()
        return loss, (logits.argmax(-1) == self.val_y).float().mean().item()


class MLPTask(_DigitsTask):
    """A 64-128-128-10 GELU MLP."""

    name = "mlp"

    def __init__(self, size: TaskSize, hidden: int = 128) -> None:
        super().__init__(size)
        self.hidden = hidden
        self.title = f"MLP 64-{hidden}-{hidden}-10 on sklearn digits ({size.steps} steps of batch {size.batch_size})"

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), 64)

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        h = self.hidden
        return nn.Sequential(nn.Linear(64, h), nn.GELU(), nn.Linear(h, h), nn.GELU(), nn.Linear(h, 10))


class CNNTask(_DigitsTask):
    """Two 3x3 convolutions (16 and 32 channels), a 2x2 max-pool and a linear head, on 1x8x8 digits."""

    name = "cnn"

    def __init__(self, size: TaskSize) -> None:
        super().__init__(size)
        self.title = f"conv net (3x3 conv 16, 3x3 conv 32, pool, linear) on sklearn digits ({size.steps} steps of batch {size.batch_size})"

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        return images.reshape(len(images), 1, 8, 8)

    def build(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.GELU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )


_TASKS: dict[str, type[Task]] = {"gpt": GPTTask, "mlp": MLPTask, "cnn": CNNTask}


@functools.cache
def make_task(name: str, size: TaskSize, **options: Any) -> Task:
    """The task ``name`` (``gpt``, ``mlp``, ``cnn``) at ``size``; built once per process.

    Examples:
        >>> task = make_task("mlp", TaskSize(steps=3, batch_size=8, eval_every=3))
        >>> model = task.build(0)
        >>> round(task.loss(model, task.batch(0, 0)).item(), 1)  # about log(10) at initialization
        2.3
    """
    return _TASKS[name](size, **options)
