"""Which uncertainty source catches DCAT's errors? Every source on the same cases, paired, 3 seeds.

    DUALFUSE_DATA=../shared/data python benchmarks/uncertainty.py --seeds 0 1 2 \\
        --out docs/results/uncertainty_cpu.json

Per dataset and seed, two DCAT runs are trained on one split (the split follows the seed):
`base` (the paper's MC dropout in the head, `train.members: 3`, a deep ensemble in one run) and
`fusion` (one model with dropout on the fusion maps too, `model.kwargs.fusion_drop_rate`). Then
every source below is calibrated on the run's calibration split (its own temperature, referral and
conformal thresholds, as `dualfuse evaluate` fits them) and scored on test:

    softmax 1x0 · MC head 1x30 · ensemble 3x0 · ensemble x MC 3x30 · TTA 1x0x4 · TTA x MC 1x30x4
    MC fusion (the fusion run) 1x30, beside that run's own softmax

Scores: AUROC of predictive entropy for telling wrong from right, AURC (by confidence), accuracy at
90% coverage, ECE (15 bins) and NLL after calibration, LAC conformal coverage and mean set size,
referral rate, OOD AUROC of predictive entropy (far: brain MRI vs chest X-ray; near: adult TB chest
X-ray vs paediatric PneumoniaMNIST) and cost: the median wall time of the source on a fixed batch
of test cases as a multiple of one eval-mode pass, measured in this run.

Each source's AURC and error AUROC are compared with the softmax of the same model on the same test
cases by a paired bootstrap over cases, pooled over seeds (the statistic is the mean of the per-seed
differences); a source "beats" the softmax only when the 95% CI excludes 0.

Results merge into --out per (dataset, seed), so an interrupted matrix resumes where it stopped;
trained runs are kept under --runs-dir and reused.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO_ROOT, SOURCE_PX, machine, merge_records, read_json, write_json  # noqa: E402

from dualfuse.evaluation.paired import (  # noqa: E402
    N_BOOTSTRAP,
    binary_auroc,
    format_difference,
    paired_bootstrap,
    patient_groups,
    verdict,
)

MC_SAMPLES = 30
MEMBERS = 3
TTA_VIEWS = 4
FUSION_DROP_RATE = 0.1
OOD_CASES = 200
COST_CASES = 128
COST_LIMIT = 1.5  # the budget for DCAT's default source, in passes

# Every dataset: the shipped CPU config plus the overrides that size it for this benchmark. What the
# model saw is recorded with each result (source resolution, input size, cases, epochs).
DATASETS = {
    "pneumoniamnist": {"configs": ["configs/quickstart.yaml"],
                       "overrides": {"data.max_train_cases": 1000, "train.epochs": 4},
                       "ood": {"far": ("brain-tumor-mri/testing", None), "near": ("tb-cxr/test", None)}},
    "breastmnist": {"configs": ["configs/cpu/dcat_breast.yaml"],
                    "overrides": {"train.epochs": 8}, "ood": {}},
    "brain_mri": {"configs": ["configs/cpu/dcat_brain_mri.yaml"],
                  "overrides": {"data.img_size": 32, "data.max_train_cases": 1000, "train.epochs": 4},
                  "ood": {"far": ("medmnist/pneumoniamnist.npz", "test")}},
    "tb": {"configs": ["configs/cpu/dcat_tb.yaml"],
           "overrides": {"train.epochs": 8}, "ood": {"near": ("medmnist/pneumoniamnist.npz", "test")}},
}

# (source name, run, predictor key, what it is)
SOURCES = (
    ("softmax", "base", "1x0", "eval-mode softmax of one model"),
    ("mc_head", "base", f"1x{MC_SAMPLES}", f"MC dropout in the head, {MC_SAMPLES} samples (the paper's)"),
    ("ensemble", "base", f"{MEMBERS}x0", f"deep ensemble of {MEMBERS}"),
    ("ensemble_mc", "base", f"{MEMBERS}x{MC_SAMPLES}", f"ensemble of {MEMBERS} x MC head {MC_SAMPLES}"),
    ("tta", "tta", f"1x0x{TTA_VIEWS}", f"test-time augmentation, {TTA_VIEWS} views (shifts)"),
    ("tta_mc", "tta", f"1x{MC_SAMPLES}x{TTA_VIEWS}", f"TTA {TTA_VIEWS} views x MC head {MC_SAMPLES}"),
    ("fusion_softmax", "fusion", "1x0", "softmax of the fusion-dropout model"),
    ("mc_fusion", "fusion", f"1x{MC_SAMPLES}", f"MC dropout in fusion blocks and head, {MC_SAMPLES} samples"),
)


def run_argv(dataset: str, seed: int, variant: str, run_dir: Path) -> list[str]:
    spec = DATASETS[dataset]
    argv = [arg for config in spec["configs"] for arg in ("--config", config)]
    overrides = dict(spec["overrides"])
    if variant == "base":
        overrides["train.members"] = MEMBERS
    else:
        overrides["model.kwargs.fusion_drop_rate"] = FUSION_DROP_RATE
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    return argv + ["--train.seed", str(seed), "--train.progress_bar", "false", "--output", str(run_dir)]


def ensure_trained(dataset: str, seed: int, variant: str, runs_dir: Path) -> tuple[Path, dict]:
    """Train a run unless a finished one is there (an interrupted one resumes)."""
    from dualfuse.api import train
    from dualfuse.api.run_folder import RunFolder
    from dualfuse.config import parse_run_args

    run_dir = runs_dir / dataset / f"seed{seed}" / variant
    argv = run_argv(dataset, seed, variant, run_dir)
    config, _ = parse_run_args(argv)
    run = RunFolder(run_dir)
    summary_file = run_dir / "metrics.json"
    if not summary_file.is_file():
        summary = train(config, resume=run.last_checkpoint.is_file())
        if summary is None or summary.get("interrupted"):
            raise SystemExit(f"training of {run_dir} was interrupted; run the benchmark again to resume it")
    summary = read_json(summary_file, {})
    return run_dir, {"argv": argv, "epochs_trained": summary.get("epochs_trained"),
                     "train_seconds": summary.get("train_seconds"), "img_size": config.data.img_size,
                     "max_train_cases": config.data.max_train_cases, "epochs": config.train.epochs}


def predictions_of(run_dir: Path, members: int, mc_samples: int, views: int, ood: dict):
    """Predictions of the run's cal and test splits (and OOD sets) with `members` x `views` x T."""
    import torch

    from dualfuse.api.calibration import calibration_split
    from dualfuse.api.evaluation import evaluate_datamodule
    from dualfuse.api.loading import load_model
    from dualfuse.evaluation.predictions import predict_loader
    from dualfuse.uncertainty.tta import TTAConfig

    loaded = load_model(run_dir)
    config = loaded.run.config()
    config.eval.splits = ["test"]
    data = loaded.run.datamodule(loaded.spec, config)
    cal_split, cal_note = calibration_split(data)
    augment = config.data.augment or {}
    tta = TTAConfig(views=views, translate=float(augment.get("translate", 0.05)),
                    hflip=float(augment.get("hflip_prob", 0.0)) > 0,
                    vflip=float(augment.get("vflip_prob", 0.0)) > 0) if views > 1 else None
    models = loaded.members[:members]
    _, _, raw = evaluate_datamodule(models, loaded.spec, data, config, mc_samples=mc_samples,
                                    extra_splits=(cal_split,), tta=tta)
    outside = {kind: predict_loader(models, ood_loader(path, split, loaded.spec), loaded.spec, "cpu", mc_samples,
                                    config.train.seed, tta=tta) for kind, (path, split) in ood.items()}
    cost_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data.datasets["test"], range(min(COST_CASES, len(data.datasets["test"])))),
        batch_size=COST_CASES)
    return loaded, raw, cal_split, cal_note, outside, cost_loader, tta


def ood_loader(path: str, split: str | None, spec):
    """`OOD_CASES` images of another dataset (a fixed draw), preprocessed as the model's own data."""
    import torch

    from dualfuse.api.prediction import prediction_loader

    loader = prediction_loader([str(data_root() / path)], spec, split=split)
    picked = np.random.default_rng(0).permutation(len(loader.dataset))[:OOD_CASES]
    return torch.utils.data.DataLoader(torch.utils.data.Subset(loader.dataset, sorted(picked.tolist())), batch_size=64)


def data_root() -> Path:
    from dualfuse.data.paths import data_root as root

    return root()


def feature_ood(run_dir: Path, ood: dict) -> dict:
    """OOD AUROC of the Mahalanobis feature distance of the run's first model (`FeatureDistance`,
    fitted on its calibration split's fused features), test split vs each OOD set."""

    from dualfuse.api.calibration import calibration_split
    from dualfuse.api.loading import load_model
    from dualfuse.explain.embeddings import embed_loader
    from dualfuse.uncertainty.feature_distance import FeatureDistance
    from dualfuse.uncertainty.ood import ood_auroc

    loaded = load_model(run_dir, with_members=False)
    data = loaded.run.datamodule(loaded.spec, loaded.run.config())
    cal_split, _ = calibration_split(data)
    (task,) = loaded.spec.tasks
    cal = data.datasets[cal_split]
    detector = FeatureDistance().fit(embed_loader(loaded.model, data.eval_dataloader(cal_split), loaded.spec),
                                     cal.labels(task))
    inside = detector.score(embed_loader(loaded.model, data.eval_dataloader("test"), loaded.spec))
    return {kind: ood_auroc(inside, detector.score(embed_loader(loaded.model, ood_loader(path, split, loaded.spec),
                                                                 loaded.spec)))
            for kind, (path, split) in ood.items()}


def fill_feature_ood(records: list[dict], runs_dir: Path) -> bool:
    """Add the feature-distance OOD AUROCs to each (dataset, seed)'s softmax record that lacks them."""
    changed = False
    for record in records:
        ood = DATASETS[record["dataset"]]["ood"]
        if record["source"] != "softmax" or "feature_ood" in record or not ood:
            continue
        run_dir = runs_dir / record["dataset"] / f"seed{10 * record['seed']}" / "base"
        record["feature_ood"] = feature_ood(run_dir, ood)
        changed = True
    return changed


def seconds_of(models, loader, spec, mc_samples: int, seed: int, tta, repeats: int = 3) -> float:
    """Median wall time of predicting `loader` (the first call warms the caches and is not counted)."""
    from dualfuse.evaluation.predictions import predict_loader

    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        predict_loader(models, loader, spec, "cpu", mc_samples, seed, tta=tta)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def source_scores(cal, test, task: str, predictor, calibration: dict, outside: dict) -> tuple[dict, dict]:
    """The scores of one calibrated source on test, and the per-case arrays the paired bootstrap needs."""
    from sklearn.metrics import roc_auc_score

    from dualfuse.evaluation.predictions import refer_flags
    from dualfuse.uncertainty.calibration import calibration_report
    from dualfuse.uncertainty.conformal import conformal_report
    from dualfuse.uncertainty.measures import uncertainty_measures
    from dualfuse.uncertainty.selective import accuracy_at_coverage, aurc

    temperature = {task: calibration["temperature"]}
    view = test.using(predictor, temperature)
    probs, y = view.probs(task), test.labels[task]
    correct = probs.argmax(axis=1) == y
    entropy = uncertainty_measures(view.sample_probs(task))["predictive_entropy"]
    report = calibration_report(probs, y, 15)
    cal_view = cal.using(predictor, temperature)
    conformal = conformal_report(cal_view.probs(task), cal.labels[task], probs, y, alpha=0.1, score="lac")
    scores = {
        "temperature": calibration["temperature"], "accuracy": float(correct.mean()),
        "error_auroc": float(roc_auc_score(~correct, entropy)) if 0 < correct.sum() < len(correct) else None,
        "aurc": aurc(probs.max(axis=1), correct),
        "accuracy_at_90": accuracy_at_coverage(probs.max(axis=1), correct).get("0.9"),
        "ece": report["ece"], "nll": report["nll"],
        "ece_uncalibrated": calibration_report(test.using(predictor).probs(task), y, 15)["ece"],
        "conformal_coverage": conformal["coverage"], "conformal_ci": [conformal["coverage_ci_low"],
                                                                        conformal["coverage_ci_high"]],
        "conformal_below_target": conformal["below_target"],
        "conformal_set_size": float(conformal.get("mean_set_size", np.nan)),
        "referred": float(refer_flags(probs, calibration).mean()),
    }
    for kind, predictions in outside.items():
        outside_entropy = uncertainty_measures(predictions.using(predictor, temperature).sample_probs(task))[
            "predictive_entropy"]
        labels = np.r_[np.zeros(len(entropy)), np.ones(len(outside_entropy))]
        scores[f"ood_{kind}_auroc"] = float(roc_auc_score(labels, np.r_[entropy, outside_entropy]))
    per_case = {"case_id": np.asarray(test.case_ids), "label": np.asarray(y), "confidence": probs.max(axis=1),
                "correct": correct, "entropy": entropy}
    groups = patient_groups(test.patient_ids)
    return scores, per_case | ({"patient_id": np.asarray(groups)} if groups else {})


def run_cell(dataset: str, seed: int, args: argparse.Namespace, known_costs: dict | None = None) -> list[dict]:
    """Train (or reuse) both runs of one dataset and seed; score every source. One record per source.
    Cost depends on the model and input size, not on the seed: `known_costs` ({source: cost}, from
    this dataset's first seed) is reused instead of timed again."""
    import torch

    from dualfuse.api.calibration import fit_calibrations
    from dualfuse.evaluation.predictions import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    ood = DATASETS[dataset]["ood"]
    trained, scored, arrays, costs = {}, {}, {}, {}
    for variant in ("base", "fusion"):
        trained[variant] = ensure_trained(dataset, seed, variant, args.runs_dir)
    plans = {"base": ("base", MEMBERS, MC_SAMPLES, 1), "tta": ("base", 1, MC_SAMPLES, TTA_VIEWS),
             "fusion": ("fusion", 1, MC_SAMPLES, 1)}
    for name, (variant, members, samples, views) in plans.items():
        run_dir = trained[variant][0]
        loaded, raw, cal_split, cal_note, outside, cost_loader, tta = predictions_of(run_dir, members, samples,
                                                                                    views, ood)
        (task,) = loaded.spec.tasks
        keys = [key for _, plan, key, _ in SOURCES if plan == name]
        predictors = [Predictor.from_key(key) for key in keys]
        calibrations = fit_calibrations(raw[cal_split], loaded.spec, predictors, None, None, 0.1)
        for predictor in predictors:
            scores, per_case = source_scores(raw[cal_split], raw["test"], task, predictor,
                                             calibrations[predictor.key][task], outside)
            scored[(name, predictor.key)] = {**scores, "calibration_split": cal_split, "calibration_note": cal_note,
                                             "n_cal": len(raw[cal_split].case_ids), "n_test": len(raw["test"].case_ids)}
            arrays[(name, predictor.key)] = per_case
            if known_costs:
                continue
            used = loaded.members[:predictor.members]
            costs[(name, predictor.key)] = seconds_of(
                used, cost_loader, loaded.spec, predictor.samples, loaded.run.config().train.seed,
                tta if predictor.views > 1 else None)
    if known_costs:
        costs = {(plan, key): known_costs[source] for source, plan, key, _ in SOURCES}
    one_pass = costs[("base", "1x0")]
    records = []
    for source, plan, key, label in SOURCES:
        variant = plans[plan][0]
        info = trained[variant][1]
        records.append({
            "dataset": dataset, "seed": seed, "source": source, "predictor": key, "label": label, "run": variant,
            "model": "dcat" + (f" fusion_drop_rate={FUSION_DROP_RATE}" if variant == "fusion" else ""),
            "source_px": SOURCE_PX[dataset], "img_size": info["img_size"], "modality": "single",
            "weights": "scratch", "epochs": info["epochs"], "epochs_trained": info["epochs_trained"],
            "max_train_cases": info["max_train_cases"], "train_seconds": info["train_seconds"],
            "members_trained": MEMBERS if variant == "base" else 1,
            **scored[(plan, key)], "cost": costs[(plan, key)] / one_pass, "cost_measured": not known_costs,
            "per_case": {k: np.round(v, 7).tolist() if v.dtype.kind == "f" else v.tolist()
                         for k, v in arrays[(plan, key)].items()},
            "train_command": "dualfuse train " + " ".join(trained[variant][1]["argv"]),
            **machine("cpu"),
        })
    return records


def _aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    from dualfuse.uncertainty.selective import aurc

    return aurc(confidence, correct)


def _error_auroc(entropy: np.ndarray, correct: np.ndarray) -> float:
    """AUROC of entropy for telling wrong from right (ranks: sklearn's value, fast for the bootstrap)."""
    return binary_auroc(entropy, ~np.asarray(correct, dtype=bool))


def paired_difference(pairs: list[tuple[dict, dict]], statistic, n_bootstrap: int = N_BOOTSTRAP,
                      seed: int = 0) -> dict:
    """Mean over seeds of (source - softmax) for `statistic(per_case)`, with a paired 95% CI; `pairs`
    holds one (source's per-case arrays, the softmax's) per seed. Seeds scored on the same test cases
    (their per-case "case_id" and "label" agree) share each draw of cases, patients where ids repeat;
    records from before case ids were stored are drawn apart."""
    return paired_bootstrap(pairs, statistic, n_bootstrap, seed, groups=[a.get("patient_id") for a, _ in pairs],
                            case_ids=[a.get("case_id") for a, _ in pairs])


def reference_pairs(rows: list[dict], records: list[dict]) -> list[tuple[dict, dict]]:
    """Each row's per-case arrays beside those of the plain softmax of the same dataset and seed (one
    run's test split, so the same cases in the same order)."""
    softmax = {(r["dataset"], r["seed"]): r["per_case"] for r in records if r["source"] == "softmax"}
    return [(r["per_case"], softmax[(r["dataset"], r["seed"])]) for r in rows]


def summarise(records: list[dict], n_bootstrap: int = N_BOOTSTRAP) -> dict:
    """Per dataset and source: mean and sd over seeds, and the paired differences against softmax."""
    summary: dict = {}
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        summary[dataset] = {}
        for source, *_ in SOURCES:
            rows = [r for r in records if r["dataset"] == dataset and r["source"] == source]
            if not rows:
                continue
            entry = {"seeds": sorted(r["seed"] for r in rows)}
            for key in ("accuracy", "error_auroc", "aurc", "accuracy_at_90", "ece", "nll", "conformal_coverage",
                        "conformal_set_size", "referred", "ood_far_auroc", "ood_near_auroc", "cost"):
                values = [r[key] for r in rows if r.get(key) is not None]
                if values:
                    entry[key] = {"mean": float(np.mean(values)),
                                  "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None}
            entry["conformal_below_target"] = sum(bool(r["conformal_below_target"]) for r in rows)
            for kind in ("far", "near"):
                values = [r["feature_ood"][kind] for r in rows if kind in r.get("feature_ood", {})]
                if values:
                    entry[f"ood_{kind}_auroc_feature_distance"] = {
                        "mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None}
            if source != "softmax":
                pairs = reference_pairs(rows, records)
                aurc_diff = paired_difference(pairs, lambda c: _aurc(c["confidence"], c["correct"]), n_bootstrap)
                ratio = [r["aurc"] / s["aurc"] for r in rows for s in records
                         if s["dataset"] == dataset and s["seed"] == r["seed"] and s["source"] == "softmax"
                         and s["aurc"] > 0]
                auroc_diff = paired_difference(pairs, lambda c: _error_auroc(c["entropy"], c["correct"]), n_bootstrap)
                entry["aurc_vs_softmax"] = {**aurc_diff, "verdict": verdict(aurc_diff, lower_is_better=True),
                                            "ratio_mean": float(np.mean(ratio)) if ratio else None}
                entry["error_auroc_vs_softmax"] = {**auroc_diff, "verdict": verdict(auroc_diff, lower_is_better=False)}
            summary[dataset][source] = entry
    return summary


def choose_default(summary: dict) -> dict:
    """The README's default: among sources within the cost budget, the one with the most paired-CI wins
    minus losses against the softmax's AURC, then the lowest mean AURC ratio; the softmax unless that
    source wins on more datasets than it loses on."""
    candidates = {}
    for source, *_ in SOURCES:
        if source in ("softmax", "fusion_softmax"):
            continue
        entries = [summary[d][source] for d in summary if source in summary[d]]
        if not entries or not all(e.get("cost", {}).get("mean", np.inf) <= COST_LIMIT for e in entries):
            continue
        wins = sum(e["aurc_vs_softmax"]["verdict"] == "win" for e in entries)
        losses = sum(e["aurc_vs_softmax"]["verdict"] == "loss" for e in entries)
        ratio = float(np.mean([e["aurc_vs_softmax"]["ratio_mean"] for e in entries
                               if e["aurc_vs_softmax"]["ratio_mean"] is not None]))
        candidates[source] = {"wins": wins, "losses": losses, "aurc_ratio": ratio, "datasets": len(entries)}
    best = max(candidates, key=lambda s: (candidates[s]["wins"] - candidates[s]["losses"], -candidates[s]["aurc_ratio"]),
               default=None)
    if best is None or candidates[best]["wins"] <= candidates[best]["losses"]:
        return {"source": "softmax", "candidates": candidates,
                "reason": f"no source within {COST_LIMIT}x one pass beat the softmax's AURC (paired CI) on more "
                          "datasets than it lost on"}
    best_entry = candidates[best]
    return {"source": best, "candidates": candidates,
            "reason": f"beat the softmax's AURC on {best_entry['wins']} and lost on {best_entry['losses']} of "
                      f"{best_entry['datasets']} datasets (paired CI), mean AURC ratio {best_entry['aurc_ratio']:.2f}, "
                      f"within {COST_LIMIT}x one pass"}


def print_table(summary: dict) -> None:
    def fmt(entry, key, digits=3):
        value = entry.get(key)
        return "-" if not value else f"{value['mean']:.{digits}f}"

    print(f"{'dataset':<15}{'source':<16}{'err AUROC':>10}{'AURC':>8}{'vs softmax':>24}{'ECE':>7}{'NLL':>7}"
          f"{'cover':>7}{'OOD far':>8}{'near':>7}{'cost':>6}")
    for dataset, sources in summary.items():
        for source, e in sources.items():
            versus = e.get("aurc_vs_softmax")
            versus = format_difference(versus, 4) if versus else ""
            print(f"{dataset:<15}{source:<16}{fmt(e, 'error_auroc'):>10}{fmt(e, 'aurc', 4):>8}{versus:>24}"
                  f"{fmt(e, 'ece'):>7}{fmt(e, 'nll'):>7}{fmt(e, 'conformal_coverage'):>7}"
                  f"{fmt(e, 'ood_far_auroc'):>8}{fmt(e, 'ood_near_auroc'):>7}{fmt(e, 'cost', 2):>6}")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="replicate seeds; each trains on the split train.seed = 10 x seed carves")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results" / "uncertainty_cpu.json")
    parser.add_argument("--runs-dir", type=Path, default=REPO_ROOT / "benchmarks" / "runs" / "uncertainty")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--summary-only", action="store_true", help="recompute the summary from --out and print it")
    parser.add_argument("--feature-ood", action="store_true",
                        help="with --summary-only: still add missing feature-distance OOD AUROCs (needs the runs)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    results = read_json(args.out, {"records": []})
    records = results.get("records", [])
    if not args.summary_only:
        for seed in args.seeds:  # every dataset's seed 0 first, so a short session still covers them all
            for dataset in args.datasets:
                if any(r["dataset"] == dataset and r["seed"] == seed for r in records):
                    continue
                started = time.perf_counter()
                timed = [r for r in records if r["dataset"] == dataset and r.get("cost_measured")]
                known = {r["source"]: r["cost"] for r in timed if r["seed"] == timed[0]["seed"]} if timed else None
                new = run_cell(dataset, 10 * seed, args, known)
                for record in new:
                    record["seed"] = seed
                    record["cell_seconds"] = round(time.perf_counter() - started, 1)
                records = merge_records(records, new, key=lambda r: (r["dataset"], r["seed"], r["source"]))
                summary = summarise(records)
                write_json(args.out, {"benchmark": "uncertainty", "records": records, "summary": summary,
                                      "default": choose_default(summary)})
                print(f"{dataset} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    if not args.summary_only or args.feature_ood:
        fill_feature_ood(records, args.runs_dir)
    for record in records:  # commands as a user types them, from the repository root
        record["train_command"] = record["train_command"].replace(f"{REPO_ROOT}/", "")
        record.pop("reference_per_case", None)  # the softmax record of the same seed holds it
        record["per_case"] = {k: [round(x, 7) if isinstance(x, float) else x for x in v]
                              for k, v in record["per_case"].items()}
    summary = summarise(records)
    default = choose_default(summary)
    write_json(args.out, {"benchmark": "uncertainty", "records": records, "summary": summary, "default": default})
    print_table(summary)
    print(f"default: {default['source']} ({default['reason']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
