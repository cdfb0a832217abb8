"""Does in-domain pretraining beat scratch? Leave one dataset out, paired on the same test cases.

    DUALFUSE_DATA=../shared/data python benchmarks/pretrain.py --heldout breastmnist tb --trunks resnet18 dcat \\
        --seeds 0 1 2 --threads 1 --out docs/results/pretrain_cpu.json

For each held-out dataset X, trunk T (configs/pretrain/<T>.yaml) and seed s, three runs, one folder
each under --runs-dir:

  pretrain  T multitask in zip mode (one head per dataset) on every labelled set of the config
            except X: their train splits only, and X is not even opened
  scratch   T's plain single-image model on X alone (X's entry in that config, in its own channels,
            the config's input size and optimiser), from a fresh initialisation
  finetune  the same run (same config, seed and X's split: scratch's split.csv) started from the
            pretrained trunk with `model.init_from` (every trunk tensor loaded, the head new)

then the paired difference of test ROC-AUC (finetune - scratch) on X's test cases, with a 95% CI
from a bootstrap over test patients (over cases where the set has no patient ids), pooled over seeds
(the statistic is the mean of the per-seed differences): "win" or "loss" only when the CI excludes 0.

Every record says what its model saw (source pixels, input size, epochs asked and run, seeds, the
sets pretraining used). Records merge into --out per (held-out dataset, trunk, arm, seed), so an
interrupted matrix resumes where it stopped; a cell recorded with other settings is measured again.
Run folders are reused when finished with the same resolved config, resumed when interrupted, and
trained again when their config differs (or, for finetune, when its pretraining was just retrained).
"""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, SOURCE_PX, machine, merge_records, read_json, write_json  # noqa: E402

from dualfuse.evaluation.paired import (  # noqa: E402
    N_BOOTSTRAP,
    align_cases,
    case_predictions,
    format_difference,
    macro_auroc,
    paired_auc_difference,
    patient_groups,
    verdict,
)

# Each trunk's pretraining config files, later ones laid over earlier ones (as `dualfuse train --config
# A --config B` does); the first names every dataset.
TRUNKS = {"resnet18": ("configs/pretrain/resnet18.yaml",), "dcat": ("configs/pretrain/dcat.yaml",),
          "resnet18_longer": ("configs/pretrain/resnet18.yaml", "configs/pretrain/longer.yaml")}
# A trunk that differs from another only in its pretraining budget: fine-tuned from each, paired.
VARIANT_OF = {"resnet18_longer": "resnet18"}
ARMS = ("pretrain", "scratch", "finetune")
PHASES = ("pretrain", "target")  # --set PHASE.KEY=VALUE: only pretraining, or only the runs on X
SECTIONS = ("data", "train", "eval")
# The scratch and fine-tuning runs on X: the pretraining config's data and optimiser settings, with
# these (all of X's val and test cases, at most 1000 training images, the best-val-AUC checkpoint of
# a full cosine schedule). Not early stopping: on small validation sets it stops a slow starter
# (scratch) while its learning rate is still high, which would hand fine-tuning a win it did not earn.
TARGET = {"data.mode": "single", "data.max_train_cases": 1000, "data.max_eval_cases": None, "train.epochs": 15,
          "train.early_stopping_patience": None, "train.monitor": "val/auc", "train.monitor_mode": "max",
          "eval.splits": ["val", "test"]}


class BenchmarkError(ValueError):
    """A bad argument or an inconsistent result, in one line."""


def load_trunk_config(trunk: str) -> dict:
    """The pretraining config of `trunk` as plain YAML (its sources are every dataset of the benchmark)."""
    if trunk not in TRUNKS:
        raise BenchmarkError(f"unknown trunk {trunk!r}; choose from {', '.join(TRUNKS)}")
    from dualfuse.config import deep_merge

    config: dict = {}
    for path in TRUNKS[trunk]:
        config = deep_merge(config, yaml.safe_load((REPO_ROOT / path).read_text()))
    if config["model"]["name"] != "multitask" or config["data"].get("mode") != "zip":
        raise BenchmarkError(f"{' + '.join(TRUNKS[trunk])}: expected a multitask model in zip mode")
    return config


def _configs(trunk: str) -> list[str]:
    return [arg for path in TRUNKS[trunk] for arg in ("--config", str(REPO_ROOT / path))]


def parse_sets(items: list[str]) -> dict[str, dict[str, str]]:
    """`--set` items as `{"all" | "pretrain" | "target": {dotted key: value}}`; a key may start with a
    phase (`pretrain.train.epochs=2`) and must then name a data, train or eval setting."""
    sets: dict[str, dict[str, str]] = {"all": {}, "pretrain": {}, "target": {}}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BenchmarkError(f"--set takes KEY=VALUE, got {item!r}")
        phase, _, rest = key.partition(".")
        phase, key = (phase, rest) if phase in PHASES else ("all", key)
        if key.split(".")[0] not in SECTIONS or "." not in key:
            raise BenchmarkError(f"--set {item!r}: only {', '.join(s + '.*' for s in SECTIONS)} keys (optionally after "
                                 f"{' or '.join(p + '.' for p in PHASES)}); the models are set by configs/pretrain/")
        sets[phase][key] = value
    return sets


def _arg(value) -> str:
    """A value as `dualfuse train` reads it on the command line."""
    if value is None:
        return "null"
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else str(value)


def _overrides(settings: dict) -> list[str]:
    return [arg for key, value in settings.items() for arg in (f"--{key}", _arg(value))]


def _tail(seed: int, run_dir: Path) -> list[str]:
    return ["--train.seed", str(seed), "--train.progress_bar", "false", "--output", str(run_dir)]


def pretrain_datasets(config: dict, heldout: str) -> list[str]:
    """The sets pretraining uses: every source of the config but the held-out one, in config order."""
    return [name for name in config["data"]["sources"] if name != heldout]


def pretrain_argv(trunk: str, config: dict, heldout: str, seed: int, run_dir: Path, sets: dict) -> list[str]:
    """`dualfuse train` arguments of the pretraining run without `heldout`."""
    sources = {name: config["data"]["sources"][name] for name in pretrain_datasets(config, heldout)}
    return [*_configs(trunk), "--data.sources", json.dumps(sources),
            *_overrides({**sets["all"], **sets["pretrain"]}), *_tail(seed, run_dir)]


def target_argv(trunk: str, config: dict, heldout: str, seed: int, run_dir: Path, sets: dict,
                init_from: Path | None = None, split_file: Path | None = None) -> list[str]:
    """`dualfuse train` arguments of a run on `heldout` alone: the trunk's plain model (its
    `trunk_kwargs`, the set's own channels), scratch or (with `init_from`) fine-tuned."""
    source = config["data"]["sources"][heldout]
    model = config["model"]["kwargs"]
    kwargs = {**model.get("trunk_kwargs", {}), "in_chans": source.get("channels") or 3, "pretrained": False}
    argv = [*_configs(trunk), "--model.name", model.get("trunk", "timm_classifier"),
            "--model.kwargs", json.dumps(kwargs), "--data.sources", json.dumps({heldout: source}),
            *_overrides({**TARGET, **sets["all"], **sets["target"]})]
    if init_from is not None:
        argv += ["--model.init_from", str(init_from)]
    if split_file is not None:
        argv += ["--data.split_file", str(split_file)]
    return argv + _tail(seed, run_dir)


def ensure_trained(argv: list[str], run_dir: Path, fresh: bool = False) -> tuple[dict, object, bool]:
    """`(metrics.json, config, trained now)`: a finished run with the same resolved config is reused,
    an interrupted one resumed; one with another config (or any, with `fresh`) is trained again."""
    from dualfuse.api import train
    from dualfuse.api.run_folder import RunFolder
    from dualfuse.config import dump_run_config, parse_run_args

    config, _ = parse_run_args(argv)
    run = RunFolder(run_dir)
    if run_dir.exists() and (fresh or not run.config_path.is_file()
                             or run.config_path.read_text() != dump_run_config(config)):
        shutil.rmtree(run_dir)
    if run.metrics_path.is_file():
        return read_json(run.metrics_path, {}), config, False
    summary = train(config, resume=run.last_checkpoint.is_file())
    if summary is None or summary.get("interrupted"):
        raise SystemExit(f"training of {run_dir} was interrupted; run the benchmark again to resume it")
    return read_json(run.metrics_path, {}), config, True


def per_case_predictions(run_dir: Path) -> dict:
    """The run's test predictions per case (its one task): ids, label index, probabilities, patients."""
    spec = json.loads((run_dir / "model" / "model.json").read_text())
    (task, classes), = spec["tasks"].items()
    return case_predictions(run_dir / "predictions.csv", task, classes)


def align(finetune: dict, scratch: dict, where: str) -> tuple[dict, dict, list | None]:
    """Both arms' per-case arrays in scratch's case order (its case ids under "case_id"), and the patient
    groups (None without ids)."""
    try:
        a, b = align_cases(finetune, scratch, order=scratch["case_id"], names=("finetune", "scratch"))
    except ValueError as error:
        raise BenchmarkError(f"{where}: {error}") from None
    return a, b, patient_groups(scratch.get("patient_id"))


def _auc(cases: dict) -> float:
    return macro_auroc(cases["probs"], cases["label"])


def paired_auc(cells: list[tuple[dict, dict, str]], n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """Mean AUC of each side over seeds and the paired difference first - second, CI and verdict, from
    `(first per_case, second per_case, where)` per seed; the bootstrap resamples patients where every
    seed's cases have them, and draws one set of cases for every seed where they were all scored on
    the same cases; the CI is the bootstrap's joined with DeLong's interval (`paired_auc_difference`)."""
    pairs, groups, case_ids = [], [], []
    for first, second, where in cells:
        a, b, group = align(first, second, where)
        case_ids.append(b.pop("case_id"))
        pairs.append((a, b))
        groups.append(group)
    by_patient = all(g is not None for g in groups)
    difference = paired_auc_difference(pairs, n_bootstrap, groups=groups if by_patient else None, case_ids=case_ids)
    return {"first_auc": float(np.mean([_auc(a) for a, _ in pairs])),
            "second_auc": float(np.mean([_auc(b) for _, b in pairs])), "n_test": len(pairs[0][1]["label"]),
            **{key: difference[key] for key in ("delta", "ci_low", "ci_high")}, "verdict": verdict(difference),
            "bootstrap_over": "patients" if by_patient else "cases", "seeds_resampled": difference["seeds_resampled"],
            **{key: difference[key] for key in ("bootstrap_ci", "score_ci") if key in difference}}


# What a summary or variant line keeps of paired_auc: the difference, its CI and the two it joins, the verdict.
PAIRED_KEYS = ("delta", "ci_low", "ci_high", "bootstrap_ci", "score_ci", "verdict", "bootstrap_over", "seeds_resampled")


def summarise(records: list[dict], n_bootstrap: int = N_BOOTSTRAP) -> list[dict]:
    """Per (held-out dataset, trunk) with both target arms: mean AUCs over seeds and the paired
    difference finetune - scratch with its CI and verdict."""
    by_key = {(r["heldout"], r["trunk"], r["arm"], r["seed"]): r for r in records}
    cells = dict.fromkeys((r["heldout"], r["trunk"]) for r in records)
    out = []
    for heldout, trunk in cells:
        seeds = sorted(s for (x, t, arm, s) in by_key if (x, t, arm) == (heldout, trunk, "finetune")
                       and (heldout, trunk, "scratch", s) in by_key)
        if not seeds:
            continue
        paired = paired_auc([(by_key[(heldout, trunk, "finetune", seed)]["per_case"],
                              by_key[(heldout, trunk, "scratch", seed)]["per_case"], f"{heldout} {trunk} seed {seed}")
                             for seed in seeds], n_bootstrap)
        first = by_key[(heldout, trunk, "finetune", seeds[0])]
        out.append({"heldout": heldout, "trunk": trunk, "seeds": seeds, "n_test": paired["n_test"],
                    "scratch_auc": paired["second_auc"], "finetune_auc": paired["first_auc"],
                    **{key: paired[key] for key in PAIRED_KEYS if key in paired},
                    "pretrained_on": first["pretrained_on"], "source_px": first["source_px"],
                    "img_size": first["img_size"]})
    return out


def compare_variants(records: list[dict], n_bootstrap: int = N_BOOTSTRAP) -> list[dict]:
    """Per held-out dataset where a trunk and its variant (`VARIANT_OF`) were both fine-tuned with the
    same seeds: the paired difference fine-tuned-from-variant minus fine-tuned-from-base on the same
    test cases, pooled over those seeds, with the machines (CPU and torch threads) each side ran on: a
    difference between two machines is not only the trunk's. Does the larger pretraining budget buy anything?"""
    finetuned = {(r["heldout"], r["trunk"], r["seed"]): r for r in records if r["arm"] == "finetune"}
    out = []
    for variant, base in VARIANT_OF.items():
        for heldout in dict.fromkeys(x for x, t, _ in finetuned if t == variant):
            seeds = sorted(s for x, t, s in finetuned if (x, t) == (heldout, variant) and (heldout, base, s) in finetuned)
            if not seeds:
                continue
            paired = paired_auc([(finetuned[(heldout, variant, seed)]["per_case"],
                                  finetuned[(heldout, base, seed)]["per_case"], f"{heldout} {variant} seed {seed}")
                                 for seed in seeds], n_bootstrap)
            machines = {trunk: sorted({finetuned[(heldout, trunk, seed)].get("device_name", "?") for seed in seeds})
                        for trunk in (variant, base)}
            out.append({"heldout": heldout, "variant": variant, "base": base, "seeds": seeds,
                        "variant_auc": paired["first_auc"], "base_auc": paired["second_auc"],
                        "variant_machines": machines[variant], "base_machines": machines[base],
                        **{key: paired[key] for key in PAIRED_KEYS if key in paired}})
    return out


def results(records: list[dict], n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """What --out holds: every record, the verdicts against scratch, and the trunk variants compared."""
    return {"benchmark": "pretrain", "records": records, "summary": summarise(records, n_bootstrap),
            "variants": compare_variants(records, n_bootstrap)}


def reproduce_command(trunk: str, heldout: str, seed: int, sets: list[str]) -> str:
    command = ["python", "benchmarks/pretrain.py", "--heldout", heldout, "--trunks", trunk, "--seeds", str(seed)]
    if sets:
        command += ["--set", *sets]
    return "DUALFUSE_DATA=../shared/data " + shlex.join(command)


def _metric(entry: dict | None) -> dict | None:
    return None if entry is None else {k: entry[k] for k in ("value", "ci_low", "ci_high")}


def _record(arm: str, trunk: str, heldout: str, seed: int, argv: list[str], summary: dict, config) -> dict:
    """What every arm records: the protocol, what the model saw, and how long it trained."""
    return {"heldout": heldout, "trunk": trunk, "arm": arm, "seed": seed, "model": config.model.name,
            "img_size": config.data.img_size, "epochs": config.train.epochs,
            "epochs_trained": summary.get("epochs_trained"), "train_seconds": summary.get("train_seconds"),
            "max_train_cases": config.data.max_train_cases,
            "train_command": ("dualfuse train " + shlex.join(argv)).replace(f"{REPO_ROOT}/", ""), **machine("cpu")}


def cell_dir(args: argparse.Namespace, trunk: str, heldout: str, seed: int) -> Path:
    """The folder of one cell's three runs (pretrain/, scratch/, finetune/)."""
    return args.runs_dir / trunk / heldout / f"seed{seed}"


def run_cell(trunk: str, heldout: str, seed: int, args: argparse.Namespace, sets: dict) -> list[dict]:
    """Pretrain without `heldout`, then scratch and finetune on it; one record per arm."""
    config = load_trunk_config(trunk)
    base = cell_dir(args, trunk, heldout, seed)
    command = reproduce_command(trunk, heldout, seed, args.set)
    datasets = pretrain_datasets(config, heldout)
    argvs = {"pretrain": pretrain_argv(trunk, config, heldout, seed, base / "pretrain", sets),
             "scratch": target_argv(trunk, config, heldout, seed, base / "scratch", sets)}
    pre, pre_config, pre_new = ensure_trained(argvs["pretrain"], base / "pretrain")
    scratch, scratch_config, scratch_new = ensure_trained(argvs["scratch"], base / "scratch")
    argvs["finetune"] = target_argv(trunk, config, heldout, seed, base / "finetune", sets, init_from=base / "pretrain",
                                    split_file=base / "scratch" / "split.csv")
    finetune, finetune_config, _ = ensure_trained(argvs["finetune"], base / "finetune", fresh=pre_new or scratch_new)
    transfer = finetune["init_from"]
    print(f"init_from {base / 'pretrain'}: {transfer['loaded']} tensors loaded, {len(transfer['adapted'])} adapted "
          f"(input channels), {len(transfer['new'])} new (the head), {len(transfer['skipped'])} skipped "
          "(the pretraining heads)", flush=True)

    records = [{**_record("pretrain", trunk, heldout, seed, argvs["pretrain"], pre, pre_config),
                "datasets": datasets, "source_px": {name: SOURCE_PX.get(name) for name in datasets},
                "in_chans": pre_config.model.kwargs.get("in_chans", 3), "zip_length": pre_config.data.zip_length,
                "val_auc": {task: splits["val"]["roc_auc"]["value"] for task, splits in pre["tasks"].items()
                            if "val" in splits}}]
    for arm, summary, run_config in (("scratch", scratch, scratch_config), ("finetune", finetune, finetune_config)):
        (task, splits), = summary["tasks"].items()
        transfer = summary.get("init_from")
        records.append({
            **_record(arm, trunk, heldout, seed, argvs[arm], summary, run_config),
            "dataset": heldout, "source_px": {heldout: SOURCE_PX.get(heldout)},
            "in_chans": run_config.model.kwargs["in_chans"],
            "weights": f"init_from {base / 'pretrain'}" if arm == "finetune" else "scratch",
            "pretrained_on": datasets if arm == "finetune" else [],
            "init_from": None if transfer is None else {"loaded": transfer["loaded"], "adapted": len(transfer["adapted"]),
                                                        "new": len(transfer["new"]), "skipped": len(transfer["skipped"])},
            "n_test": splits["test"]["n"],
            "test": {key: _metric(splits["test"].get(key)) for key in ("roc_auc", "balanced_accuracy", "accuracy")},
            "per_case": per_case_predictions(base / arm)})
    for record in records:
        record["command"] = command
    return records


def cell_done(records: list[dict], trunk: str, heldout: str, seed: int, command: str) -> bool:
    """All three arms recorded by the same command (same settings)."""
    found = {r["arm"] for r in records if (r["trunk"], r["heldout"], r["seed"]) == (trunk, heldout, seed)
             and r.get("command") == command}
    return found == set(ARMS)


def record_key(record: dict) -> tuple:
    return record["heldout"], record["trunk"], record["arm"], record["seed"]


def print_table(summary: list[dict]) -> None:
    print(f"{'held out':<16}{'trunk':<17}{'seeds':>6}{'scratch':>9}{'finetune':>10}{'difference [95% CI]':>28}"
          f"{'verdict':>9}  pretrained on")
    for e in summary:
        ci = format_difference(e)
        print(f"{e['heldout']:<16}{e['trunk']:<17}{len(e['seeds']):>6}{e['scratch_auc']:>9.3f}{e['finetune_auc']:>10.3f}"
              f"{ci:>28}{e['verdict']:>9}  {len(e['pretrained_on'])} sets, {e['img_size']} px")


def train_trunks(items: list[tuple], configs: dict, args: argparse.Namespace, sets: dict) -> int:
    """Only the pretraining runs of `items`: a fresh checkout has the committed records of a cell but
    not its run folders, and a cv row fine-tunes from the trunk's folder."""
    failures = 0
    for seed, trunk, x in items:
        run_dir = cell_dir(args, trunk, x, seed) / "pretrain"
        try:
            _, _, trained = ensure_trained(pretrain_argv(trunk, configs[trunk], x, seed, run_dir, sets), run_dir)
        except Exception as error:
            failures += 1
            print(f"pretrain.py: trunk {trunk} without {x}, seed {seed} failed: {' '.join(str(error).split())}",
                  file=sys.stderr)
            continue
        print(f"== trunk {trunk} without {x}, seed {seed}: {'trained' if trained else 'already'} in {run_dir}", flush=True)
    return 1 if failures else 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heldout", nargs="+", help="datasets to hold out (default: every set of the configs)")
    parser.add_argument("--trunks", nargs="+", default=list(TRUNKS), choices=list(TRUNKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted data/train/eval overrides for every run (train.epochs=2), or only for "
                             "pretraining (pretrain.train.epochs=2) or the runs on X (target.data.max_train_cases=200)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "pretrain.json")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "benchmarks" / "runs" / "pretrain")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 on a busy shared machine)")
    parser.add_argument("--n-bootstrap", type=int, default=N_BOOTSTRAP)
    parser.add_argument("--list", action="store_true", help="print the runs and their train arguments, then exit")
    parser.add_argument("--trunks-only", action="store_true",
                        help="train (or reuse) only the pretraining runs, the trunks that cv rows name in "
                             "model.init_from; record nothing (their cells may already be in --out)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        sets = parse_sets(args.set)
        configs = {trunk: load_trunk_config(trunk) for trunk in args.trunks}
        names = list(next(iter(configs.values()))["data"]["sources"])
        heldout = args.heldout or names
        unknown = [x for trunk, c in configs.items() for x in heldout if x not in c["data"]["sources"]]
        if unknown:
            raise BenchmarkError(f"--heldout {unknown[0]!r} is not a dataset of the pretraining configs; choose from "
                                 f"{', '.join(names)}")
    except BenchmarkError as error:
        print(f"pretrain.py: {error}", file=sys.stderr)
        return 2
    items = [(seed, trunk, x) for seed in args.seeds for trunk in args.trunks for x in heldout]
    if args.list:
        for seed, trunk, x in items:
            base = cell_dir(args, trunk, x, seed)
            print(f"== held out {x}, trunk {trunk}, seed {seed}")
            print("  pretrain  dualfuse train", shlex.join(pretrain_argv(trunk, configs[trunk], x, seed, base / "pretrain", sets)))
            print("  scratch   dualfuse train", shlex.join(target_argv(trunk, configs[trunk], x, seed, base / "scratch", sets)))
            print("  finetune  dualfuse train", shlex.join(target_argv(
                trunk, configs[trunk], x, seed, base / "finetune", sets, init_from=base / "pretrain",
                split_file=base / "scratch" / "split.csv")))
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.trunks_only:
        return train_trunks(items, configs, args, sets)
    failures = 0
    for seed, trunk, x in items:  # seed-major: a short session covers every cell once before repeating
        records = read_json(args.out, {"records": []})["records"]
        if cell_done(records, trunk, x, seed, reproduce_command(trunk, x, seed, args.set)):
            print(f"== {x} {trunk} seed {seed}: already in {args.out} (same settings)")
            continue
        print(f"== held out {x}, trunk {trunk}, seed {seed}", flush=True)
        started = time.perf_counter()
        try:
            new = run_cell(trunk, x, seed, args, sets)
        except Exception as error:  # one failed cell must not lose the others
            failures += 1
            print(f"pretrain.py: {x} {trunk} seed {seed} failed: {' '.join(str(error).split())}", file=sys.stderr)
            continue
        records = merge_records(read_json(args.out, {"records": []})["records"], new, record_key)
        write_json(args.out, results(records, args.n_bootstrap))
        print(f"{x} {trunk} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    records = read_json(args.out, {"records": []})["records"]
    if records:
        written = results(records, args.n_bootstrap)
        write_json(args.out, written)
        print_table(written["summary"])
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
