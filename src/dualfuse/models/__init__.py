"""Models: the DCAT and DRIFA-Net families, baselines, and the registry that builds them by name."""
from dualfuse.models.baselines import ConcatFusion, TimmClassifier
from dualfuse.models.dcat import DCAT
from dualfuse.models.drifa_net import DRIFANet
from dualfuse.models.registry import create_model, list_models, model_entrypoint

__all__ = ["DCAT", "DRIFANet", "ConcatFusion", "TimmClassifier", "create_model", "list_models", "model_entrypoint"]
