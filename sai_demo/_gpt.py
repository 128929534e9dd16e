"""A character-level GPT on the text of Python's own help topics (``pydoc_data.topics``), in torch.

Everything here is deterministic given the seed: the data split, the model's initial weights and
the sequence of training batches, so two optimizers trained with :func:`train` see exactly the same
model and the same batches.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CharData", "GPT", "GPTConfig", "TrainResult", "load_text", "optimizer_state_bytes", "train"]

# Validation windows (of block_size characters) every evaluation uses: 128 x 64 = 8,192 characters
# of the held-out 10%, the same windows for every optimizer and every evaluation.
VAL_WINDOWS = 128


def load_text() -> str:
    """The help topics that ship with every CPython (``pydoc_data.topics``), joined in key order."""
    from pydoc_data.topics import topics

    return "".join(topics[key] for key in sorted(topics))


@dataclasses.dataclass(frozen=True)
class CharData:
    """The text as integer tensors: the first 90% for training, the rest for validation."""

    train: torch.Tensor  # int64 [characters]
    val: torch.Tensor  # int64 [characters]
    vocabulary: str  # every character of the text, sorted: index -> character

    @classmethod
    def from_text(cls, text: str, val_fraction: float = 0.1) -> CharData:
        vocabulary = "".join(sorted(set(text)))
        index = {c: i for i, c in enumerate(vocabulary)}
        data = torch.tensor([index[c] for c in text], dtype=torch.int64)
        cut = int(len(data) * (1 - val_fraction))
        return cls(data[:cut], data[cut:], vocabulary)

    def batch_starts(self, steps: int, batch_size: int, block_size: int, seed: int) -> torch.Tensor:
        """The start offsets of every training batch, drawn once so that every run shares them."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, len(self.train) - block_size - 1, (steps, batch_size), generator=generator)

    def windows(self, data: torch.Tensor, starts: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-character targets, ``[len(starts), block_size]`` each."""
        offsets = starts[:, None] + torch.arange(block_size + 1)
        chunk = data[offsets]
        return chunk[:, :-1], chunk[:, 1:]


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 64


class _Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.ln1 = nn.LayerNorm(config.d_model)
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # fused: one block for SGD-SaI
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.ln2 = nn.LayerNorm(config.d_model)
        self.fc = nn.Linear(config.d_model, 4 * config.d_model)
        self.out = nn.Linear(4 * config.d_model, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        heads = [z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v)]
        attended = F.scaled_dot_product_attention(*heads, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A small decoder-only transformer (pre-LayerNorm, learned positions, untied output head)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.d_model)
        self.pos = nn.Embedding(config.block_size, config.d_model)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's per-parameter state, measured on what it holds.

    Tensors count ``numel * element_size``; a Python float (SGDSaI keeps ``S`` and ``M`` as
    floats) counts 8 bytes, the float64 it is.
    """
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
            elif isinstance(value, float):
                total += 8
    return total


@dataclasses.dataclass
class TrainResult:
    name: str
    steps: list[int]  # steps at which the validation loss was measured
    train_loss: list[float]  # one per training step
    val_loss: list[float]  # one per entry of ``steps``
    val_accuracy: float  # next-character accuracy on the validation set after training
    state_bytes: int
    param_bytes: int
    step_ms: list[float]  # forward + backward + optimizer step, per training step
    optimizer_ms: list[float]  # optimizer.step() alone, per training step
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


@torch.no_grad()
def evaluate(model: GPT, data: CharData, starts: torch.Tensor) -> tuple[float, float]:
    """Mean loss and next-character accuracy over fixed validation windows."""
    losses, correct, total = [], 0, 0
    for chunk in starts.split(64):
        x, y = data.windows(data.val, chunk, model.config.block_size)
        logits = model(x)
        losses.append(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item() * y.numel())
        correct += int((logits.argmax(-1) == y).sum())
        total += y.numel()
    return sum(losses) / total, correct / total


def train(
    make_optimizers: Mapping[str, Callable[[nn.Module], torch.optim.Optimizer]],
    data: CharData,
    config: GPTConfig,
    *,
    steps: int,
    batch_size: int,
    seed: int,
    eval_every: int,
    on_step: Callable[[], None] = lambda: None,
) -> tuple[dict[str, TrainResult], dict[str, torch.optim.Optimizer]]:
    """Trains one fresh GPT per optimizer, in lockstep, on the same batches.

    Every model starts from the weights ``torch.manual_seed(seed)`` gives; the batches are drawn
    once from ``seed``. The models take their steps alternately (step 1 of each, then step 2 of
    each, ...), so that a machine whose load changes during the run slows both alike and the
    step times stay comparable.

    Returns:
        ``(results, optimizers)``, both keyed by the names of ``make_optimizers``.
    """
    models, optimizers, results = {}, {}, {}
    for name, make in make_optimizers.items():
        torch.manual_seed(seed)
        models[name] = GPT(config)
        optimizers[name] = make(models[name])
        param_bytes = sum(p.numel() * p.element_size() for p in models[name].parameters())
        results[name] = TrainResult(name, [], [], [], math.nan, 0, param_bytes, [], [])
    starts = data.batch_starts(steps, batch_size, config.block_size, seed)
    val_generator = torch.Generator().manual_seed(seed + 1)
    val_starts = torch.randint(0, len(data.val) - config.block_size - 1, (VAL_WINDOWS,), generator=val_generator)
    for step in range(steps):
        x, y = data.windows(data.train, starts[step], config.block_size)
        for name, model in models.items():
            optimizer, result = optimizers[name], results[name]
            began = time.perf_counter()
            loss = model.loss(x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            stepping = time.perf_counter()
            optimizer.step()
            ended = time.perf_counter()
            result.step_ms.append(1e3 * (ended - began))
            result.optimizer_ms.append(1e3 * (ended - stepping))
            result.train_loss.append(loss.item())
            if (step + 1) % eval_every == 0 or step + 1 == steps:
                model.eval()
                val_loss, accuracy = evaluate(model, data, val_starts)
                model.train()
                result.steps.append(step + 1)
                result.val_loss.append(val_loss)
                result.val_accuracy = accuracy
        on_step()
    for name, optimizer in optimizers.items():
        results[name].state_bytes = optimizer_state_bytes(optimizer)
    return results, optimizers
