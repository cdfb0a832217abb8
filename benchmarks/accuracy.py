"""Accuracy benchmark on real data: train each row of configs/benchmarks/rows.yaml, evaluate it with
MC dropout, and record test AUC / ACC / F1 with 95% CIs, ECE before and after temperature scaling,
AURC and training time, with the machine and the one command that reproduces the record.

    DUALFUSE_DATA=../shared/data python benchmarks/accuracy.py --suite cpu --seeds 0 \\
        --out docs/results/accuracy_cpu.json

Records are merged into --out by (row, seed, device), so a matrix can be run in pieces. Runs go
through the public API (`dualfuse.api.train`, then `evaluate` with MC samples), exactly
what `dualfuse train` and `dualfuse evaluate --mc-samples` do; each record also names those commands.
"""
from __future__ import annotations

import argparse
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
    merge_records,
    read_json,
    read_rows,
    record_key,
    row_matrix_parser,
    run_matrix,
    show_table,
    write_json,
)

from dualfuse.evaluation.paired import case_predictions  # noqa: E402

ROWS_FILE = REPO_ROOT / "configs" / "benchmarks" / "rows.yaml"
HEADLINE = {"auc": "roc_auc", "acc": "accuracy", "bacc": "balanced_accuracy", "f1": "f1_macro"}
# evaluate's calibration table per split: the eval-mode softmax and the MC predictor, each before and
# after the temperature fitted on the run's calibration split.
ECE_KEYS = {"ece": "softmax", "ece_temperature": "softmax_temperature",
            "ece_mc": "predictor", "ece_mc_temperature": "predictor_temperature"}


# Zip rows: training scores test *pairs* (the shorter set drawn again to fill up), so a zip row's test
# numbers come from one more evaluation with every test image of every set once, each beside ONE partner
# image from the training split, eval-mode softmax: what a single-dataset model of the same image is
# paired against. (The MC evaluation averages over the row's `partners`.)
ZIP_CASES = "evaluation_cases"
ZIP_PREDICTOR = "eval-mode softmax; each test image once, beside 1 partner from the training split"


def load_rows(path: Path = ROWS_FILE) -> list[dict]:
    """The row table, each row with `datasets` ({task or None: dataset}) filled in and ids checked."""
    _, rows = read_rows(path)
    for row in rows:
        dataset = row["dataset"]
        row["datasets"] = dict(dataset) if isinstance(dataset, dict) else {None: dataset}
    return rows


def select_rows(rows: list[dict], ids=None, datasets=None, models=None, suite=None) -> list[dict]:
    """Rows matching every filter given; an unknown row id is an error, not an empty run."""
    unknown = set(ids or ()) - {r["id"] for r in rows}
    if unknown:
        raise BenchmarkError(f"unknown row id(s) {sorted(unknown)}; see {ROWS_FILE.relative_to(REPO_ROOT)}")
    chosen = [r for r in rows
              if (not ids or r["id"] in ids)
              and (not datasets or set(r["datasets"].values()) & set(datasets))
              and (not models or r["model"].split()[0] in models)
              and (not suite or r["suite"] == suite)]
    return sorted(chosen, key=lambda r: ids.index(r["id"])) if ids else chosen  # --rows order is run order


def train_argv(row: dict, seed: int, run_dir: Path, accelerator: str | None, devices: str | None) -> list[str]:
    """The `dualfuse train` arguments of one row and seed."""
    argv = [arg for config in row["configs"] for arg in ("--config", config)]
    for key, value in row["overrides"].items():
        argv += [f"--{key}", str(value)]
    argv += ["--train.seed", str(seed), "--output", str(run_dir)]
    if accelerator:
        argv += ["--train.accelerator", accelerator]
    if devices:
        argv += ["--train.devices", devices]
    return argv


def _device(accelerator: str | None) -> str:
    import torch

    if accelerator == "cpu" or not torch.cuda.is_available():
        return "cpu"
    return "cuda"


def _metric(entry: dict) -> dict:
    return {"value": entry["value"], "ci_low": entry["ci_low"], "ci_high": entry["ci_high"]}


def task_record(task: str, dataset: str, trained: dict, evaluated: dict) -> dict:
    """One task's numbers: deterministic test metrics with CIs, MC test metrics, ECE and AURC."""
    test = trained["tasks"][task]["test"]
    mc_test = evaluated["tasks"][task]["test"]
    uncertainty = evaluated["uncertainty"][task]
    calibration = uncertainty["calibration"]["test"]
    record = {"dataset": dataset, "n_test": test["n"],
              **{key: _metric(test[name]) for key, name in HEADLINE.items()},
              "mc": {key: mc_test[name]["value"] for key, name in HEADLINE.items()},
              "temperature": uncertainty["temperature"], "aurc": uncertainty["selective"]["test"]["aurc"]}
    record.update({key: calibration[name]["ece"] for key, name in ECE_KEYS.items() if name in calibration})
    return record


def test_cases(run_dir: Path, task: str, classes: list[str]) -> dict:
    """The run's test predictions of `task` (eval-mode softmax, as the headline metrics), per case,
    for paired comparisons between models on the same cases (make_docs.py). A zip run's come from
    `ZIP_CASES` (each test image once), not from training's zipped test pairs."""
    folder = run_dir / ZIP_CASES if (run_dir / ZIP_CASES).is_dir() else run_dir
    return case_predictions(folder / "predictions.csv", task, classes)


def reproduce_command(row: dict, seed: int, args: argparse.Namespace) -> str:
    """The one command that repeats this record (same row, seed, device and overrides)."""
    command = ["python", "benchmarks/accuracy.py", "--rows", row["id"], "--seeds", str(seed),
               "--mc-samples", str(args.mc_samples)]
    for option in ("accelerator", "devices", "threads"):
        if getattr(args, option):
            command += [f"--{option}", str(getattr(args, option))]
    if args.set:
        command += ["--set", *args.set]
    return "DUALFUSE_DATA=../shared/data " + shlex.join(command)


def run_one(row: dict, seed: int, args: argparse.Namespace) -> dict:
    """Train and evaluate one row with one seed; return its record."""
    from dualfuse.api import evaluate, train
    from dualfuse.config import parse_run_args

    run_dir = args.runs_dir / row["id"] / f"seed{seed}"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # scratch output of an earlier benchmark run of this row
    argv = train_argv(row, seed, run_dir, args.accelerator, args.devices)
    load = os.getloadavg()[0]  # a busy shared machine slows training: keep the evidence with the time
    config, _ = parse_run_args([*argv, "--train.progress_bar", "false"])
    trained = train(config)
    if trained.get("interrupted"):  # Ctrl-C or SIGTERM: stop the matrix, not just this row
        raise KeyboardInterrupt(f"row {row['id']} seed {seed}: training interrupted")
    started = time.perf_counter()
    evaluated = evaluate(run_dir, mc_samples=args.mc_samples, partners=row.get("partners"))
    eval_seconds = time.perf_counter() - started
    if config.data.mode == "zip":
        evaluate(run_dir, splits=["test"], partners=1, output=run_dir / ZIP_CASES)
    datasets = row_datasets(row, trained)
    device = _device(args.accelerator)
    return {
        "row": row["id"], "seed": seed, "suite": row["suite"], "model": row["model"],
        **machine(device),
        **seen_by_model(config, datasets),
        "img_size": config.data.img_size, "epochs": config.train.epochs,
        "early_stopping_patience": config.train.early_stopping_patience,
        "epochs_trained": trained["epochs_trained"], "train_seconds": trained["train_seconds"],
        "eval_seconds": round(eval_seconds, 1), "mc_samples": args.mc_samples, "load_avg_at_start": round(load, 2),
        **({"partners": row["partners"]} if row.get("partners") is not None else {}),
        **({"test_predictor": ZIP_PREDICTOR} if config.data.mode == "zip" else {}),
        "command": reproduce_command(row, seed, args),
        "train_command": f"dualfuse train {shlex.join(argv)} && dualfuse evaluate {run_dir} "
                         f"--mc-samples {args.mc_samples}"
                         + (f" --partners {row['partners']}" if row.get("partners") is not None else "")
                         + (f" && dualfuse evaluate {run_dir} --split test --partners 1 --output {run_dir / ZIP_CASES}"
                            if config.data.mode == "zip" else ""),
        "tasks": task_records(run_dir, datasets, trained, evaluated),
    }


def row_datasets(row: dict, trained: dict) -> dict:
    """{task: dataset}; a single-dataset row names its one task from the trained run."""
    datasets = row["datasets"]
    if None in datasets:
        (task,) = trained["tasks"]
        datasets = {task: datasets[None]}
    return datasets


def task_records(run_dir: Path, datasets: dict, trained: dict, evaluated: dict) -> dict:
    import json

    zip_cases = run_dir / ZIP_CASES / "metrics.json"
    if zip_cases.is_file():  # a zip run: test numbers of every test image once (see ZIP_CASES)
        per_image = json.loads(zip_cases.read_text())["tasks"]
        trained = trained | {"tasks": {task: trained["tasks"][task] | {"test": per_image[task]["test"]}
                                       for task in trained["tasks"]}}
    return {task: {**task_record(task, dataset, trained, evaluated),
                   "per_case": test_cases(run_dir, task, config_classes(run_dir, task))}
            for task, dataset in datasets.items()}


def rescore(record: dict, row: dict, args: argparse.Namespace) -> dict:
    """The record's task numbers read again from its run folder (metrics.json and evaluation/), without
    training: for a fix in how numbers are read from a run, never for a change of protocol."""
    import json

    run_dir = args.runs_dir / row["id"] / f"seed{record['seed']}"
    trained = json.loads((run_dir / "metrics.json").read_text())
    evaluated = json.loads((run_dir / "evaluation" / "metrics.json").read_text())
    return record | {"tasks": task_records(run_dir, row_datasets(row, trained), trained, evaluated)}


def seen_by_model(config, datasets: dict) -> dict:
    """What the model actually saw, for the row's label: the source pixels' side (the most any input
    size can show), one dataset or several (zip), from scratch or from which weights."""
    pretrained = config.model.kwargs.get("pretrained")
    if config.model.init_from:
        weights = f"init_from {config.model.init_from}"
    elif pretrained:
        weights = "ImageNet (timm)" if pretrained is True else f"pretrained {pretrained}"
    else:
        weights = "scratch"
    names = sorted(set(datasets.values()))
    return {"source_px": {name: SOURCE_PX.get(name) for name in names},
            "modality": "single" if config.data.mode == "single" else f"zip of {len(config.data.sources)} datasets",
            "weights": weights, "max_train_cases": config.data.max_train_cases}


def config_classes(run_dir: Path, task: str) -> list[str]:
    import json

    return json.loads((run_dir / "model" / "model.json").read_text())["tasks"][task]


def print_table(records: list[dict], title: str) -> None:
    """Mean ± sd across seeds per row, task and device."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        for task, numbers in record["tasks"].items():
            groups.setdefault((record["row"], task, record["device"]), []).append(numbers | {
                "train_seconds": record["train_seconds"]})
    show_table(title, ("row", "task", "device", "seeds", "AUC", "ACC", "bal. ACC", "F1", "ECE", "ECE (T)", "AURC",
                       "train s"), [
        [row, task, device, str(len(items)),
         *(mean_sd([(i.get(k) or {}).get("value") for i in items]) for k in HEADLINE),
         *(mean_sd([i.get(k) for i in items]) for k in ("ece", "ece_temperature", "aurc")),
         mean_sd([i["train_seconds"] for i in items], 0)]
        for (row, task, device), items in groups.items()], left=3, width=140)


def already_measured(records: list[dict], row: dict, seed: int, device: str, args: argparse.Namespace) -> bool:
    """Resume: a record of this (row, seed, device) made with the same train arguments (configs and
    overrides, which rows.yaml may have changed since) and MC samples is kept; one made under another
    protocol is measured again. CPU threads only change the speed, so they do not count."""
    argv = shlex.join(train_argv(row, seed, args.runs_dir / row["id"] / f"seed{seed}", args.accelerator, args.devices))
    return any(record_key(r) == (row["id"], seed, device) and r.get("mc_samples") == args.mc_samples
               and f"dualfuse train {argv} " in r.get("train_command", "") for r in records)


def claim(claim_dir: Path | None, row: dict, seed: int) -> bool:
    """Take (row, seed) for this process; with a shared `claim_dir`, parallel lanes never run it twice."""
    if claim_dir is None:
        return True
    claim_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(claim_dir / f"{row['id']}-seed{seed}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def parse_args(argv=None) -> argparse.Namespace:
    parser = row_matrix_parser(__doc__.splitlines()[0], Path("benchmarks/results/accuracy.json"),
                               Path("benchmarks/results/runs"), ROWS_FILE)
    parser.add_argument("--models", nargs="+", help="only rows of these models (e.g. dcat resnet18)")
    parser.add_argument("--suite", choices=("cpu", "paper", "gpu128"), help="only rows of this suite")
    parser.add_argument("--devices", help="passed to train.devices")
    parser.add_argument("--mc-samples", type=int, default=30)
    parser.add_argument("--budget-s", type=float, help="start no new run after this many seconds")
    parser.add_argument("--claim-dir", type=Path,
                        help="a folder shared by parallel processes: each (row, seed) runs in the first to claim it")
    parser.add_argument("--rescore", action="store_true",
                        help="re-read the selected records' numbers from their run folders (no training), then exit")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        rows = select_rows(load_rows(args.rows_file), args.rows, args.datasets, args.models, args.suite)
    except BenchmarkError as error:
        print(f"accuracy.py: {error}", file=sys.stderr)
        return 2
    if not rows:
        print("accuracy.py: no row matches the filters", file=sys.stderr)
        return 2
    extra = dict(item.split("=", 1) for item in args.set if "=" in item)
    if len(extra) != len(args.set):
        print(f"accuracy.py: --set takes KEY=VALUE, got {args.set}", file=sys.stderr)
        return 2
    rows = [row | {"overrides": {**row["overrides"], **extra}} for row in rows]
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    # Seed-major, so a budget cut loses extra seeds before it loses rows.
    items = [(seed, row) for seed in args.seeds for row in rows]
    if args.list:
        for seed, row in items:
            print(row["id"], *train_argv(row, seed, args.runs_dir / row["id"] / f"seed{seed}", None, None))
        return 0
    started = time.perf_counter()
    device = _device(args.accelerator)
    if args.rescore:
        data = read_json(args.out, {"records": []})
        by_id = {row["id"]: row for row in rows}
        fresh = [rescore(r, by_id[r["row"]], args) for r in data["records"]
                 if r["row"] in by_id and r["seed"] in args.seeds and r["device"] == device
                 and (args.runs_dir / r["row"] / f"seed{r['seed']}" / "evaluation").is_dir()]
        data["records"] = merge_records(data["records"], fresh, record_key)
        write_json(args.out, data)
        print(f"accuracy.py: re-read {len(fresh)} record(s) from {args.runs_dir} into {args.out}")
        return 0

    def may_run(row: dict, seed: int) -> bool:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            print(f"accuracy.py: budget of {args.budget_s:.0f} s spent; skipping {row['id']} seed {seed}")
            return False
        return claim(args.claim_dir, row, seed)

    done, failures = run_matrix("accuracy.py", items, run_one, already_measured, args, device, may_run=may_run)
    if done:
        print_table(done, f"accuracy benchmark ({len(done)} runs) -> {args.out}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
