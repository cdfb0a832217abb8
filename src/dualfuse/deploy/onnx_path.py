"""Serving through onnxruntime: the exported graphs, dualfuse's per-case masks, several times faster on CPU.

At startup the loaded model is exported (deterministic and masked stochastic graphs, as
`dualfuse export` writes them), loaded into onnxruntime sessions, and checked against PyTorch on a
few random inputs with the export's tolerance; the temporary files are removed once the sessions
hold the graphs. A case's T samples then come from the stochastic graph fed with the masks
`masks.draw_masks` draws for that case, the masks dualfuse's own MC dropout draws, so answers
agree with the PyTorch path to ~1e-7. One network only: an ensemble is served by PyTorch.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from dualfuse.api import LoadedModel
from dualfuse.deploy.export import write_onnx
from dualfuse.deploy.graphs import ExportError, split_model
from dualfuse.deploy.masks import draw_masks, repeat_rows
from dualfuse.deploy.parity import check_parity
from dualfuse.deploy.runners import EagerRunner, OnnxRunner

_PROBE_ROWS = 4


class OnnxPredictor:
    """`(inputs per modality, case ids) → (eval-mode logits {task: (1, B, C)}, samples {task: (T, B, C)})`."""

    def __init__(self, loaded: LoadedModel, samples: int, opset: int = 17):
        if len(loaded.members) != 1:
            raise ExportError(f"onnxruntime serves one network; this model is an ensemble of {len(loaded.members)}")
        spec = loaded.spec
        prep = spec.preprocessing
        generator = torch.Generator().manual_seed(0)
        probe = [torch.randn(_PROBE_ROWS, prep.in_chans[m], prep.img_size, prep.img_size, generator=generator)
                 for m in spec.modalities]
        self.split = split_model(loaded.model, [x[:2] for x in probe], list(spec.tasks), spec.modalities)
        with tempfile.TemporaryDirectory(prefix="dualfuse-serve-") as folder:
            files = write_onnx(self.split, [x[:2] for x in probe], Path(folder), opset)
            self.runner = OnnxRunner(Path(folder), files)
        self.parity = check_parity(self.split, EagerRunner(self.split), self.runner, probe, max(samples, 2),
                                   loaded.seed, {})
        if not self.parity.passed:
            raise ExportError(f"onnxruntime disagrees with PyTorch on this model: {self.parity.line()}")
        self.samples, self.seed, self.tasks = samples, loaded.seed, list(spec.tasks)

    def __call__(self, images: list[torch.Tensor], case_ids: list[str]) -> tuple[dict, dict]:
        rows = len(case_ids)
        states = self.runner.deterministic(images)
        logits = self.runner.stochastic(states, self.split.ones(rows))
        members = {task: value.numpy()[None] for task, value in zip(self.tasks, logits)}
        if not self.samples:
            return members, {}
        masks = draw_masks(self.split.calls, case_ids, self.samples, self.seed)
        drawn = self.runner.stochastic([repeat_rows(s, self.samples) for s in states], masks)
        samples = {task: np.ascontiguousarray(value.numpy().reshape(self.samples, rows, -1))
                   for task, value in zip(self.tasks, drawn)}
        return members, samples
