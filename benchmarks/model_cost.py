"""Model cost on this machine: forward and train-step time per image, and the fusion overhead.

For each model and input size, time the full model and the backbone(s) it is built on, alternating
the two in one process so machine noise hits both alike, and report median times per image and their
ratio (the cost of the fusion). Target for DCAT: train step <= 1.25x its two truncated backbones.

    python benchmarks/model_cost.py --out benchmarks/results/model_cost.json
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import dualfuse
from dualfuse.models.inputs import upsample_to_min_size
from dualfuse.models.summary import count_macs, example_inputs

DCAT_TRAIN_TARGET = 1.25


class TrunksOnly(nn.Module):
    """The backbone part of a model: what it would cost to run its CNN(s) with no fusion at all."""

    def __init__(self, trunks: list[nn.Module], min_input_size: int = 0, per_modality: bool = False):
        super().__init__()
        self.trunks = nn.ModuleList(trunks)
        self.min_input_size = min_input_size
        self.per_modality = per_modality

    def forward(self, inputs):
        images = list(inputs.values()) if self.per_modality else [inputs] * len(self.trunks)
        outputs = []
        for trunk, x in zip(self.trunks, images):
            out = trunk(upsample_to_min_size(x, self.min_input_size))
            outputs.extend(out if isinstance(out, list) else [out])
        return outputs


class PlainBranches(nn.Module):
    """DRIFA-Net's branches without MFA and MIFA: M plain ResNet-18 trunks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return self.model.forward_features(inputs)


def model_and_backbone(name: str, **kwargs) -> tuple[nn.Module, nn.Module]:
    """The model built with `kwargs`, and the same backbone(s) with no fusion."""
    model = dualfuse.create_model(name, **kwargs)
    if name == "dcat":
        return model, TrunksOnly([model.eff, model.res], model.min_input_size)
    if name == "drifa_net":
        plain_kwargs = {**kwargs, "use_mfa": False, "use_mifa": False, "mc_dropout": "head"}
        return model, PlainBranches(dualfuse.create_model("drifa_net", **plain_kwargs))
    if name == "timm_classifier":
        return model, TrunksOnly([model.backbone], model.min_input_size)
    if name == "concat_fusion":
        return model, TrunksOnly(list(model.trunks), model.min_input_size)
    raise ValueError(f"no backbone reference defined for {name!r}")


def _scalar(out) -> torch.Tensor:
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return sum(o.float().mean() for o in out)
    return out.float().mean()


def _time_forward(module: nn.Module, inputs) -> float:
    module.eval()
    start = time.perf_counter()
    with torch.no_grad():
        module(inputs)
    return time.perf_counter() - start


def _time_train_step(module: nn.Module, inputs) -> float:
    module.train()
    module.zero_grad(set_to_none=True)
    start = time.perf_counter()
    _scalar(module(inputs)).backward()
    return time.perf_counter() - start


def measure(name: str, img_size: int, batch_size: int, repeats: int, warmup: int, label: str | None = None,
            **kwargs) -> dict:
    """Median per-image times of model and backbone(s); `kwargs` go to `create_model`."""
    torch.manual_seed(0)
    model, backbone = model_and_backbone(name, **kwargs)
    inputs = example_inputs(model, img_size, batch_size)
    times = {key: [] for key in ("fwd", "train", "bb_fwd", "bb_train")}
    for step in range(warmup + repeats):
        sample = {
            "fwd": _time_forward(model, inputs), "bb_fwd": _time_forward(backbone, inputs),
            "train": _time_train_step(model, inputs), "bb_train": _time_train_step(backbone, inputs),
        }
        if step >= warmup:
            for key, value in sample.items():
                times[key].append(value)
    per_image_ms = {key: 1000 * statistics.median(values) / batch_size for key, values in times.items()}
    # Ratios per repeat (model and backbone timed back to back), then their median.
    fwd_ratios = [m / b for m, b in zip(times["fwd"], times["bb_fwd"])]
    train_ratios = [m / b for m, b in zip(times["train"], times["bb_train"])]
    single = example_inputs(model, img_size, 1)
    return {
        "model": label or name,
        "px": img_size,
        "batch_size": batch_size,
        "repeats": repeats,
        "params": sum(p.numel() for p in model.parameters()),
        "backbone_params": sum(p.numel() for p in backbone.parameters()),
        "macs": count_macs(model, single),
        "backbone_macs": count_macs(backbone, single),
        "forward_ms_per_image": per_image_ms["fwd"],
        "train_step_ms_per_image": per_image_ms["train"],
        "backbone_forward_ms_per_image": per_image_ms["bb_fwd"],
        "backbone_train_step_ms_per_image": per_image_ms["bb_train"],
        "forward_overhead": statistics.median(fwd_ratios),
        "train_overhead": statistics.median(train_ratios),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=dualfuse.list_models())
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/model_cost.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    rows = [measure(name, size, args.batch_size, args.repeats, args.warmup)
            for size in args.sizes for name in args.models]
    machine = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
               "torch": torch.__version__, "threads": args.threads, "device": "cpu"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    tmp.replace(args.out)

    table = Table(title=f"model cost, CPU, {args.threads} threads, batch {args.batch_size}, median of {args.repeats}")
    for column in ("model", "px", "GMACs", "fwd ms/img", "train ms/img", "bb fwd", "bb train", "fwd ×bb", "train ×bb"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in rows:
        table.add_row(r["model"], str(r["px"]), f"{r['macs'] / 1e9:.2f}", f"{r['forward_ms_per_image']:.1f}",
                      f"{r['train_step_ms_per_image']:.1f}", f"{r['backbone_forward_ms_per_image']:.1f}",
                      f"{r['backbone_train_step_ms_per_image']:.1f}", f"{r['forward_overhead']:.2f}",
                      f"{r['train_overhead']:.2f}")
    console = Console(width=max(Console().width, 120))
    console.print(table)
    for r in rows:
        if r["model"] == "dcat":
            verdict = "meets" if r["train_overhead"] <= DCAT_TRAIN_TARGET else "misses"
            console.print(f"DCAT @ {r['px']} px: train step {r['train_overhead']:.2f}x its truncated backbones "
                          f"({verdict} the {DCAT_TRAIN_TARGET}x target)")
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
