"""Evaluation metrics: agreement with scikit-learn, bootstrap behaviour, degenerate and bad inputs."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn import metrics as skm

from dualfuse.evaluation import METRICS, classification_metrics, summarize
from dualfuse.evaluation.metrics import _Evaluator, score_interval


def _data(n: int, n_classes: int, seed: int = 0, signal: float = 1.0, decimals: int | None = 2):
    """Labels and softmax probabilities with some skill; rounding creates tied scores."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes))
    logits[np.arange(n), y] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    if decimals is not None:
        probs = np.round(probs, decimals)
        probs /= probs.sum(axis=1, keepdims=True)
    return y, probs


def _sklearn_label_metrics(y, pred) -> dict[str, float]:
    """The metrics of hard predictions, as scikit-learn computes them (argument order: y_true, y_pred)."""
    return {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "precision_macro": skm.precision_score(y, pred, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(y, pred, average="macro", zero_division=0),
        "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=0),
    }


def _sklearn(y, probs) -> dict[str, float]:
    pred = probs.argmax(axis=1)
    binary = probs.shape[1] == 2
    out = _sklearn_label_metrics(y, pred) | {
        "roc_auc": (skm.roc_auc_score(y, probs[:, 1]) if binary
                    else skm.roc_auc_score(y, probs, multi_class="ovr", average="macro")),
        "pr_auc": (skm.average_precision_score(y, probs[:, 1]) if binary
                   else skm.average_precision_score(y, probs, average="macro")),
    }
    if binary:
        out["sensitivity"] = skm.recall_score(y, pred, pos_label=1)
        out["specificity"] = skm.recall_score(y, pred, pos_label=0)
    return out


def _width(entry) -> float:
    return entry["ci_high"] - entry["ci_low"]


def _bootstrap(entry) -> tuple[float, float]:
    """The percentile bootstrap interval alone (before any widening to the score interval)."""
    return tuple(entry.get("bootstrap_ci", (entry["ci_low"], entry["ci_high"])))


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("decimals", [None, 2])
def test_point_estimates_equal_sklearn(n_classes, decimals):
    y, probs = _data(500, n_classes, seed=n_classes, decimals=decimals)
    result = classification_metrics(y, probs, n_bootstrap=0)
    expected = _sklearn(y, probs)
    assert set(expected) == {name for name in METRICS if name in result}
    for name, value in expected.items():
        assert result[name]["value"] == pytest.approx(value, abs=1e-12), name
    assert result["confusion_matrix"] == skm.confusion_matrix(y, probs.argmax(1)).tolist()
    assert result["ci_method"] == "none" and result["accuracy"]["ci_low"] is None


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_point_estimates_with_unpredicted_and_unseen_classes_follow_sklearn():
    # Class 2 is never predicted (precision 0 by zero_division), class 3 is predicted but never true.
    y = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    pred = np.array([0, 1, 1, 3, 0, 1, 0, 3])
    probs = np.full((len(y), 4), 0.1)
    probs[np.arange(len(y)), pred] = 0.7
    result = classification_metrics(y, probs, n_bootstrap=0)
    for name, value in _sklearn_label_metrics(y, pred).items():
        assert result[name]["value"] == pytest.approx(value, abs=1e-12), name
    assert result["roc_auc"]["value"] is None and "[3]" in result["roc_auc"]["reason"]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_weighted_resample_equals_sklearn_on_expanded_data(n_classes):
    y, probs = _data(200, n_classes, seed=7)
    rng = np.random.default_rng(3)
    evaluate = _Evaluator(y, probs)
    for _ in range(5):
        idx = rng.integers(0, len(y), len(y))
        weights = np.bincount(idx, minlength=len(y)).astype(float)[None]
        got = {name: values[0] for name, values in evaluate(weights).items()}
        for name, value in _sklearn(y[idx], probs[idx]).items():
            assert got[name] == pytest.approx(value, abs=1e-12), name


def test_ci_equals_naive_sklearn_bootstrap():
    y, probs = _data(150, 2, seed=11)
    n_boot, seed = 60, 5
    result = classification_metrics(y, probs, n_bootstrap=n_boot, seed=seed)
    draws = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    samples = [_sklearn(y[idx], probs[idx]) for idx in draws]
    for name in ("accuracy", "f1_macro", "sensitivity", "roc_auc", "pr_auc"):
        low, high = np.percentile([s[name] for s in samples], [2.5, 97.5])
        assert _bootstrap(result[name]) == pytest.approx((low, high), abs=1e-12), name
        score = result[name].get("score_ci", (low, high))
        assert (result[name]["ci_low"], result[name]["ci_high"]) == pytest.approx(
            (min(low, score[0]), max(high, score[1])), abs=1e-12), name


def test_patient_ci_equals_naive_cluster_bootstrap():
    y_patient, probs_patient = _data(40, 2, seed=2)
    sizes = np.random.default_rng(0).integers(1, 5, 40)
    y, probs = np.repeat(y_patient, sizes), np.repeat(probs_patient, sizes, axis=0)
    groups = np.repeat([f"p{i:02d}" for i in range(40)], sizes)
    result = classification_metrics(y, probs, groups=groups, n_bootstrap=50, seed=1)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    draws = np.random.default_rng(1).integers(0, 40, size=(50, 40))
    values = []
    for row in draws:
        idx = np.concatenate([members[g] for g in row])
        values.append(skm.roc_auc_score(y[idx], probs[idx, 1]))
    low, high = np.percentile(values, [2.5, 97.5])
    assert _bootstrap(result["roc_auc"]) == pytest.approx((low, high), abs=1e-12)
    assert result["n_groups"] == 40 and result["n"] == sizes.sum()
    assert result["ci_method"] == ("percentile bootstrap over patients, widened to the score interval where wider "
                                   "(Wilson; Newcombe for ROC AUC)")


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("grouped", [False, True])
def test_perfect_classifier_is_not_certain_to_be_perfect(n_classes, grouped):
    """Every resample of a perfect sample is perfect, so its bootstrap interval is [1, 1]; the score
    interval is not: 80 cases all right leave a true accuracy down to Wilson's .954 plausible."""
    y = np.arange(80) % n_classes
    probs = np.eye(n_classes)[y] * 0.9 + 0.1 / n_classes
    groups = np.arange(80) // 2 if grouped else None
    result = classification_metrics(y, probs, groups=groups, n_bootstrap=200)
    z = 1.959963984540054
    assert result["accuracy"]["ci_low"] == pytest.approx(80 / (80 + z * z), abs=2e-5)  # Wilson at p = 1
    for name in METRICS:
        if name in result:
            entry = result[name]
            assert (entry["value"], entry["ci_high"]) == (1.0, 1.0) and _bootstrap(entry) == (1.0, 1.0), name
            widened = name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc")
            assert (entry["ci_low"] < 0.99) == widened, name


def test_ci_contains_estimate_and_narrows_with_more_data():
    small = classification_metrics(*_data(100, 3, seed=1), n_bootstrap=300)
    large = classification_metrics(*_data(3000, 3, seed=1), n_bootstrap=300)
    for name in ("accuracy", "balanced_accuracy", "f1_macro", "roc_auc", "pr_auc"):
        for result in (small, large):
            assert result[name]["ci_low"] <= result[name]["value"] <= result[name]["ci_high"], name
        assert _width(large[name]) < 0.5 * _width(small[name]), name


def test_confidence_level_widens_interval():
    y, probs = _data(300, 2, seed=4)
    narrow = classification_metrics(y, probs, confidence=0.5, n_bootstrap=400)
    wide = classification_metrics(y, probs, confidence=0.99, n_bootstrap=400)
    assert _width(wide["roc_auc"]) > 2 * _width(narrow["roc_auc"])
    assert wide["confidence"] == 0.99


def test_patient_bootstrap_is_wider_when_images_are_duplicates():
    y_patient, probs_patient = _data(60, 2, seed=3, signal=1.5)
    y, probs = np.repeat(y_patient, 10), np.repeat(probs_patient, 10, axis=0)
    groups = np.repeat(np.arange(60), 10)
    by_image = classification_metrics(y, probs, n_bootstrap=500)
    by_patient = classification_metrics(y, probs, groups=groups, n_bootstrap=500)
    for name in ("accuracy", "roc_auc", "sensitivity"):
        assert by_patient[name]["value"] == by_image[name]["value"]
        boot_patient, boot_image = _bootstrap(by_patient[name]), _bootstrap(by_image[name])
        assert boot_patient[1] - boot_patient[0] > 2 * (boot_image[1] - boot_image[0]), name
        # The score interval counts images as independent: the patient bootstrap is what widens it here.
        assert (by_patient[name]["ci_low"], by_patient[name]["ci_high"]) == boot_patient, name
    assert by_image["n_groups"] is None and by_image["ci_method"].startswith("percentile bootstrap over images, ")


def test_fixed_seed_reproduces_and_other_seed_differs():
    y, probs = _data(300, 4, seed=9)
    groups = np.arange(300) // 3
    first = classification_metrics(y, probs, groups=groups, seed=123, n_bootstrap=200)
    again = classification_metrics(y, probs, groups=groups, seed=123, n_bootstrap=200)
    other = classification_metrics(y, probs, groups=groups, seed=124, n_bootstrap=200)
    assert first == again
    assert first["roc_auc"] != other["roc_auc"]


def test_chunked_bootstrap_matches_single_block(monkeypatch):
    from dualfuse.evaluation import metrics as module

    y, probs = _data(200, 3, seed=6)
    whole = classification_metrics(y, probs, n_bootstrap=100)
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", 200 * 7)  # 7 resamples per block
    chunked = classification_metrics(y, probs, n_bootstrap=100)
    assert chunked == whole  # the random stream does not depend on the block size


@pytest.mark.parametrize("n_classes", [2, 3])
def test_one_class_only_gives_null_auc_without_crashing(n_classes):
    y = np.zeros(30, dtype=int)
    _, probs = _data(30, n_classes, seed=1)
    result = classification_metrics(y, probs, n_bootstrap=50)
    for name in ("roc_auc", "pr_auc"):
        assert result[name]["value"] is None and result[name]["ci_low"] is None
        assert "y_true" in result[name]["reason"]
    assert 0 <= result["accuracy"]["value"] <= 1 and result["accuracy"]["ci_low"] is not None
    if n_classes == 2:
        assert result["sensitivity"]["value"] is None
        assert "positive" in result["sensitivity"]["reason"]
        assert result["specificity"]["value"] == result["accuracy"]["value"]
    json.dumps(result)
    assert any("n/a" in text for _, text in summarize(result))


def test_resamples_missing_a_class_are_skipped_and_counted():
    # 3 patients, one of them the only positive: many patient resamples contain no positive.
    y = np.array([0, 0, 0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.7, 0.3], [0.2, 0.8], [0.3, 0.7]])
    groups = np.array(["a", "a", "b", "b", "c", "c"])
    result = classification_metrics(y, probs, groups=groups, n_bootstrap=300)
    entry = result["roc_auc"]
    assert entry["value"] == 1.0
    # P(patient c never drawn in 3 draws) = (2/3)^3 ~ 0.30
    assert 150 < entry["n_valid"] < 260
    assert "n_valid" not in result["accuracy"]
    assert "n_valid" in result["sensitivity"]
    assert any("resamples valid" in text for name, text in summarize(result) if name == "roc_auc")


def test_output_is_json_serialisable_and_keeps_class_names():
    y, probs = _data(50, 3, seed=1)
    result = classification_metrics(y, probs, groups=np.arange(50) % 7, class_names=["a", "b", "c"],
                                    n_bootstrap=20)
    assert json.loads(json.dumps(result)) == result
    assert result["class_names"] == ["a", "b", "c"]
    assert np.array(result["confusion_matrix"]).sum() == 50
    assert "sensitivity" not in result


def test_summarize_rows():
    y, probs = _data(400, 2, seed=2)
    result = classification_metrics(y, probs, groups=np.arange(400) // 4, n_bootstrap=100)
    rows = dict(summarize(result))
    entry = result["roc_auc"]
    assert rows["roc_auc"] == f"{entry['value']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"
    assert rows["n"] == "400 images from 100 patients"
    assert rows["ci"] == ("95% percentile bootstrap over patients, widened to the score interval where wider "
                          "(Wilson; Newcombe for ROC AUC), 100 resamples")
    assert [name for name, _ in summarize(result)][:9] == list(METRICS)


def test_accepts_torch_tensors_and_float_labels():
    torch = pytest.importorskip("torch")
    y, probs = _data(60, 2, seed=3)
    from_numpy = classification_metrics(y, probs, n_bootstrap=10)
    from_torch = classification_metrics(torch.from_numpy(y), torch.from_numpy(probs), n_bootstrap=10)
    from_float = classification_metrics(y.astype(float), probs, n_bootstrap=10)
    assert from_numpy == from_torch == from_float


_Y, _P = _data(10, 3, seed=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"y_true": _Y[:9]}, "9 labels but probs has 10 rows"),
    ({"y_true": _Y[:, None]}, "y_true must be 1-D"),
    ({"probs": _P[:, 0]}, "2-D (N, C)"),
    ({"probs": _P[:, :1]}, "C >= 2"),
    ({"y_true": np.array([], dtype=int), "probs": np.zeros((0, 3))}, "N=0"),
    ({"y_true": np.r_[_Y[:9], 3]}, "outside 0..2"),
    ({"y_true": np.r_[_Y[:9], -1]}, "outside 0..2"),
    ({"y_true": _Y + 0.5}, "integer class indices"),
    ({"probs": np.where(np.arange(30).reshape(10, 3) == 4, np.nan, _P)}, "1 NaN"),
    ({"probs": np.log(_P)}, "not logits"),
    ({"probs": _P * 0.5}, "sum to 1"),
    ({"groups": np.arange(9)}, "one patient id per image"),
    ({"groups": np.r_[np.arange(9.0), np.nan]}, "NaN patient ids"),
    ({"groups": np.array(["a"] * 9 + [None], dtype=object)}, "comparable patient ids"),
    ({"class_names": ["a", "b"]}, "2 names but probs has C=3"),
    ({"n_bootstrap": -1}, "n_bootstrap"),
    ({"n_bootstrap": 10.5}, "n_bootstrap"),
    ({"confidence": 95}, "confidence"),
])
def test_invalid_inputs_raise_clear_errors(kwargs, message):
    args = {"y_true": _Y, "probs": _P} | kwargs
    with pytest.raises(ValueError, match=re.escape(message)):
        classification_metrics(**args)


def test_validation_is_public_and_shared_with_uncertainty():
    """One set of checks (dualfuse.validation) gives the same one-line error in both layers."""
    from dualfuse import validation
    from dualfuse.uncertainty import brier_score

    assert set(validation.__all__) == {"check_labels", "check_probs", "check_scores", "to_numpy"}
    np.testing.assert_array_equal(validation.check_probs(_P), _P)
    assert validation.check_labels(_Y.astype(float), 10, 3).dtype == np.int64
    assert validation.check_scores([1, 0, 1], "confidence").dtype == np.float64
    for bad_probs, message in [(np.log(_P), "not logits"), (_P * 0.5, "sum to 1"), (_P[:, :1], "C >= 2")]:
        for check in (validation.check_probs, lambda p: classification_metrics(_Y, p, n_bootstrap=0),
                      lambda p: brier_score(p, _Y)):
            with pytest.raises(ValueError, match=re.escape(message)):
                check(bad_probs)
    with pytest.raises(ValueError, match=re.escape("9 labels but probs has 10 rows")):
        brier_score(_P, _Y[:9])
    with pytest.raises(ValueError, match="confidence contains 1 NaN/inf"):
        validation.check_scores(np.array([0.5, np.nan]))


def test_score_intervals_match_their_closed_forms():
    """Wilson's interval in closed form; Newcombe's AUC interval solves (value - t)^2 = z^2 V(t) at both ends."""
    z = 1.959963984540054
    y = np.r_[np.zeros(30, int), np.ones(20, int)]
    for accuracy in (0.5, 0.84, 1.0):
        low, high = score_interval("accuracy", accuracy, y, 2)
        centre, half = accuracy + z * z / 100, z * np.sqrt(accuracy * (1 - accuracy) / 50 + z * z / 10_000)
        assert (low, high) == pytest.approx(((centre - half) / (1 + z * z / 50), (centre + half) / (1 + z * z / 50)),
                                            abs=2e-5)
    low, high = score_interval("roc_auc", 0.9, y, 2)
    for end in (low, high):
        n_star = 24
        variance = end * (1 - end) * (1 + n_star * (1 - end) / (2 - end) + n_star * end / (1 + end)) / 600
        assert (0.9 - end) ** 2 == pytest.approx(z * z * variance, abs=2e-5)
    assert score_interval("roc_auc", 1.0, y, 2)[0] < 0.95 and score_interval("pr_auc", 0.9, y, 2) is None
    assert score_interval("sensitivity", 0.5, np.zeros(10, int), 2) is None  # no positives


def test_widened_intervals_hold_a_known_auc_on_small_samples():
    """Normal scores shifted by d have AUC = Phi(d / sqrt 2) = .96; on 200 samples of 12 + 12 cases the
    percentile bootstrap alone misses it far more often than 5%, the widened interval about 5%."""
    from scipy.stats import norm

    rng, d = np.random.default_rng(0), 2.47
    truth = norm.cdf(d / np.sqrt(2))
    held = {"bootstrap": 0, "widened": 0}
    y = np.r_[np.zeros(12, int), np.ones(12, int)]
    for _ in range(200):
        scores = np.r_[rng.normal(0, 1, 12), rng.normal(d, 1, 12)]
        p1 = 1 / (1 + np.exp(-scores))
        entry = classification_metrics(y, np.c_[1 - p1, p1], n_bootstrap=200, seed=int(rng.integers(1000)))["roc_auc"]
        low, high = entry["bootstrap_ci"]
        held["bootstrap"] += low <= truth <= high
        held["widened"] += entry["ci_low"] <= truth <= entry["ci_high"]
    assert truth == pytest.approx(0.96, abs=0.001)
    assert held["bootstrap"] / 200 < 0.9 and held["widened"] / 200 >= 0.93
