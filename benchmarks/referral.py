"""Can a referral threshold for a target accuracy be trusted on a small calibration split?

`evaluate --target-accuracy A` picks the confidence threshold above which the model decides. Read off
the calibration cases' own accuracy ("plain": dualfuse's rule before the guarantee, `--guarantee 0`),
it is chosen where those few cases happened to do well; with a guarantee (the default) it is certified
by a Clopper-Pearson bound, found by two searches that share the error budget ("certified"; see
dualfuse.uncertainty.selective). Each search is also measured alone with the whole budget: the binary
search ("binary search": selection with guaranteed risk, dualfuse's certified rule before the fixed
sequence joined it) and the fixed sequence ("fixed sequence"). This script measures them on real
predictions already stored by the other benchmarks: every record's per-case probabilities (test split
of accuracy_*.json, out-of-fold cases of cv_*.json) are split at random, many times, into a calibration
part of n cases and a held-out rest. Each rule picks its threshold on the calibration part; the held-out cases above it say how
accurate the decided cases really are. A *failure* is a threshold whose held-out decided cases are
less accurate than the target (a threshold that refers everything cannot fail). Coverage is the
held-out fraction decided; "best possible" is the largest held-out coverage whose accuracy still meets
the target (an oracle, not a rule). The held-out accuracy of the decided cases is also summarised
(median and 5th percentile over the draws that decided any), so a failure's size shows, not only its
rate. Every rule decides as `evaluate` does: a temperature is fitted on the calibration part (to the
log of the stored probabilities), confidence is the calibrated top-class probability, and a case is
decided only when its LAC conformal set (alpha 0.1, fitted on the calibration part) names one class;
the threshold is chosen among the calibration cases with such a set.

The default, `evaluate` without a target accuracy, promises a coverage instead: decide 90% of the cases.
On the same draws the script measures the held-out share decided by the threshold chosen among the
one-class-set cases (dualfuse's rule: where fewer than 90% of the calibration cases have such a set, it
decides all of them and warns) and by the threshold chosen on confidence alone (the rule before it, which
the conformal filter then silently cut below the target).

    python benchmarks/referral.py --out docs/results/referral_cpu.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import REPO_ROOT, machine, read_json, show_table, write_json

from dualfuse.evaluation.predictions import Predictions, Predictor, conformal_sets
from dualfuse.evaluation.uncertainty_report import calibrate
from dualfuse.uncertainty import selective
from dualfuse.uncertainty.selective import DEFAULT_GUARANTEE, choose_coverage_threshold, choose_referral_threshold

SOURCES = ("accuracy_cpu.json", "cv_cpu.json")
CAL_SIZES = (50, 100, 200, 500, 1000)
TARGETS = (0.9, 0.95)
RULES = {"plain": None, "binary search": DEFAULT_GUARANTEE, "fixed sequence": DEFAULT_GUARANTEE,
         "certified": DEFAULT_GUARANTEE}
SEARCHES = {"binary search": selective._binary_search_pick, "fixed sequence": selective._fixed_sequence_pick}
ALPHA = 0.1  # evaluate's default conformal alpha
COVERAGE = 0.9  # evaluate's default target coverage
SHORT_BY = 0.05  # a held-out share below COVERAGE - SHORT_BY with no warning is a silent shortfall
SOFTMAX = Predictor(1, 0)


def decision_inputs(case_set: dict, cal: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What `evaluate` fits on the calibration part (`calibrate`: temperature and conformal thresholds,
    here on the log of the stored probabilities), applied to every case: each case's calibrated
    confidence, whether its prediction is right, and whether its conformal set names one class."""
    logits, labels = np.log(np.clip(case_set["probs"], 1e-12, None)), case_set["labels"]
    part = Predictions([""] * int(cal.sum()), [""] * int(cal.sum()), {"label": logits[cal]}, labels={"label": labels[cal]})
    stored = calibrate(part, "label", SOFTMAX, alpha=ALPHA)
    every = Predictions([""] * len(labels), [""] * len(labels), {"label": logits})
    probs = every.using(SOFTMAX, {"label": stored["temperature"]}).probs("label")
    return probs.max(axis=1), probs.argmax(axis=1) == labels, conformal_sets(probs, stored).sum(axis=1) == 1


def threshold(confidence: np.ndarray, correct: np.ndarray, target: float, rule: str) -> float:
    """The rule's confidence threshold on these calibration cases (+inf: refer every case)."""
    if not len(confidence):
        return float("inf")
    if rule in SEARCHES:  # one search alone, with the whole error budget
        accepted, errors, thresholds = selective._operating_points(confidence, correct)
        pick = SEARCHES[rule](accepted, errors, target, 1 - RULES[rule])[0]
        return float("inf") if pick is None else float(thresholds[pick])
    return choose_referral_threshold(confidence, correct, target_accuracy=target, guarantee=RULES[rule])["threshold"]


def coverage_thresholds(confidence: np.ndarray, correct: np.ndarray, decidable: np.ndarray) -> dict[str, tuple]:
    """Each coverage rule's threshold on these calibration cases, and whether it warned that the target
    was out of reach."""
    alone = choose_referral_threshold(confidence, correct, target_coverage=COVERAGE)
    among = choose_coverage_threshold(confidence, correct, decidable, COVERAGE)
    return {"confidence only": (alone["threshold"], False), "one-class sets": (among["threshold"], not among["reachable"])}


def case_sets(results: Path, sources=SOURCES) -> list[dict]:
    """Every stored set of per-case predictions: `{source, row, seed, task, dataset, probs, labels, case_ids}`."""
    sets = []
    for name in sources:
        for record in read_json(results / name, {}).get("records", []):
            tasks = record.get("tasks") or {}
            found = [(task, value["per_case"]) for task, value in tasks.items()
                     if isinstance(value, dict) and value.get("per_case")]
            if record.get("per_case"):
                found.append((record.get("dataset", ""), record["per_case"]))
            for task, cases in found:
                probs = np.asarray(cases["probs"], dtype=float)
                labels = np.asarray(cases["label"])
                sets.append({"source": name, "row": record["row"], "seed": record["seed"], "task": task,
                             "dataset": record.get("dataset") or tasks.get(task, {}).get("dataset", task),
                             "probs": probs, "labels": labels, "case_ids": np.asarray(cases.get("case_id", []))})
    return sets


def measure(sets: list[dict], cal_sizes=CAL_SIZES, targets=TARGETS, draws: int = 50,
            seed: int = 0) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """One row per (calibration size, target, rule), pooled over every case set at least twice that size,
    and the default rule's paired coverage differences (`_paired_coverage`); then the same for the
    coverage target (`_coverage_rows`)."""
    rng = np.random.default_rng(seed)
    tally: dict[tuple, dict] = {}
    by_coverage: dict[tuple, dict] = {}
    for case_set in sets:
        n_total = len(case_set["labels"])
        for n_cal in (n for n in cal_sizes if 2 * n <= n_total):
            for _ in range(draws):
                cal = np.zeros(n_total, dtype=bool)
                cal[rng.choice(n_total, n_cal, replace=False)] = True
                confidence, correct, decidable = decision_inputs(case_set, cal)
                chosen_on = cal & decidable
                held_conf, held_ok, held_decidable = confidence[~cal], correct[~cal], decidable[~cal]
                key = (case_set["source"], case_set["row"], case_set["seed"], case_set["task"])
                for rule, (cut, warned) in coverage_thresholds(confidence[cal], correct[cal], decidable[cal]).items():
                    share = float((held_decidable & (held_conf >= cut)).mean())
                    entry = by_coverage.setdefault((n_cal, COVERAGE, rule), {
                        "n_cal": n_cal, "target_coverage": COVERAGE, "rule": rule, "draws": 0, "warned": 0,
                        "silent_shortfalls": 0, "shares": [], "shares_unwarned": [], "sets": {}})
                    entry["draws"] += 1
                    entry["warned"] += int(warned)
                    entry["silent_shortfalls"] += int(not warned and share < COVERAGE - SHORT_BY)
                    entry["shares"].append(share)
                    if not warned:
                        entry["shares_unwarned"].append(share)
                    entry["sets"].setdefault(key, []).append(share)
                for target in targets:
                    # The oracle: the plain rule fitted on the held-out cases themselves.
                    best = (choose_referral_threshold(held_conf[held_decidable], held_ok[held_decidable],
                                                      target_accuracy=target)["n_accepted"] / len(held_conf)
                            if held_decidable.any() else 0.0)
                    for rule, guarantee in RULES.items():
                        decided = held_decidable & (held_conf >= threshold(confidence[chosen_on], correct[chosen_on],
                                                                           target, rule))
                        accuracy = float(held_ok[decided].mean()) if decided.any() else None
                        entry = tally.setdefault((n_cal, target, rule), {
                            "n_cal": n_cal, "target": target, "rule": rule, "guarantee": guarantee, "draws": 0,
                            "failures": 0, "referred_all": 0, "coverage": [], "best_coverage": [], "accuracy": [],
                            "sets": {}, "datasets": set()})
                        entry["draws"] += 1
                        entry["failures"] += int(accuracy is not None and accuracy < target)
                        entry["referred_all"] += int(not decided.any())
                        entry["coverage"].append(float(decided.mean()))
                        entry["best_coverage"].append(best)
                        if accuracy is not None:
                            entry["accuracy"].append(accuracy)
                        entry["sets"].setdefault(key, []).append(float(decided.mean()))
                        entry["datasets"].add(case_set["dataset"])
    rows = []
    for entry in tally.values():
        rows.append({**{k: entry[k] for k in ("n_cal", "target", "rule", "guarantee", "draws", "failures")},
                     "failure_rate": entry["failures"] / entry["draws"],
                     "referred_all_rate": entry["referred_all"] / entry["draws"],
                     "mean_coverage": float(np.mean(entry["coverage"])),
                     "mean_best_coverage": float(np.mean(entry["best_coverage"])),
                     # Held-out accuracy of the decided cases over the draws that decided any: how far short a
                     # failure falls, not only how often.
                     "accuracy_median": float(np.median(entry["accuracy"])) if entry["accuracy"] else None,
                     "accuracy_p05": float(np.percentile(entry["accuracy"], 5)) if entry["accuracy"] else None,
                     "case_sets": len(entry["sets"]),
                     "datasets": sorted(entry["datasets"])})
    return (sorted(rows, key=lambda r: (r["target"], r["n_cal"], r["rule"])), _paired_coverage(tally, rng),
            _coverage_rows(by_coverage), _paired_coverage(by_coverage, rng, "one-class sets", ("confidence only",)))


def _coverage_rows(by_coverage: dict) -> list[dict]:
    """Per (calibration size, rule): the held-out share decided (mean, 5th and 95th percentile), how often
    the rule warned, and how often it fell short of the target by more than SHORT_BY without a warning."""
    rows = []
    for (n_cal, _, rule), entry in sorted(by_coverage.items()):
        shares = np.asarray(entry["shares"])
        rows.append({"n_cal": n_cal, "target_coverage": entry["target_coverage"], "rule": rule,
                     "draws": entry["draws"], "case_sets": len(entry["sets"]),
                     "mean_share": float(shares.mean()), "share_p05": float(np.percentile(shares, 5)),
                     "share_p95": float(np.percentile(shares, 95)), "warned_rate": entry["warned"] / entry["draws"],
                     "mean_share_unwarned": float(np.mean(entry["shares_unwarned"])) if entry["shares_unwarned"]
                     else None,
                     "silent_shortfall_rate": entry["silent_shortfalls"] / entry["draws"], "short_by": SHORT_BY})
    return rows


def mean_ci(differences: np.ndarray, rng: np.random.Generator, n_bootstrap: int = 2000) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean of per-case-set differences, resampling case sets."""
    means = differences[rng.integers(0, len(differences), (n_bootstrap, len(differences)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def stored_sets_cli(argv, doc: str, script: str, draws: int) -> tuple[argparse.Namespace, list[dict]]:
    """The command line of a benchmark over stored predictions (--results, --draws, --seed, --out) and the
    case sets it reads; no sets: one line on stderr saying where none were found."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "docs" / "results",
                        help="where the accuracy and cv results files with per-case predictions are")
    parser.add_argument("--draws", type=int, default=draws, help="random calibration splits per case set and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results" / f"{script}_cpu.json")
    args = parser.parse_args(argv)
    sets = case_sets(args.results)
    if not sets:
        print(f"{script}.py: no per-case predictions in {', '.join(SOURCES)} under {args.results}", file=sys.stderr)
    return args, sets


def _paired_coverage(tally: dict, rng: np.random.Generator, rule: str = "certified",
                     versus: tuple[str, ...] = ("binary search", "fixed sequence"),
                     n_bootstrap: int = 2000) -> list[dict]:
    """`rule`'s held-out coverage minus each rule of `versus` (by default: the certified rule minus each
    search alone), on the same calibration draws: the mean over case sets of each set's mean difference,
    with a 95% bootstrap CI over case sets."""
    paired = []
    for (n_cal, target, name), entry in sorted(tally.items()):
        if name != rule:
            continue
        for other in versus:
            theirs = tally[(n_cal, target, other)]["sets"]
            differences = np.array([np.mean(np.subtract(mine, theirs[key])) for key, mine in entry["sets"].items()])
            low, high = mean_ci(differences, rng, n_bootstrap)
            paired.append({"n_cal": n_cal, "target": target, "rule": rule, "versus": other,
                           "coverage_difference": float(differences.mean()), "ci_low": low,
                           "ci_high": high, "case_sets": len(differences)})
    return paired


def _accuracy_text(row: dict) -> str:
    if row["accuracy_median"] is None:
        return "–"
    return f"{row['accuracy_median']:.3f} / {row['accuracy_p05']:.3f}"


def main(argv=None) -> int:
    args, sets = stored_sets_cli(argv, __doc__, "referral", draws=50)
    if not sets:
        return 2
    started = time.perf_counter()
    rows, paired, coverage_rows, coverage_paired = measure(sets, draws=args.draws, seed=args.seed)
    seconds = round(time.perf_counter() - started, 1)
    command = f"python benchmarks/referral.py --draws {args.draws} --seed {args.seed}"
    write_json(args.out, {"benchmark": "referral", "command": command, **machine(),
                          "sources": list(SOURCES), "draws": args.draws, "seed": args.seed, "seconds": seconds,
                          "rows": rows, "paired": paired, "coverage_rows": coverage_rows,
                          "coverage_paired": coverage_paired})
    show_table("referral thresholds for a target accuracy: held-out failures and coverage",
               ("target", "cal cases", "rule", "case sets", "draws", "failure rate", "refers all", "coverage",
                "best possible", "decided acc. median / 5th pct"),
               [[f"{r['target']:.2f}", str(r["n_cal"]), r["rule"], str(r["case_sets"]), str(r["draws"]),
                 f"{r['failure_rate']:.1%}", f"{r['referred_all_rate']:.1%}", f"{r['mean_coverage']:.3f}",
                 f"{r['mean_best_coverage']:.3f}", _accuracy_text(r)] for r in rows], left=3, width=160)
    show_table("held-out coverage of the default (certified) minus each search alone, same draws "
               "[95% CI over case sets]",
               ("target", "cal cases", "versus", "case sets", "coverage difference"),
               [[f"{p['target']:.2f}", str(p["n_cal"]), p["versus"], str(p["case_sets"]),
                 f"{p['coverage_difference']:+.3f} [{p['ci_low']:+.3f}, {p['ci_high']:+.3f}]"] for p in paired], left=3)
    show_table(f"referral for a target coverage ({COVERAGE:.0%}): held-out share decided",
               ("cal cases", "rule", "case sets", "draws", "share: mean [5th, 95th pct]", "warned",
                "share when not warned", f"silent shortfall (> {SHORT_BY:.2f})"),
               [[str(r["n_cal"]), r["rule"], str(r["case_sets"]), str(r["draws"]),
                 f"{r['mean_share']:.3f} [{r['share_p05']:.3f}, {r['share_p95']:.3f}]", f"{r['warned_rate']:.1%}",
                 "–" if r["mean_share_unwarned"] is None else f"{r['mean_share_unwarned']:.3f}",
                 f"{r['silent_shortfall_rate']:.1%}"] for r in coverage_rows], left=2, width=160)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
