"""A saved model without Lightning: `model.safetensors` + `model.json`, or a training checkpoint.

* A deployable model is `model.safetensors` (weights) plus `model.json` (the `ModelSpec` that
  rebuilds it with `create_model`), so it loads without pickle at all.
* Torch files (Lightning `.ckpt`) are read with `torch.load(weights_only=True)`: plain tensors and
  containers only; a file that would need arbitrary pickle code is refused, never executed.
* Weights that are not finite (NaN/inf) are refused: they would give empty probabilities.
* Every load error is a `CheckpointError` with one line that names the file.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from dualfuse.atomic import PathLike, atomic_write_bytes
from dualfuse.models.heads import output_bias_names, posthoc_logit_offsets
from dualfuse.models.spec import ModelSpec, SpecError

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"
MODEL_PREFIX = "model."  # where the training task keeps the network inside a Lightning state_dict
EMA_PREFIX = "ema.module."  # and its weight average, with train.ema_decay


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or loaded; the message is one line naming the file."""


# ----------------------------------------------------------------------------------------------------
# weights_only torch files


def load_weights_only(path: PathLike, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a file that needs arbitrary pickle code is refused, never run."""
    path = _existing_file(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # weights_only: no user code ran, so every failure is the file's fault
        raise _load_error(path, error) from error


def _existing_file(path: PathLike) -> Path:
    path = Path(os.fspath(path))
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    return path


def _load_error(path: PathLike, error: Exception) -> CheckpointError:
    """One line for a failed weights_only load: refused (needs pickle code) or not a checkpoint at all."""
    unsafe = _refused_global(error)
    if unsafe:
        return CheckpointError(
            f"{path}: refused to load: it needs arbitrary pickle code ({unsafe}), which "
            "torch.load(weights_only=True) never runs; only plain tensors and containers are allowed")
    detail = _unpickler_reason(str(error)) or _first_line(error)
    if _starts_like_pickle(path):
        # A plain `pickle.dump` (or pre-zip torch.save) stream the safe unpickler cannot read: only the
        # full unpickler reads it, and that would run whatever code the file names.
        return CheckpointError(
            f"{path}: refused to load: a plain pickle file, which only arbitrary pickle code can read; "
            "nothing was loaded (re-save the weights with dualfuse, torch.save(state_dict) or safetensors)")
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {detail}")


def _starts_like_pickle(path: PathLike) -> bool:
    """A pickle stream opens with the PROTO opcode (0x80) and a protocol number; zip files with b"PK"."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _refused_global(error: Exception) -> str | None:
    """What the weights_only unpickler refused to run: a global (class or function) or an object's class."""
    if not isinstance(error, pickle.UnpicklingError):
        return None
    message = str(error)
    found = re.search(r"GLOBAL (\S+)", message) or re.search(r"^.*Can only .* but got (.+)$", message, re.M)
    return found.group(1).strip() if found else None


def _unpickler_reason(message: str) -> str | None:
    # torch wraps the unpickler's own one-line reason in several lines of advice; keep only the reason.
    lines = [line.strip() for line in message.splitlines()]
    for index, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            reason = line.split("WeightsUnpickler error:", 1)[1].strip()
            following = [rest for rest in lines[index + 1:] if rest]
            return reason or (following[0] if following else None)
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ----------------------------------------------------------------------------------------------------
# Deployable model: model.safetensors + model.json


def save_model(directory: PathLike, model: nn.Module, spec: ModelSpec) -> Path:
    """Write `model.safetensors` and `model.json` into `directory`, each atomically; returns the directory.

    Each file is replaced atomically, the pair one after the other: a crash between the two can leave new
    weights beside an old spec, which `load_model` reports as weights that do not fit. Save a new model
    into a fresh directory where that matters.
    """
    directory = Path(os.fspath(directory))
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"save_model needs a ModelSpec, got {type(spec).__name__}")
    try:
        text = spec.to_json()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{directory / SPEC_NAME}: spec is not JSON-serialisable: {error}") from None
    weights = safetensors.torch.save(_unshared_state_dict(model), metadata={"format": "pt"})
    atomic_write_bytes(directory / WEIGHTS_NAME, weights)
    atomic_write_bytes(directory / SPEC_NAME, text.encode("utf-8"))
    return directory


def _unshared_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with every tensor owning contiguous memory, as safetensors requires.

    Tied weights (two names, one storage) are written twice rather than dropped, so loading is a plain
    strict `load_state_dict` with no knowledge of which names were aliases.
    """
    seen: set[int] = set()
    tensors = {}
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        if storage in seen or not tensor.is_contiguous():
            tensor = tensor.contiguous().clone()
        seen.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    return tensors


def load_model(path: PathLike, expected_model: str | None = None) -> tuple[nn.Module, ModelSpec]:
    """Rebuild a model and its spec from a saved model or a training checkpoint; returns `(model.eval(), spec)`.

    `path` is a directory with `model.safetensors` + `model.json`, a `.safetensors` file with its JSON
    beside it (same stem, else `model.json`), or a Lightning `.ckpt` whose `hyper_parameters["spec"]`
    holds the spec and whose `state_dict` holds the weights under `model.`. The model is built with
    `pretrained=False` (loading never downloads) and the weights must fit it exactly and be finite.
    """
    path = Path(os.fspath(path))
    if path.is_dir() or path.suffix == ".safetensors":
        weights_file = path / WEIGHTS_NAME if path.is_dir() else path
        state_dict = read_safetensors(weights_file)
        spec = read_spec(path / SPEC_NAME if path.is_dir() else spec_beside(path))
    else:
        weights_file = path
        spec, state_dict = read_lightning_checkpoint(path)
    _check_finite(state_dict, weights_file)
    model = _build_model(spec, weights_file, expected_model)
    _load_state_dict(model, state_dict, weights_file, spec.name)
    return model.eval(), spec


def spec_beside(weights_file: Path) -> Path:
    same_stem = weights_file.with_suffix(".json")
    return same_stem if same_stem.is_file() else weights_file.with_name(SPEC_NAME)


def read_spec(path: Path) -> ModelSpec:
    try:
        return ModelSpec.from_json(path)
    except SpecError as error:
        raise CheckpointError(str(error)) from None


def _check_finite(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    """NaN/inf weights give NaN probabilities and an arbitrary class: refuse them at load time."""
    bad = [name for name, tensor in state_dict.items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or inf values (e.g. {bad[0]!r}); "
                              "the model was not loaded (training diverged, or the file is damaged)")


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    path = _existing_file(path)
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as error:  # safetensors parses a header and raw bytes; no code can run
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt or truncated?): "
                              f"{_first_line(error)}") from error


def read_lightning_checkpoint(path: Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    checkpoint = load_weights_only(path)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    hparams = checkpoint.get("hyper_parameters")
    spec = hparams.get("spec") if isinstance(hparams, Mapping) else None
    if spec is None:
        raise CheckpointError(f'{path}: checkpoint has no hyper_parameters["spec"]; was it written by dualfuse\'s '
                              "training task?")
    try:
        spec = ModelSpec.from_dict(spec, path)
    except SpecError as error:
        raise CheckpointError(str(error)) from None
    # A run with train.ema_decay chose and saved the averaged weights: read those, as model/ holds them.
    prefix = EMA_PREFIX if any(key.startswith(EMA_PREFIX) for key in checkpoint["state_dict"]) else MODEL_PREFIX
    state_dict = {key[len(prefix):]: value for key, value in checkpoint["state_dict"].items()
                  if key.startswith(prefix)}
    if not state_dict:
        raise CheckpointError(f"{path}: checkpoint holds no weights under {MODEL_PREFIX!r}")
    # A run with train.posthoc_logit_adjustment saved its model with the offsets in the output biases;
    # its checkpoints hold the weights before them: add them, so the checkpoint predicts as model/ does.
    train = hparams.get("train") or {}
    offsets = posthoc_logit_offsets(train.get("posthoc_logit_adjustment") or 0.0, hparams.get("log_priors"))
    if offsets:
        with torch.device("meta"):
            names = output_bias_names(spec.build())
        state_dict = dict(state_dict)
        for task, offset in offsets.items():
            bias = state_dict[names[task]]
            state_dict[names[task]] = bias + torch.tensor(offset, dtype=bias.dtype)
        spec = dataclasses.replace(spec, logit_offsets=offsets)
    return spec, state_dict


def _build_model(spec: ModelSpec, path: Path, expected_model: str | None) -> nn.Module:
    if expected_model is not None and spec.name != expected_model:
        raise CheckpointError(f"{path} is a checkpoint for model {spec.name!r}, expected {expected_model!r}")
    try:
        return spec.build()
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot build model {spec.name!r} from its spec: {_first_line(error)}") from None


def _load_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: Path, name: str) -> None:
    """Strict load, with a one-line summary of what does not fit instead of torch's multi-line report."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    unexpected = [key for key in state_dict if key not in expected]
    mismatched = [key for key in expected if key in state_dict and state_dict[key].shape != expected[key].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[0]!r})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]!r})")
    if mismatched:
        key = mismatched[0]
        problems.append(f"{len(mismatched)} of other shape (e.g. {key!r}: file {tuple(state_dict[key].shape)}, "
                        f"model {tuple(expected[key].shape)})")
    if problems:
        raise CheckpointError(f"{path}: weights do not fit model {name!r}: {', '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)
