"""Models: the DCAT and DRIFA-Net families, baselines, the multitask pretraining model, and the
registry that builds them by name.

Importing this package imports every model file, which registers each builder.
"""
from dualfuse.models.base import IMAGE_MAP, DualfuseModel, PaperReference
from dualfuse.models.baselines import ConcatFusion, TimmClassifier
from dualfuse.models.dcat import DCAT
from dualfuse.models.drifa_net import DRIFANet
from dualfuse.models.multitask import MultitaskModel
from dualfuse.models.registry import create_model, list_models, model_class, model_entrypoint
from dualfuse.models.spec import ModelSpec, Preprocessing

__all__ = ["DCAT", "IMAGE_MAP", "ConcatFusion", "DRIFANet", "DualfuseModel", "ModelSpec", "MultitaskModel",
           "PaperReference", "Preprocessing", "TimmClassifier", "create_model", "list_models", "model_class", "model_entrypoint"]
