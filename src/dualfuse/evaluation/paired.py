"""Paired comparisons: is A better than B on the same cases? A CI of the difference, never two point estimates.

Behind `dualfuse compare` and every win / tie / loss of docs/benchmarks.md.

Both sides of a pair are scored on the same test cases (aligned by case id), so case difficulty
cancels out of the difference. The CI comes from a bootstrap that resamples cases (whole patients
where a `group` array is given) identically for both sides; with several seeds the statistic is the
mean of the per-seed differences. Seeds scored on the same test cases (a fixed test split, as in
every benchmark here) are resampled together, one draw of cases for all of them: drawing each seed's
cases apart would count one test set as several independent ones. A verdict is "win" or "loss" only
when the 95% CI excludes 0, else "tie".

For an AUC difference the percentile bootstrap alone fell short of 95% on small test sets
(benchmarks/ci_coverage.py), so `paired_auc_difference` joins it with a closed-form interval from
DeLong's per-case placement values (`SCORE_METHOD`): the Wald interval with DeLong's variance of the
difference. Measured on stored predictions, the union held the true difference in .96 of 50-case
draws (one seed) and .97 (seeds pooled), the bootstrap alone .93 and .94 (drawn apart); the MOVER
interval (each side's Newcombe interval recovered into one for the difference) held it in every
draw at about twice the width, deciding a quarter as often, so it is measured but not printed.

An accuracy difference's bootstrap fell short too (.91 of 50- and 100-case draws, one seed), so
`paired_accuracy_difference` joins it with a MOVER interval (`ACCURACY_METHOD`): each side's Wilson
interval at its effective number of cases, recovered into one for the difference. Joined, it held
the truth in .97 (one seed) and .98 (seeds pooled) of 50-case draws at about 1.13 times the width;
Newcombe's interval (Wilson at the nominal number of cases) held it in .98 and .99 but at 1.6 times
the width once seeds are pooled, whose mean varies less than one seed's binomial count.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata

from dualfuse.evaluation.metrics import _Sorted, score_interval

N_BOOTSTRAP = 1000


def patient_groups(patient_ids: Sequence[str] | None) -> list[str] | None:
    """The ids to resample whole patients by, or None where every case is its own patient (or an id is
    missing): a bootstrap over one-case patients is a bootstrap over cases."""
    ids = list(patient_ids or ())
    return ids if ids and all(ids) and len(set(ids)) < len(ids) else None


def read_predictions(csv_path) -> pd.DataFrame:
    """A predictions.csv as `case_predictions` reads it (ids as text, empty cells as ""); the path is kept
    in `attrs["source"]` for error messages."""
    frame = pd.read_csv(csv_path, dtype={"case_id": str, "patient_id": str}, keep_default_na=False)
    frame.attrs["source"] = str(csv_path)
    return frame


def prediction_classes(frame: pd.DataFrame, task: str) -> list[str]:
    """A task's classes in the order of a predictions.csv's `<task>_prob_<class>` columns."""
    prefix = f"{task}_prob_"
    return [column[len(prefix):] for column in frame.columns if column.startswith(prefix)]


def case_predictions(predictions, task: str, classes: Sequence[str] | None = None, split: str | None = "test") -> dict:
    """One task's predictions per case from a predictions.csv (its path, or the frame `read_predictions`
    gave), the unit of every paired comparison: case ids, label indices and probabilities (6 decimals) in
    the file's order, plus `patient_id` only where `patient_groups` would use it (repeating the case ids
    made a quarter of a results file).

    `classes` fixes the probability columns' order (default: the file's); `split` None keeps every row
    (cv's out-of-fold file has no test split)."""
    frame = predictions if isinstance(predictions, pd.DataFrame) else read_predictions(predictions)
    source = frame.attrs.get("source", "predictions")
    if split is not None:
        frame = frame[frame["split"] == split]
    frame = frame[frame[f"{task}_true"] != ""]
    prefix = f"{task}_prob_"
    classes = list(classes or prediction_classes(frame, task))
    unknown = sorted(set(frame[f"{task}_true"]) - set(classes))
    if unknown:
        raise ValueError(f"{source}: task '{task}' has true classes without probability columns: {unknown}")
    columns = [prefix + c for c in classes]
    try:  # a zip run's file leaves the other task's cells empty, so pandas keeps these columns as text
        probs = frame[columns].apply(pd.to_numeric)
    except ValueError as error:
        raise ValueError(f"{source}: task '{task}' has a probability that is not a number ({error})") from None
    cases = {"case_id": frame["case_id"].tolist(), "label": [classes.index(c) for c in frame[f"{task}_true"]],
             "probs": probs.round(6).to_numpy().tolist()}
    groups = patient_groups(frame["patient_id"].tolist()) if "patient_id" in frame else None
    return cases | ({"patient_id": groups} if groups else {})


def align_cases(a: dict, b: dict, order: Sequence[str] | None = None,
                names: tuple[str, str] = ("the two sets", "")) -> tuple[dict, dict]:
    """Two prediction sets' per-case arrays ("case_id", "label", "probs", and "patient_id" where kept) put
    in one order of the cases (`order`, default a's), so they pair case by case. ValueError (naming the
    sets by `names`) when they were scored on different cases, or disagree on a case's label."""
    who = f"{names[0]} and {names[1]}" if names[1] else names[0]
    order = [str(case) for case in (a["case_id"] if order is None else order)]
    sides = []
    for cases in (a, b):
        ids = [str(case) for case in cases["case_id"]]
        if sorted(ids) != sorted(order) or len(set(ids)) < len(ids):
            raise ValueError(f"{who} were scored on different test cases")
        where = {case: i for i, case in enumerate(ids)}
        index = np.array([where[case] for case in order], dtype=int)
        sides.append({key: np.asarray(values, dtype=float if key == "probs" else None)[index]
                      for key, values in cases.items() if key in ("case_id", "label", "probs", "patient_id")})
    if not np.array_equal(sides[0]["label"], sides[1]["label"]):
        raise ValueError(f"{who} disagree on the labels of the test cases")
    return sides[0], sides[1]


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """AUROC (Mann-Whitney, ties counted half): sklearn's roc_auc_score value; NaN when one class is
    missing or a score is NaN. One sort per call, not scipy's rankdata: it runs once per class, side and
    seed of every paired comparison, and per bootstrap draw where a caller's statistic draws cases."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    if np.isnan(scores).any():
        return float("nan")
    return _weighted_auroc(_Sorted(scores, positive), np.ones(len(scores)))


def _weighted_auroc(column: _Sorted, weights: np.ndarray) -> float:
    """AUROC of a sorted score column with each case counted `weights` times, from its runs of tied
    scores (metrics' weighted Mann-Whitney, AUC alone); NaN where a class is absent. With whole-number
    weights every sum is a whole number or a half, so the value is exact: the same to the bit as ranking
    the cases with rankdata, drawn copies of a case being ties of each other."""
    weights = weights[column.order]
    positives = np.add.reduceat(weights * column.positive, column.starts)
    negatives = np.add.reduceat(weights, column.starts) - positives
    n_pos, n_neg = positives.sum(), negatives.sum()
    if not n_pos or not n_neg:
        return float("nan")
    below = np.cumsum(negatives) - negatives  # negatives scored strictly lower; a run's own count half
    return float(np.dot(positives, below + negatives / 2) / (n_pos * n_neg))


def macro_auroc(probs: np.ndarray, labels: np.ndarray) -> float:
    """Binary: AUROC of the positive class; several classes: the mean one-vs-rest AUROC (macro)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    if probs.shape[1] == 2:
        return binary_auroc(probs[:, 1], labels == 1)
    return float(np.nanmean([binary_auroc(probs[:, c], labels == c) for c in range(probs.shape[1])]))


class MacroAuroc:
    """macro_auroc as a bootstrap statistic: called on cases it is macro_auroc; `prepare(cases)` sorts
    their score columns once and returns the statistic of a draw of their positions (paired_bootstrap
    uses it), the same numbers as macro_auroc on the drawn cases at a fraction of the cost."""

    def __call__(self, cases: dict) -> float:
        return macro_auroc(cases["probs"], cases["label"])

    def prepare(self, cases: dict) -> Callable[[np.ndarray], float]:
        probs, labels = np.asarray(cases["probs"], dtype=float), np.asarray(cases["label"])
        if np.isnan(probs).any():  # NaN only where a draw holds one: score each draw's cases as they are
            return lambda idx: self({"probs": probs[idx], "label": labels[idx]})
        columns = [_Sorted(probs[:, c], labels == c) for c in ((1,) if probs.shape[1] == 2 else range(probs.shape[1]))]

        def statistic(idx: np.ndarray) -> float:
            counts = np.bincount(idx, minlength=len(labels)).astype(float)
            values = [_weighted_auroc(column, counts) for column in columns]
            return values[0] if len(values) == 1 else float(np.nanmean(values))

        return statistic


def _draw_statistic(statistic: Callable[[dict], float], cases: dict) -> Callable[[np.ndarray], float]:
    """The statistic of a draw of `cases`' positions: the statistic's own `prepare` where it has one."""
    prepare = getattr(statistic, "prepare", None)
    if prepare is not None:
        return prepare(cases)
    return lambda idx: statistic({k: v[idx] for k, v in cases.items()})


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of cases whose most probable class is the true one (the argmax, 0.5 for two classes)."""
    return float(np.mean(np.argmax(np.asarray(probs, dtype=float), axis=1) == np.asarray(labels)))


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean recall over the classes present (sklearn's balanced_accuracy_score): on a set where one class
    is 72% of the cases, accuracy rewards always saying that class; this does not."""
    predicted, labels = np.argmax(np.asarray(probs, dtype=float), axis=1), np.asarray(labels)
    return float(np.mean([np.mean(predicted[labels == c] == c) for c in np.unique(labels)]))


class Accuracy:
    """accuracy (or, `balanced`, balanced_accuracy) as a bootstrap statistic, like MacroAuroc: `prepare`
    finds once which cases the argmax gets right, and a draw's value is counted from how often it took
    each case (whole numbers, so the same as the statistic on the drawn cases to the bit)."""

    def __init__(self, balanced: bool = False):
        self.balanced = balanced

    def __call__(self, cases: dict) -> float:
        return (balanced_accuracy if self.balanced else accuracy)(cases["probs"], cases["label"])

    def prepare(self, cases: dict) -> Callable[[np.ndarray], float]:
        labels = np.asarray(cases["label"])
        right = (np.argmax(np.asarray(cases["probs"], dtype=float), axis=1) == labels).astype(float)
        classes, index = np.unique(labels, return_inverse=True)
        index = index.reshape(-1)

        def statistic(idx: np.ndarray) -> float:
            counts = np.bincount(idx, minlength=len(labels)).astype(float)
            if not self.balanced:
                return float(np.dot(counts, right) / len(idx))
            drawn = np.bincount(index, counts, len(classes))
            recalls = np.bincount(index, counts * right, len(classes))[drawn > 0] / drawn[drawn > 0]
            return float(np.mean(recalls))

        return statistic


class _Resampler:
    """Draws one bootstrap sample of case positions: cases with replacement, or with `groups` whole
    patients with replacement, each drawn patient's cases in their order. The patients are indexed once
    here, not on every draw (thousands of draws over thousands of patients for the out-of-fold pools)."""

    def __init__(self, groups: np.ndarray | None, n: int):
        self.n, self.groups = n, groups is not None
        if self.groups:
            _, inverse, self.counts = np.unique(groups, return_inverse=True, return_counts=True)
            self.members = np.argsort(inverse.reshape(-1), kind="stable")  # each patient's cases, ascending
            self.first = np.cumsum(self.counts) - self.counts  # where each patient's cases start in members

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        if not self.groups:
            return rng.integers(0, self.n, self.n)
        drawn = rng.integers(0, len(self.counts), len(self.counts))
        lengths = self.counts[drawn]
        ends = np.cumsum(lengths)
        # position k of the sample is case k - (start of its draw in the sample) + (start of its patient)
        return self.members[np.arange(ends[-1]) + np.repeat(self.first[drawn] - (ends - lengths), lengths)]


def _resample(rng: np.random.Generator, groups: np.ndarray | None, n: int) -> np.ndarray:
    return _Resampler(groups, n)(rng)


def shared_order(case_ids: Sequence[Sequence[str]] | None, labels: Sequence | None = None) -> list[np.ndarray] | None:
    """Where every seed was scored on the same cases: for each seed, the positions of the first seed's
    cases in its own order (so one draw of cases serves all seeds); None where the seeds' case sets
    differ, ids are missing, or one id carries other labels (`labels`, one array per seed), and each
    seed's cases are an independent sample."""
    if not case_ids or any(ids is None for ids in case_ids):
        return None
    first = list(case_ids[0])
    if len(set(first)) < len(first) or any(sorted(map(str, ids)) != sorted(map(str, first)) for ids in case_ids):
        return None
    orders = []
    for ids in case_ids:
        where = {str(case): i for i, case in enumerate(ids)}
        orders.append(np.array([where[str(case)] for case in first]))
    if labels is not None and any(not np.array_equal(np.asarray(seed_labels)[order], np.asarray(labels[0])[orders[0]])
                                  for seed_labels, order in zip(labels, orders)):
        return None
    return orders


def _as_arrays(pairs: Sequence[tuple[dict, dict]]) -> list[tuple[dict, dict]]:
    """Per-case lists as arrays, probabilities as numbers (a results file may hold them as text)."""
    def arrays(cases: dict) -> dict:
        return {k: np.asarray(v, dtype=float) if k == "probs" else np.asarray(v) for k, v in cases.items()}

    return [(arrays(a), arrays(b)) for a, b in pairs]


def paired_bootstrap(pairs: Sequence[tuple[dict, dict]], statistic: Callable[[dict], float],
                     n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, groups: Sequence | None = None,
                     case_ids: Sequence[Sequence[str]] | None = None) -> dict:
    """Mean over seeds of statistic(a) - statistic(b), with a 95% paired-bootstrap CI.

    `pairs` holds one `(a, b)` per seed: dicts of per-case arrays aligned case by case (same length);
    `groups` (one array per seed, or None) names each case's patient, so resampling keeps a
    patient's cases together; `case_ids` (one sequence per seed, in the order of its arrays) lets
    seeds scored on the same cases share each draw (`shared_order`). A statistic with a `prepare(cases)`
    method (MacroAuroc) is asked once per side for a function of each draw's case positions."""
    rng = np.random.default_rng(seed)
    pairs = _as_arrays(pairs)
    groups = list(groups) if groups is not None else [None] * len(pairs)
    orders = shared_order(case_ids, [a["label"] for a, _ in pairs] if all("label" in a for a, _ in pairs) else None)
    point = float(np.mean([statistic(a) - statistic(b) for a, b in pairs]))
    if orders is not None:
        shared = _Resampler(None if groups[0] is None else np.asarray(groups[0])[orders[0]], len(orders[0]))
    else:
        each = [_Resampler(None if group is None else np.asarray(group), len(next(iter(a.values()))))
                for (a, _), group in zip(pairs, groups)]
    on_draw = [(_draw_statistic(statistic, a), _draw_statistic(statistic, b)) for a, b in pairs]
    draws = []
    for _ in range(n_bootstrap):
        deltas = []
        if orders is not None:
            first = shared(rng)
        for index, (on_a, on_b) in enumerate(on_draw):
            idx = orders[index][first] if orders is not None else each[index](rng)
            deltas.append(on_a(idx) - on_b(idx))
        draws.append(np.nanmean(deltas))
    low, high = np.nanpercentile(draws, [2.5, 97.5])
    return {"delta": point, "ci_low": float(low), "ci_high": float(high), "seeds": len(pairs),
            "seeds_resampled": "one seed" if len(pairs) == 1 else "together" if orders is not None else "apart"}


def _class_scores(probs: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(class, score) for each AUC that macro_auroc averages: the positive class alone for two classes."""
    return [(1, probs[:, 1])] if probs.shape[1] == 2 else [(c, probs[:, c]) for c in range(probs.shape[1])]


def auroc_influence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each case's first-order share of macro_auroc's deviation from its mean (DeLong's placement values):
    a positive's share of the negatives it outscores, a negative's share of the positives that outscore
    it, centred and divided by its class's count, averaged over the one-vs-rest AUCs. Summed over cases
    it is 0; its spread gives DeLong's variance, and the covariance of two models' shares on the same
    cases gives the correlation of their AUCs."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    influence, used = np.zeros(len(labels)), 0
    for c, scores in _class_scores(probs):
        positive = labels == c
        m, n = int(positive.sum()), int((~positive).sum())
        if not m or not n:
            continue
        ranks = rankdata(scores)
        auc = (ranks[positive].sum() - m * (m + 1) / 2) / (m * n)
        within = np.empty(len(scores))
        within[positive], within[~positive] = rankdata(scores[positive]), rankdata(scores[~positive])
        below = ranks - within  # the other class's cases scored below, ties counted half
        placement = np.where(positive, below / n, 1 - below / m)
        influence += np.where(positive, (placement - auc) / m, (placement - auc) / n)
        used += 1
    return influence / max(used, 1)


def _influence_covariance(first: np.ndarray, second: np.ndarray, labels: np.ndarray,
                          groups: np.ndarray | None) -> float:
    """Covariance of two statistics' sums of per-case influences: within each class (DeLong's unbiased
    form, class counts held fixed) or, with patient ids, over patients' summed shares."""
    if groups is not None:
        _, inverse = np.unique(groups, return_inverse=True)
        first, second = np.bincount(inverse, first), np.bincount(inverse, second)
        k = len(first)
        return float(k / (k - 1) * np.sum((first - first.mean()) * (second - second.mean()))) if k > 1 else 0.0
    total = 0.0
    for c in np.unique(labels):
        member = labels == c
        k = int(member.sum())
        if k > 1:
            x, y = first[member], second[member]
            total += k / (k - 1) * np.sum((x - x.mean()) * (y - y.mean()))
    return float(total)


def _same_ranking(first: np.ndarray, second: np.ndarray) -> bool:
    """Whether both order every case alike on each score an AUC is taken of (ties included)."""
    return all(np.array_equal(rankdata(x), rankdata(y))
               for (_, x), (_, y) in zip(_class_scores(first), _class_scores(second)))


def _paired_covariance(influences: list[tuple[np.ndarray, np.ndarray]], pairs: list[tuple[dict, dict]],
                       groups: list, orders: list[np.ndarray] | None) -> dict[str, float]:
    """Variances of the mean-over-seeds statistic of each side ("aa", "bb") and their covariance ("ab"),
    from each seed's per-case influences: seeds on the same cases averaged case by case first (one test
    set), seeds on different cases independent (their variances of the mean add up)."""
    pairs_of = {"aa": (0, 0), "bb": (1, 1), "ab": (0, 1)}
    if orders is not None:
        mean = [np.mean([influence[side][order] for influence, order in zip(influences, orders)], axis=0)
                for side in (0, 1)]
        labels = pairs[0][0]["label"][orders[0]]
        group = None if groups[0] is None else np.asarray(groups[0])[orders[0]]
        return {key: _influence_covariance(mean[i], mean[j], labels, group) for key, (i, j) in pairs_of.items()}
    cov = dict.fromkeys(pairs_of, 0.0)
    for (a, _), influence, group in zip(pairs, influences, groups):
        group = None if group is None else np.asarray(group)
        for key, (i, j) in pairs_of.items():
            cov[key] += _influence_covariance(influence[i], influence[j], a["label"], group) / len(pairs) ** 2
    return cov


def _wald_and_correlation(delta: float, cov: dict[str, float], confidence: float) -> tuple[tuple[float, float], float]:
    """The Wald interval of the difference from `_paired_covariance`, and the two sides' correlation."""
    z = float(norm.ppf(0.5 + confidence / 2))
    spread = z * np.sqrt(max(cov["aa"] + cov["bb"] - 2 * cov["ab"], 0.0))
    r = cov["ab"] / np.sqrt(cov["aa"] * cov["bb"]) if cov["aa"] > 0 and cov["bb"] > 0 else 0.0
    return (delta - spread, delta + spread), float(np.clip(r, -1.0, 1.0))


def _mover(theta: dict[str, float], bounds: dict[str, tuple[float, float]], r: float) -> tuple[float, float]:
    """Zou & Donner's MOVER: each side's own interval recovered into one for theta["a"] - theta["b"],
    given the two estimates' correlation r (for two paired proportions this is Newcombe's hybrid score
    interval, his method 10)."""
    delta = theta["a"] - theta["b"]
    below_a, above_a = theta["a"] - bounds["a"][0], bounds["a"][1] - theta["a"]
    below_b, above_b = theta["b"] - bounds["b"][0], bounds["b"][1] - theta["b"]
    low = delta - np.sqrt(max(below_a ** 2 + above_b ** 2 - 2 * r * below_a * above_b, 0.0))
    high = delta + np.sqrt(max(above_a ** 2 + below_b ** 2 - 2 * r * above_a * below_b, 0.0))
    return float(low), float(high)


def _auc_bounds(theta: dict[str, float], pairs: list[tuple[dict, dict]],
                confidence: float) -> dict[str, tuple[float, float]] | None:
    """Each side's Newcombe score interval of its AUC at its estimate, at each seed's class counts, the
    widest over seeds; None where one is undefined."""
    bounds = {}
    for side, index in (("a", 0), ("b", 1)):
        intervals = [score_interval("roc_auc", theta[side], pair[index]["label"].astype(int),
                                    pair[index]["probs"].shape[1], confidence) for pair in pairs]
        if any(interval is None for interval in intervals):
            return None
        bounds[side] = (min(i[0] for i in intervals), max(i[1] for i in intervals))
    return bounds


def _wilson(p: float, n: float, z: float) -> tuple[float, float]:
    """Wilson's score interval of a proportion p observed on n cases (n may be an effective count)."""
    centre, scale = p + z * z / (2 * n), 1 + z * z / n
    half = z * np.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return float(max((centre - half) / scale, 0.0)), float(min((centre + half) / scale, 1.0))


def _nominal_cases(labels: np.ndarray, balanced: bool) -> float:
    """The number of cases a proportion's binomial variance rests on: every case for accuracy; for balanced
    accuracy (a mean of the classes' recalls) K^2 / sum(1 / n_c), as its score interval weighs them."""
    if not balanced:
        return float(len(labels))
    counts = np.unique(labels, return_counts=True)[1]
    return float(len(counts) ** 2 / np.sum(1 / counts))


def auc_difference_intervals(pairs: Sequence[tuple[dict, dict]], groups: Sequence | None = None,
                             case_ids: Sequence[Sequence[str]] | None = None,
                             confidence: float = 0.95, methods: Sequence[str] = ("delong", "mover")) -> dict | None:
    """Two closed-form 95% intervals of mean-over-seeds macro AUC(a) - AUC(b), from DeLong's per-case
    influences (seeds on the same cases averaged case by case, seeds on different cases independent):

    - "delong": the Wald interval with DeLong's variance of the difference;
    - "mover": Zou & Donner's MOVER, Newcombe's score interval for each side's AUC (at each seed's class
      counts, the widest over seeds) recovered into one for the difference with the two AUCs'
      correlation; it does not collapse where both AUCs sit at 1, but with highly correlated models
      and lopsided side intervals it is wider than it needs to be.

    Only `methods` are computed. None where an AUC is undefined."""
    pairs = _as_arrays(pairs)
    groups = list(groups) if groups is not None else [None] * len(pairs)
    orders = shared_order(case_ids, [a["label"] for a, _ in pairs])
    sides = {"a": [macro_auroc(a["probs"], a["label"]) for a, _ in pairs],
             "b": [macro_auroc(b["probs"], b["label"]) for _, b in pairs]}
    if any(np.isnan(v) for values in sides.values() for v in values):
        return None
    theta = {side: float(np.mean(values)) for side, values in sides.items()}
    delta = theta["a"] - theta["b"]
    if all(_same_ranking(a["probs"], b["probs"]) for a, b in pairs):
        # one order of the cases under both (a monotone change of the scores): equal AUCs on any draw
        return {"delta": delta, "correlation": 1.0} | {method: (delta, delta) for method in methods}
    bounds = _auc_bounds(theta, pairs, confidence) if "mover" in methods else {}
    if bounds is None:
        return None
    influences = [(auroc_influence(a["probs"], a["label"]), auroc_influence(b["probs"], b["label"])) for a, b in pairs]
    wald, r = _wald_and_correlation(delta, _paired_covariance(influences, pairs, groups, orders), confidence)
    out = {"delta": delta, "correlation": r}
    if "delong" in methods:
        out["delong"] = wald
    return out | ({"mover": _mover(theta, bounds, r)} if "mover" in methods else {})


def accuracy_influence(probs: np.ndarray, labels: np.ndarray, balanced: bool = False) -> np.ndarray:
    """Each case's share of accuracy's deviation from its mean: whether it is right, over the cases
    (balanced accuracy: over its class's count and the classes present, as each class's recall weighs)."""
    labels = np.asarray(labels)
    correct = (np.argmax(np.asarray(probs, dtype=float), axis=1) == labels).astype(float)
    if not balanced:
        return (correct - correct.mean()) / len(labels)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    recall = np.bincount(inverse, correct) / counts
    return (correct - recall[inverse]) / (counts[inverse] * len(classes))


def accuracy_difference_intervals(pairs: Sequence[tuple[dict, dict]], groups: Sequence | None = None,
                                  case_ids: Sequence[Sequence[str]] | None = None, confidence: float = 0.95,
                                  methods: Sequence[str] = ("wald", "newcombe", "mover"),
                                  balanced: bool = False) -> dict:
    """Closed-form 95% intervals of mean-over-seeds accuracy(a) - accuracy(b) (`balanced`: balanced
    accuracy); variances are taken within each class, as the stratified splits hold the class counts:

    - "wald": the Wald interval with the variance of the per-case differences in being right;
    - "newcombe": each side's Wilson interval at its nominal number of cases (the widest over seeds)
      recovered into one for the difference with the two sides' correlation (MOVER): for one seed,
      Newcombe's hybrid score interval for paired proportions (his method 10);
    - "mover": the same with each side's Wilson interval at its effective number of cases, p (1 - p)
      over its variance: seeds averaged, or patients with several images, move the variance away from
      one seed's binomial one, and the effective count follows it.

    Where the drawn cases hold none that one side gets right and the other wrong, the Wald interval (and
    the bootstrap) collapse to 0; the last two keep the lopsidedness of each side's Wilson interval."""
    pairs = _as_arrays(pairs)
    groups = list(groups) if groups is not None else [None] * len(pairs)
    orders = shared_order(case_ids, [a["label"] for a, _ in pairs])
    statistic = balanced_accuracy if balanced else accuracy
    theta = {"a": float(np.mean([statistic(a["probs"], a["label"]) for a, _ in pairs])),
             "b": float(np.mean([statistic(b["probs"], b["label"]) for _, b in pairs]))}
    delta = theta["a"] - theta["b"]
    influences = [(accuracy_influence(a["probs"], a["label"], balanced),
                   accuracy_influence(b["probs"], b["label"], balanced)) for a, b in pairs]
    cov = _paired_covariance(influences, pairs, groups, orders)
    wald, r = _wald_and_correlation(delta, cov, confidence)
    z = float(norm.ppf(0.5 + confidence / 2))
    nominal = min(_nominal_cases(a["label"], balanced) for a, _ in pairs)
    out = {"delta": delta, "correlation": r}
    if "wald" in methods:
        out["wald"] = wald
    if "newcombe" in methods:
        out["newcombe"] = _mover(theta, {side: _wilson(theta[side], nominal, z) for side in theta}, r)
    if "mover" in methods:
        variance = {"a": cov["aa"], "b": cov["bb"]}
        effective = {side: theta[side] * (1 - theta[side]) / variance[side]
                     if variance[side] > 0 and 0 < theta[side] < 1 else nominal for side in theta}
        out["mover"] = _mover(theta, {side: _wilson(theta[side], effective[side], z) for side in theta}, r)
    return out


SCORE_METHOD = "delong"  # joined with the bootstrap: measured in ci_coverage.py, MOVER over-covered at twice the width
ACCURACY_METHOD = "mover"  # joined with the bootstrap for an accuracy difference: measured in ci_coverage.py
# How a reader sees each closed-form interval named (the CLI's captions, docs/benchmarks.md).
METHOD_NAMES = {"delong": "DeLong", "wald": "Wald", "newcombe": "Newcombe", "mover": "MOVER"}


def interval_method(difference: dict) -> str:
    """How a difference's CI was made, in words: 'bootstrap + DeLong', or 'bootstrap alone' where no closed
    form could join it (e.g. a class absent from the cases)."""
    method = difference.get("score_method")
    return f"bootstrap + {METHOD_NAMES[method]}" if method else "bootstrap alone"


def _joined(difference: dict, closed: dict | None, method: str) -> dict:
    """The bootstrap's CI widened to the closed-form interval `method` (the wider on each side), both kept."""
    if closed is None:
        return difference
    boot, score = [difference["ci_low"], difference["ci_high"]], [float(x) for x in closed[method]]
    return difference | {"ci_low": min(boot[0], score[0]), "ci_high": max(boot[1], score[1]), "bootstrap_ci": boot,
                         "score_ci": score, "score_method": method, "correlation": closed["correlation"]}


def paired_auc_difference(pairs: Sequence[tuple[dict, dict]], n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                          groups: Sequence | None = None, case_ids: Sequence[Sequence[str]] | None = None,
                          method: str = SCORE_METHOD) -> dict:
    """Mean over seeds of macro AUC(a) - AUC(b): the paired bootstrap's CI joined with a closed-form
    interval (`method`, from auc_difference_intervals; the wider on each side), both kept
    (`bootstrap_ci`, `score_ci`)."""
    difference = paired_bootstrap(pairs, MacroAuroc(), n_bootstrap, seed, groups, case_ids)
    return _joined(difference, auc_difference_intervals(pairs, groups, case_ids, methods=(method,)), method)


def paired_accuracy_difference(pairs: Sequence[tuple[dict, dict]], n_bootstrap: int = N_BOOTSTRAP, seed: int = 0,
                               groups: Sequence | None = None, case_ids: Sequence[Sequence[str]] | None = None,
                               balanced: bool = False, method: str = ACCURACY_METHOD) -> dict:
    """Mean over seeds of accuracy(a) - accuracy(b) (`balanced`: balanced accuracy): the paired bootstrap's
    CI joined with a closed-form interval (`method`, from accuracy_difference_intervals)."""
    difference = paired_bootstrap(pairs, Accuracy(balanced), n_bootstrap, seed, groups, case_ids)
    closed = accuracy_difference_intervals(pairs, groups, case_ids, methods=(method,), balanced=balanced)
    return _joined(difference, closed, method)


def verdict(difference: dict, lower_is_better: bool = False) -> str:
    """'win' / 'loss' for A only when the CI excludes 0, else 'tie'."""
    if difference["ci_low"] > 0:
        return "loss" if lower_is_better else "win"
    if difference["ci_high"] < 0:
        return "win" if lower_is_better else "loss"
    return "tie"


def format_difference(difference: dict, digits: int = 3, max_digits: int = 6) -> str:
    """'+0.0034 [+0.0004, +0.0071]': the difference and its CI, with digits added until no bound that is not
    zero prints as ±0, so a reader can check a win or a loss against the printed interval."""
    bounds = (difference["ci_low"], difference["ci_high"])
    while digits < max_digits and any(b != 0 and round(b, digits) == 0 for b in bounds):
        digits += 1
    low, high = (f"{b:+.{digits}f}" for b in bounds)
    return f"{difference['delta']:+.{digits}f} [{low}, {high}]"
