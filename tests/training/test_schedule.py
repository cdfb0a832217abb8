"""Learning-rate schedules: warm-up and freezing must not undo ReduceLROnPlateau's reductions."""
from __future__ import annotations

import pytest

from dualfuse.models.spec import ModelSpec
from dualfuse.training.task import ClassificationTask


class _Trainer:
    estimated_stepping_batches = 40  # 4 epochs of 10 steps
    max_epochs = 4


def _task(**train) -> ClassificationTask:
    spec = ModelSpec(name="timm_classifier", kwargs={"backbone": "resnet18", "in_chans": 1},
                     tasks={"label": ["a", "b"]})
    config = {"lr": 1e-3, "weight_decay": 0.0, "optimizer": "adamw", "min_lr": 1e-6, "seed": 0,
              "monitor": "val/loss", "monitor_mode": "min", "plateau_factor": 0.5, "plateau_patience": 0, **train}
    task = ClassificationTask(spec.to_dict(), config)
    task.trainer = _Trainer()
    return task


def test_plateau_reductions_survive_the_warm_up_schedule():
    (optimizer,), (stepwise, plateau) = _task(scheduler="plateau", warmup_epochs=1.0).configure_optimizers()
    lrs = []
    for _ in range(4):
        for _ in range(10):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            stepwise["scheduler"].step()
        plateau["scheduler"].step(1.0)  # validation loss never improves: halve after every epoch but the first
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)  # linear warm-up over epoch 0
    assert [lrs[10 * e + 5] for e in (1, 2, 3)] == pytest.approx([1e-3, 5e-4, 2.5e-4])


def test_cosine_schedule_is_unchanged():
    (optimizer,), (stepwise,) = _task(scheduler="cosine", warmup_epochs=0.0).configure_optimizers()
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        stepwise["scheduler"].step()
    assert lrs[0] == pytest.approx(1e-3) and lrs[20] == pytest.approx(5e-4, rel=1e-2) and lrs[-1] < 1e-5
