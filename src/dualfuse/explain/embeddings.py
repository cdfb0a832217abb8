"""The fused feature vector of each case, and a 2-D t-SNE map of it.

The fused vector is what every task head reads: DCAT's pooled cross-attention descriptor, the
concatenated per-modality pools of DRIFA-Net, a baseline's pooled backbone features. A t-SNE map
of it shows whether classes separate and where the wrong and uncertain cases sit.
"""
from __future__ import annotations

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from torch import nn
from torch.utils.data import DataLoader

from dualfuse.evaluation.predictions import model_inputs
from dualfuse.models.spec import ModelSpec


@torch.no_grad()
def fused_features(model: nn.Module, inputs) -> torch.Tensor:
    """(B, num_features): the eval-mode input of the task heads."""
    return model.forward_head(model.forward_features(inputs), pre_logits=True)


@torch.no_grad()
def embed_loader(model: nn.Module, loader: DataLoader, spec: ModelSpec, device: str | torch.device = "cpu") -> np.ndarray:
    """(N, num_features) fused features of every case in `loader`, in loader order."""
    device = torch.device(device)
    model = model.to(device).eval()
    chunks = [fused_features(model, model_inputs(batch, spec.modalities, model, device)).float().cpu().numpy()
              for batch in loader]
    return np.concatenate(chunks) if chunks else np.zeros((0, getattr(model, "num_features", 0)), np.float32)


def tsne_map(features: np.ndarray, seed: int = 0, perplexity: float = 30.0, pca_dims: int = 50) -> np.ndarray:
    """(N, 2) t-SNE coordinates (scikit-learn), after PCA to `pca_dims` as t-SNE's authors advise."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 5:
        raise ValueError(f"t-SNE needs at least 5 feature vectors (N, F), got shape {x.shape}")
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    dims = min(pca_dims, x.shape[1], len(x) - 1)
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=seed).fit_transform(x)
    perplexity = min(perplexity, (len(x) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(x).astype(np.float32)
