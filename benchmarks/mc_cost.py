"""MC-dropout cost on this machine: T samples with the fast path and naively, against one forward pass.

For each model and input size, time one deterministic eval-mode forward pass, T MC-dropout samples
with the fast path (`mc_sample_fast`: deterministic prefix once, stochastic rest batched) and T
naive full passes (`mc_sample_naive`), back to back in every repeat so machine noise hits all
three alike; report median times and the medians of the per-repeat ratios fast/one-pass and
naive/one-pass. Target for DCAT: T = 30 in <= 1.3x one deterministic pass.

    python benchmarks/mc_cost.py --out benchmarks/results/mc_cost.json
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

import dualfuse
from dualfuse.models.summary import example_inputs
from dualfuse.uncertainty.mc_dropout import mc_sample_fast, mc_sample_naive

DCAT_FAST_TARGET = 1.3
MODEL_CONFIGS = {
    "dcat": dict(name="dcat"),
    "drifa_paper": dict(name="drifa_net", modalities=2, mc_dropout="paper"),
    "drifa_head": dict(name="drifa_net", modalities=2, mc_dropout="head"),
    "timm_classifier": dict(name="timm_classifier"),
    "resnet18": dict(name="timm_classifier", backbone="resnet18"),
    "efficientnet_b4": dict(name="timm_classifier", backbone="efficientnet_b4"),
    "concat_fusion": dict(name="concat_fusion"),
}
DEFAULT_MODELS = ("dcat", "drifa_paper", "drifa_head")
TABLE_COLUMNS = (  # header, row key, format spec
    ("model", "model", ""), ("px", "px", "d"), ("batch", "batch_size", "d"), ("1 pass ms", "one_pass_ms", ".1f"),
    ("fast ms", "fast_ms", ".1f"), ("naive ms", "naive_ms", ".1f"), ("fast ×1", "fast_ratio", ".2f"),
    ("naive ×1", "naive_ratio", ".2f"),
)


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def _one_pass(model, inputs) -> None:
    model.eval()
    model(inputs)


def measure(config_id: str, img_size: int, batch_size: int, samples: int, repeats: int, warmup: int,
            chunk: int | None) -> dict:
    """`measure_model` for one of MODEL_CONFIGS."""
    return measure_model(config_id, MODEL_CONFIGS[config_id], img_size, batch_size, samples, repeats, warmup, chunk)


def measure_model(config_id: str, config: dict, img_size: int, batch_size: int, samples: int, repeats: int,
                  warmup: int, chunk: int | None = None) -> dict:
    """Median times of one pass, fast and naive MC, for the model `create_model(**config)`."""
    torch.manual_seed(0)
    config = dict(config)
    model = dualfuse.create_model(config.pop("name"), **config).eval()
    inputs = example_inputs(model, img_size, batch_size)
    times = {"one": [], "fast": [], "naive": []}
    for step in range(warmup + repeats):
        sample = {
            "one": _timed(lambda: _one_pass(model, inputs)),
            "fast": _timed(lambda step=step: mc_sample_fast(model, inputs, samples, chunk=chunk, seed=step)),
            "naive": _timed(lambda step=step: mc_sample_naive(model, inputs, samples, seed=step)),
        }
        if step >= warmup:
            for key, value in sample.items():
                times[key].append(value)
    ms = {key: 1000 * statistics.median(values) for key, values in times.items()}
    return {
        "model": config_id,
        "px": img_size,
        "batch_size": batch_size,
        "samples": samples,
        "chunk": chunk,
        "repeats": repeats,
        "one_pass_ms": ms["one"],
        "fast_ms": ms["fast"],
        "naive_ms": ms["naive"],
        # Ratios per repeat (all three timed back to back), then their median.
        "fast_ratio": statistics.median(f / o for f, o in zip(times["fast"], times["one"])),
        "naive_ratio": statistics.median(n / o for n, o in zip(times["naive"], times["one"])),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": "cpu",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=list(MODEL_CONFIGS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[8, 2],
                        help="one batch size per --sizes entry, or one for all")
    parser.add_argument("--samples", type=int, default=30, help="T, the MC-dropout samples")
    parser.add_argument("--chunk", type=int, default=None, help="samples per batched call of the fast path")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 1 warm-up")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=None, help="write the rows as a JSON list to this file")
    args = parser.parse_args(argv)
    if len(args.batch_sizes) not in (1, len(args.sizes)):
        parser.error(f"--batch-sizes needs 1 or {len(args.sizes)} values, got {args.batch_sizes}")
    if args.quick:
        args.repeats, args.warmup = 2, 1
    torch.set_num_threads(args.threads)
    batch_sizes = args.batch_sizes * len(args.sizes) if len(args.batch_sizes) == 1 else args.batch_sizes

    console = Console(width=max(Console().width, 100))
    rows = []
    for size, batch in zip(args.sizes, batch_sizes):
        for name in args.models:
            row = measure(name, size, batch, args.samples, args.repeats, args.warmup, args.chunk)
            console.print(f"{name} @ {size} px: fast {row['fast_ratio']:.2f}x, naive {row['naive_ratio']:.2f}x")
            rows.append(row)
    for r in rows:
        if r["model"] == "dcat":
            r["fast_ratio_target"] = DCAT_FAST_TARGET
            r["meets_target"] = r["fast_ratio"] <= DCAT_FAST_TARGET
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=2))
        tmp.replace(args.out)

    table = Table(title=f"MC dropout, T={args.samples}, CPU, {args.threads} threads, median of {args.repeats}")
    for header, _, _ in TABLE_COLUMNS:
        table.add_column(header, justify="left" if header == "model" else "right")
    for r in rows:
        table.add_row(*(format(r[key], spec) for _, key, spec in TABLE_COLUMNS))
    console.print(table)
    for r in (r for r in rows if "meets_target" in r):
        console.print(f"DCAT @ {r['px']} px: T={r['samples']} fast MC dropout costs {r['fast_ratio']:.2f}x one "
                      f"deterministic pass ({'meets' if r['meets_target'] else 'misses'} the "
                      f"{r['fast_ratio_target']}x target)")
    if args.out is not None:
        console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
