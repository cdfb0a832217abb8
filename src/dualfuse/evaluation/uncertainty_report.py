"""Turn MC-dropout / ensemble predictions into what a clinician can act on.

Calibration belongs to a predictor (`Predictor`: K members x T MC samples, or the eval-mode
softmax): each one gets its own temperature, fitted to minimise the NLL of its own mean predictive
distribution from its per-sample logits (with a weak prior on log T, so a small calibration split whose
cases are all right does not sharpen it to certainty), and its own referral and conformal thresholds, all on the
calibration split (`cal`; `val` when there is none, which the report and metrics.json then say).

Per task, `task_report` gives: calibration (ECE, adaptive ECE, NLL, Brier) of the softmax and of
the predictor, before and after their temperatures; selective prediction (risk-coverage, AURC,
accuracy at 80/90/95% coverage); the referral decision (confidence under the threshold, or a
conformal set that is empty or holds several classes); split-conformal sets (LAC and APS) checked
on test with a binomial CI and per-class coverage; entropy and mutual information of correct vs
wrong cases; a comparison of every predictor the predictions support; and, given another dataset,
how well entropy and mutual information flag it as foreign.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score

from dualfuse.evaluation.predictions import Predictions, Predictor, conformal_sets, refer_flags, softmax
from dualfuse.uncertainty.calibration import T_PRIOR_SD, calibration_report, fit_temperature
from dualfuse.uncertainty.conformal import (
    binomial_ci,
    conformal_report,
    conformal_threshold,
    coverage_spread,
    fewest_cases_for_coverage,
)
from dualfuse.uncertainty.measures import uncertainty_measures
from dualfuse.uncertainty.ood import ood_report
from dualfuse.uncertainty.selective import (
    accuracy_at_coverage,
    aurc,
    choose_coverage_threshold,
    choose_referral_threshold,
    fewest_cases_to_certify,
)

CONFORMAL_SCORES = ("lac", "aps")
# How a small calibration split's conformal coverage is judged: the central 90% of its spread over
# calibration draws must stay within 5 points of 1 - alpha, or a warning says how many cases it takes.
SPREAD_LEVEL, SPREAD_SLACK = 0.9, 0.05


def predictors_of(predictions: Predictions) -> list[Predictor]:
    """Every predictor these predictions support: the softmax, MC of the first member, the ensemble,
    test-time augmentation, zip-mode partners (one partner or all), and their combinations (each
    source alone and every mix drawn)."""
    drawn = predictions.drawn
    partners = dict.fromkeys((1, drawn.partners)) if drawn.partners else (0,)
    return [Predictor(k, t, a, p) for k in dict.fromkeys((1, drawn.members)) for a in dict.fromkeys((1, drawn.views))
            for p in partners for t in dict.fromkeys((0, drawn.samples))]


def calibrate(cal: Predictions, task: str, predictor: Predictor, target_accuracy: float | None = None,
              target_coverage: float | None = None, alpha: float = 0.1, guarantee: float | None = None) -> dict:
    """What `predict` needs for one task and predictor, all chosen on the calibration split: the
    predictor's temperature, conformal thresholds and a referral threshold on its calibrated top-class
    probability. A case is decided only when it is confident enough *and* its conformal set names one
    class (`refer_flags`), so the threshold is chosen among the cases with a one-class set: for a target
    accuracy (certified with probability `guarantee` when given) the promise is about the cases the model
    actually decides, and a target coverage is the fraction of all cases it decides."""
    y = cal.labels[task]
    temperature = fit_temperature(cal.predictor_logits(task, predictor), y)
    probs = cal.using(predictor, {task: temperature}).probs(task)
    conformal = {score: {"alpha": alpha, "qhat": conformal_threshold(probs, y, alpha, score)}
                 for score in CONFORMAL_SCORES}
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    decidable = conformal_sets(probs, {"conformal": conformal}).sum(axis=1) == 1
    if target_accuracy is None:
        referral = choose_coverage_threshold(confidence, correct, decidable,
                                             0.9 if target_coverage is None else target_coverage)
    else:
        # With no decidable case every case counts as wrong: nothing can reach the target.
        keep = decidable if decidable.any() else slice(None)
        referral = choose_referral_threshold(confidence[keep], correct[keep] & decidable[keep],
                                             target_accuracy=target_accuracy, guarantee=guarantee)
    referral.update(n=len(y), coverage=referral["n_accepted"] / len(y), n_decidable=int(decidable.sum()))
    return {"predictor": predictor.key, "temperature": temperature, "temperature_prior_sd": T_PRIOR_SD,
            "referral": {**referral, "confidence": "max_prob"}, "conformal": conformal}


def referral_promise(task: str, referral: dict) -> str | None:
    """One line saying what a certified referral threshold promises (None without one), for the CLI."""
    if not (referral.get("guarantee") and referral.get("reachable") and referral.get("accuracy_lower_bound")):
        return None
    return (f"{task}: refer below {referral['threshold']:.3f}; with {referral['guarantee']:.0%} probability the cases "
            f"the model decides are at least {referral['target_accuracy']:.2f} accurate (the {referral['certified_by']} "
            f"bounds their accuracy at {referral['accuracy_lower_bound']:.3f} with {referral['bound_level']:.2%} "
            "confidence on the calibration cases)")


def _selective(probs: np.ndarray, y: np.ndarray) -> dict:
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y
    return {"aurc": aurc(confidence, correct), "accuracy": float(correct.mean()),
            "accuracy_at_coverage": accuracy_at_coverage(confidence, correct)}


def _measure_summary(predictions: Predictions, task: str) -> dict:
    """Mean entropy and mutual information of correct and of wrong predictions."""
    measures = uncertainty_measures(predictions.sample_probs(task))
    correct = predictions.probs(task).argmax(axis=1) == predictions.labels[task]
    summary = {}
    for key in ("predictive_entropy", "mutual_information", "expected_entropy"):
        values = measures[key]
        summary[key] = {
            "correct_mean": float(values[correct].mean()) if correct.any() else None,
            "wrong_mean": float(values[~correct].mean()) if (~correct).any() else None,
        }
    return summary


def _calibration(predictions: Predictions, task: str, softmax_temperature: float, stored: dict,
                 n_bins: int) -> dict:
    """The softmax and the used predictor, each before and after its own temperature."""
    y = predictions.labels[task]
    predictor = Predictor.from_key(stored["predictor"])
    return {
        "softmax": calibration_report(softmax(predictions.logits[task]), y, n_bins),
        "softmax_temperature": calibration_report(softmax(predictions.logits[task], softmax_temperature), y, n_bins),
        "predictor": calibration_report(predictions.using(predictor).probs(task), y, n_bins),
        "predictor_temperature": calibration_report(
            predictions.using(predictor, {task: stored["temperature"]}).probs(task), y, n_bins),
    }


def _referral(probs: np.ndarray, y: np.ndarray, stored: dict) -> dict:
    referred = refer_flags(probs, stored)
    low = probs.max(axis=1) < stored["referral"]["threshold"]
    accepted = ~referred
    n, right = int(accepted.sum()), int((probs.argmax(axis=1) == y)[accepted].sum())
    return {
        "coverage": float(accepted.mean()),
        "referred_low_confidence": float(low.mean()),
        "referred_conformal_set": float((referred & ~low).mean()),
        "n_accepted": n,
        "accuracy_of_accepted": right / n if n else None,
        "accuracy_of_accepted_ci": list(binomial_ci(right, n)) if n else None,
    }


def compare_predictors(splits: dict[str, Predictions], task: str, calibrations: dict[str, dict],
                       n_bins: int = 15) -> dict:
    """Per predictor, on each labelled split after its own calibration: ECE, NLL, AURC, accuracy,
    accuracy at 90% coverage, and how well its uncertainty tells wrong from right (AUROC)."""
    out: dict = {}
    for key, stored in calibrations.items():
        predictor = Predictor.from_key(key)
        out[key] = {"label": predictor.label, "temperature": stored["temperature"]}
        for split, predictions in splits.items():
            if task not in predictions.labels:
                continue
            view = predictions.using(predictor, {task: stored["temperature"]})
            probs, y = view.probs(task), predictions.labels[task]
            correct = probs.argmax(axis=1) == y
            entropy = uncertainty_measures(view.sample_probs(task))["predictive_entropy"]
            report = calibration_report(probs, y, n_bins)
            out[key][split] = {
                "ece": report["ece"], "nll": report["nll"], "accuracy": float(correct.mean()),
                "aurc": aurc(probs.max(axis=1), correct),
                "accuracy_at_90": accuracy_at_coverage(probs.max(axis=1), correct).get("0.9"),
                "error_auroc_entropy": float(roc_auc_score(~correct, entropy)) if 0 < correct.sum() < len(correct)
                else None,
            }
    return out


def calibration_warnings(referral: dict, qhat: float, alpha: float, cal_split: str) -> list[str]:
    """What the calibration split cannot support, one line each, most basic first: too few cases for
    the conformal level at all; a conformal coverage that swings with these few cases; a target
    accuracy that cannot be certified; a coverage the one-class sets cannot reach."""
    n = referral["n"]
    if math.isinf(qhat):  # alpha < 1 / (n + 1): each set holds every class, nothing else matters
        return [f"the {n} {cal_split} cases are too few for {1 - alpha:.0%} conformal sets (it takes at least "
                f"{math.ceil(round(1 / alpha, 9)) - 1}): every set names every class, so every case is referred: "
                f"calibrate on more cases, or raise --alpha to at least {math.ceil(1000 / (n + 1)) / 1000:.3f}"]
    warnings = []
    low, high = coverage_spread(n, alpha, SPREAD_LEVEL)
    if low < 1 - alpha - SPREAD_SLACK:
        warnings.append(
            f"with {n} {cal_split} cases the {1 - alpha:.0%} conformal sets cover between {low:.2f} and {high:.2f} "
            f"of new cases ({SPREAD_LEVEL:.0%} of calibration draws; {1 - alpha:.0%} only on average over them): "
            f"calibrate on at least {fewest_cases_for_coverage(alpha, SPREAD_SLACK, SPREAD_LEVEL)} cases for sets "
            f"that cover at least {1 - alpha - SPREAD_SLACK:.2f}")
    if referral.get("target_accuracy") and not referral.get("reachable", True):
        sure = f" with {referral['guarantee']:.0%} probability" if referral.get("guarantee") else ""
        fewest = (f" (it takes at least {fewest_cases_to_certify(referral['target_accuracy'], referral['guarantee'])}"
                  " decided cases, all right)") if sure and referral["target_accuracy"] < 1 else ""
        singletons = (f" ({referral['n_decidable']} with a one-class conformal set)"
                      if referral.get("n_decidable") is not None else "")
        warnings.append(
            f"no referral threshold reaches {referral['target_accuracy']:.2f} accuracy{sure} on the {n} "
            f"{cal_split} cases{singletons}, so every case is referred: lower the target accuracy"
            f"{' or --guarantee' if sure else ''}, or calibrate on more cases{fewest}")
    elif referral.get("target_coverage") and not referral.get("reachable", True):
        warnings.append(
            f"only {referral['n_decidable']} of the {n} {cal_split} cases have a one-class conformal set, "
            f"so the model decides {referral['coverage']:.1%} of cases, not the {referral['target_coverage']:.0%} "
            "asked: raise --alpha (smaller sets) or lower --target-coverage")
    return warnings


def task_report(splits: dict[str, Predictions], task: str, stored: dict, alpha: float, cal_split: str = "val",
                softmax_temperature: float = 1.0, n_bins: int = 15, ood: Predictions | None = None) -> dict:
    """The uncertainty section of `metrics.json` for one task, given the calibration `stored` of the
    predictor in use (fitted on `cal_split`)."""
    predictor = Predictor.from_key(stored["predictor"])
    report: dict = {"predictor": stored["predictor"], "predictor_label": predictor.label,
                    "temperature": stored["temperature"], "temperature_prior_sd": stored.get("temperature_prior_sd"),
                    "calibration_split": cal_split, "calibration": {},
                    "selective": {}, "measures": {}, "referral": {"threshold": stored["referral"]["threshold"],
                    **{k: stored["referral"].get(k) for k in ("target_accuracy", "target_coverage", "reachable",
                                                              "guarantee", "accuracy_lower_bound", "bound_level",
                                                              "certified_by", "n_decidable")}},
                    "warnings": []}
    for split, predictions in splits.items():
        if task not in predictions.labels:
            continue
        view = predictions.using(predictor, {task: stored["temperature"]})
        probs, y = view.probs(task), predictions.labels[task]
        report["calibration"][split] = _calibration(predictions, task, softmax_temperature, stored, n_bins)
        report["selective"][split] = _selective(probs, y)
        report["measures"][split] = _measure_summary(view, task)
        report["referral"][split] = _referral(probs, y, stored)
    referral = stored["referral"]
    report["warnings"] += calibration_warnings(referral, stored["conformal"]["lac"]["qhat"], alpha, cal_split)
    if not math.isinf(stored["conformal"]["lac"]["qhat"]):
        low, high = coverage_spread(referral["n"], alpha, SPREAD_LEVEL)
        report["conformal_spread"] = {"n_cal": referral["n"], "level": SPREAD_LEVEL, "low": low, "high": high}
    test = "test" if "test" in splits and task in splits["test"].labels else None
    target, decided = referral.get("target_accuracy"), report["referral"].get(test or "", {})
    if target and decided.get("accuracy_of_accepted_ci") and decided["accuracy_of_accepted_ci"][1] < target:
        low, high = decided["accuracy_of_accepted_ci"]
        report["warnings"].append(
            f"the {decided['n_accepted']} test cases the model decided are {decided['accuracy_of_accepted']:.3f} "
            f"[{low:.3f}, {high:.3f}] accurate, below the {target:.2f} the referral threshold was chosen for on "
            f"{cal_split}: those data and test differ, so fewer decisions deserve trust than promised")
    if cal_split in splits and test:
        cal, checked = (p.using(predictor, {task: stored["temperature"]}) for p in (splits[cal_split], splits[test]))
        report["conformal"] = {
            score: conformal_report(cal.probs(task), cal.labels[task], checked.probs(task), checked.labels[task],
                                    alpha=alpha, score=score)
            for score in CONFORMAL_SCORES
        }
        lac = report["conformal"]["lac"]
        if lac["below_target"]:
            report["warnings"].append(
                f"conformal coverage on test {lac['coverage']:.3f} [{lac['coverage_ci_low']:.3f}, "
                f"{lac['coverage_ci_high']:.3f}] is below its {lac['target_coverage']:.2f} target: the "
                f"{cal_split} and test data differ, so the sets and refer flags are less reliable than promised")
        for entry in lac["class_coverage"]:
            if entry["below_target"] and not lac["below_target"]:
                report["warnings"].append(
                    f"conformal coverage of class {entry['class']} on test is {entry['coverage']:.3f} "
                    f"[{entry['ci_low']:.3f}, {entry['ci_high']:.3f}] (n = {entry['n']}), below its target")
    if ood is not None and test and splits[test].stochastic:
        inside = splits[test].using(predictor, {task: stored["temperature"]})
        outside = ood.using(predictor, {task: stored["temperature"]})
        report["ood"] = ood_report(uncertainty_measures(inside.sample_probs(task)),
                                   uncertainty_measures(outside.sample_probs(task)))
    return report
