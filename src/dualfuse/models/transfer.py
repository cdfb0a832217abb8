"""Fine-tuning: start a model from another model's weights (`model.init_from`).

Small medical datasets train better from a trunk that has already seen images: a dualfuse run
trained on another dataset (in-domain pretraining), or any weights file whose tensor names match.
Every tensor whose name and shape match is loaded; a convolution that differs only in its number
of input channels (1 <-> 3: grey scans vs RGB) is adapted (`adapt_channels`); a task
head is loaded only when the source predicted the same classes for that task (else it keeps its
fresh initialisation, so a new task never starts from another task's decision boundary);
everything else is reported as skipped or new, never silently dropped. A head loaded from a run with
post-hoc logit adjustment has the offsets its spec records taken off its output bias, so fine-tuning
starts from the network as it was trained, not from the source's balanced decision. A `multitask` source (one
trunk pretrained on several datasets) is read as its trunk: its `trunk.` names lose the prefix, so a
plain model of the same trunk settings loads them, and its task heads are skipped.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.models import adapt_input_conv
from torch import nn

from dualfuse.models.heads import HEAD_ATTRIBUTES, output_bias_names
from dualfuse.models.multitask import DEFAULT_TRUNK, MULTITASK, as_trunk_weights
from dualfuse.models.saved import (
    SPEC_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_weights_only,
    read_lightning_checkpoint,
    read_safetensors,
    read_spec,
    spec_beside,
)
from dualfuse.models.spec import ModelSpec

__all__ = ["HEAD_ATTRIBUTES", "TransferReport", "adapt_channels", "head_parameter_names", "read_source_weights", "transfer_weights"]


@dataclass
class TransferReport:
    """What `transfer_weights` did with each tensor of the target model (and of the source)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # input channels adapted (1 <-> 3)
    unadjusted: list[str] = field(default_factory=list)  # loaded output biases with the source's offsets taken off
    new: dict[str, str] = field(default_factory=dict)  # target tensor -> why it keeps its initialisation
    skipped: dict[str, str] = field(default_factory=dict)  # source tensor -> why it was not used

    @property
    def transferred(self) -> list[str]:
        return self.loaded + self.adapted

    def rows(self) -> list[dict]:
        """One row per outcome and reason, with a count and an example tensor (for the CLI table)."""
        rows = [{"status": "loaded", "reason": "name and shape match", "tensors": len(self.loaded),
                 "example": self.loaded[0] if self.loaded else ""}]
        if self.adapted:
            rows.append({"status": "adapted", "reason": "input channels adapted (1 <-> 3)",
                         "tensors": len(self.adapted), "example": self.adapted[0]})
        if self.unadjusted:
            rows.append({"status": "loaded", "reason": "output bias with the source's post-hoc logit offsets taken off",
                         "tensors": len(self.unadjusted), "example": self.unadjusted[0]})
        for status, entries in (("new", self.new), ("skipped", self.skipped)):
            by_reason: dict[str, list[str]] = {}
            for name, reason in entries.items():
                by_reason.setdefault(reason, []).append(name)
            rows += [{"status": status, "reason": reason, "tensors": len(names), "example": names[0]}
                     for reason, names in by_reason.items()]
        return rows

    def to_dict(self) -> dict:
        out = {"source": self.source, "loaded": len(self.loaded), "adapted": list(self.adapted),
               "new": dict(self.new), "skipped": dict(self.skipped)}
        if self.unadjusted:
            out["offsets_removed"] = list(self.unadjusted)
        return out


def head_parameter_names(model: nn.Module) -> dict[str, str | None]:
    """`{state-dict name: task}` of every tensor in a task head (`task` None when the model has one head)."""
    names: dict[str, str | None] = {}
    for attribute in HEAD_ATTRIBUTES:
        module = getattr(model, attribute, None)
        if not isinstance(module, nn.Module):
            continue
        for name in module.state_dict():
            task = name.split(".", 1)[0] if isinstance(module, nn.ModuleDict) else None
            names[f"{attribute}.{name}"] = task
    return names


def read_source_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], ModelSpec | None]:
    """The weights (and, where saved beside them, the spec) of a run folder, model folder,
    `.safetensors`, Lightning `.ckpt` or plain state-dict file (`.pt`/`.pth`, read weights-only)."""
    path = Path(os.fspath(path))
    if not path.exists():
        raise FileNotFoundError(f"model.init_from: {path} does not exist")
    if path.is_dir():
        folder = path / "model" if (path / "model" / WEIGHTS_NAME).is_file() else path
        if not (folder / WEIGHTS_NAME).is_file():
            raise CheckpointError(f"model.init_from: {path} holds no {WEIGHTS_NAME} (nor model/{WEIGHTS_NAME}); "
                                  "give a run folder, a model folder or a weights file")
        spec_file = folder / SPEC_NAME
        return read_safetensors(folder / WEIGHTS_NAME), read_spec(spec_file) if spec_file.is_file() else None
    if path.suffix == ".safetensors":
        spec_file = spec_beside(path)
        return read_safetensors(path), read_spec(spec_file) if spec_file.is_file() else None
    loaded = load_weights_only(path)
    if isinstance(loaded, Mapping) and "state_dict" in loaded and "hyper_parameters" in loaded:
        spec, state = read_lightning_checkpoint(path)
        return state, spec
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"model.init_from: {path} is not a state dict of tensors")
    return dict(loaded), None


def _channels_differ(source: torch.Tensor, target: torch.Tensor) -> bool:
    return (source.ndim == 4 and target.ndim == 4 and source.shape[0] == target.shape[0]
            and source.shape[2:] == target.shape[2:] and source.shape[1] != target.shape[1])


def adapt_channels(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first convolution for `in_chans` inputs from one trained on another number: timm's
    `adapt_input_conv` from RGB (3 -> 1 sums the colour filters); from grey, the filter is spread
    evenly over the new channels, so an RGB copy of a grey image gives the same response."""
    if weight.shape[1] == 1:
        return weight.repeat(1, in_chans, 1, 1) / in_chans
    return adapt_input_conv(in_chans, weight)


def _head_reason(task: str | None, source_spec: ModelSpec | None, target_spec: ModelSpec) -> str | None:
    """Why a head tensor must not be loaded (None: it may), judged on the classes of its task."""
    if source_spec is None:
        return "task head: the source's classes are unknown (no model.json beside it)"
    if task is None:
        (source_classes,), (target_classes,) = source_spec.tasks.values(), target_spec.tasks.values()
    else:
        source_classes, target_classes = source_spec.tasks.get(task), target_spec.tasks.get(task)
    if source_classes != target_classes:
        return f"task head: classes differ ({source_classes} -> {target_classes}), re-initialised"
    return None


def _remove_source_offsets(model: nn.Module, source_spec: ModelSpec | None,
                           chosen: dict[str, torch.Tensor]) -> list[str]:
    """Take the source's post-hoc logit offsets (its spec's `logit_offsets`) off every output bias that
    was loaded; returns the names of those biases. A one-head model reads the source's only task."""
    if source_spec is None or not source_spec.logit_offsets:
        return []
    targets = output_bias_names(model)
    if len(targets) == 1 and len(source_spec.tasks) == 1:
        targets = {next(iter(source_spec.tasks)): next(iter(targets.values()))}
    removed = []
    for task, offset in source_spec.logit_offsets.items():
        name = targets.get(task)
        if name in chosen and chosen[name].numel() == len(offset):
            chosen[name] = chosen[name] - torch.tensor(offset, dtype=chosen[name].dtype)
            removed.append(name)
    return removed


def _multitask_trunk(source: dict[str, torch.Tensor], source_spec: ModelSpec | None,
                     spec: ModelSpec) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A `multitask` source as seen by a plain model: `(its trunk under the plain model's names,
    {head tensor: why it is skipped})`; any other source (or a multitask target) as it is."""
    if source_spec is None or source_spec.name != MULTITASK or spec.name == MULTITASK:
        return source, {}
    trunk, heads = as_trunk_weights(source)
    return trunk, {name: "task head of the multitask source (its tasks are other datasets')" for name in heads}


def transfer_weights(model: nn.Module, spec: ModelSpec, path: str | os.PathLike) -> TransferReport:
    """Load into `model` (built from `spec`) every tensor of `path` that fits; return what happened."""
    source, source_spec = read_source_weights(path)
    bad = [name for name, tensor in source.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise CheckpointError(f"model.init_from: {path}: {len(bad)} tensor(s) hold NaN or inf (e.g. {bad[0]!r}); "
                              "nothing was loaded")
    source, source_heads = _multitask_trunk(source, source_spec, spec)
    heads = head_parameter_names(model)
    target = model.state_dict()
    report = TransferReport(source=str(path), skipped=dict(source_heads))
    chosen: dict[str, torch.Tensor] = {}
    for name, tensor in target.items():
        if name not in source:
            report.new[name] = "not in the source"
            continue
        value = source[name]
        reason = _head_reason(heads[name], source_spec, spec) if name in heads else None
        if reason:
            report.new[name] = reason
        elif value.shape == tensor.shape:
            chosen[name] = value.to(tensor.dtype)
            report.loaded.append(name)
        elif _channels_differ(value, tensor) and 1 in (value.shape[1], tensor.shape[1]):
            chosen[name] = adapt_channels(value.float(), tensor.shape[1]).to(tensor.dtype)
            report.adapted.append(name)
        else:
            report.new[name] = f"other shape in the source ({tuple(value.shape)} vs {tuple(tensor.shape)})"
    for name in source:
        if name not in target:
            report.skipped[name] = "not in this model"
        elif name in report.new:
            report.skipped[name] = report.new[name]
    if not chosen:
        trunk = (f"; it is a multitask run whose trunk is {source_spec.kwargs.get('trunk', DEFAULT_TRUNK)!r} with "
                 f"{source_spec.kwargs.get('trunk_kwargs', {})}") if source_heads else ""
        raise CheckpointError(f"model.init_from: no tensor of {path} fits model {spec.name!r} (names or shapes "
                              f"differ, e.g. {next(iter(source), 'none')!r}){trunk}; nothing was loaded")
    report.unadjusted = _remove_source_offsets(model, source_spec, chosen)
    model.load_state_dict(chosen, strict=False)
    return report
