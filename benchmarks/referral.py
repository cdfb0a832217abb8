"""Can a referral threshold for a target accuracy be trusted on a small calibration split?

`evaluate --target-accuracy A` picks the confidence threshold above which the model decides. Read off
the calibration cases' own accuracy ("plain": dualfuse's rule before the guarantee, `--guarantee 0`),
it is chosen where those few cases happened to do well; with a guarantee (selection with guaranteed
risk, the default) it is certified by a Clopper-Pearson bound. This script measures both on real predictions already stored by
the other benchmarks: every record's per-case probabilities (test split of accuracy_*.json, out-of-fold
cases of cv_*.json) are split at random, many times, into a calibration part of n cases and a held-out
rest. Each rule picks its threshold on the calibration part; the held-out cases above it say how
accurate the decided cases really are. A *failure* is a threshold whose held-out decided cases are
less accurate than the target (a threshold that refers everything cannot fail). Coverage is the
held-out fraction decided; "best possible" is the largest held-out coverage whose accuracy still meets
the target (an oracle, not a rule). The held-out accuracy of the decided cases is also summarised
(median and 5th percentile over the draws that decided any), so a failure's size shows, not only its
rate. Confidence is the stored top-class probability, uncalibrated (a temperature would reorder cases
only slightly and is left out).

    python benchmarks/referral.py --out docs/results/referral_cpu.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _common import REPO_ROOT, machine, read_json, show_table, write_json

from dualfuse.uncertainty.selective import DEFAULT_GUARANTEE, choose_referral_threshold

SOURCES = ("accuracy_cpu.json", "cv_cpu.json")
CAL_SIZES = (50, 100, 200, 500, 1000)
TARGETS = (0.9, 0.95)
RULES = {"plain": None, "guaranteed": DEFAULT_GUARANTEE}


def case_sets(results: Path, sources=SOURCES) -> list[dict]:
    """Every stored set of per-case predictions: `{source, row, seed, dataset, confidence, correct}`."""
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
                             "confidence": probs.max(axis=1), "correct": probs.argmax(axis=1) == labels})
    return sets


def measure(sets: list[dict], cal_sizes=CAL_SIZES, targets=TARGETS, draws: int = 50, seed: int = 0) -> list[dict]:
    """One row per (calibration size, target, rule), pooled over every case set at least twice that size."""
    rng = np.random.default_rng(seed)
    tally: dict[tuple, dict] = {}
    for case_set in sets:
        n_total = len(case_set["confidence"])
        for n_cal in (n for n in cal_sizes if 2 * n <= n_total):
            for _ in range(draws):
                cal = np.zeros(n_total, dtype=bool)
                cal[rng.choice(n_total, n_cal, replace=False)] = True
                held_conf, held_ok = case_set["confidence"][~cal], case_set["correct"][~cal]
                for target in targets:
                    # The oracle: the plain rule fitted on the held-out cases themselves.
                    best = choose_referral_threshold(held_conf, held_ok, target_accuracy=target)["coverage"]
                    for rule, guarantee in RULES.items():
                        chosen = choose_referral_threshold(case_set["confidence"][cal], case_set["correct"][cal],
                                                           target_accuracy=target, guarantee=guarantee)
                        decided = held_conf >= chosen["threshold"]
                        accuracy = float(held_ok[decided].mean()) if decided.any() else None
                        entry = tally.setdefault((n_cal, target, rule), {
                            "n_cal": n_cal, "target": target, "rule": rule, "guarantee": guarantee, "draws": 0,
                            "failures": 0, "referred_all": 0, "coverage": [], "best_coverage": [], "accuracy": [],
                            "sets": set(), "datasets": set()})
                        entry["draws"] += 1
                        entry["failures"] += int(accuracy is not None and accuracy < target)
                        entry["referred_all"] += int(not decided.any())
                        entry["coverage"].append(float(decided.mean()))
                        entry["best_coverage"].append(best)
                        if accuracy is not None:
                            entry["accuracy"].append(accuracy)
                        entry["sets"].add((case_set["source"], case_set["row"], case_set["seed"], case_set["task"]))
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
    return sorted(rows, key=lambda r: (r["target"], r["n_cal"], r["rule"]))


def _accuracy_text(row: dict) -> str:
    if row["accuracy_median"] is None:
        return "–"
    return f"{row['accuracy_median']:.3f} / {row['accuracy_p05']:.3f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO_ROOT / "docs" / "results",
                        help="where the accuracy and cv results files with per-case predictions are")
    parser.add_argument("--draws", type=int, default=50, help="random calibration splits per case set and size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "results" / "referral_cpu.json")
    args = parser.parse_args(argv)
    sets = case_sets(args.results)
    if not sets:
        print(f"referral.py: no per-case predictions in {', '.join(SOURCES)} under {args.results}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    rows = measure(sets, draws=args.draws, seed=args.seed)
    seconds = round(time.perf_counter() - started, 1)
    command = f"python benchmarks/referral.py --draws {args.draws} --seed {args.seed}"
    write_json(args.out, {"benchmark": "referral", "command": command, **machine(),
                          "sources": list(SOURCES), "draws": args.draws, "seed": args.seed, "seconds": seconds,
                          "rows": rows})
    show_table("referral thresholds for a target accuracy: held-out failures and coverage",
               ("target", "cal cases", "rule", "case sets", "draws", "failure rate", "refers all", "coverage",
                "best possible", "decided acc. median / 5th pct"),
               [[f"{r['target']:.2f}", str(r["n_cal"]), r["rule"], str(r["case_sets"]), str(r["draws"]),
                 f"{r['failure_rate']:.1%}", f"{r['referred_all_rate']:.1%}", f"{r['mean_coverage']:.3f}",
                 f"{r['mean_best_coverage']:.3f}", _accuracy_text(r)] for r in rows], left=3)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
