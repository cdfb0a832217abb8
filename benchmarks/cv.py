"""Cross-validation benchmark on real data: run each row of configs/benchmarks/cv_rows.yaml through
`dualfuse cv` and record the pooled out-of-fold macro AUC, balanced accuracy and accuracy with their
95% CIs, each metric's mean ± sd over the folds, the K-model ensemble's test numbers where the set has
a test split, training time, the machine and the one command that reproduces the record.

    DUALFUSE_DATA=../shared/data python benchmarks/cv.py --datasets tb herlev ham10000 --seeds 0 1 2 \\
        --threads 1 --out docs/results/cv_cpu.json

Why cv: on a few hundred images one test split leaves a CI as wide as the differences that matter;
out of fold, every case is scored once by the model that never saw it. Records merge into --out by
(row, seed, device) after every run, so the matrix resumes: a (row, seed) recorded with the same cv
arguments is skipped (--redo reruns it), and a cv folder interrupted mid-fold continues at that fold
(`cross_validate` resumes it). Runs go through the public API (`dualfuse.api.cv.cross_validate`),
exactly what `dualfuse cv` does; each record names that command.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO_ROOT,
    SOURCE_PX,
    BenchmarkError,
    machine,
    mean_sd,
    read_json,
    read_rows,
    record_key,
    row_matrix_parser,
    run_matrix,
    show_table,
    write_json,
)

from dualfuse.evaluation.paired import case_predictions  # noqa: E402

ROWS_FILE = REPO_ROOT / "configs" / "benchmarks" / "cv_rows.yaml"
# The pooled out-of-fold numbers each record keeps (the library's metric names).
METRICS = ("roc_auc", "balanced_accuracy", "accuracy", "f1_macro")
STAMP = "cv-args.json"  # beside each cv folder: the cv arguments it was started with


def load_rows(path: Path = ROWS_FILE) -> list[dict]:
    """The row table, each row with its `folds`, `test_fraction` and `overrides` filled in, ids checked."""
    table, rows = read_rows(path)
    for row in rows:
        row.setdefault("folds", table.get("folds", 5))
        row.setdefault("test_fraction", 0.0)
    return rows


def select_rows(rows: list[dict], ids=None, datasets=None) -> list[dict]:
    """Rows matching every filter given, in --rows order; an unknown row id is an error, not an empty run."""
    unknown = set(ids or ()) - {r["id"] for r in rows}
    if unknown:
        raise BenchmarkError(f"unknown row id(s) {sorted(unknown)}; see {ROWS_FILE.relative_to(REPO_ROOT)}")
    chosen = [r for r in rows if (not ids or r["id"] in ids) and (not datasets or r["dataset"] in datasets)]
    return sorted(chosen, key=lambda r: ids.index(r["id"])) if ids else chosen


def run_dir(args: argparse.Namespace, row: dict, seed: int) -> Path:
    return args.runs_dir / row["id"] / f"seed{seed}"


def _value(value, seed: int) -> str:
    text = "null" if value is None else json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)
    return text.replace("{seed}", str(seed))


def config_argv(row: dict, seed: int, out: Path, accelerator: str | None = None) -> list[str]:
    """The run-config arguments of one row and seed (what `dualfuse cv` passes on to `train`'s parser)."""
    argv = [arg for config in row["configs"] for arg in ("--config", config)]
    for key, value in row["overrides"].items():
        argv += [f"--{key}", _value(value, seed)]
    argv += ["--train.seed", str(seed), "--output", str(out)]
    if accelerator:
        argv += ["--train.accelerator", accelerator]
    return argv


def cv_argv(row: dict, seed: int, out: Path, accelerator: str | None = None) -> list[str]:
    """The `dualfuse cv` arguments of one row and seed: cv's own options, then the run config."""
    options = ["--folds", str(row["folds"])]
    if row["test_fraction"]:
        options += ["--test-fraction", str(row["test_fraction"])]
    return options + config_argv(row, seed, out, accelerator)


def parse_row(row: dict, seed: int, out: Path, accelerator: str | None = None):
    """The validated run config of one row and seed, as `dualfuse cv` parses it."""
    from dualfuse.config import parse_run_args

    config, _ = parse_run_args([*config_argv(row, seed, out, accelerator), "--train.progress_bar", "false"])
    return config


def _device(accelerator: str | None) -> str:
    import torch

    return "cpu" if accelerator == "cpu" or not torch.cuda.is_available() else "cuda"


def weights(config) -> str:
    """What the folds started from: scratch, ImageNet, or what `model.init_from` holds, described so a
    reader need not open it (a dualfuse run: its backbone, the datasets it trained on, its epochs)."""
    pretrained = config.model.kwargs.get("pretrained")
    if config.model.init_from:
        return describe_init(Path(config.model.init_from))
    if pretrained:
        return "ImageNet (timm)" if pretrained is True else f"pretrained {pretrained}"
    return "scratch"


def describe_init(source: Path) -> str:
    """One line on an init_from source: a run folder (or its model folder) by what it trained, anything else
    (a weights file) by its name."""
    import yaml

    config_file = next((d / "config.yaml" for d in (source, source.parent) if (d / "config.yaml").is_file()), None)
    if config_file is None:
        return f"init_from {source.name}"
    run = yaml.safe_load(config_file.read_text())
    kwargs = run["model"].get("kwargs") or {}
    backbone = (kwargs.get("trunk_kwargs") or {}).get("backbone") or kwargs.get("backbone") or run["model"]["name"]
    cap = run["data"].get("max_train_cases")
    return (f"{backbone} trained on {', '.join(run['data']['sources'])} ({run['train']['epochs']} epochs"
            f"{f', ≤ {cap} images each' if cap else ''})")


def _metric(entry: dict | None) -> dict | None:
    return None if entry is None else {k: entry.get(k) for k in ("value", "ci_low", "ci_high")}


def reproduce_command(row: dict, seed: int, args: argparse.Namespace) -> str:
    """The one command that repeats this record (same row, seed, folds, device and overrides)."""
    command = ["python", "benchmarks/cv.py", "--rows", row["id"], "--seeds", str(seed)]
    for option in ("folds", "accelerator", "threads"):
        if getattr(args, option):
            command += [f"--{option}", str(getattr(args, option))]
    if args.set:
        command += ["--set", *args.set]
    return "DUALFUSE_DATA=../shared/data " + shlex.join(command)


def prepare(out: Path, argv: list[str], redo: bool) -> None:
    """Keep a cv folder started with these arguments (cross_validate resumes it); start over when it was
    started with others (rows or --set changed) or with `redo`."""
    stamp = out.parent / f"{out.name}.{STAMP}"
    if out.exists() and (redo or read_json(stamp, None) != argv):
        shutil.rmtree(out)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    write_json(stamp, argv)


def oof_cases(out: Path, task: str) -> dict:
    """Each folded case's out-of-fold probabilities: rows of one dataset and seed share their folds, so
    make_docs.py pairs them case by case (model A − model B on the same cases, scored by fold models
    that never saw them)."""
    return case_predictions(out / "predictions.csv", task, split=None)


def run_one(row: dict, seed: int, args: argparse.Namespace) -> dict:
    """Cross-validate one row with one seed; return its record."""
    from dualfuse.api.cv import cross_validate

    out = run_dir(args, row, seed)
    argv = cv_argv(row, seed, out, args.accelerator)
    init_from = row["overrides"].get("model.init_from")
    if init_from and not Path(_value(init_from, seed)).exists():
        raise BenchmarkError(f"row {row['id']}: model.init_from {_value(init_from, seed)} not found; run "
                             f"`python benchmarks/pretrain.py --heldout {row['dataset']} --trunks resnet18 "
                             f"--trunks-only --seeds {seed}` first")
    config = parse_row(row, seed, out, args.accelerator)
    if config.data.max_eval_cases:
        raise BenchmarkError(f"row {row['id']}: data.max_eval_cases would leave folded cases unscored out of fold")
    prepare(out, argv, args.redo)
    load = os.getloadavg()[0]  # a busy shared machine slows training: keep the evidence with the time
    started = time.perf_counter()
    summary = cross_validate(config, folds=row["folds"], test_fraction=row["test_fraction"])
    if not summary or summary.get("interrupted"):  # Ctrl-C or SIGTERM: stop the matrix, not just this row
        raise KeyboardInterrupt(f"row {row['id']} seed {seed}: cv interrupted; run the benchmark again to resume it")
    (task, scored), = summary["tasks"].items()
    folds = [read_json(out / Path(model).parent / "metrics.json", {}) for model in summary["fold_models"]]
    ensemble = (summary.get("ensemble") or {}).get(task, {}).get("test")
    return {
        "row": row["id"], "seed": seed, "suite": row["suite"], "dataset": row["dataset"], "model": row["model"],
        **machine(_device(args.accelerator)),
        "source_px": SOURCE_PX.get(row["dataset"]), "img_size": config.data.img_size,
        "in_chans": config.model.kwargs.get("in_chans"), "weights": weights(config),
        "max_train_cases": config.data.max_train_cases, "epochs": config.train.epochs,
        "early_stopping_patience": config.train.early_stopping_patience,
        "epochs_trained": [f.get("epochs_trained") for f in folds],
        "folds": row["folds"], "test_fraction": row["test_fraction"], "cases": summary["cv"]["cases"],
        "out_of_fold": {**{key: _metric(scored["out_of_fold"].get(key)) for key in METRICS},
                        "n": scored["out_of_fold"]["n"], "ci_method": scored["out_of_fold"].get("ci_method")},
        "per_fold": {key: summary["folds"].get(task, {}).get("val", {}).get(key) for key in METRICS},
        "ensemble_test": None if ensemble is None else {**{key: _metric(ensemble.get(key)) for key in METRICS},
                                                        "n": ensemble["n"]},
        "train_seconds": summary["train_seconds"],  # every fold's, those of a resumed cv's earlier calls too
        # this call's time: it excludes the folds an earlier, interrupted call trained (folds_resumed)
        "wall_seconds": round(time.perf_counter() - started, 1), "folds_resumed": summary.get("folds_resumed", []),
        "load_avg_at_start": round(load, 2),
        "predictions": str(out / "predictions.csv"), "per_case": oof_cases(out, task),
        "command": reproduce_command(row, seed, args),
        "cv_command": "dualfuse cv " + shlex.join(argv),
    }


def already_measured(records: list[dict], row: dict, seed: int, device: str, args: argparse.Namespace) -> bool:
    """Resume: a record of this (row, seed, device) made with the same cv arguments (configs, overrides,
    folds; cv_rows.yaml may have changed since) is kept. CPU threads only change the speed."""
    command = "dualfuse cv " + shlex.join(cv_argv(row, seed, run_dir(args, row, seed), args.accelerator))
    return any(record_key(r) == (row["id"], seed, device) and r.get("cv_command") == command for r in records)


def print_table(records: list[dict], title: str) -> None:
    """Mean ± sd over seeds per row and device of the pooled out-of-fold numbers."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        groups.setdefault((record["row"], record["device"]), []).append(record)
    show_table(title, ("row", "device", "px", "folds", "seeds", "OOF AUC", "OOF bal. acc", "OOF acc", "train s"), [
        [row, device, f"{items[0]['source_px']} → {items[0]['img_size']}", str(items[0]["folds"]), str(len(items)),
         *(mean_sd([(i["out_of_fold"][k] or {}).get("value") for i in items])
           for k in ("roc_auc", "balanced_accuracy", "accuracy")),
         mean_sd([i["train_seconds"] for i in items], 0)]
        for (row, device), items in groups.items()], left=2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = row_matrix_parser(__doc__.splitlines()[0], Path("docs/results/cv_cpu.json"),
                               Path("benchmarks/results/cv_runs"), ROWS_FILE)
    parser.add_argument("--folds", type=int, help="K for every selected row (default: each row's, 5)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        rows = select_rows(load_rows(args.rows_file), args.rows, args.datasets)
        if not rows:
            raise BenchmarkError("no row matches the filters")
        extra = dict(item.split("=", 1) for item in args.set if "=" in item)
        if len(extra) != len(args.set):
            raise BenchmarkError(f"--set takes KEY=VALUE, got {args.set}")
        if args.folds is not None and args.folds < 2:
            raise BenchmarkError(f"--folds must be at least 2, got {args.folds}")
    except BenchmarkError as error:
        print(f"cv.py: {error}", file=sys.stderr)
        return 2
    rows = [row | {"overrides": {**row["overrides"], **extra}, "folds": args.folds or row["folds"]} for row in rows]
    # Seed-major: a short session covers every row once before it repeats one.
    items = [(seed, row) for seed in args.seeds for row in rows]
    if args.list:
        for seed, row in items:
            print(row["id"], "dualfuse cv", shlex.join(cv_argv(row, seed, run_dir(args, row, seed), args.accelerator)))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    done, failures = run_matrix("cv.py", items, run_one, already_measured, args, _device(args.accelerator),
                                {"benchmark": "cv"})
    if done:
        print_table(done, f"cross-validation benchmark ({len(done)} runs) -> {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
