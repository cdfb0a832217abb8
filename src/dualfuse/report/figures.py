"""The report's plots, each a PNG (bytes) drawn with matplotlib's headless Agg backend."""
from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import auc, precision_recall_curve, roc_curve  # noqa: E402

DPI = 110
CORRECT_COLOURS = {True: "#1b9e77", False: "#d95f02"}


def _png(fig: plt.Figure) -> bytes:
    buffer = BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    return buffer.getvalue()


def _one_vs_rest(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]):
    """(name, binary truth, score) per curve: the positive class for binary tasks, every class otherwise."""
    if probs.shape[1] == 2:
        return [(class_names[1], y == 1, probs[:, 1])]
    return [(name, y == i, probs[:, i]) for i, name in enumerate(class_names)]


def roc_pr_curves(y: np.ndarray, probs: np.ndarray, class_names: Sequence[str]) -> bytes:
    """ROC and precision–recall curves (one-vs-rest per class for multi-class tasks)."""
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(9, 4))
    for name, truth, score in _one_vs_rest(y, probs, class_names):
        if truth.all() or not truth.any():
            continue  # a curve needs both classes
        fpr, tpr, _ = roc_curve(truth, score)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f})")
        precision, recall, _ = precision_recall_curve(truth, score)
        pr_ax.plot(recall, precision, label=f"{name} (AP {auc(recall, precision):.3f})")
        pr_ax.axhline(truth.mean(), color="grey", lw=0.6, ls=":")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    roc_ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)", title="ROC")
    pr_ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision–recall", ylim=(0, 1.02))
    for ax in (roc_ax, pr_ax):
        ax.legend(fontsize=8, loc="lower right" if ax is roc_ax else "lower left")
        ax.grid(alpha=0.3)
    return _png(fig)


def confusion_matrix_plot(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    """Counts, with each row's share (recall of that true class) in brackets."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 2.2 + 0.7 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(counts):
        ax.text(j, i, f"{int(count)}\n({shares[i, j]:.0%})", ha="center", va="center", fontsize=8,
                color="white" if shares[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    return _png(fig)


def _reliability_panel(ax, report: dict, title: str) -> None:
    bins = report["reliability"]
    centres = [(b["lower"] + b["upper"]) / 2 for b in bins]
    accuracy = [b["accuracy"] if b["accuracy"] is not None else 0 for b in bins]
    width = bins[0]["upper"] - bins[0]["lower"]
    ax.bar(centres, accuracy, width=width * 0.95, color="#4c72b0", alpha=0.85, label="accuracy")
    confidence = [b["mean_confidence"] if b["mean_confidence"] is not None else c for b, c in zip(bins, centres)]
    gaps = [a - c if b["count"] else 0 for a, c, b in zip(accuracy, confidence, bins)]
    ax.bar(centres, gaps, bottom=confidence, width=width * 0.95, color="#dd8452", alpha=0.5, label="gap")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)", ylabel="accuracy",
           title=f"{title}\nECE {report['ece']:.3f}, NLL {report['nll']:.3f}")
    ax.legend(fontsize=8, loc="upper left")


def reliability_diagram(before: dict, after: dict, after_title: str) -> bytes:
    """Reliability diagrams side by side: raw softmax, and after temperature scaling."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    _reliability_panel(axes[0], before, "before: softmax, T = 1")
    _reliability_panel(axes[1], after, after_title)
    return _png(fig)


def risk_coverage_plot(curve: dict, threshold: float | None, operating_point: tuple[float, float] | None,
                       aurc: float) -> bytes:
    """Error rate of the accepted cases against the share accepted, with the referral threshold marked."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.step(curve["coverage"], curve["risk"], where="post", color="#4c72b0", label=f"risk–coverage (AURC {aurc:.3f})")
    if operating_point is not None and threshold is not None:
        coverage, risk = operating_point
        ax.axvline(coverage, color="#c44e52", ls="--", lw=1)
        ax.plot([coverage], [risk], "o", color="#c44e52",
                label=f"referral threshold {threshold:.3f}: {coverage:.0%} kept, {risk:.1%} errors")
    ax.set(xlim=(0, 1.01), ylim=(0, None), xlabel="coverage (share of cases the model decides)",
           ylabel="risk (error rate of decided cases)", title="Selective prediction")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _png(fig)


def uncertainty_histograms(measures: dict[str, np.ndarray], correct: np.ndarray) -> bytes:
    """Histograms of each uncertainty measure for correct and for wrong predictions."""
    fig, axes = plt.subplots(1, len(measures), figsize=(4.5 * len(measures), 3.8), squeeze=False)
    for ax, (name, values) in zip(axes[0], measures.items()):
        edges = np.histogram_bin_edges(values, bins=25)
        for flag, label in ((True, "correct"), (False, "wrong")):
            chosen = values[correct == flag]
            if len(chosen):
                ax.hist(chosen, bins=edges, alpha=0.6, density=True, color=CORRECT_COLOURS[flag],
                        label=f"{label} (n={len(chosen)}, mean {chosen.mean():.3f})")
        ax.set(xlabel=name, ylabel="density", title=name)
        ax.legend(fontsize=8)
    return _png(fig)


def tsne_plot(coords: np.ndarray, labels: np.ndarray, class_names: Sequence[str], correct: np.ndarray,
              entropy: np.ndarray) -> bytes:
    """The t-SNE map three times: coloured by true class, by correctness, by predictive entropy."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.4))
    cmap = plt.get_cmap("tab10")
    for index, name in enumerate(class_names):
        chosen = labels == index
        axes[0].scatter(*coords[chosen].T, s=7, color=cmap(index % 10), label=name)
    axes[0].legend(fontsize=8, markerscale=2)
    axes[0].set_title("true class")
    for flag, label in ((True, "correct"), (False, "wrong")):
        chosen = correct == flag
        axes[1].scatter(*coords[chosen].T, s=7 if flag else 14, color=CORRECT_COLOURS[flag], label=label)
    axes[1].legend(fontsize=8, markerscale=2)
    axes[1].set_title("prediction")
    points = axes[2].scatter(*coords.T, s=7, c=entropy, cmap="viridis")
    fig.colorbar(points, ax=axes[2], label="predictive entropy")
    axes[2].set_title("uncertainty")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return _png(fig)
