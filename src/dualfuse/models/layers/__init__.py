"""The papers' building blocks, one small module per file."""
from dualfuse.models.layers.cbam import EnhancedCbam
from dualfuse.models.layers.clia import CLIA
from dualfuse.models.layers.cross_attention import BidirectionalCrossAttention, CrossAttention
from dualfuse.models.layers.hifa import HIFA
from dualfuse.models.layers.mfa import MFA
from dualfuse.models.layers.mgifa import MGIFA
from dualfuse.models.layers.mifa import MIFA
from dualfuse.models.layers.mlifa import MLIFA
from dualfuse.models.layers.rra import RRABlock

__all__ = [
    "BidirectionalCrossAttention", "CLIA", "CrossAttention", "EnhancedCbam", "HIFA", "MFA", "MGIFA", "MIFA",
    "MLIFA", "RRABlock",
]
