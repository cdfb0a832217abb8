"""Can a temperature fitted on a small calibration split be trusted?

`evaluate` fits one temperature per predictor on the run's calibration split (`data.cal_fraction`,
0.1 of the data by default: 20 to 50 cases on a dataset of a few hundred). Plain temperature scaling
(Guo et al. 2017) minimises the NLL alone; when every calibration case is right that NLL keeps falling
as T -> 0, and on a few dozen cases the fit is erratic. dualfuse now adds a weak N(0, 1) prior on log T
(`dualfuse.uncertainty.calibration.T_PRIOR_SD`). This script measures both, and no scaling at all, on
real predictions already stored by the other benchmarks (the per-case probabilities of accuracy_*.json
test splits and cv_*.json out-of-fold cases; their log as logits, the softmax predictor): each set is
split at random many times into a calibration part of n cases (stratified by class, as dualfuse's
splits are) and a held-out rest of at least 3n, each rule fits its temperature on the calibration part,
and the held-out cases score it: NLL, ECE (15 bins), the mean confidence of the wrong predictions and
the share of them at 0.99 or above (what a clinician reads as "certain" when the model is wrong). Paired: per case set the mean over draws
of the difference between two rules on the same draws, then the mean over case sets with a 95%
bootstrap CI over case sets (sets of one dataset and model are not independent, so read the CI as a
lower bound on the uncertainty); *better* or *worse* only where the CI excludes 0.

    python benchmarks/temperature.py --out docs/results/temperature_cpu.json
"""
from __future__ import annotations

import time

import numpy as np
from _common import machine, show_table, write_json
from ci_coverage import stratified_draw
from referral import SOURCES, mean_ci, stored_sets_cli
from scipy.special import log_softmax, softmax

from dualfuse.uncertainty.calibration import T_BOUNDS, T_PRIOR_SD, expected_calibration_error, fit_temperature

CAL_SIZES = (20, 50, 100, 200, 500)
POPULATION_FACTOR = 4  # a case set holds at least this many times the calibration cases: 3n held out
RULES = {"no scaling": "none", "NLL alone (before)": None, f"prior sd {T_PRIOR_SD:g} (dualfuse)": T_PRIOR_SD}
NONE, BEFORE, NOW = RULES
PAIRS = ((NOW, BEFORE), (NOW, NONE))
SCORES = ("nll", "ece", "wrong_confidence", "wrong_certain")
CERTAIN = 0.99  # a wrong prediction at or above this confidence reads as certain
NEAR_BOUND = 0.1  # a plain fit at or under this T has run towards its lower bound (T_BOUNDS[0])


def _fit(logits: np.ndarray, labels: np.ndarray, rule) -> float:
    return 1.0 if rule == "none" else fit_temperature(logits, labels, prior_sd=rule)


def held_out_scores(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, float]:
    """NLL, ECE, the mean top-class probability of the wrong predictions and the share of them at
    CERTAIN or above, under `temperature`."""
    log_p = log_softmax(logits / temperature, axis=1)
    probs = softmax(logits / temperature, axis=1)
    wrong = probs.argmax(axis=1) != labels
    return {"nll": float(-log_p[np.arange(len(labels)), labels].mean()),
            "ece": expected_calibration_error(probs, labels),
            "wrong_confidence": float(probs[wrong].max(axis=1).mean()) if wrong.any() else float("nan"),
            "wrong_certain": float((probs[wrong].max(axis=1) >= CERTAIN).mean()) if wrong.any() else float("nan")}


def measure(sets: list[dict], cal_sizes=CAL_SIZES, draws: int = 20, seed: int = 0,
            n_bootstrap: int = 2000) -> tuple[list[dict], list[dict]]:
    """One row per (calibration size, rule) pooled over the case sets at least POPULATION_FACTOR times
    that size, and the paired differences of PAIRS per size and score."""
    rng = np.random.default_rng(seed)
    tally: dict[tuple, dict] = {}
    for case_set in sets:
        labels = case_set["labels"]
        logits = np.log(np.clip(case_set["probs"], 1e-12, None))
        key = (case_set["source"], case_set["row"], case_set["seed"], case_set["task"])
        for n_cal in (n for n in cal_sizes if POPULATION_FACTOR * n <= len(labels)):
            for _ in range(draws):
                cal = np.zeros(len(labels), dtype=bool)
                cal[stratified_draw(labels, n_cal, rng)] = True
                all_right = bool((logits[cal].argmax(axis=1) == labels[cal]).all())
                for name, rule in RULES.items():
                    temperature = _fit(logits[cal], labels[cal], rule)
                    scores = held_out_scores(logits[~cal], labels[~cal], temperature)
                    entry = tally.setdefault((n_cal, name), {"draws": 0, "all_right": 0, "near_bound": 0,
                                                             "log_t": [], "sets": {}, "datasets": set()})
                    entry["draws"] += 1
                    entry["all_right"] += int(all_right)
                    entry["near_bound"] += int(temperature <= NEAR_BOUND)
                    entry["log_t"].append(np.log(temperature))
                    entry["datasets"].add(case_set["dataset"])
                    per_set = entry["sets"].setdefault(key, {score: [] for score in SCORES})
                    for score in SCORES:
                        per_set[score].append(scores[score])
    rows = []
    for (n_cal, name), entry in sorted(tally.items(), key=lambda item: (item[0][0], list(RULES).index(item[0][1]))):
        means = {score: float(np.mean([np.nanmean(s[score]) for s in entry["sets"].values()
                                       if not np.isnan(s[score]).all()])) for score in SCORES}
        log_t = np.asarray(entry["log_t"])
        rows.append({"n_cal": n_cal, "rule": name, "prior_sd": None if RULES[name] in (None, "none") else RULES[name],
                     "case_sets": len(entry["sets"]), "draws": entry["draws"],
                     "all_right_rate": entry["all_right"] / entry["draws"],
                     "near_bound_rate": entry["near_bound"] / entry["draws"],
                     "temperature_p05": float(np.exp(np.percentile(log_t, 5))),
                     "temperature_median": float(np.exp(np.median(log_t))),
                     "temperature_p95": float(np.exp(np.percentile(log_t, 95))),
                     **_change_from_before(tally, n_cal, name),
                     **{f"mean_{score}": means[score] for score in SCORES}, "datasets": sorted(entry["datasets"])})
    return rows, _paired(tally, rng, n_bootstrap)


def _change_from_before(tally: dict, n_cal: int, name: str) -> dict:
    """For dualfuse's rule: |T / T_before - 1| on the same draws (median and 95th percentile), how far
    the prior moves the temperature plain scaling would have fitted."""
    if name != NOW:
        return {"t_change_median": None, "t_change_p95": None}
    change = np.abs(np.exp(np.subtract(tally[(n_cal, NOW)]["log_t"], tally[(n_cal, BEFORE)]["log_t"])) - 1)
    return {"t_change_median": float(np.median(change)), "t_change_p95": float(np.percentile(change, 95))}


def _paired(tally: dict, rng: np.random.Generator, n_bootstrap: int) -> list[dict]:
    """Per size, pair and score: the mean over case sets of each set's mean difference over its draws,
    with a 95% bootstrap CI over case sets."""
    paired = []
    for n_cal in sorted({n for n, _ in tally}):
        for rule, other in PAIRS:
            mine, theirs = tally[(n_cal, rule)]["sets"], tally[(n_cal, other)]["sets"]
            for score in SCORES:
                per_set = [np.subtract(mine[key][score], theirs[key][score]) for key in mine]
                # a set with no wrong prediction in any draw has no wrong-prediction score to compare
                differences = np.array([np.nanmean(d) for d in per_set if not np.isnan(d).all()])
                low, high = mean_ci(differences, rng, n_bootstrap)
                verdict = "better" if high < 0 else "worse" if low > 0 else "tie"  # every score: lower is better
                paired.append({"n_cal": n_cal, "rule": rule, "versus": other, "score": score,
                               "difference": float(differences.mean()), "ci_low": low, "ci_high": high,
                               "case_sets": len(differences), "verdict": verdict})
    return paired


def main(argv=None) -> int:
    args, sets = stored_sets_cli(argv, __doc__, "temperature", draws=20)
    if not sets:
        return 2
    started = time.perf_counter()
    rows, paired = measure(sets, draws=args.draws, seed=args.seed)
    seconds = round(time.perf_counter() - started, 1)
    command = f"python benchmarks/temperature.py --draws {args.draws} --seed {args.seed}"
    write_json(args.out, {"benchmark": "temperature", "command": command, **machine(), "sources": list(SOURCES),
                          "draws": args.draws, "seed": args.seed, "seconds": seconds, "t_bounds": list(T_BOUNDS),
                          "near_bound": NEAR_BOUND, "certain": CERTAIN, "rows": rows, "paired": paired})
    show_table("temperature fitted on n calibration cases, scored on the held-out rest (means over case sets)",
               ("cal cases", "rule", "case sets", "draws", "every cal case right", f"T ≤ {NEAR_BOUND}",
                "T: 5th / median / 95th pct", "NLL", "ECE", "confidence when wrong", f"wrong at ≥ {CERTAIN}"),
               [[str(r["n_cal"]), r["rule"], str(r["case_sets"]), str(r["draws"]), f"{r['all_right_rate']:.1%}",
                 f"{r['near_bound_rate']:.1%}",
                 f"{r['temperature_p05']:.2f} / {r['temperature_median']:.2f} / {r['temperature_p95']:.2f}",
                 f"{r['mean_nll']:.3f}", f"{r['mean_ece']:.3f}", f"{r['mean_wrong_confidence']:.3f}",
                 f"{r['mean_wrong_certain']:.1%}"] for r in rows],
               left=2, width=170)
    show_table("paired, same draws: rule minus the other (lower is better) [95% CI over case sets]",
               ("cal cases", "rule", "versus", "score", "case sets", "difference", "verdict"),
               [[str(p["n_cal"]), p["rule"], p["versus"], p["score"], str(p["case_sets"]),
                 f"{p['difference']:+.4f} [{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]", p["verdict"]] for p in paired],
               left=4, width=150)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
