"""Turn MC-dropout / ensemble predictions into what a clinician can act on.

Per task: a temperature fitted on the validation split; calibration (ECE, adaptive ECE, NLL, Brier)
with and without MC averaging and with and without the temperature; selective prediction
(risk–coverage, AURC, accuracy at 80/90/95% coverage); a referral threshold chosen on validation
data for a target accuracy or coverage; split-conformal prediction sets (LAC and APS) calibrated on
validation and checked on test; summaries of entropy and mutual information for correct vs wrong
cases; and, given another dataset, how well entropy and mutual information flag it as foreign.
The temperature, referral threshold and conformal thresholds are returned separately so they can be
stored with the model and applied by `predict`.
"""
from __future__ import annotations

import numpy as np

from dualfuse.evaluation.predictions import Predictions, softmax
from dualfuse.uncertainty.calibration import calibration_report, fit_temperature
from dualfuse.uncertainty.conformal import conformal_report, conformal_threshold
from dualfuse.uncertainty.measures import uncertainty_measures
from dualfuse.uncertainty.ood import ood_report
from dualfuse.uncertainty.selective import accuracy_at_coverage, aurc, choose_referral_threshold, refer

CONFORMAL_SCORES = ("lac", "aps")


def _calibration(predictions: Predictions, task: str, temperature: float, n_bins: int) -> dict:
    y = predictions.labels[task]
    report = {
        "deterministic": calibration_report(softmax(predictions.logits[task]), y, n_bins),
        "deterministic_temperature": calibration_report(softmax(predictions.logits[task], temperature), y, n_bins),
    }
    if task in predictions.sample_logits:
        samples = predictions.sample_logits[task]
        report["mc"] = calibration_report(softmax(samples).mean(axis=0), y, n_bins)
        report["mc_temperature"] = calibration_report(softmax(samples, temperature).mean(axis=0), y, n_bins)
    return report


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


def calibrate(val: Predictions, task: str, target_accuracy: float | None, target_coverage: float | None,
              alpha: float) -> dict:
    """What `predict` needs for this task, all chosen on validation data: temperature, referral
    threshold on the (calibrated, MC-averaged) top-class probability, conformal thresholds."""
    temperature = fit_temperature(val.logits[task], val.labels[task])
    scaled = Predictions(val.case_ids, val.patient_ids, val.logits, val.labels, val.sample_logits, {task: temperature})
    probs, y = scaled.probs(task), val.labels[task]
    referral = choose_referral_threshold(probs.max(axis=1), probs.argmax(axis=1) == y,
                                         target_accuracy=target_accuracy, target_coverage=target_coverage)
    return {
        "temperature": temperature,
        "referral": {**referral, "confidence": "max_prob"},
        "conformal": {score: {"alpha": alpha, "qhat": conformal_threshold(probs, y, alpha, score)}
                      for score in CONFORMAL_SCORES},
    }


def task_report(splits: dict[str, Predictions], task: str, stored: dict, alpha: float, n_bins: int = 15,
                ood: Predictions | None = None) -> dict:
    """The uncertainty section of `metrics.json` for one task, given the calibration `stored`."""
    temperature = stored["temperature"]
    report: dict = {"temperature": temperature, "calibration": {}, "selective": {}, "measures": {}}
    for split, predictions in splits.items():
        if task not in predictions.labels:
            continue
        scaled = Predictions(predictions.case_ids, predictions.patient_ids, predictions.logits, predictions.labels,
                             predictions.sample_logits, {task: temperature})
        report["calibration"][split] = _calibration(predictions, task, temperature, n_bins)
        report["selective"][split] = _selective(scaled.probs(task), predictions.labels[task])
        if task in predictions.sample_logits:
            report["measures"][split] = _measure_summary(scaled, task)
        probs = scaled.probs(task)
        referred = refer(probs.max(axis=1), stored["referral"]["threshold"])
        accepted = ~referred
        report.setdefault("referral", {"threshold": stored["referral"]["threshold"],
                                       "target_accuracy": stored["referral"]["target_accuracy"],
                                       "target_coverage": stored["referral"]["target_coverage"],
                                       "reachable": stored["referral"]["reachable"]})[split] = {
            "coverage": float(accepted.mean()),
            "accuracy_of_accepted": float((probs.argmax(axis=1) == predictions.labels[task])[accepted].mean())
            if accepted.any() else None,
        }
    if "val" in splits and "test" in splits and task in splits["test"].labels:
        val, test = (Predictions(p.case_ids, p.patient_ids, p.logits, p.labels, p.sample_logits, {task: temperature})
                     for p in (splits["val"], splits["test"]))
        report["conformal"] = {
            score: conformal_report(val.probs(task), val.labels[task], test.probs(task), test.labels[task],
                                    alpha=alpha, score=score)
            for score in CONFORMAL_SCORES
        }
    if ood is not None and "test" in splits and task in splits["test"].sample_logits:
        test = splits["test"]
        report["ood"] = ood_report(uncertainty_measures(softmax(test.sample_logits[task], temperature)),
                                   uncertainty_measures(softmax(ood.sample_logits[task], temperature)))
    return report
