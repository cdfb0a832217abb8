"""Parameter and multiply-accumulate counts, for `dualfuse models` and benchmarks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from dualfuse.models.registry import create_model, list_models, model_description


def example_inputs(model: nn.Module, img_size: int, batch_size: int = 1):
    """A random input of the structure the model's `forward` takes (one tensor, or one per modality)."""
    if model.multi_input:
        return {name: torch.randn(batch_size, chans, img_size, img_size)
                for name, chans in zip(model.modalities, model.in_chans)}
    return torch.randn(batch_size, model.in_chans, img_size, img_size)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def _cpu_attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# PyTorch's counter knows the CUDA attention kernels but not the CPU one that
# `scaled_dot_product_attention` dispatches to here; without this, attention would count as free.
_EXTRA_FLOP_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


@torch.no_grad()
def count_macs(model: nn.Module, inputs) -> int:
    """Multiply-accumulates of one eval-mode forward pass (PyTorch's FLOP counter / 2).

    Counts convolutions, matrix products and attention; element-wise work is not counted, as in
    most published MAC figures.
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOP_FORMULAS)
    with counter:
        model(inputs)
    model.train(was_training)
    return counter.get_total_flops() // 2


def summarize_models(names: Sequence[str] | None = None, img_size: int = 224, in_chans: int = 3,
                     num_classes: int = 2) -> list[dict]:
    """One row per model with default settings: parameters, trainable parameters, MACs per image."""
    rows = []
    for name in names or list_models():
        model = create_model(name, in_chans=in_chans, num_classes=num_classes)
        inputs = example_inputs(model, img_size)
        params, trainable = count_params(model)
        rows.append({
            "model": name,
            "description": model_description(name),
            "num_inputs": len(inputs) if isinstance(inputs, dict) else 1,
            "img_size": img_size,
            "in_chans": in_chans,
            "params": params,
            "trainable_params": trainable,
            "macs": count_macs(model, inputs),
        })
    return rows
