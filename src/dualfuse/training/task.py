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
from timm.data import Mixup
from timm.utils import ModelEmaV3
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

from dualfuse.models.backbone import FeatureTaps
from dualfuse.models.spec import ModelSpec
from dualfuse.models.transfer import head_parameter_names


def backbone_parameter_ids(model: nn.Module) -> set[int]:
    """Parameters of the (possibly pretrained) CNN trunks: timm models and `FeatureTaps`."""
    ids: set[int] = set()
    for module in model.modules():
        if isinstance(module, FeatureTaps) or hasattr(module, "pretrained_cfg"):
            ids.update(id(p) for p in module.parameters())
    return ids


def trunk_parameter_ids(model: nn.Module, transferred: list[str] | None = None) -> set[int]:
    """The parameters `train.backbone_lr` and `train.freeze_epochs` act on: after `model.init_from`,
    every transferred tensor outside the task heads; else the (possibly pretrained) CNN trunks."""
    if transferred is None:
        return backbone_parameter_ids(model)
    names = set(transferred) - set(head_parameter_names(model))
    return {id(p) for name, p in model.named_parameters() if name in names}


def check_recipe(train: dict, model: nn.Module, tasks: list[str]) -> None:
    """Mixup and cutmix mix one image and one label: one line when the model takes more."""
    if (train.get("mixup") or train.get("cutmix")) and (model.multi_input or len(tasks) > 1):
        raise ValueError("config: train.mixup / train.cutmix need a single-image, single-task model; this one takes "
                         f"{'one image per modality' if model.multi_input else 'one image'} and predicts {tasks}")


def frozen_until(steps: int, factor):
    """An LR factor that is 0 for the first `steps` optimiser steps, then `factor`'s."""
    return lambda step: 0.0 if step < steps else factor(step)


def warmup_cosine(warmup_steps: int, total_steps: int, floor: float):
    """LR factor: linear warm-up from ~0, then cosine decay to `floor`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class LambdaLRUntil(torch.optim.lr_scheduler.LambdaLR):
    """LambdaLR that lets go of the learning rate after `steps` steps.

    LambdaLR sets every group's LR to base × factor at each step, which would undo every reduction
    ReduceLROnPlateau makes after warm-up; past the warm-up (and freezing) steps this one leaves the
    LR to the plateau scheduler."""

    def __init__(self, optimizer: torch.optim.Optimizer, lr_lambda, steps: int):
        self.steps = steps
        super().__init__(optimizer, lr_lambda)

    def get_lr(self) -> list[float]:
        if self.last_epoch > self.steps:
            return [group["lr"] for group in self.optimizer.param_groups]
        return super().get_lr()


class ClassificationTask(pl.LightningModule):
    """Train `spec["model"]` on `spec["tasks"]` with the `train` section of a run config.

    Args:
        spec: a `ModelSpec` as a dict (`ModelSpec.to_dict()`): plain data, so checkpoints stay
            `weights_only`-loadable.
        train: the run's `TrainConfig` as a dict (optimiser, schedule, loss weights, seed).
        transferred: names of the tensors `model.init_from` loaded (fine-tuning): `backbone_lr` and
            `freeze_epochs` then act on those outside the heads.
        class_weights: per task, one loss weight per class (`train.class_weights: balanced`).
        log_priors: per task, the training split's log class frequencies (`train.logit_adjustment`).
    """

    def __init__(self, spec: dict, train: dict, transferred: list[str] | None = None,
                 class_weights: dict[str, list[float]] | None = None,
                 log_priors: dict[str, list[float]] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.spec = ModelSpec.from_dict(spec)
        self.train_config = train
        self.transferred = None if transferred is None else list(transferred)
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
        for prefix, per_task in (("class_weight", class_weights), ("log_prior", log_priors)):
            for task, values in (per_task or {}).items():
                self.register_buffer(f"{prefix}_{task}", torch.tensor(values, dtype=torch.float32), persistent=False)
        check_recipe(train, self.model, self.tasks)
        # The averaged weights are a submodule, so checkpoints hold them and a resume continues them.
        self.ema = ModelEmaV3(self.model, decay=float(train["ema_decay"]), use_warmup=True) \
            if train.get("ema_decay") else None
        mixing = float(train.get("mixup") or 0) or float(train.get("cutmix") or 0)
        self.mixup = Mixup(mixup_alpha=float(train.get("mixup") or 0), cutmix_alpha=float(train.get("cutmix") or 0),
                           label_smoothing=float(train.get("label_smoothing", 0.0)),
                           num_classes=len(self.spec.tasks[self.tasks[0]])) if mixing else None
        self.val_auc = nn.ModuleDict({t: MulticlassAUROC(len(c)) for t, c in self.spec.tasks.items()})
        self.val_acc = nn.ModuleDict({t: MulticlassAccuracy(len(c), average="micro")
                                      for t, c in self.spec.tasks.items()})

    def forward(self, batch: dict, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
        model = model or self.model
        if model.multi_input:
            return model({m: batch[m] for m in self.modalities})
        return model(batch[self.modalities[0]])

    def _class_weight(self, task: str) -> torch.Tensor | None:
        return getattr(self, f"class_weight_{task}", None)

    def _log_prior(self, task: str) -> torch.Tensor | None:
        return getattr(self, f"log_prior_{task}", None)

    def _loss(self, logits: dict[str, torch.Tensor], batch: dict, soft: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy per task; `soft` targets (mixup/cutmix, already smoothed) for the one task.

        A class weight weights a *case* by its label, and the mean is taken over those weights (as
        `F.cross_entropy(weight=...)` does for hard labels). It never weights the smoothing mass: weighting
        each class's term of a smoothed target hands every image of the majority class a rare-class target
        worth more than its own label, and the model learns to call it rare (HAM10000 with the small-data
        recipe: 12.6% accuracy).

        Logit adjustment (Menon et al., ICLR 2021) scores `logits + tau * log(prior)`: the network has to
        out-argue the prior itself, so the logits it outputs rank classes as if they were equally common
        (the argmax that balanced accuracy asks for), without weighting any case."""
        smoothing = float(self.train_config.get("label_smoothing", 0.0))
        tau = float(self.train_config.get("logit_adjustment") or 0.0)
        total = 0.0
        for t in self.tasks:
            weight, log_prior = self._class_weight(t), self._log_prior(t)
            z = logits[t].float() if log_prior is None or not tau else logits[t].float() + tau * log_prior
            if soft is not None:
                per_case = -(soft * F.log_softmax(z, dim=1)).sum(dim=1)
                # soft = (1 - s) * (the cases' mixed one-hot labels) + s / C: recover the labels' weight.
                case_weight = None if weight is None else \
                    (soft @ weight - smoothing * weight.mean()) / (1.0 - smoothing)
            else:
                per_case = F.cross_entropy(z, batch[t], label_smoothing=smoothing, reduction="none")
                case_weight = None if weight is None else weight[batch[t]]
            loss = per_case.mean() if case_weight is None else (per_case * case_weight).sum() / case_weight.sum()
            total = total + self.task_weights[t] * loss
        return total

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout of every step draws from (seed, epoch, step, rank), so a run resumed from an epoch
        # checkpoint repeats the uninterrupted run exactly (data order and augmentation are seeded
        # the same way by the data module's sampler).
        seed = ((int(self.train_config.get("seed", 0)) * 1_000_003 + self.current_epoch) * 1_000_033
                + batch_idx) * 101 + self.global_rank
        torch.manual_seed(seed % 2**63)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        soft = None
        if self.mixup is not None and len(batch["case_id"]) % 2 == 0:  # timm mixes a batch with its flip: even sizes
            image, task = self.modalities[0], self.tasks[0]
            batch = {**batch}
            batch[image], soft = self.mixup(batch[image], batch[task])
        loss = self._loss(self(batch), batch, soft)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(batch["case_id"]))
        return loss

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    @property
    def evaluated_model(self) -> nn.Module:
        """What validation scores, checkpoint selection compares and the run saves: the EMA if on."""
        return self.ema.module if self.ema is not None else self.model

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch, self.evaluated_model)
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
        freeze_epochs = int(config.get("freeze_epochs") or 0)
        trunk_ids = (trunk_parameter_ids(self.model, self.transferred)
                     if config.get("backbone_lr") or freeze_epochs else set())
        groups: dict[tuple[bool, bool], list] = {}
        for p in self.model.parameters():
            if p.requires_grad:
                # No weight decay on norms and biases (1-D), as timm does.
                groups.setdefault((id(p) in trunk_ids, p.ndim <= 1), []).append(p)
        trunk_lr = config.get("backbone_lr") or config["lr"]
        param_groups = [
            {"params": params, "lr": trunk_lr if is_trunk else config["lr"],
             "weight_decay": 0.0 if no_decay else config["weight_decay"]}
            for (is_trunk, no_decay), params in groups.items()
        ]
        optimizer_class = torch.optim.AdamW if config["optimizer"] == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(param_groups, lr=config["lr"])

        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total_steps // max(1, self.trainer.max_epochs))
        warmup_steps = int(round(config.get("warmup_epochs", 0.0) * steps_per_epoch))
        # Freezing is an LR of 0 for the trunk's groups (not requires_grad, which DDP cannot change
        # mid-run), counted in optimiser steps, so a resumed run freezes and thaws at the same step.
        frozen_steps = freeze_epochs * steps_per_epoch
        trunk_flags = [is_trunk for is_trunk, _ in groups]
        schedulers = []
        if config["scheduler"] == "cosine":
            floor = config["min_lr"] / config["lr"]
            base = warmup_cosine(warmup_steps, total_steps, floor)
        else:
            def base(step: int) -> float:
                return min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
        if config["scheduler"] == "cosine" or warmup_steps or frozen_steps:
            factors = [frozen_until(frozen_steps, base) if is_trunk and frozen_steps else base for is_trunk in trunk_flags]
            stepwise = (LambdaLRUntil(optimizer, factors, max(warmup_steps, frozen_steps))
                        if config["scheduler"] == "plateau" else torch.optim.lr_scheduler.LambdaLR(optimizer, factors))
            schedulers.append({"scheduler": stepwise, "interval": "step"})
        if config["scheduler"] == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=config["monitor_mode"], factor=config["plateau_factor"],
                patience=config["plateau_patience"], min_lr=config["min_lr"],
            )
            schedulers.append({"scheduler": plateau, "interval": "epoch", "monitor": config["monitor"]})
        return [optimizer], schedulers
