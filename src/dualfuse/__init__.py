"""dualfuse: DCAT and DRIFA-Net fusion models for medical image classification, with uncertainty.

create_model, list_models     build a registered model (timm style)
load_model(path)              a trained model from a run folder, model folder or weights file
ModelSpec, RunFolder          the typed model spec and the run-folder layout
train, evaluate, predict, explain, report, compare     the workflows (see `dualfuse.api`)
"""
from dualfuse.api import LoadedModel, RunFolder, load_model
from dualfuse.models import ModelSpec, create_model, list_models, model_entrypoint
from dualfuse.version import __version__

__all__ = ["LoadedModel", "ModelSpec", "RunFolder", "__version__", "compare", "create_model", "evaluate", "explain",
           "list_models", "load_model", "model_entrypoint", "predict", "report", "train"]


def __getattr__(name: str):
    if name in ("train", "evaluate", "predict", "explain", "report", "compare"):
        import dualfuse.api

        return getattr(dualfuse.api, name)
    raise AttributeError(f"module 'dualfuse' has no attribute {name!r}")
