"""Do dualfuse's 95% CIs hold the true value 95% of the time on small test sets?

Every metric `evaluate` prints comes with an interval (`classification_metrics`): a percentile
bootstrap, widened to a score interval (Wilson; Newcombe for ROC AUC) where that is wider. A
percentile bootstrap alone is known to be too narrow on few cases, and our users' test sets are small.
This script measures how often each interval misses, on real predictions with a known answer: each
stored set of at least `10 n` per-case test or out-of-fold predictions (accuracy_*.json, cv_*.json)
is taken as a population, whose metric on all its cases is the truth; many test sets of n cases are
drawn from it without replacement, stratified by class as dualfuse's splits are, and each gets the
interval `evaluate` prints (1000 resamples, over cases) and, on the same draw, the bootstrap interval
alone (what dualfuse printed before). Coverage is the share of draws whose interval holds the truth,
with the share where the truth lies above the interval and below it; a draw
where the metric is undefined (a class absent, for a one-vs-rest AUC) is counted apart. The 95%
interval of a coverage is an exact binomial one over draws (draws of one population share it, so
read it as a lower bound of the uncertainty). The population is at least ten times the draw, so
sampling without replacement is close to the bootstrap's with-replacement model.

The paired differences behind every "win", "tie" or "loss" in docs/benchmarks.md (benchmarks/paired.py:
a percentile bootstrap of the AUC difference over the same resampled cases) are measured the same way:
two stored prediction sets of one source, dataset and seed that score the same cases form a population
pair whose AUC difference on all cases is the truth; n cases are drawn and the paired interval is
checked. A *wrong verdict* is a "win" where the truth is a loss or a "loss" where it is a win.

    python benchmarks/ci_coverage.py --out docs/results/ci_coverage_cpu.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import REPO_ROOT, machine, show_table, write_json
from paired import N_BOOTSTRAP, macro_auroc, paired_bootstrap, verdict
from referral import SOURCES, case_sets

from dualfuse.evaluation.metrics import classification_metrics
from dualfuse.uncertainty.conformal import binomial_ci

SIZES = (20, 50, 100, 200)
PAIRED_SIZES = (50, 100, 200)
PAIRS_PER_GROUP = 4  # population pairs per (source, dataset, seed) at the most, chosen at random
METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
INTERVALS = ("bootstrap", "score", "widened")  # evaluate prints "widened": the union of the other two
POPULATION_FACTOR = 10  # a population holds at least this many times the cases of a draw


def stratified_draw(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n case indices without replacement, each class in proportion to its share (at least one case of
    every class where n allows, as a stratified split keeps them), largest remainders first."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    take = np.floor(exact).astype(int)
    if n >= len(classes):
        take = np.maximum(take, 1)
    for index in np.argsort(exact - np.floor(exact))[::-1]:
        if take.sum() >= n:
            break
        take[index] += 1
    while take.sum() > n:  # the minimum of one per class overshot: trim the largest classes
        take[np.argmax(take)] -= 1
    return np.concatenate([rng.choice(np.flatnonzero(labels == c), size=k, replace=False)
                           for c, k in zip(classes, take) if k])


def measure(sets: list[dict], sizes=SIZES, draws: int = 20, seed: int = 0, n_bootstrap: int = 1000) -> list[dict]:
    """One row per (test-set size, metric, dataset or 'all'): coverage and how the misses fall."""
    rng = np.random.default_rng(seed)
    tally: dict[tuple, dict] = {}
    for n in sizes:
        for case_set in sets:
            labels, probs = case_set["labels"], case_set["probs"]
            if len(labels) < POPULATION_FACTOR * n:
                continue
            truth = classification_metrics(labels, probs, n_bootstrap=0)
            for _ in range(draws):
                pick = stratified_draw(labels, n, rng)
                drawn = classification_metrics(labels[pick], probs[pick], n_bootstrap=n_bootstrap,
                                               seed=int(rng.integers(2**31)))
                for metric in METRICS:
                    value, true = drawn[metric], truth[metric]["value"]
                    intervals = {"widened": (value["ci_low"], value["ci_high"]),
                                 "bootstrap": tuple(value.get("bootstrap_ci", (value["ci_low"], value["ci_high"]))),
                                 "score": tuple(value.get("score_ci", (None, None)))}
                    for interval, (low, high) in intervals.items():
                        for group in (case_set["dataset"], "all"):
                            entry = tally.setdefault((n, metric, group, interval), {
                                "sets": set(), "above": 0, "below": 0, "held": 0, "undefined": 0, "widths": []})
                            entry["sets"].add(id(case_set))
                            if low is None or true is None:
                                entry["undefined"] += 1
                                continue
                            side = "held" if low <= true <= high else ("above" if true > high else "below")
                            entry[side] += 1
                            entry["widths"].append(high - low)
    rows = []
    for (n, metric, group, interval), entry in tally.items():
        scored = entry["held"] + entry["above"] + entry["below"]
        if not scored:
            continue
        ci_low, ci_high = binomial_ci(entry["held"], scored)
        rows.append({"n_test": n, "metric": metric, "dataset": group, "interval": interval,
                     "case_sets": len(entry["sets"]), "draws": scored, "undefined": entry["undefined"],
                     "coverage": entry["held"] / scored, "coverage_ci": [ci_low, ci_high],
                     "truth_above": entry["above"] / scored, "truth_below": entry["below"] / scored,
                     "median_width": float(np.median(entry["widths"]))})
    order = {name: i for i, name in enumerate(METRICS)}
    return sorted(rows, key=lambda r: (r["dataset"] != "all", r["dataset"], order[r["metric"]], r["n_test"],
                                       INTERVALS.index(r["interval"])))


def population_pairs(sets: list[dict], rng: np.random.Generator, most: int = PAIRS_PER_GROUP) -> list[tuple]:
    """(a, b aligned to a's case order) for case sets of one source, dataset and seed that score the same
    cases by id, at most `most` pairs per such group."""
    groups: dict[tuple, list[dict]] = {}
    for case_set in sets:
        if len(case_set["case_ids"]) == len(case_set["labels"]) and len(set(case_set["case_ids"].tolist())) == len(
                case_set["labels"]):
            groups.setdefault((case_set["source"], case_set["dataset"], case_set["seed"]), []).append(case_set)
    out = []
    for members in groups.values():
        found = []
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if a["row"] == b["row"] or set(a["case_ids"].tolist()) != set(b["case_ids"].tolist()):
                    continue
                where = {case: k for k, case in enumerate(b["case_ids"].tolist())}
                order = np.array([where[case] for case in a["case_ids"].tolist()])
                if np.array_equal(a["labels"], b["labels"][order]):
                    found.append((a, {**b, "probs": b["probs"][order], "labels": b["labels"][order]}))
        for index in rng.permutation(len(found))[:most]:
            out.append(found[index])
    return out


def measure_paired(sets: list[dict], sizes=PAIRED_SIZES, draws: int = 10, seed: int = 0,
                   n_bootstrap: int = N_BOOTSTRAP) -> list[dict]:
    """One row per test-set size: how often the paired 95% CI of the AUC difference holds the true
    difference, and how often its verdict has the wrong sign."""
    rng = np.random.default_rng(seed)
    pairs = population_pairs(sets, rng)
    rows = []
    for n in sizes:
        held = above = below = wrong = decided = 0
        widths, used = [], set()
        for a, b in pairs:
            if len(a["labels"]) < POPULATION_FACTOR * n:
                continue
            truth = macro_auroc(a["probs"], a["labels"]) - macro_auroc(b["probs"], b["labels"])
            for _ in range(draws):
                pick = stratified_draw(a["labels"], n, rng)
                cases = [({"probs": a["probs"][pick], "label": a["labels"][pick]},
                          {"probs": b["probs"][pick], "label": b["labels"][pick]})]
                diff = paired_bootstrap(cases, lambda c: macro_auroc(c["probs"], c["label"]), n_bootstrap,
                                        seed=int(rng.integers(2**31)))
                used.add((id(a), id(b)))
                side = ("held" if diff["ci_low"] <= truth <= diff["ci_high"]
                        else "above" if truth > diff["ci_high"] else "below")
                held, above, below = held + (side == "held"), above + (side == "above"), below + (side == "below")
                widths.append(diff["ci_high"] - diff["ci_low"])
                said = verdict(diff)
                decided += said != "tie"
                wrong += (said == "win" and truth < 0) or (said == "loss" and truth > 0)
        scored = held + above + below
        if not scored:
            continue
        ci_low, ci_high = binomial_ci(held, scored)
        rows.append({"n_test": n, "metric": "roc_auc difference", "pairs": len(used), "draws": scored,
                     "coverage": held / scored, "coverage_ci": [ci_low, ci_high], "truth_above": above / scored,
                     "truth_below": below / scored, "median_width": float(np.median(widths)),
                     "decided": decided / scored, "wrong_verdicts": wrong / scored})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "docs" / "results",
                        help="where the accuracy and cv results files with per-case predictions are")
    parser.add_argument("--draws", type=int, default=20, help="test sets drawn per population and size")
    parser.add_argument("--paired-draws", type=int, default=5, help="test sets drawn per population pair and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results" / "ci_coverage_cpu.json")
    args = parser.parse_args(argv)
    sets = case_sets(args.results)
    if not sets:
        print(f"ci_coverage.py: no per-case predictions in {', '.join(SOURCES)} under {args.results}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = measure(sets, draws=args.draws, seed=args.seed)
    paired_rows = measure_paired(sets, draws=args.paired_draws, seed=args.seed)
    seconds = round(time.perf_counter() - started, 1)
    command = (f"python benchmarks/ci_coverage.py --draws {args.draws} --paired-draws {args.paired_draws} "
               f"--seed {args.seed}")
    write_json(args.out, {"benchmark": "ci_coverage", "command": command, **machine(), "sources": list(SOURCES),
                          "draws": args.draws, "paired_draws": args.paired_draws, "seed": args.seed,
                          "seconds": seconds, "confidence": 0.95, "n_bootstrap": 1000, "rows": rows,
                          "paired_rows": paired_rows})
    show_table("95% CIs on small test sets: how often they hold the population's value",
               ("test cases", "metric", "dataset", "interval", "case sets", "draws", "coverage [95% CI]",
                "truth above / below", "median width"),
               [[str(r["n_test"]), r["metric"], r["dataset"], r["interval"], str(r["case_sets"]), str(r["draws"]),
                 f"{r['coverage']:.3f} [{r['coverage_ci'][0]:.3f}, {r['coverage_ci'][1]:.3f}]",
                 f"{r['truth_above']:.3f} / {r['truth_below']:.3f}", f"{r['median_width']:.3f}"]
                for r in rows if r["dataset"] == "all"], left=4, width=150)
    show_table("paired 95% CIs of an AUC difference (benchmarks/paired.py) on small test sets",
               ("test cases", "pairs", "draws", "coverage [95% CI]", "truth above / below", "median width",
                "win or loss said", "wrong-sign verdicts"),
               [[str(r["n_test"]), str(r["pairs"]), str(r["draws"]),
                 f"{r['coverage']:.3f} [{r['coverage_ci'][0]:.3f}, {r['coverage_ci'][1]:.3f}]",
                 f"{r['truth_above']:.3f} / {r['truth_below']:.3f}", f"{r['median_width']:.3f}", f"{r['decided']:.3f}",
                 f"{r['wrong_verdicts']:.3f}"] for r in paired_rows], left=3, width=150)
    print(f"wrote {args.out} ({seconds} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
