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

The paired differences behind every "win", "tie" or "loss" in docs/benchmarks.md (dualfuse.evaluation.paired)
are measured the same way, for AUC (part "paired") and accuracy ("paired_accuracy"): two stored
prediction sets of one source and dataset that score the same cases form a population pair, for one
seed or pooled over the seeds both rows have; the mean over seeds of their difference on all cases is
the truth. n cases are drawn, the same for every seed, and on each draw: the percentile bootstrap with
each seed's cases resampled apart (what the docs printed before), the bootstrap with one draw for
every seed, each closed-form interval alone (AUC: DeLong, MOVER; accuracy: Wald, Newcombe, MOVER) and
each joined with the bootstrap (the docs print one of these per difference). A *wrong verdict* is a
"win" where the truth is a loss or a "loss" where it is a win. `--parts` measures the parts named
and keeps the others' rows from `--out`.

    python benchmarks/ci_coverage.py --out docs/results/ci_coverage_cpu.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import REPO_ROOT, machine, read_json, show_table, write_json
from referral import SOURCES, case_sets

from dualfuse.evaluation.metrics import classification_metrics
from dualfuse.evaluation.paired import (
    N_BOOTSTRAP,
    MacroAuroc,
    accuracy,
    accuracy_difference_intervals,
    align_cases,
    auc_difference_intervals,
    paired_bootstrap,
    verdict,
)
from dualfuse.uncertainty.conformal import binomial_ci

SIZES = (20, 50, 100, 200)
PAIRED_SIZES = (50, 100, 200)
PAIRS_PER_GROUP = 4  # population pairs per (source, dataset, seed) at the most, chosen at random
METRICS = ("accuracy", "balanced_accuracy", "roc_auc")
INTERVALS = ("bootstrap", "score", "widened")  # evaluate prints "widened": the union of the other two
POPULATION_FACTOR = 10  # a population holds at least this many times the cases of a draw
PARTS = ("metrics", "paired", "paired_accuracy")  # single-model intervals; paired AUC and accuracy differences
PAIRED_PART_METRIC = {"paired": "roc_auc", "paired_accuracy": "accuracy"}


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


def population_pairs(sets: list[dict], rng: np.random.Generator, most: int = PAIRS_PER_GROUP) -> list[list[tuple]]:
    """Population pairs, each a list of `(a, b)` case sets, one per seed, every one aligned to the first
    a's case order: one seed of two rows of one source and dataset that score the same cases by id (at
    most `most` pairs per source, dataset and seed), and two rows over all the seeds they share where
    every seed scored the same cases, as the docs pool them (at most `most` per source and dataset)."""
    by_row: dict[tuple, dict] = {}
    for case_set in sets:
        ids = case_set["case_ids"].tolist()
        if len(ids) == len(case_set["labels"]) and len(set(ids)) == len(ids):
            by_row.setdefault((case_set["source"], case_set["dataset"], case_set["task"], case_set["row"]),
                              {})[case_set["seed"]] = case_set
    by_dataset: dict[tuple, list] = {}
    for (source, dataset, _, row), seeds in by_row.items():
        by_dataset.setdefault((source, dataset), []).append((row, seeds))
    single, pooled = [], []
    for members in by_dataset.values():
        found: dict[object, list] = {}
        for i, (row_a, seeds_a) in enumerate(members):
            for row_b, seeds_b in members[i + 1:]:
                if row_a == row_b:
                    continue
                shared = sorted(set(seeds_a) & set(seeds_b), key=str)
                aligned = [_align(seeds_a[seed], seeds_b[seed], seeds_a[shared[0]]) for seed in shared]
                for seed, pair in zip(shared, aligned):
                    if pair is not None:
                        found.setdefault(seed, []).append([pair])
                if len(shared) > 1 and all(pair is not None for pair in aligned):
                    found.setdefault("pooled", []).append(aligned)
        for key, candidates in found.items():
            for index in rng.permutation(len(candidates))[:most]:
                (pooled if key == "pooled" else single).append(candidates[index])
    return single + pooled


def _align(a: dict, b: dict, reference: dict) -> tuple[dict, dict] | None:
    """a and b reordered to `reference`'s cases, or None when either scores other cases or other labels."""
    def cases(case_set: dict) -> dict:
        return {"case_id": case_set["case_ids"], "label": case_set["labels"], "probs": case_set["probs"]}

    try:
        sides = align_cases(cases(a), cases(b), order=reference["case_ids"].tolist())
    except ValueError:
        return None
    if not np.array_equal(sides[0]["label"], reference["labels"]):
        return None
    return tuple({**case_set, "probs": side["probs"], "labels": side["label"], "case_ids": side["case_id"]}
                 for case_set, side in zip((a, b), sides))


PAIRED_INTERVALS = ("bootstrap, seeds apart", "bootstrap", "delong", "wald", "newcombe", "mover", "bootstrap + delong",
                    "bootstrap + wald", "bootstrap + newcombe", "bootstrap + mover")
# Per difference: its statistic, its closed-form intervals (method: (low, high) or None) and their names.
PAIRED_METRICS = {
    "roc_auc": (MacroAuroc(),
                lambda cases, ids: auc_difference_intervals(cases, case_ids=ids), ("delong", "mover")),
    "accuracy": (lambda c: accuracy(c["probs"], c["label"]),
                 lambda cases, ids: accuracy_difference_intervals(cases, case_ids=ids),
                 ("wald", "newcombe", "mover")),
}


def measure_paired(sets: list[dict], sizes=PAIRED_SIZES, draws: int = 10, seed: int = 0,
                   n_bootstrap: int = N_BOOTSTRAP, pooled_draws: int | None = None, metric: str = "roc_auc") -> list[dict]:
    """One row per (test-set size, one seed or pooled seeds, interval): how often the paired 95% CI of the
    `metric` difference (AUC or accuracy) holds the true difference, and how often its verdict has the
    wrong sign. Intervals on the same draw: the bootstrap with each seed's cases drawn apart (the docs
    before), the bootstrap with one draw for all seeds, the closed-form intervals alone (AUC: DeLong and
    MOVER, `auc_difference_intervals`; accuracy: Wald, Newcombe and MOVER, `accuracy_difference_intervals`), and
    each joined with the bootstrap (what the docs print is one of these).
    Pooled populations are fewer, so they may get more draws (`pooled_draws`, default `draws`)."""
    rng = np.random.default_rng(seed)
    populations = population_pairs(sets, rng)
    statistic, closed_form, methods = PAIRED_METRICS[metric]
    tally: dict[tuple, dict] = {}
    for n in sizes:
        for population in populations:
            labels = population[0][0]["labels"]
            if len(labels) < POPULATION_FACTOR * n:
                continue
            truth = float(np.mean([statistic({"probs": a["probs"], "label": a["labels"]})
                                   - statistic({"probs": b["probs"], "label": b["labels"]}) for a, b in population]))
            kind = "one seed" if len(population) == 1 else "seeds pooled"
            for _ in range(draws if kind == "one seed" or pooled_draws is None else pooled_draws):
                pick = stratified_draw(labels, n, rng)
                cases = [({"probs": a["probs"][pick], "label": a["labels"][pick]},
                          {"probs": b["probs"][pick], "label": b["labels"][pick]}) for a, b in population]
                ids = [population[0][0]["case_ids"][pick].tolist()] * len(population)
                draw_seed = int(rng.integers(2**31))
                boot = paired_bootstrap(cases, statistic, n_bootstrap, seed=draw_seed, case_ids=ids)
                together = (boot["ci_low"], boot["ci_high"])
                if len(population) > 1:
                    apart = paired_bootstrap(cases, statistic, n_bootstrap, seed=draw_seed)
                    apart = (apart["ci_low"], apart["ci_high"])
                else:  # one seed: the same resamples either way
                    apart = together
                closed = closed_form(cases, ids) or dict.fromkeys(methods, (None, None))
                intervals = {"bootstrap, seeds apart": apart, "bootstrap": together}
                for method in methods:
                    low, high = closed[method]
                    intervals[method] = (low, high)
                    intervals[f"bootstrap + {method}"] = (together if low is None else
                                                          (min(together[0], low), max(together[1], high)))
                for interval, (low, high) in intervals.items():
                    entry = tally.setdefault((n, kind, interval), {"pairs": set(), "held": 0, "above": 0, "below": 0,
                                                                   "widths": [], "decided": 0, "wrong": 0})
                    entry["pairs"].add(id(population[0][0]))
                    if low is None:
                        continue
                    side = "held" if low <= truth <= high else ("above" if truth > high else "below")
                    entry[side] += 1
                    entry["widths"].append(high - low)
                    said = verdict({"ci_low": low, "ci_high": high})
                    entry["decided"] += said != "tie"
                    entry["wrong"] += (said == "win" and truth < 0) or (said == "loss" and truth > 0)
    rows = []
    for (n, kind, interval), entry in tally.items():
        scored = entry["held"] + entry["above"] + entry["below"]
        if not scored:
            continue
        ci_low, ci_high = binomial_ci(entry["held"], scored)
        rows.append({"n_test": n, "seeds": kind, "interval": interval, "metric": f"{metric} difference",
                     "pairs": len(entry["pairs"]), "draws": scored, "coverage": entry["held"] / scored,
                     "coverage_ci": [ci_low, ci_high], "truth_above": entry["above"] / scored,
                     "truth_below": entry["below"] / scored, "median_width": float(np.median(entry["widths"])),
                     "decided": entry["decided"] / scored, "wrong_verdicts": entry["wrong"] / scored})
    return sorted(rows, key=lambda r: (r["seeds"], r["n_test"], PAIRED_INTERVALS.index(r["interval"])))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "docs" / "results",
                        help="where the accuracy and cv results files with per-case predictions are")
    parser.add_argument("--draws", type=int, default=20, help="test sets drawn per population and size")
    parser.add_argument("--paired-draws", type=int, default=5, help="test sets drawn per population pair and size")
    parser.add_argument("--pooled-draws", type=int, default=20,
                        help="test sets drawn per population pair pooled over seeds and size (there are fewer)")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="what to measure; a part left out keeps its rows from --out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results" / "ci_coverage_cpu.json")
    args = parser.parse_args(argv)
    sets = case_sets(args.results)
    if not sets:
        print(f"ci_coverage.py: no per-case predictions in {', '.join(SOURCES)} under {args.results}", file=sys.stderr)
        return 2
    stored = read_json(args.out, {}) if set(args.parts) != set(PARTS) else {}
    result = {key: value for key, value in stored.items() if key in PARTS}
    for part in args.parts:
        started = time.perf_counter()
        if part == "metrics":
            rows = measure(sets, draws=args.draws, seed=args.seed)
            command = f"python benchmarks/ci_coverage.py --parts metrics --draws {args.draws} --seed {args.seed}"
        else:
            rows = measure_paired(sets, draws=args.paired_draws, seed=args.seed, pooled_draws=args.pooled_draws,
                                  metric=PAIRED_PART_METRIC[part])
            command = (f"python benchmarks/ci_coverage.py --parts {part} --paired-draws {args.paired_draws} "
                       f"--pooled-draws {args.pooled_draws} --seed {args.seed}")
        result[part] = {"command": command, **machine(), "seconds": round(time.perf_counter() - started, 1),
                        "seed": args.seed, "rows": rows}
    write_json(args.out, {"benchmark": "ci_coverage", "sources": list(SOURCES), "confidence": 0.95,
                          "n_bootstrap": N_BOOTSTRAP, **result})
    rows = result.get("metrics", {}).get("rows", [])
    show_table("95% CIs on small test sets: how often they hold the population's value",
               ("test cases", "metric", "dataset", "interval", "case sets", "draws", "coverage [95% CI]",
                "truth above / below", "median width"),
               [[str(r["n_test"]), r["metric"], r["dataset"], r["interval"], str(r["case_sets"]), str(r["draws"]),
                 f"{r['coverage']:.3f} [{r['coverage_ci'][0]:.3f}, {r['coverage_ci'][1]:.3f}]",
                 f"{r['truth_above']:.3f} / {r['truth_below']:.3f}", f"{r['median_width']:.3f}"]
                for r in rows if r["dataset"] == "all"], left=4, width=150)
    for part, name in (("paired", "an AUC"), ("paired_accuracy", "an accuracy")):
        show_table(f"paired 95% CIs of {name} difference (dualfuse.evaluation.paired) on small test sets",
                   ("test cases", "seeds", "interval", "pairs", "draws", "coverage [95% CI]", "truth above / below",
                    "median width", "win or loss said", "wrong-sign verdicts"),
                   [[str(r["n_test"]), r["seeds"], r["interval"], str(r["pairs"]), str(r["draws"]),
                     f"{r['coverage']:.3f} [{r['coverage_ci'][0]:.3f}, {r['coverage_ci'][1]:.3f}]",
                     f"{r['truth_above']:.3f} / {r['truth_below']:.3f}", f"{r['median_width']:.3f}",
                     f"{r['decided']:.3f}", f"{r['wrong_verdicts']:.3f}"]
                    for r in result.get(part, {}).get("rows", [])], left=5, width=170)
    timings = ", ".join(f"{part} {result[part]['seconds']} s" for part in args.parts)
    print(f"wrote {args.out} ({timings})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
