"""Speed benchmark: training and inference throughput, peak memory, MC-dropout cost and fusion
overhead of every model, at 64 and 224 px, on this machine's CPU.

Timing reuses model_cost.py (model and backbone(s) timed back to back) and mc_cost.py (one pass,
fast and naive MC back to back); ratios are medians of per-repeat ratios within this one run.

    python benchmarks/speed.py --out docs/results/speed_cpu.json [--quick]
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mc_cost  # noqa: E402
import model_cost  # noqa: E402
from _common import machine, write_json  # noqa: E402

import dualfuse  # noqa: E402
from dualfuse.models.summary import example_inputs  # noqa: E402

MODELS = {  # table name -> create_model arguments (3-channel input, the library defaults)
    "dcat": dict(name="dcat"),
    "drifa_net": dict(name="drifa_net", modalities=2, mc_dropout="paper"),
    "resnet18": dict(name="timm_classifier", backbone="resnet18"),
    "efficientnet_b4": dict(name="timm_classifier", backbone="efficientnet_b4"),
    "concat_fusion": dict(name="concat_fusion"),
}
COLUMNS = (  # header, row key, format spec
    ("model", "model", ""), ("px", "px", "d"), ("train img/s", "train_images_per_s", ".1f"),
    ("infer img/s", "infer_images_per_s", ".1f"), ("train MB", "train_peak_mb", ".0f"),
    ("infer MB", "infer_peak_mb", ".0f"), ("MC fast ×1", "mc_fast_ratio", ".2f"),
    ("MC naive ×1", "mc_naive_ratio", ".2f"), ("fwd ×bb", "forward_overhead", ".2f"),
    ("train ×bb", "train_overhead", ".2f"),
)


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_memory() -> None:
    """Hand freed memory back to the OS, so the next model's baseline is its own."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _peak_rss_mb(step, baseline_kb: int) -> float | None:
    """RSS high-water mark of `step()` above `baseline_kb` (Linux: clear_refs 5 resets VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    step()
    return (_status_kb("VmHWM") - baseline_kb) / 1024


def peak_memory(config: dict, img_size: int, batch_size: int) -> dict:
    """Peak RSS of one inference pass and of one training step, over the process with the model built."""
    _release_memory()
    kwargs = dict(config)
    model = dualfuse.create_model(kwargs.pop("name"), **kwargs)
    inputs = example_inputs(model, img_size, batch_size)
    baseline = _status_kb("VmRSS")

    def infer():
        model.eval()
        with torch.no_grad():
            model(inputs)

    def train():
        model.train()
        model_cost._scalar(model(inputs)).backward()

    # The model is freed when this returns; the next measurement starts with `_release_memory()`.
    return {"infer_peak_mb": _peak_rss_mb(infer, baseline), "train_peak_mb": _peak_rss_mb(train, baseline)}


def measure(name: str, img_size: int, batch_size: int, mc_batch: int, repeats: int, warmup: int,
            samples: int) -> dict:
    """One table row: model_cost times (throughput, fusion overhead), MC ratios, peak memory."""
    config = MODELS[name]
    kwargs = {k: v for k, v in config.items() if k != "name"}
    cost = model_cost.measure(config["name"], img_size, batch_size, repeats, warmup, label=name, **kwargs)
    mc = mc_cost.measure_model(name, config, img_size, mc_batch, samples, repeats, warmup)
    return {
        **cost,
        "train_images_per_s": 1000 / cost["train_step_ms_per_image"],
        "infer_images_per_s": 1000 / cost["forward_ms_per_image"],
        **peak_memory(config, img_size, batch_size),
        "mc_samples": samples, "mc_batch_size": mc_batch,
        "mc_fast_ratio": mc["fast_ratio"], "mc_naive_ratio": mc["naive_ratio"],
    }


def print_table(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for header, _, _ in COLUMNS:
        table.add_column(header, justify="left" if header == "model" else "right")
    for r in rows:
        table.add_row(*("n/a" if r[key] is None else format(r[key], spec) for _, key, spec in COLUMNS))
    Console(width=max(Console().width, 140)).print(table)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 224])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 4],
                        help="throughput and memory batch, one per --sizes entry")
    parser.add_argument("--mc-batch-sizes", nargs="+", type=int, default=[8, 2],
                        help="MC cost batch, one per --sizes entry")
    parser.add_argument("--samples", type=int, default=30, help="T, the MC-dropout samples")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 repeats, 1 warm-up, 10 MC samples")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args = parser.parse_args(argv)
    for option in ("batch_sizes", "mc_batch_sizes"):
        if len(getattr(args, option)) != len(args.sizes):
            parser.error(f"--{option.replace('_', '-')} needs one value per --sizes entry ({len(args.sizes)})")
    if args.quick:
        args.repeats, args.warmup, args.samples = 2, 1, 10
    torch.set_num_threads(args.threads)

    command = "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for size, batch, mc_batch in zip(args.sizes, args.batch_sizes, args.mc_batch_sizes):
        for name in args.models:
            rows.append(measure(name, size, batch, mc_batch, args.repeats, args.warmup, args.samples))
            print(f"{name} @ {size} px: {rows[-1]['train_images_per_s']:.1f} train img/s", flush=True)
            # Written after every row, so an interrupted run keeps what it measured.
            write_json(args.out, {"machine": machine("cpu"), "command": command.strip(), "repeats": args.repeats,
                                  "rows": rows})
    print_table(rows, f"speed, CPU, {args.threads} threads, median of {args.repeats}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
