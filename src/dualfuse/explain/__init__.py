"""Explanations: Grad-CAM maps per model and modality, fused-feature embeddings and t-SNE maps."""

# The names live here, free of heavy imports, so the CLI can offer them without loading torch.
CAM_METHOD_NAMES = ("gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "eigencam")
