"""One interface over the three ways to run an exported model: eager PyTorch, onnxruntime, TorchScript.

Each runner takes and returns torch tensors in graph order (images per modality; state tensors and
masks; logits per task), so the parity check compares them without knowing which is which.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from dualfuse.deploy.graphs import SplitModel

GRAPHS = ("deterministic", "stochastic", "model")


class EagerRunner:
    """The PyTorch model itself: the reference every export is checked against."""

    name = "PyTorch"

    def __init__(self, split: SplitModel):
        self.split = split

    @torch.no_grad()
    def deterministic(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.split.deterministic(*images))

    @torch.no_grad()
    def stochastic(self, states: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.split.stochastic(*states, *masks))

    @torch.no_grad()
    def model(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        return list(self.split.full(*images))


class OnnxRunner:
    """onnxruntime sessions of the exported graphs (CPU), fed by input name."""

    def __init__(self, folder: Path, files: dict[str, str], threads: int | None = None):
        import onnxruntime

        self.name = f"onnxruntime {onnxruntime.__version__}"
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: shape-inference notes are not findings
        self.sessions = {graph: onnxruntime.InferenceSession(str(folder / file), options,
                                                             providers=["CPUExecutionProvider"])
                         for graph, file in files.items()}

    def _run(self, graph: str, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        session = self.sessions[graph]
        feed = {node.name: np.ascontiguousarray(t.numpy(), dtype=np.float32)
                for node, t in zip(session.get_inputs(), tensors)}
        return [torch.from_numpy(out) for out in session.run(None, feed)]

    def deterministic(self, images):
        return self._run("deterministic", images)

    def stochastic(self, states, masks):
        return self._run("stochastic", [*states, *masks])

    def model(self, images):
        return self._run("model", images)


class TorchScriptRunner:
    """The traced TorchScript modules, loaded back from disk as a runtime without dualfuse would."""

    name = f"TorchScript (torch {torch.__version__})"

    def __init__(self, folder: Path, files: dict[str, str]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript is deprecated, not gone
            self.modules = {graph: torch.jit.load(str(folder / file), map_location="cpu").eval()
                            for graph, file in files.items()}

    @torch.no_grad()
    def deterministic(self, images):
        return list(self.modules["deterministic"](*images))

    @torch.no_grad()
    def stochastic(self, states, masks):
        return list(self.modules["stochastic"](*states, *masks))

    @torch.no_grad()
    def model(self, images):
        return list(self.modules["model"](*images))
