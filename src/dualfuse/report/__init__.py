"""The HTML report of a run: figures, tables, Grad-CAM galleries and t-SNE, in one self-contained file."""
