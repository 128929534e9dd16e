"""``sai_torch.SGDSaI`` from a PyTorch Lightning ``LightningModule.configure_optimizers``.

A small MLP is trained by ``lightning.Trainer`` with SGDSaI and a per-step ``StepLR`` schedule;
the run is resumed from the checkpoint Lightning's ``ModelCheckpoint`` wrote at the end of the
first epoch (``trainer.fit(..., ckpt_path=...)``) and must equal the uninterrupted run bit for bit:
the scales and ``M`` travel in ``optimizer_states``. A control resumed from the same checkpoint
with that state removed differs. docs/torch.md ("PyTorch Lightning") shows the same module.

The checkpoint is taken at an epoch boundary: resuming in the middle of an epoch restarts
Lightning's dataloader unless it is stateful, which is Lightning's behaviour, not the optimizer's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")
import lightning as L
import torch
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch_helpers import one_torch_thread

from sai_torch import SGDSaI

# Lightning's own notices about this test's layout (a new checkpoint folder per run) and its
# internal use of a deprecated torch API; they say nothing about the optimizer.
pytestmark = [
    pytest.mark.filterwarnings("ignore:The dirpath has changed"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*is deprecated"),
]

EPOCHS = 2
BATCHES_PER_EPOCH = 4


class Regressor(L.LightningModule):
    """A two-layer MLP regressor whose optimizer is SGDSaI with a per-step schedule."""

    def __init__(self, lr: float = 1e-2) -> None:
        super().__init__()
        self.lr = lr
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.GELU(), torch.nn.Linear(32, 1))

    def training_step(self, batch: tuple[Any, Any], batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = SGDSaI(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def _loader() -> torch.utils.data.DataLoader[Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4 * BATCHES_PER_EPOCH, 4, generator=generator)
    y = torch.sin(2.0 * x[:, :1]) + x[:, 1:2] * x[:, 2:3]
    # Unshuffled: the order of epoch 2 must not depend on the global RNG's state (not checkpointed).
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4, shuffle=False)


def _fit(checkpoint_dir: Path, ckpt_path: Path | None = None) -> tuple[Regressor, Any]:
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    module = Regressor()
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=checkpoint_dir, filename="{epoch}", save_top_k=-1, every_n_epochs=1)],
    )
    trainer.fit(module, _loader(), ckpt_path=ckpt_path)
    return module, trainer


def _max_abs_difference(a: Regressor, b: Regressor) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters()))


def _tensor_state(module: Regressor, trainer: Any) -> list[dict[str, Any]]:
    (optimizer,) = trainer.optimizers
    assert isinstance(optimizer, SGDSaI)
    return [optimizer.state[p] for p in module.parameters()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Regressor, Any, Path]:
    checkpoint_dir = tmp_path_factory.mktemp("lightning")
    module, trainer = _fit(checkpoint_dir)
    return module, trainer, checkpoint_dir


def test_configure_optimizers_trains_with_sgdsai_and_its_schedule(uninterrupted: tuple[Regressor, Any, Path]) -> None:
    module, trainer, checkpoint_dir = uninterrupted
    assert trainer.global_step == EPOCHS * BATCHES_PER_EPOCH
    states = _tensor_state(module, trainer)
    assert all("scale" in s and "momentum_buffer" in s for s in states)
    # StepLR(step_size=3, gamma=0.5) stepped every batch: 8 steps halve the lr twice.
    assert trainer.optimizers[0].param_groups[0]["lr"] == 1e-2 * 0.5**2
    saved = torch.load(checkpoint_dir / "epoch=0.ckpt", weights_only=True)["optimizer_states"][0]
    assert saved["sai_config"]["preset"] == "sgd-sai"
    assert [s["scale"] for s in saved["state"].values()] == [s["scale"] for s in states]  # fixed at step 1


def test_resume_from_lightning_checkpoint_equals_uninterrupted_run(
    uninterrupted: tuple[Regressor, Any, Path], tmp_path: Path
) -> None:
    module, trainer, checkpoint_dir = uninterrupted
    resumed, resumed_trainer = _fit(tmp_path, ckpt_path=checkpoint_dir / "epoch=0.ckpt")
    assert resumed_trainer.global_step == EPOCHS * BATCHES_PER_EPOCH
    difference = _max_abs_difference(resumed, module)
    # Exact: the same float32 operations on the same values in the same order.
    assert difference == 0.0, f"resumed run differs from the uninterrupted one by {difference:.3e}"
    for got, want in zip(_tensor_state(resumed, resumed_trainer), _tensor_state(module, trainer)):
        assert (got["scale"], got["max_gsnr"]) == (want["scale"], want["max_gsnr"])
        assert torch.equal(got["momentum_buffer"], want["momentum_buffer"])
    # Not vacuous: the second epoch moved the weights away from the checkpoint's.
    at_checkpoint = torch.load(checkpoint_dir / "epoch=0.ckpt", weights_only=True)["state_dict"]
    assert any(not torch.equal(at_checkpoint[name], p) for name, p in module.named_parameters())


def test_resume_without_the_optimizer_state_is_a_different_run(
    uninterrupted: tuple[Regressor, Any, Path], tmp_path: Path
) -> None:
    # Control: the checkpoint with the per-tensor state (scales, M, buffers) removed, groups kept:
    # the scales are recomputed from the first gradient of epoch 2, which is another run.
    module, trainer, checkpoint_dir = uninterrupted
    checkpoint = torch.load(checkpoint_dir / "epoch=0.ckpt", weights_only=True)
    checkpoint["optimizer_states"][0]["state"] = {}
    stripped = tmp_path / "stripped.ckpt"
    torch.save(checkpoint, stripped)
    control, control_trainer = _fit(tmp_path / "control", ckpt_path=stripped)
    assert _max_abs_difference(control, module) > 0.0
    control_scales = [s["scale"] for s in _tensor_state(control, control_trainer)]
    assert control_scales != [s["scale"] for s in _tensor_state(module, trainer)]
