"""`ModelSpec`: how to rebuild a trained model and read its outputs, as a typed record.

It travels as `model.json` beside `model.safetensors` and inside Lightning checkpoints. The JSON
layout is the one round-1 run folders wrote (format 1) plus a format number; format 1 files are
upgraded on read (single-task models then named their task only in `tasks`; format 2 names it in
the constructor's `num_classes` too, because every model returns `{task: logits}`).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dualfuse.models.registry import create_model
from dualfuse.version import __version__

FORMAT_VERSION = 2


class SpecError(ValueError):
    """A model spec that cannot be read: one line naming the file and the field."""


@dataclass
class Preprocessing:
    """What a raw image must go through before the model sees it (the same as at training time)."""

    img_size: int
    resize: str = "resize"
    normalize: str | None = "imagenet"
    in_chans: dict[str, int] = field(default_factory=dict)  # per modality


@dataclass
class ModelSpec:
    """A registered model's name and constructor arguments, its tasks (class names per task), its
    input modalities and preprocessing, and in zip mode which modality each task is about."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, list[str]] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None
    task_modality: dict[str, str] = field(default_factory=dict)
    # What post-hoc logit adjustment added to each task's output bias. The weights already carry it; it is
    # recorded so fine-tuning (`model.init_from`) can take it off again and readers can say what was done.
    logit_offsets: dict[str, list[float]] = field(default_factory=dict)
    dualfuse_version: str = __version__

    def modality_of(self, task: str) -> str | None:
        """The modality a task is judged on in zip mode, `None` when every task sees every modality."""
        return self.task_modality.get(task)

    def build(self):
        """The model, freshly initialised and never downloading weights (`pretrained=False`)."""
        return create_model(self.name, **{**self.kwargs, "pretrained": False})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": {"name": self.name, "kwargs": dict(self.kwargs)},
                               "tasks": {t: list(c) for t, c in self.tasks.items()},
                               "modalities": list(self.modalities)}
        if self.preprocessing is not None:
            out["preprocessing"] = dataclasses.asdict(self.preprocessing)
        if self.task_modality:
            out["task_modality"] = dict(self.task_modality)
        if self.logit_offsets:
            out["logit_offsets"] = {t: list(o) for t, o in self.logit_offsets.items()}
        out["format_version"] = FORMAT_VERSION
        out["dualfuse_version"] = self.dualfuse_version
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str | Path = "model spec") -> ModelSpec:
        """Validate and upgrade a spec read from JSON or a checkpoint; errors name `where` and the field."""
        if not isinstance(data, Mapping):
            raise SpecError(f"{where}: a model spec must be a JSON object, got {type(data).__name__}")
        model = data.get("model")
        if not (isinstance(model, Mapping) and isinstance(model.get("name"), str)
                and isinstance(model.get("kwargs", {}), Mapping)):
            raise SpecError(f'{where}: spec needs "model": {{"name": str, "kwargs": {{...}}}}, got {model!r:.80}')
        version = data.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise SpecError(f"{where}: format_version {version!r} is newer than this dualfuse reads "
                            f"({FORMAT_VERSION}); upgrade dualfuse")
        tasks = _typed(data.get("tasks", {}), Mapping, where, "tasks")
        modalities = _typed(data.get("modalities", []), list, where, "modalities")
        prep = data.get("preprocessing")
        preprocessing = None
        if prep is not None:
            _typed(prep, Mapping, where, "preprocessing")
            try:
                preprocessing = Preprocessing(**prep)
            except TypeError as error:
                raise SpecError(f"{where}: preprocessing: {error}") from None
        kwargs = dict(model.get("kwargs", {}))
        if version < 2 and len(tasks) == 1 and isinstance(kwargs.get("num_classes"), int):
            # Format 1 single-task models were built with an int; name the task as the spec does.
            kwargs["num_classes"] = {next(iter(tasks)): kwargs["num_classes"]}
        offsets = _typed(data.get("logit_offsets", {}), Mapping, where, "logit_offsets")
        for task, offset in offsets.items():
            if task not in tasks or not isinstance(offset, list) or len(offset) != len(tasks[task]) \
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in offset):
                raise SpecError(f"{where}: logit_offsets.{task} must be a list of {len(tasks.get(task, []))} numbers "
                                f"for a task of the spec, got {offset!r:.80}")
        return cls(name=model["name"], kwargs=kwargs, tasks={str(t): list(c) for t, c in tasks.items()},
                   modalities=[str(m) for m in modalities], preprocessing=preprocessing,
                   task_modality=dict(_typed(data.get("task_modality", {}), Mapping, where, "task_modality")),
                   logit_offsets={str(t): [float(v) for v in o] for t, o in offsets.items()},
                   dualfuse_version=str(data.get("dualfuse_version", "unknown")))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_json(cls, path: str | Path) -> ModelSpec:
        path = Path(path)
        if not path.is_file():
            raise SpecError(f"{path}: model spec not found (a saved model needs its JSON beside the weights)")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SpecError(f"{path}: malformed JSON: {error}") from None
        return cls.from_dict(data, path)


def _typed(value: Any, kind: type, where: str | Path, key: str) -> Any:
    if not isinstance(value, kind):
        raise SpecError(f"{where}: {key} must be a {'mapping' if kind is Mapping else kind.__name__}, "
                        f"got {type(value).__name__}")
    return value
