"""The LightningModule that trains any dualfuse model: one or more tasks, weighted cross-entropy.

The model itself knows nothing of Lightning; this module adds losses, validation metrics,
optimiser and schedule. Its hyperparameters are plain dicts (the model `spec` and the `train`
config), so its checkpoints load with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from dualfuse.models.backbone import FeatureTaps
from dualfuse.models.spec import ModelSpec


def backbone_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters of the (possibly pretrained) CNN trunks: timm models and `FeatureTaps`."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, FeatureTaps) or hasattr(module, "pretrained_cfg"):
            ids.update(id(p) for p in module.parameters())
    return ids


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float):
    """LR factor: linear warm-up from ~0, then cosine decay to `floor`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class ClassificationTask(pl.LightningModule):
    """Train `spec["model"]` on `spec["tasks"]` with the `train` section of a run config.

    Args:
        spec: a `ModelSpec` as a dict (`ModelSpec.to_dict()`): plain data, so checkpoints stay
            `weights_only`-loadable.
        train: the run's `TrainConfig` as a dict (optimiser, schedule, loss weights, seed).
    """

    def __init__(self, spec: dict, train: dict):
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec.from_dict(spec)
        self.train_config = train
        self.model = self.spec.build()
        self.tasks = list(self.spec.tasks)
        self.modalities = list(self.spec.modalities)
        missing = [t for t in self.tasks if t not in self.model.tasks]
        if missing:
            raise ValueError(f"model {self.spec.name!r} predicts tasks {list(self.model.tasks)}; the data has {missing}")
        weights = train.get("task_weights") or {}
        unknown = set(weights) - set(self.tasks)
        if unknown:
            raise ValueError(f"train.task_weights names unknown tasks {sorted(unknown)}; tasks are {self.tasks}")
        self.task_weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}
        self.val_auc = nn.ModuleDict({t: MulticlassAUROC(len(c)) for t, c in self.spec.tasks.items()})
        self.val_acc = nn.ModuleDict({t: MulticlassAccuracy(len(c), average="micro")
                                      for t, c in self.spec.tasks.items()})

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        if self.model.multi_input:
            return self.model({m: batch[m] for m in self.modalities})
        return self.model(batch[self.modalities[0]])

    def _loss(self, logits: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
        smoothing = float(self.train_config.get("label_smoothing", 0.0))
        return sum(
            self.task_weights[t] * F.cross_entropy(logits[t].float(), batch[t], label_smoothing=smoothing)
            for t in self.tasks
        )

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout of every step draws from (seed, epoch, step, rank), so a run resumed from an epoch
        # checkpoint repeats the uninterrupted run exactly (data order and augmentation are seeded
        # the same way by the data module's sampler).
        seed = ((int(self.train_config.get("seed", 0)) * 1_000_003 + self.current_epoch) * 1_000_033
                + batch_idx) * 101 + self.global_rank
        torch.manual_seed(seed % 2**63)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch), batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["case_id"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch)
        batch_size = len(batch["case_id"])
        self.log("val/loss", self._loss(logits, batch), on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=batch_size)
        for task in self.tasks:
            probs = logits[task].float().softmax(dim=1)
            self.val_auc[task].update(probs, batch[task])
            self.val_acc[task].update(probs, batch[task])

    def on_validation_epoch_end(self) -> None:
        for task in self.tasks:
            auc, acc = self.val_auc[task].compute(), self.val_acc[task].compute()
            prefix = "val" if len(self.tasks) == 1 else f"val/{task}"
            self.log(f"{prefix}/auc", auc, prog_bar=True, sync_dist=True)
            self.log(f"{prefix}/acc", acc, prog_bar=len(self.tasks) == 1, sync_dist=True)
            self.val_auc[task].reset()
            self.val_acc[task].reset()

    def configure_optimizers(self):
        config = self.train_config
        backbone_ids = backbone_parameter_ids(self.model) if config.get("backbone_lr") else set()
        groups: dict[tuple[bool, bool], list] = {}
        for p in self.model.parameters():
            if p.requires_grad:
                # No weight decay on norms and biases (1-D), as timm does.
                groups.setdefault((id(p) in backbone_ids, p.ndim <= 1), []).append(p)
        param_groups = [
            {"params": params, "lr": config["backbone_lr"] if is_backbone else config["lr"],
             "weight_decay": 0.0 if no_decay else config["weight_decay"]}
            for (is_backbone, no_decay), params in groups.items()
        ]
        optimizer_class = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(param_groups, lr=config["lr"])

        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs))
        warmup_steps = int(round(config.get("warmup_epochs", 0.0) * steps_per_epoch))
        schedulers = []
        if config["scheduler"] == "cosine":
            floor = config["min_lr"] / config["lr"]
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup_steps, total_steps, floor))
            schedulers.append({"scheduler": schedule, "interval": "step"})
        else:
            if warmup_steps:
                ramp = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup_steps))
                schedulers.append({"scheduler": ramp, "interval": "step"})
            if config["scheduler"] == "plateau":
                plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode=config["monitor_mode"], factor=config["plateau_factor"],
                    patience=config["plateau_patience"], min_lr=config["min_lr"],
                )
                schedulers.append({"scheduler": plateau, "interval": "epoch", "monitor": config["monitor"]})
        return [optimizer], schedulers
