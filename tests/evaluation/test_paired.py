"""Paired comparisons (dualfuse.evaluation.paired): the statistics behind `dualfuse compare` and every
win / tie / loss of docs/benchmarks.md."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dualfuse.evaluation import paired as paired_module


@pytest.fixture(scope="module")
def paired():
    return paired_module


def test_rank_aurocs_equal_sklearn(paired):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    probs = rng.dirichlet(np.ones(3), 300)
    probs = np.round(probs, 2)  # ties
    expected = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(3)])  # sklearn's macro OvR
    assert paired.macro_auroc(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert paired.binary_auroc(probs[:, 1], labels == 1) == pytest.approx(roc_auc_score(labels == 1, probs[:, 1]))


def test_rank_auroc_is_scipys_rank_sum_to_the_bit(paired):
    """binary_auroc takes the positives' rank sum per run of tied scores; the docs' CIs were computed with
    scipy's rankdata, so the two must agree exactly (halves add up exactly), not only approximately."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(7)
    for size, decimals in [(2, 1), (9, 1), (300, 2), (1000, 3), (50, 8)]:
        scores, positive = np.round(rng.random(size), decimals), rng.random(size) < 0.3
        positive[:2] = [True, False]
        m, n = positive.sum(), (~positive).sum()
        assert paired.binary_auroc(scores, positive) == float(
            (rankdata(scores)[positive].sum() - m * (m + 1) / 2) / (m * n))
    assert np.isnan(paired.binary_auroc(np.array([0.2, np.nan, 0.7]), np.array([True, False, True])))
    assert np.isnan(paired.binary_auroc(np.array([0.2, 0.7]), np.array([True, True])))
    assert paired.binary_auroc(np.full(4, 0.5), np.array([True, False, True, False])) == 0.5  # one run of ties


def test_a_draws_auroc_from_counts_is_macro_auroc_of_the_drawn_cases(paired):
    """paired_bootstrap scores each draw from the cases sorted once and how often the draw took each; that
    must be macro_auroc of the drawn cases exactly, also where a draw misses a class (NaN, left out of
    the macro mean) or holds a NaN score."""
    rng = np.random.default_rng(8)
    for classes, size in [(2, 40), (3, 200), (7, 120)]:
        labels = np.r_[np.arange(classes), rng.integers(0, classes - 1, size - classes)]  # the last class once
        probs = np.round(rng.dirichlet(np.ones(classes), size), 2)
        on_draw = paired.MacroAuroc().prepare({"probs": probs, "label": labels})
        for _ in range(50):
            idx = rng.integers(0, size, size)
            expected = paired.macro_auroc(probs[idx], labels[idx])
            assert on_draw(idx) == expected or (np.isnan(expected) and np.isnan(on_draw(idx)))
    probs[3, 0] = np.nan  # class 0's AUC is NaN on the draws that hold case 3, and left out of the mean
    on_draw = paired.MacroAuroc().prepare({"probs": probs, "label": labels})
    for idx in (np.arange(size), np.r_[0, 1, 2, 4:size]):
        assert on_draw(idx) == paired.macro_auroc(probs[idx], labels[idx])
    assert on_draw(np.arange(size)) != on_draw(np.r_[0, 1, 2, 4:size])


def test_a_draws_accuracy_from_counts_is_the_accuracy_of_the_drawn_cases(paired):
    rng = np.random.default_rng(9)
    labels = np.r_[0, 1, 2, 3, rng.integers(0, 3, 146)]  # class 3 once: most draws miss it
    probs = rng.dirichlet(np.ones(4), 150)
    for balanced, plain in ((False, paired.accuracy), (True, paired.balanced_accuracy)):
        on_draw = paired.Accuracy(balanced).prepare({"probs": probs, "label": labels})
        assert paired.Accuracy(balanced)({"probs": probs, "label": labels}) == plain(probs, labels)
        for _ in range(50):
            idx = rng.integers(0, 150, 150)
            assert on_draw(idx) == plain(probs[idx], labels[idx])


def test_group_resampling_keeps_a_patients_cases_together(paired):
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 3)
    idx = paired._resample(rng, groups, len(groups))
    chosen = groups[idx]
    assert all((chosen == g).sum() % 3 == 0 for g in np.unique(chosen))


def test_a_patient_draw_is_each_drawn_patients_cases_in_order(paired):
    """The resampler indexes the patients once; each draw must still be the drawn patients' cases, in
    draw order and each patient's cases ascending, from the same random numbers as drawing by hand."""
    groups = np.array(["p3", "p1", "p3", "p2", "p1", "p3", "p9"])
    resample = paired._Resampler(groups, len(groups))
    rng, by_hand = np.random.default_rng(11), np.random.default_rng(11)
    patients = np.unique(groups)
    for _ in range(20):
        drawn = by_hand.integers(0, len(patients), len(patients))
        expected = np.concatenate([np.flatnonzero(groups == patients[g]) for g in drawn])
        assert resample(rng).tolist() == expected.tolist()
    plain_rng, plain_by_hand = np.random.default_rng(12), np.random.default_rng(12)
    assert paired._Resampler(None, 5)(plain_rng).tolist() == plain_by_hand.integers(0, 5, 5).tolist()


def test_case_predictions_keep_patient_ids_only_where_a_patient_has_several_cases(paired, tmp_path: Path):
    csv = tmp_path / "predictions.csv"
    csv.write_text("case_id,patient_id,split,label_true,label_prob_b,label_prob_a\n"
                   "1,1,test,a,0.25,0.75\n2,2,test,b,0.6,0.4\n3,3,val,a,0.1,0.9\n4,4,test,,0.5,0.5\n")
    cases = paired.case_predictions(csv, "label", classes=["a", "b"])
    assert cases == {"case_id": ["1", "2"], "label": [0, 1], "probs": [[0.75, 0.25], [0.4, 0.6]]}
    assert paired.case_predictions(csv, "label", split=None)["probs"][2] == [0.1, 0.9]  # the file's class order
    csv.write_text(csv.read_text().replace("\n2,2,", "\n2,1,"))  # cases 1 and 2: one patient
    assert paired.case_predictions(csv, "label", classes=["a", "b"])["patient_id"] == ["1", "1"]
    assert paired.patient_groups(["p1", "p2"]) is None and paired.patient_groups(["p1", ""]) is None
    assert paired.patient_groups(["p1", "p1", "p2"]) == ["p1", "p1", "p2"]


def test_a_zip_runs_probabilities_are_numbers_not_text(paired, tmp_path: Path):
    """A zip run's predictions.csv leaves one task's cells empty on the other task's rows, so pandas reads
    those columns as text; ranked as text, "9.5e-05" outranks "0.9" and the paired AUC and accuracy of
    every zip row came out wrong. The probabilities must come back as numbers, from the file and from a
    results file that stored them as text."""
    csv = tmp_path / "predictions.csv"
    csv.write_text("case_id,split,mri_true,mri_prob_a,mri_prob_b,ct_true,ct_prob_x,ct_prob_y\n"
                   "1,test,a,0.99995,5e-05,,,\n2,test,b,0.3,0.7,,,\n3,test,a,0.8,0.2,,,\n"
                   "4,test,,,,x,0.6,0.4\n")
    cases = paired.case_predictions(csv, "mri")
    assert cases["probs"] == [[0.99995, 5e-05], [0.3, 0.7], [0.8, 0.2]] and cases["label"] == [0, 1, 0]
    assert paired.macro_auroc(cases["probs"], cases["label"]) == 1.0  # as text, "5e-05" > "0.7": 0.5
    stored = {"case_id": ["1", "2", "3"], "label": [0, 1, 0], "probs": [["0.99995", "5e-05"], ["0.3", "0.7"],
                                                                        ["0.8", "0.2"]]}
    side, _ = paired.align_cases(stored, stored)
    assert side["probs"].dtype == float and paired.accuracy(side["probs"], side["label"]) == 1.0  # text: 2 / 3
    assert paired.macro_auroc(stored["probs"], stored["label"]) == 1.0
    assert paired.paired_auc_difference([(stored, cases)], 50)["delta"] == 0.0
    assert paired.paired_accuracy_difference([(stored, cases)], 50)["delta"] == 0.0
    csv.write_text(csv.read_text().replace("0.3,0.7", "0.3,n/a"))
    with pytest.raises(ValueError, match=r"predictions.csv: task 'mri' has a probability that is not a number"):
        paired.case_predictions(csv, "mri")


def _per_case(rng, labels, skill):
    """Probabilities whose ranking of the positives improves with `skill`."""
    logits = skill * (labels * 2 - 1) + rng.normal(size=len(labels))
    p = 1 / (1 + np.exp(-logits))
    return np.c_[1 - p, p]


def test_a_printed_ci_shows_why_it_is_a_win_or_a_loss(paired):
    """A bound that excludes 0 never prints as +0.000: the reader can check the verdict on the page."""
    win = {"delta": 0.0034, "ci_low": 0.00037, "ci_high": 0.0071}
    assert paired.verdict(win) == "win"
    assert paired.format_difference(win) == "+0.0034 [+0.0004, +0.0071]"
    loss = {"delta": -0.012, "ci_low": -0.018, "ci_high": -0.0000031}
    assert paired.format_difference(loss) == "-0.012000 [-0.018000, -0.000003]"
    tie = {"delta": 0.005, "ci_low": -0.0004, "ci_high": 0.011}  # a tie's bound may round to zero: 0 is inside
    assert paired.format_difference(tie) == "+0.0050 [-0.0004, +0.0110]"
    assert paired.format_difference({"delta": 0.01, "ci_low": 0.0, "ci_high": 0.02}) == "+0.010 [+0.000, +0.020]"
    assert paired.format_difference({"delta": 0.5, "ci_low": 0.25, "ci_high": 0.75}, 2) == "+0.50 [+0.25, +0.75]"


def test_balanced_accuracy_equals_sklearn_and_ignores_the_majority_class_share(paired):
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(1)
    labels = rng.choice(4, 500, p=[0.7, 0.2, 0.05, 0.05])
    probs = rng.dirichlet(np.ones(4), 500)
    probs[:, 3] = 0  # class 3 is never predicted: its recall is 0, not dropped
    assert paired.balanced_accuracy(probs, labels) == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))
    majority = np.tile([1.0, 0, 0, 0], (500, 1))  # always the 70% class: accuracy .7, balanced accuracy .25
    assert paired.accuracy(majority, labels) > 0.65 and paired.balanced_accuracy(majority, labels) == 0.25


def test_auroc_influence_gives_delongs_variance(paired):
    """The per-case shares are DeLong's placement values: their spread within each class is DeLong's
    variance of the AUC, computed here from the full positive-by-negative comparison matrix."""
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 120)
    probs = np.round(_per_case(rng, labels, 0.8), 2)  # ties, counted half
    share = paired.auroc_influence(probs, labels)
    pos, neg = probs[labels == 1, 1], probs[labels == 0, 1]
    kernel = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    delong = kernel.mean(1).var(ddof=1) / len(pos) + kernel.mean(0).var(ddof=1) / len(neg)
    assert paired._influence_covariance(share, share, labels, None) == pytest.approx(delong, rel=1e-12)
    assert share.sum() == pytest.approx(0, abs=1e-12)
    three = rng.integers(0, 3, 200)
    assert paired.auroc_influence(rng.dirichlet(np.ones(3), 200), three).sum() == pytest.approx(0, abs=1e-12)


def test_shared_order_lines_up_seeds_scored_on_the_same_cases(paired):
    orders = paired.shared_order([["a", "b", "c"], ["c", "a", "b"]])
    assert [o.tolist() for o in orders] == [[0, 1, 2], [1, 2, 0]]  # seed 2's positions of a, b, c
    assert paired.shared_order([["a", "b"], ["a", "c"]]) is None  # other cases: independent samples
    assert paired.shared_order([["a", "b"], None]) is None and paired.shared_order(None) is None
    assert paired.shared_order([["a", "b"], ["b", "a"]], labels=[[0, 1], [1, 0]]) is not None  # same labels, reordered
    assert paired.shared_order([["a", "b"], ["a", "b"]], labels=[[0, 1], [1, 1]]) is None  # one id, two labels


def test_seeds_on_one_test_set_are_not_counted_as_three_test_sets(paired):
    """Three seeds whose predictions are the same on one test set carry the evidence of one seed: drawn
    together their CI is one seed's; drawn apart it was about 1/sqrt(3) as wide."""
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 150)
    a, b = {"probs": _per_case(rng, labels, 1.0), "label": labels}, {"probs": _per_case(rng, labels, 0.8), "label": labels}
    ids = [f"c{i}" for i in range(150)]

    def auc(c):
        return paired.macro_auroc(c["probs"], c["label"])

    one = paired.paired_bootstrap([(a, b)], auc, 400)
    together = paired.paired_bootstrap([(a, b)] * 3, auc, 400, case_ids=[ids] * 3)
    apart = paired.paired_bootstrap([(a, b)] * 3, auc, 400)
    assert (together["ci_low"], together["ci_high"]) == pytest.approx((one["ci_low"], one["ci_high"]))
    assert together["seeds_resampled"] == "together" and apart["seeds_resampled"] == "apart"
    assert apart["ci_high"] - apart["ci_low"] < 0.75 * (together["ci_high"] - together["ci_low"])


def test_two_models_that_rank_every_case_right_are_a_tie_not_a_zero_width_ci(paired):
    """On a sample where both rank every positive first, the bootstrap of the difference is [0, 0];
    the MOVER interval says how far apart two such models may still be."""
    rng = np.random.default_rng(5)
    labels = np.r_[np.zeros(30, int), np.ones(20, int)]
    p_a, p_b = 0.6 * labels + 0.4 * rng.random(50), 0.6 * labels + 0.4 * rng.random(50)  # each orders a class its way
    a, b = {"probs": np.c_[1 - p_a, p_a], "label": labels}, {"probs": np.c_[1 - p_b, p_b], "label": labels}
    diff = paired.paired_auc_difference([(a, b)], 300, seed=int(rng.integers(100)), method="mover")
    assert diff["bootstrap_ci"] == [0.0, 0.0] and diff["delta"] == 0.0
    assert diff["ci_low"] < -0.03 and diff["ci_high"] > 0.03 and paired.verdict(diff) == "tie"
    assert diff["score_ci"] == [diff["ci_low"], diff["ci_high"]] and diff["score_method"] == "mover"
    # DeLong's variance is that of the sample: every placement 1 on both sides, no spread, so [0, 0] too
    assert paired.auc_difference_intervals([(a, b)])["delong"] == (0.0, 0.0)


def test_delongs_interval_of_a_difference_matches_the_bootstrap_away_from_the_ceiling(paired):
    """On 300 cases with AUCs near .8 the Wald interval with DeLong's variance and the paired bootstrap
    agree to within a fifth of their width: the same variance, estimated two ways."""
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 300)
    a, b = {"probs": _per_case(rng, labels, 1.0), "label": labels}, {"probs": _per_case(rng, labels, 0.8), "label": labels}
    delong = paired.auc_difference_intervals([(a, b)])["delong"]
    boot = paired.paired_bootstrap([(a, b)], lambda c: paired.macro_auroc(c["probs"], c["label"]), 2000)
    width = delong[1] - delong[0]
    assert abs((boot["ci_high"] - boot["ci_low"]) - width) < 0.2 * width
    assert abs((delong[0] + delong[1]) / 2 - boot["delta"]) < 1e-12  # centred on the difference


def _two_classifiers(rng: np.random.Generator, labels: np.ndarray, right_a: float, right_b: float) -> tuple[dict, dict]:
    """Two classifiers of `labels` (two classes) right on about `right_a` and `right_b` of the cases,
    their successes correlated through a shared difficulty."""
    hard = rng.random(len(labels))
    sides = []
    for right in (right_a, right_b):
        correct = hard + 0.3 * rng.random(len(labels)) < right * 1.3
        predicted = np.where(correct, labels, 1 - labels)
        sides.append({"probs": np.c_[1 - predicted, predicted].astype(float) * 0.8 + 0.1, "label": labels})
    return sides[0], sides[1]


def test_accuracy_influence_is_the_exact_change_of_balanced_accuracy(paired):
    """Balanced accuracy is linear in each case being right, class counts fixed: flipping one case's
    answer moves it by 1 / (its class's count x classes present), the influence's scale."""
    rng = np.random.default_rng(8)
    labels = rng.choice(3, 90, p=[0.6, 0.3, 0.1])
    probs = rng.dirichlet(np.ones(3), 90)
    share = paired.accuracy_influence(probs, labels, balanced=True)
    assert share.sum() == pytest.approx(0, abs=1e-12)
    assert paired.accuracy_influence(probs, labels).sum() == pytest.approx(0, abs=1e-12)
    i = int(np.flatnonzero(labels == 2)[0])
    flipped = probs.copy()
    flipped[i] = np.eye(3)[1 if probs[i].argmax() == 2 else 2]  # right <-> wrong for case i
    step = paired.balanced_accuracy(flipped, labels) - paired.balanced_accuracy(probs, labels)
    assert abs(step) == pytest.approx(1 / (np.sum(labels == 2) * 3))


def test_accuracy_mover_for_one_class_is_newcombes_paired_interval(paired):
    """With one class (accuracy = one proportion, no class strata) and one seed, MOVER with Wilson's
    intervals and the phi coefficient of the 2x2 table is Newcombe's (1998) method 10, written out here."""
    from scipy.stats import norm

    rng = np.random.default_rng(9)
    labels = np.zeros(60, int)
    a, b = _two_classifiers(rng, labels, 0.8, 0.65)
    right_a, right_b = a["probs"].argmax(1) == 0, b["probs"].argmax(1) == 0
    both, only_a, only_b, neither = (np.sum(right_a & right_b), np.sum(right_a & ~right_b),
                                     np.sum(~right_a & right_b), np.sum(~right_a & ~right_b))
    n, z = 60, norm.ppf(0.975)

    def wilson(p):
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        return centre - half, centre + half

    p1, p2 = right_a.mean(), right_b.mean()
    (l1, u1), (l2, u2) = wilson(p1), wilson(p2)
    phi = (both * neither - only_a * only_b) / np.sqrt((both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither))
    low = p1 - p2 - np.sqrt((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2)
    high = p1 - p2 + np.sqrt((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2)
    intervals = paired.accuracy_difference_intervals([(a, b)])
    assert intervals["correlation"] == pytest.approx(phi, rel=1e-9)
    assert intervals["newcombe"] == pytest.approx((low, high), abs=1e-12)
    # the effective number of cases of one seed is n - 1 (the variance's unbiased form): nearly the same
    assert intervals["mover"] == pytest.approx((low, high), abs=0.01) and intervals["mover"] != intervals["newcombe"]


def test_accuracy_wald_matches_the_bootstrap_and_mover_survives_no_discordant_case(paired):
    rng = np.random.default_rng(10)
    labels = rng.integers(0, 2, 400)
    a, b = _two_classifiers(rng, labels, 0.85, 0.75)
    wald = paired.accuracy_difference_intervals([(a, b)], methods=("wald",))["wald"]
    boot = paired.paired_bootstrap([(a, b)], lambda c: paired.accuracy(c["probs"], c["label"]), 2000)
    width = wald[1] - wald[0]
    assert abs((boot["ci_high"] - boot["ci_low"]) - width) < 0.2 * width
    # 40 cases both get right or both get wrong: Wald and bootstrap say exactly 0; MOVER keeps the
    # asymmetry of each side's Wilson interval
    same = {"probs": a["probs"][:40], "label": labels[:40]}
    alike = paired.paired_accuracy_difference([(same, dict(same))], 300)
    assert alike["bootstrap_ci"] == [0.0, 0.0] and alike["score_ci"][0] < -0.02 and alike["score_ci"][1] > 0.02
    assert paired.verdict(alike) == "tie"


def test_accuracy_mover_follows_the_variance_of_seeds_averaged(paired):
    """Three seeds that disagree case by case average to a less variable accuracy than one seed's: the
    effective number of cases grows, and MOVER narrows where Newcombe's nominal count does not."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 200)
    ids = [f"c{i}" for i in range(200)]
    pairs = [_two_classifiers(rng, labels, 0.8, 0.7) for _ in range(3)]
    intervals = paired.accuracy_difference_intervals(pairs, case_ids=[ids] * 3)
    one = paired.accuracy_difference_intervals(pairs[:1])
    width = {key: intervals[key][1] - intervals[key][0] for key in ("newcombe", "mover", "wald")}
    assert width["mover"] < 0.9 * width["newcombe"]
    assert width["mover"] < one["mover"][1] - one["mover"][0]
    assert abs(width["mover"] - width["wald"]) < 0.2 * width["wald"]


def test_align_cases_puts_both_sets_in_one_case_order_or_says_why_not(paired):
    a = {"case_id": ["x", "y", "z"], "label": [0, 1, 1], "probs": [[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]],
         "patient_id": ["p1", "p1", "p2"]}
    b = {"case_id": ["z", "x", "y"], "label": [1, 0, 1], "probs": [[0.3, 0.7], [0.8, 0.2], [0.1, 0.9]]}
    side_a, side_b = paired.align_cases(a, b)
    assert side_b["case_id"].tolist() == ["x", "y", "z"] and side_b["probs"][:, 1].tolist() == [0.2, 0.9, 0.7]
    assert side_a["patient_id"].tolist() == ["p1", "p1", "p2"] and "patient_id" not in side_b
    assert paired.align_cases(a, b, order=["z", "y", "x"])[0]["label"].tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match="^finetune and scratch were scored on different test cases$"):
        paired.align_cases(a, {**b, "case_id": ["z", "x", "w"]}, names=("finetune", "scratch"))
    with pytest.raises(ValueError, match="disagree on the labels"):
        paired.align_cases(a, {**b, "label": [1, 1, 1]})


def test_interval_method_names_the_closed_form_joined_or_says_the_bootstrap_stood_alone(paired):
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 200)
    a, b = _two_classifiers(rng, labels, 0.85, 0.75)
    auc = paired.paired_auc_difference([(a, b)], 200)
    acc = paired.paired_accuracy_difference([(a, b)], 200)
    assert paired.interval_method(auc) == f"bootstrap + {paired.METHOD_NAMES[paired.SCORE_METHOD]}"
    assert paired.interval_method(acc) == f"bootstrap + {paired.METHOD_NAMES[paired.ACCURACY_METHOD]}"
    alone = paired.paired_bootstrap([(a, b)], lambda c: paired.accuracy(c["probs"], c["label"]), 200)
    assert paired.interval_method(alone) == "bootstrap alone"
