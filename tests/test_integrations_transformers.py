"""``sai_torch.SGDSaI`` inside a Hugging Face ``transformers.Trainer``.

A tiny GPT-2 built from a config (nothing is downloaded; the Hub is switched to offline mode) is
trained by ``Trainer(optimizers=(SGDSaI(...), scheduler))``. The run is resumed from the
Trainer's own mid-epoch checkpoint (``optimizer.pt``, ``scheduler.pt``, the RNG and data-order
state) and must equal the uninterrupted run bit for bit: the scales and ``M`` travel in the
optimizer state. A control run resumed without that state shows that it is what makes the
difference. docs/torch.md ("Hugging Face Trainer") shows the same setup.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers.Trainer refuses to run without it
import torch
from torch_helpers import one_torch_thread

from sai_torch import SGDSaI

MAX_STEPS = 6  # 4 batches per epoch: the checkpoint at step 3 is mid-epoch
SAVE_STEPS = 3
BATCH = 4


@pytest.fixture(scope="module", autouse=True)
def hub_offline_one_thread() -> Iterator[None]:
    """No test here may reach the Hugging Face Hub: offline mode, for the env and the constant
    ``huggingface_hub`` read at import. And one intra-op thread: the fastest for these tiny
    tensors, and immune to OpenMP spin-waiting when other processes share the 2 cores (10-100x)."""
    import huggingface_hub.constants

    with one_torch_thread(), pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


def _tiny_gpt2() -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=32,
        n_positions=16,
        n_embd=16,
        n_layer=1,
        n_head=2,
        bos_token_id=0,
        eos_token_id=0,
        # No dropout: the comparison then does not rest on the checkpoint's RNG state.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config)


def _dataset() -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 32, (16, 8), generator=generator)
    return [{"input_ids": row, "labels": row} for row in tokens]


@dataclasses.dataclass
class _Run:
    model: Any
    optimizer: SGDSaI
    output_dir: Path


def _train(output_dir: Path, resume_from: Path | None = None) -> _Run:
    """``MAX_STEPS`` steps of the Trainer with SGDSaI and a warmup-then-linear schedule."""
    from transformers import Trainer, TrainingArguments, get_linear_schedule_with_warmup

    model = _tiny_gpt2()
    optimizer = SGDSaI(model.named_parameters(), lr=1e-2)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=2, num_training_steps=MAX_STEPS)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=MAX_STEPS,
        per_device_train_batch_size=BATCH,
        save_strategy="steps",
        save_steps=SAVE_STEPS,
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=_dataset(), optimizers=(optimizer, scheduler))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    return _Run(model, optimizer, output_dir)


def _max_abs_difference(a: Any, b: Any) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


def _tensor_state(run: _Run) -> list[dict[str, Any]]:
    return [run.optimizer.state[p] for p in run.model.parameters()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> _Run:
    return _train(tmp_path_factory.mktemp("uninterrupted"))


def test_trainer_steps_sgdsai_and_saves_its_state(uninterrupted: _Run) -> None:
    # Every parameter (GPT-2's tied embedding once) was initialized by the Trainer's first step.
    names = [name for name, _ in uninterrupted.model.named_parameters()]
    states = _tensor_state(uninterrupted)
    assert all("scale" in s and "momentum_buffer" in s for s in states), names
    assert {s["max_gsnr"] for s in states} == {max(s["scale"] for s in states)}  # one M, preset sgd-sai
    # The scheduler drove the optimizer: linear decay to 0 at MAX_STEPS.
    assert uninterrupted.optimizer.param_groups[0]["lr"] == 0.0
    saved = torch.load(uninterrupted.output_dir / f"checkpoint-{SAVE_STEPS}" / "optimizer.pt", weights_only=True)
    assert saved["sai_config"]["preset"] == "sgd-sai"
    assert len(saved["state"]) == len(names) and all("scale" in s for s in saved["state"].values())


def test_resume_from_trainer_checkpoint_equals_uninterrupted_run(uninterrupted: _Run, tmp_path: Path) -> None:
    checkpoint = uninterrupted.output_dir / f"checkpoint-{SAVE_STEPS}"
    resumed = _train(tmp_path, resume_from=checkpoint)
    difference = _max_abs_difference(resumed.model, uninterrupted.model)
    # Exact: the same float32 operations on the same values in the same order.
    assert difference == 0.0, f"resumed run differs from the uninterrupted one by {difference:.3e}"
    for got, want in zip(_tensor_state(resumed), _tensor_state(uninterrupted)):
        assert (got["scale"], got["max_gsnr"]) == (want["scale"], want["max_gsnr"])
        assert torch.equal(got["momentum_buffer"], want["momentum_buffer"])
    # The comparison is not vacuous: the resumed run trained past the checkpoint.
    at_checkpoint = _tiny_gpt2()
    from safetensors.torch import load_file

    at_checkpoint.load_state_dict(load_file(checkpoint / "model.safetensors"), strict=False)
    assert _max_abs_difference(at_checkpoint, uninterrupted.model) > 0.0


def test_resume_without_the_optimizer_state_is_a_different_run(uninterrupted: _Run, tmp_path: Path) -> None:
    # Control: the same checkpoint with the per-tensor state (scales, M, buffers) removed and the
    # groups (lr) kept. The scales are then recomputed from step 4's gradients: another run.
    source = uninterrupted.output_dir / f"checkpoint-{SAVE_STEPS}"
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for path in source.iterdir():
        if path.is_file():
            (stripped / path.name).write_bytes(path.read_bytes())
    state = torch.load(stripped / "optimizer.pt", weights_only=True)
    torch.save({**state, "state": {}}, stripped / "optimizer.pt")
    control = _train(tmp_path / "out", resume_from=stripped)
    assert _max_abs_difference(control.model, uninterrupted.model) > 0.0
    assert [s["scale"] for s in _tensor_state(control)] != [s["scale"] for s in _tensor_state(uninterrupted)]


def test_trainer_builds_sgdsai_from_optimizer_cls_and_kwargs(tmp_path: Path) -> None:
    # The other way in: the Trainer builds SGDSaI over its own decay / no-decay groups and its
    # own scheduler (docs/torch.md). Its decay comes from TrainingArguments.weight_decay.
    from transformers import Trainer, TrainingArguments

    model = _tiny_gpt2()
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=BATCH,
        learning_rate=1e-2,
        weight_decay=0.05,
        warmup_steps=1,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=_dataset(), optimizer_cls_and_kwargs=(SGDSaI, {"lr": args.learning_rate})
    )
    trainer.train()
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper
    assert isinstance(optimizer, SGDSaI)
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert decay["initial_lr"] == 1e-2 and no_decay["lr"] == 0.0  # the Trainer's linear schedule ran out
    assert all(p.ndim >= 2 for p in decay["params"]) and all("scale" in optimizer.state[p] for p in model.parameters())
