"""The parity check every export runs: the exported graphs against PyTorch, on real images.

Three numbers, each the largest absolute difference of a class probability over all images and
tasks (temperature-scaled as the calibration says):

* `deterministic`: PyTorch's eval-mode model vs the exported deterministic graph followed by the
  stochastic graph with masks of ones;
* `mc_mean`: the mean over T MC-dropout samples, PyTorch vs export, with the same masks
  (`masks.draw_masks`, per case, as `dualfuse serve` draws them);
* `model` (bundles): the single whole-network graph vs PyTorch's eval-mode model.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from dualfuse.api.loading import content_ids
from dualfuse.deploy.graphs import SplitModel
from dualfuse.deploy.masks import draw_masks, repeat_rows

TOLERANCE = 1e-4
CHUNK = 25  # images per call: T*CHUNK rows go through the stochastic graph at once


@dataclass
class Parity:
    runtime: str
    images: int
    mc_samples: int
    seed: int
    deterministic: float
    mc_mean: float
    model: float | None = None
    tolerance: float = TOLERANCE

    @property
    def passed(self) -> bool:
        return max(self.deterministic, self.mc_mean, self.model or 0.0) <= self.tolerance

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "reference": f"PyTorch {torch.__version__}", "images": self.images,
                "mc_samples": self.mc_samples, "seed": self.seed, "tolerance": self.tolerance,
                "max_abs_diff": {"deterministic": self.deterministic, "mc_mean": self.mc_mean,
                                 **({"model": self.model} if self.model is not None else {})},
                "passed": self.passed}

    def line(self) -> str:
        text = (f"parity, {self.runtime} vs PyTorch on {self.images} images: max |Δp| deterministic "
                f"{self.deterministic:.2e}, MC mean (T={self.mc_samples}, same masks) {self.mc_mean:.2e}")
        if self.model is not None:
            text += f", whole-network graph {self.model:.2e}"
        return text + f" (tolerance {self.tolerance:.0e})"


def _probs(logits: list[torch.Tensor], tasks: list[str], temperature: Mapping[str, float]) -> list[torch.Tensor]:
    return [torch.softmax(t.double() / temperature.get(task, 1.0), dim=-1) for t, task in zip(logits, tasks)]


def _max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


def case_ids(split: SplitModel, images: list[torch.Tensor]) -> list[str]:
    """The ids `dualfuse serve` gives these cases (a hash of their pixels): what their masks follow."""
    return content_ids(images[0] if len(images) == 1 else dict(zip(split.modalities, images)))


def check_parity(split: SplitModel, reference, exported, images: list[torch.Tensor], samples: int, seed: int,
                 temperature: Mapping[str, float], with_model: bool = False) -> Parity:
    """Run `reference` (eager) and `exported` on `images` (one (N, C, H, W) tensor per modality)."""
    tasks = split.tasks
    worst = {"deterministic": 0.0, "mc_mean": 0.0, "model": 0.0}
    total = len(images[0])
    for start in range(0, total, CHUNK):
        batch = [x[start:start + CHUNK] for x in images]
        rows = len(batch[0])
        expected = _probs(reference.model(batch), tasks, temperature)
        states = exported.deterministic(batch)
        got = _probs(exported.stochastic(states, split.ones(rows)), tasks, temperature)
        worst["deterministic"] = max(worst["deterministic"], _max_diff(expected, got))
        if with_model:
            whole = _probs(exported.model(batch), tasks, temperature)
            worst["model"] = max(worst["model"], _max_diff(expected, whole))
        masks = draw_masks(split.calls, case_ids(split, batch), samples, seed)
        reference_states = reference.deterministic(batch)
        means = []
        for runner, state in ((reference, reference_states), (exported, states)):
            logits = runner.stochastic([repeat_rows(s, samples) for s in state], masks)
            probs = _probs(logits, tasks, temperature)
            means.append([p.reshape(samples, rows, -1).mean(dim=0) for p in probs])
        worst["mc_mean"] = max(worst["mc_mean"], _max_diff(*means))
    return Parity(exported.name, total, samples, seed, worst["deterministic"], worst["mc_mean"],
                  worst["model"] if with_model else None)
