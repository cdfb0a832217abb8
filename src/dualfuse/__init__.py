"""dualfuse: DCAT and DRIFA-Net fusion models for medical image classification, with uncertainty."""
from dualfuse.models.registry import create_model, list_models, model_entrypoint

__all__ = ["create_model", "list_models", "model_entrypoint"]
__version__ = "0.1.0"
