"""Safe, durable checkpoints.

* Every file is written atomically: into a temporary file beside the target, fsynced, then renamed
  over it, so a crash mid-write leaves the previous good checkpoint in place.
* Nothing is ever unpickled with arbitrary code: torch files are read with `torch.load(weights_only=True)`
  (plain tensors and containers only); a file that would need more is refused, never executed.
* A deployable model is `model.safetensors` (weights) plus `model.json` (the spec that rebuilds it with
  `dualfuse.create_model`), so it loads without pickle at all.
* Every load error is a `CheckpointError` with one line that names the file.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import secrets
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

import dualfuse

FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "model.json"
MODEL_PREFIX = "model."  # where the training task keeps the network inside a Lightning state_dict

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or loaded; the message is one line naming the file."""


# ----------------------------------------------------------------------------------------------------
# Atomic writes


def atomic_write(path: PathLike, write_fn: Callable[[Path], None]) -> None:
    """Write a file via `write_fn(temporary_path)` so readers see the old file or the new one, never half.

    The temporary file lives in the target's directory (a rename is only atomic within one filesystem);
    it is fsynced before the rename and the directory after it, so the new file survives a power cut.
    On any exception, KeyboardInterrupt included, the temporary file is removed and the target untouched.
    Local filesystems only.
    """
    target = Path(os.fspath(path))
    if "://" in str(path):
        raise ValueError(f"{path}: atomic writes need a local path, not a URL")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(target)
    try:
        write_fn(temporary)
        _fsync_path(temporary)
        os.replace(temporary, target)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(target.parent)


def atomic_write_bytes(path: PathLike, data: bytes | bytearray | memoryview) -> None:
    """`atomic_write` for data already in memory."""
    atomic_write(path, lambda temporary: _write_bytes(temporary, data))


def _create_temporary(target: Path) -> Path:
    # A hidden, random name beside the target; created with mode 0o666 so the umask applies as it
    # would to a plain open() (mkstemp's 0o600 would leave checkpoints unreadable to the group).
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    return temporary


def _write_bytes(path: Path, data: bytes | bytearray | memoryview) -> None:
    with open(path, "wb") as file:
        file.write(data)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable. Windows cannot open a directory; its rename is journaled anyway.
    if os.name == "nt":
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    return CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {detail}")


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
# Lightning plugin


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO: atomic, fsynced writes; weights_only reads; unsafe content refused on save.

    Use as `Trainer(plugins=[AtomicCheckpointIO()])`. Before writing, the serialised checkpoint is read
    back with `weights_only=True` onto the meta device (no tensor data is copied), so content that could
    not be resumed safely (a `pathlib.Path` or numpy scalar in hyper-parameters, say) fails at the first
    save, naming the type, instead of at resume time.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: PathLike, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        _check_weights_only(buffer, path)
        atomic_write_bytes(path, buffer.getbuffer())

    def load_checkpoint(self, path: PathLike, map_location: Any | None = lambda storage, loc: storage,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Always `weights_only=True`; `weights_only=False` is refused rather than silently ignored."""
        if weights_only is False:
            raise CheckpointError(f"{path}: {type(self).__name__} loads with weights_only=True only")
        return load_weights_only(path, map_location=map_location)


def _check_weights_only(buffer: io.BytesIO, path: PathLike) -> None:
    buffer.seek(0)
    try:
        torch.load(buffer, map_location="meta", weights_only=True)
    except Exception as error:
        unsafe = _refused_global(error) or _unpickler_reason(str(error)) or _first_line(error)
        raise CheckpointError(f"not writing {path}: torch.load(weights_only=True) could not read it back ({unsafe}); "
                              "keep only tensors and plain str/int/float/list/dict in it, hyper-parameters included"
                              ) from error
    finally:
        buffer.seek(0)


# ----------------------------------------------------------------------------------------------------
# Deployable model: model.safetensors + model.json


def save_model(directory: PathLike, model: nn.Module, spec: Mapping[str, Any]) -> Path:
    """Write `model.safetensors` and `model.json` into `directory`, each atomically; returns the directory.

    `spec["model"]` is `{"name": registry name, "kwargs": {...}}` and rebuilds the network; every other key
    (tasks, modalities, preprocessing, ...) is metadata that `load_model` hands back unchanged.
    Each file is replaced atomically, the pair one after the other: a crash between the two can leave new
    weights beside an old spec, which `load_model` reports as weights that do not fit. Save a new model
    into a fresh directory where that matters.
    """
    directory = Path(os.fspath(directory))
    _check_model_spec(spec, directory / SPEC_NAME)
    spec = {**spec, "format_version": FORMAT_VERSION, "dualfuse_version": dualfuse.__version__}
    try:
        text = json.dumps(spec, indent=2, sort_keys=False) + "\n"
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


def load_model(path: PathLike, expected_model: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model and its spec from a saved model or a training checkpoint; returns `(model.eval(), spec)`.

    `path` is a directory with `model.safetensors` + `model.json`, a `.safetensors` file with its JSON
    beside it (same stem, else `model.json`), or a Lightning `.ckpt` whose `hyper_parameters["spec"]`
    holds the spec and whose `state_dict` holds the weights under `model.`. The model is built with
    `pretrained=False` (loading never downloads) and the weights must fit it exactly.
    """
    path = Path(os.fspath(path))
    if path.is_dir() or path.suffix == ".safetensors":
        weights_file = path / WEIGHTS_NAME if path.is_dir() else path
        state_dict = _read_safetensors(weights_file)
        spec = _read_spec(path / SPEC_NAME if path.is_dir() else _spec_beside(path))
    else:
        weights_file = path
        spec, state_dict = _read_lightning_checkpoint(path)
    model = _build_model(spec, weights_file, expected_model)
    _load_state_dict(model, state_dict, weights_file, spec["model"]["name"])
    return model.eval(), spec


def _spec_beside(weights_file: Path) -> Path:
    same_stem = weights_file.with_suffix(".json")
    return same_stem if same_stem.is_file() else weights_file.with_name(SPEC_NAME)


def _read_spec(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"{path}: model spec not found (a saved model needs its JSON beside the weights)")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: malformed JSON: {error}") from None
    _check_model_spec(spec, path)
    version = spec.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format_version {version!r} is newer than this dualfuse reads "
                              f"({FORMAT_VERSION}); upgrade dualfuse")
    return spec


def _check_model_spec(spec: Any, path: PathLike) -> None:
    model = spec.get("model") if isinstance(spec, Mapping) else None
    if not (isinstance(model, Mapping) and isinstance(model.get("name"), str)
            and isinstance(model.get("kwargs", {}), Mapping)):
        raise CheckpointError(f'{path}: spec needs "model": {{"name": str, "kwargs": {{...}}}}, got {model!r:.80}')


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    path = _existing_file(path)
    try:
        return safetensors.torch.load_file(path, device="cpu")
    except Exception as error:  # safetensors parses a header and raw bytes; no code can run
        raise CheckpointError(f"{path}: not a readable safetensors file (corrupt or truncated?): "
                              f"{_first_line(error)}") from error


def _read_lightning_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    checkpoint = load_weights_only(path)
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    hparams = checkpoint.get("hyper_parameters")
    spec = hparams.get("spec") if isinstance(hparams, Mapping) else None
    if spec is None:
        raise CheckpointError(f'{path}: checkpoint has no hyper_parameters["spec"]; was it written by dualfuse\'s '
                              "training task?")
    _check_model_spec(spec, path)
    state_dict = {key[len(MODEL_PREFIX):]: value for key, value in checkpoint["state_dict"].items()
                  if key.startswith(MODEL_PREFIX)}
    if not state_dict:
        raise CheckpointError(f"{path}: checkpoint holds no weights under {MODEL_PREFIX!r}")
    return dict(spec), state_dict


def _build_model(spec: Mapping[str, Any], path: Path, expected_model: str | None) -> nn.Module:
    name = spec["model"]["name"]
    if expected_model is not None and name != expected_model:
        raise CheckpointError(f"{path} is a checkpoint for model {name!r}, expected {expected_model!r}")
    kwargs = {**spec["model"].get("kwargs", {}), "pretrained": False}
    try:
        return dualfuse.create_model(name, **kwargs)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot build model {name!r} from its spec: {_first_line(error)}") from None


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
