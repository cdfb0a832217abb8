"""The two networks an export holds, as plain tensor-in/tensor-out modules a tracer can follow.

A runtime without dualfuse must draw MC-dropout samples exactly as dualfuse does, so the model is
cut where `forward_deterministic` / `forward_stochastic` cut it:

* `DeterministicGraph`: images (one per modality) → the state, flattened into tensors `state_<i>`.
* `StochasticGraph`: the state plus one mask per dropout *call* (`mask_<k>`, in call order) →
  logits per task. Every dropout module of a copy of the model is replaced by `MaskedDropout`,
  which returns `x * mask`: the mask holds 0 or 1/(1-p), the very numbers torch's own dropout
  multiplies by (`x * bernoulli(1-p) / (1-p)`), so a mask of ones is eval mode exactly.

The calls, with their modules, probabilities and shapes, are found by running the stochastic part
once (`probe`): a module called twice (DRIFA-Net's head dropout, once per modality) takes two masks.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.modules.dropout import _DropoutNd

_FEATURE_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
EXPORTABLE_DROPOUT = (nn.Dropout, *_FEATURE_DROPOUT)
_ALPHA_DROPOUT = (nn.AlphaDropout, nn.FeatureAlphaDropout)


class ExportError(ValueError):
    """A model or export that cannot be done as asked: one line naming the model, file or option."""


# ----------------------------------------------------------------------------------------------------
# state ⇄ flat tensors


def flatten(state: Any) -> tuple[list[torch.Tensor], Any]:
    """The tensors of a state (a tensor, or lists/tuples/dicts of them) in order, and its layout."""
    if isinstance(state, torch.Tensor):
        return [state], "tensor"
    if isinstance(state, Mapping):
        keys = list(state)
        parts = [flatten(state[k]) for k in keys]
        return [t for ts, _ in parts for t in ts], ("dict", keys, [layout for _, layout in parts])
    if isinstance(state, (list, tuple)):
        parts = [flatten(v) for v in state]
        return [t for ts, _ in parts for t in ts], (type(state).__name__, [layout for _, layout in parts])
    raise ExportError(f"cannot export a model whose deterministic state holds a {type(state).__name__}")


def unflatten(tensors: Sequence[torch.Tensor], layout: Any) -> Any:
    """The inverse of `flatten`."""
    rest = list(tensors)

    def build(node):
        if node == "tensor":
            return rest.pop(0)
        if node[0] == "dict":
            return {key: build(child) for key, child in zip(node[1], node[2])}
        values = [build(child) for child in node[1]]
        return tuple(values) if node[0] == "tuple" else values

    return build(layout)


# ----------------------------------------------------------------------------------------------------
# dropout calls as mask inputs


@dataclass(frozen=True)
class DropoutCall:
    """One dropout call of the stochastic part: which module, its p, and the mask shape per case."""

    module: str
    p: float
    shape: tuple[int, ...]  # without the batch dimension; size-1 dims broadcast (feature dropout)
    kind: str  # "element" (Dropout) or "feature" (Dropout1d/2d/3d: one value per channel)

    def to_dict(self) -> dict:
        return {"module": self.module, "p": self.p, "kind": self.kind, "shape_per_case": list(self.shape),
                "values": [0.0, 1.0 / (1.0 - self.p)]}


class MaskFeed:
    """The masks of one stochastic call, handed out in call order; or, while probing, the calls seen."""

    def __init__(self):
        self.masks: list[torch.Tensor] | None = None
        self.index = 0
        self.calls: list[DropoutCall] | None = None

    def take(self, module: MaskedDropout, x: torch.Tensor) -> torch.Tensor:
        if self.calls is not None:
            shape = tuple(x.shape[1:])
            if module.kind == "feature" and x.dim() > 2:
                shape = (x.shape[1],) + (1,) * (x.dim() - 2)
            self.calls.append(DropoutCall(module.name, module.p, shape, module.kind))
            return x
        if self.masks is None or self.index >= len(self.masks):
            raise ExportError(f"dropout {module.name}: more dropout calls than masks given")
        mask = self.masks[self.index]
        self.index += 1
        return x * mask


class MaskedDropout(nn.Module):
    """Stands in for one dropout module: `x * mask`, the mask an explicit input of the graph."""

    def __init__(self, name: str, p: float, kind: str, feed: MaskFeed):
        super().__init__()
        self.name, self.p, self.kind = name, p, kind
        self.feed = feed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0:
            return x
        if self.p == 1.0:
            return x * torch.zeros((), dtype=x.dtype, device=x.device)
        return self.feed.take(self, x)


def masked_copy(model: nn.Module) -> tuple[nn.Module, MaskFeed]:
    """A copy of `model` (eval mode) whose dropout modules multiply by the feed's masks."""
    model = copy.deepcopy(model).eval()
    feed = MaskFeed()
    for name, module in list(model.named_modules()):
        if not isinstance(module, _DropoutNd):
            continue
        if isinstance(module, _ALPHA_DROPOUT):
            raise ExportError(f"{type(model).__name__}: {name} is {type(module).__name__}, whose noise is affine, "
                              "not a mask; only Dropout and Dropout1d/2d/3d can be exported")
        kind = "feature" if isinstance(module, _FEATURE_DROPOUT) else "element"
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, MaskedDropout(name, float(module.p), kind, feed))
    return model, feed


# ----------------------------------------------------------------------------------------------------
# the graphs


def model_inputs_of(model: nn.Module, images: Sequence[torch.Tensor]):
    """What `forward_deterministic` takes from positional images: a dict by modality, or one tensor."""
    if model.multi_input:
        return dict(zip(model.modalities, images))
    return images[0]


class DeterministicGraph(nn.Module):
    """Images in (one per modality), the flattened deterministic state out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        tensors, _ = flatten(self.model.forward_deterministic(model_inputs_of(self.model, images)))
        return tuple(tensors)


class StochasticGraph(nn.Module):
    """The flattened state and one mask per dropout call in, logits per task (in `tasks` order) out."""

    def __init__(self, model: nn.Module, feed: MaskFeed, layout: Any, num_state: int, tasks: Sequence[str]):
        super().__init__()
        self.model, self.feed, self.layout = model, feed, layout
        self.num_state, self.tasks = num_state, list(tasks)

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self.feed.masks, self.feed.index = list(tensors[self.num_state:]), 0
        try:
            logits = self.model.forward_stochastic(unflatten(tensors[:self.num_state], self.layout))
        finally:
            used, self.feed.masks = self.feed.index, None
        if used != len(tensors) - self.num_state:
            raise ExportError(f"{len(tensors) - self.num_state} masks given, {used} dropout calls made")
        return tuple(logits[task] for task in self.tasks)


class FullGraph(nn.Module):
    """Images in, eval-mode logits per task out: the whole network as one graph (bundles)."""

    def __init__(self, model: nn.Module, tasks: Sequence[str]):
        super().__init__()
        self.model, self.tasks = model, list(tasks)

    def forward(self, *images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model(model_inputs_of(self.model, images))
        return tuple(logits[task] for task in self.tasks)


@dataclass
class SplitModel:
    """A model cut for export: both graphs, the state layout, and the dropout calls in order."""

    deterministic: DeterministicGraph
    stochastic: StochasticGraph
    full: FullGraph
    layout: Any
    state_shapes: list[tuple[int, ...]]  # per case, without the batch dimension
    calls: list[DropoutCall]
    modalities: list[str]
    tasks: list[str]

    def ones(self, rows: int) -> list[torch.Tensor]:
        """Masks of ones for `rows` rows: the stochastic graph in eval mode."""
        return [torch.ones((rows, *call.shape)) for call in self.calls]


@torch.no_grad()
def split_model(model: nn.Module, example: Sequence[torch.Tensor], tasks: Sequence[str],
                modalities: Sequence[str]) -> SplitModel:
    """Cut `model` into its deterministic and masked stochastic graphs, probing them on `example`
    (one batch per modality, in `modalities` order)."""
    model = copy.deepcopy(model).eval()
    masked, feed = masked_copy(model)
    feed.calls = []
    state = masked.forward_deterministic(model_inputs_of(masked, example))
    if feed.calls:
        raise ExportError(f"{type(model).__name__}: dropout {feed.calls[0].module} runs before the "
                          "deterministic/stochastic split; its samples could not be drawn once per case")
    tensors, layout = flatten(state)
    masked.forward_stochastic(unflatten(tensors, layout))
    calls, feed.calls = feed.calls, None
    # Wrappers in eval mode too: exporters restore the wrapper's mode afterwards, recursively.
    return SplitModel(DeterministicGraph(model).eval(), StochasticGraph(masked, feed, layout, len(tensors), tasks).eval(),
                      FullGraph(model, tasks).eval(), layout, [tuple(t.shape[1:]) for t in tensors], calls,
                      list(modalities), list(tasks))
