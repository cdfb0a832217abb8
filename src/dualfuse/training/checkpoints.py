"""Lightning checkpoints written atomically and read back with `weights_only=True`.

A crash mid-write leaves the previous good checkpoint in place (`dualfuse.atomic`); content that
could not be resumed without arbitrary pickle code is refused at the first save, not at resume
time. Loading a saved model for inference lives in `dualfuse.models.saved` and never imports
Lightning; this module re-exports it for training code.
"""
from __future__ import annotations

import io
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dualfuse.atomic import PathLike, atomic_write_bytes
from dualfuse.models.saved import (
    CheckpointError,
    _first_line,
    _refused_global,
    _unpickler_reason,
    load_model,
    load_weights_only,
    save_model,
)

__all__ = ["AtomicCheckpointIO", "CheckpointError", "load_model", "load_weights_only", "save_model"]




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


