"""The CI coverage benchmark: small test sets drawn from stored predictions with a known answer.

No training: the populations are synthetic. A binary population with well separated scores has a
true AUC near 1, where a percentile bootstrap on a small sample collapses to [1, 1] and misses it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.benchmarks.test_make_docs import _load


@pytest.fixture(scope="module")
def bench():
    return _load("ci_coverage")


def _population(n: int, seed: int, shift: float = 3.0) -> dict:
    rng = np.random.default_rng(seed)
    label = (rng.random(n) < 0.3).astype(int)
    p1 = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + shift * (label - 0.5))))
    return {"case_id": [f"c{i}" for i in range(n)], "label": label.tolist(),
            "probs": np.stack([1 - p1, p1], axis=1).tolist()}


def test_stratified_draws_keep_every_class_and_the_size(bench):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(900, int), np.ones(90, int), np.full(10, 2)]
    for n in (5, 20, 50):
        pick = bench.stratified_draw(labels, n, rng)
        assert len(pick) == n == len(set(pick.tolist()))
        assert set(labels[pick].tolist()) == {0, 1, 2}  # the 1% class is kept, as a stratified split keeps it
    counts = np.bincount(labels[bench.stratified_draw(labels, 100, rng)])
    assert counts.tolist() == [90, 9, 1]


def test_the_widened_interval_holds_what_the_bootstrap_misses(bench, tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    (results / "accuracy_cpu.json").write_text(json.dumps({"records": [
        {"row": "toy", "seed": 0, "device": "cpu", "tasks": {"label": {"dataset": "toy", "per_case": _population(600, 0)}}}]}))
    out = tmp_path / "ci.json"
    assert bench.main(["--results", str(results), "--draws", "60", "--out", str(out)]) == 0
    stored = json.loads(out.read_text())
    rows = {(r["n_test"], r["metric"], r["interval"]): r for r in stored["metrics"]["rows"] if r["dataset"] == "all"}
    assert {n for n, _, _ in rows} == {20, 50}  # 600 cases: a population at least ten times the draw
    bootstrap, widened = rows[(20, "roc_auc", "bootstrap")], rows[(20, "roc_auc", "widened")]
    assert bootstrap["draws"] == widened["draws"] == 60 and bootstrap["case_sets"] == 1
    assert bootstrap["coverage"] < 0.85 and widened["coverage"] >= 0.93
    assert widened["median_width"] > bootstrap["median_width"]
    assert abs(bootstrap["truth_above"] + bootstrap["truth_below"] + bootstrap["coverage"] - 1) < 1e-9
    assert "95% CIs on small test sets" in capsys.readouterr().out


def test_no_stored_predictions_is_a_one_line_error(bench, tmp_path, capsys):
    assert bench.main(["--results", str(tmp_path), "--out", str(tmp_path / "ci.json")]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "ci.json").exists()


def _case_set(row: str, per_case: dict, order=None) -> dict:
    order = np.arange(len(per_case["label"])) if order is None else order
    return {"source": "accuracy_cpu.json", "row": row, "seed": 0, "task": "label", "dataset": "toy",
            "probs": np.asarray(per_case["probs"])[order], "labels": np.asarray(per_case["label"])[order],
            "case_ids": np.asarray(per_case["case_id"])[order]}


def test_population_pairs_align_two_rows_on_the_same_cases(bench):
    rng = np.random.default_rng(0)
    good, shuffled = _population(600, 0), rng.permutation(600)
    worse = _population(600, 0, shift=1.0)
    a, b = _case_set("good", good), _case_set("worse", worse, order=shuffled)
    other_seed = {**_case_set("other", worse), "seed": 1}
    populations = bench.population_pairs([a, b, other_seed], rng)
    assert len(populations) == 1 and len(populations[0]) == 1  # another seed scores other cases: never paired
    ((first, second),) = populations[0]
    assert first["row"] == "good" and np.array_equal(second["labels"], first["labels"])
    np.testing.assert_allclose(second["probs"], np.asarray(worse["probs"]))  # back in a's case order


def test_rows_with_several_seeds_on_one_test_set_also_form_a_pooled_population(bench):
    rng = np.random.default_rng(1)
    sets = [{**_case_set(row, _population(600, 0, shift), order=rng.permutation(600)), "seed": seed}
            for seed in (0, 1, 2) for row, shift in (("good", 3.0), ("worse", 1.0))]  # one test set, each seed's order
    populations = bench.population_pairs(sets, rng)
    assert sorted(len(p) for p in populations) == [1, 1, 1, 3]
    pooled = next(p for p in populations if len(p) == 3)
    reference = pooled[0][0]["case_ids"]
    assert all(np.array_equal(side["case_ids"], reference) for pair in pooled for side in pair)  # one case order


def _seed_copies(per_case: dict, row: str, seeds=(0, 1, 2)) -> list[dict]:
    return [{**_case_set(row, per_case), "seed": seed} for seed in seeds]


@pytest.mark.parametrize("metric", ["roc_auc", "accuracy"])
def test_paired_intervals_hold_the_true_difference_and_say_its_sign(bench, metric):
    sets = [_case_set("good", _population(1000, 0)), _case_set("worse", _population(1000, 0, shift=1.5))]
    rows = {r["interval"]: r for r in bench.measure_paired(sets, sizes=(50,), draws=30, n_bootstrap=200,
                                                            metric=metric)}
    methods = bench.PAIRED_METRICS[metric][2]
    assert set(rows) == {"bootstrap, seeds apart", "bootstrap", *methods, *(f"bootstrap + {m}" for m in methods)}
    assert {r["metric"] for r in rows.values()} == {f"{metric} difference"}
    for method in methods:
        joined = rows[f"bootstrap + {method}"]
        assert (joined["n_test"], joined["seeds"], joined["pairs"], joined["draws"]) == (50, "one seed", 1, 30)
        assert joined["coverage"] >= 0.8 and joined["wrong_verdicts"] == 0 and joined["decided"] > 0.5
        assert joined["median_width"] >= rows["bootstrap"]["median_width"]  # a union holds the bootstrap's CI
        assert joined["median_width"] >= rows[method]["median_width"] - 1e-12


def test_seeds_drawn_apart_miss_what_one_draw_for_all_seeds_holds(bench):
    """Three seeds that predict alike on one test set: resampling each seed's cases apart counts one test
    set as three and its CI misses the true difference far more often than 5%."""
    good = _population(1000, 0, shift=1.5)
    noise = np.random.default_rng(9).normal(0, 1, 1000)  # the other model errs on other cases
    p1 = 1 / (1 + np.exp(-(noise + 1.2 * (np.asarray(good["label"]) - 0.5))))
    worse = good | {"probs": np.stack([1 - p1, p1], axis=1).tolist()}
    sets = _seed_copies(good, "good") + _seed_copies(worse, "worse")
    rows = {r["interval"]: r for r in bench.measure_paired(sets, sizes=(50,), draws=2, pooled_draws=60,
                                                            n_bootstrap=200) if r["seeds"] == "seeds pooled"}
    assert rows["bootstrap + mover"]["draws"] == 60 and rows["bootstrap + mover"]["pairs"] == 1
    assert rows["bootstrap, seeds apart"]["coverage"] < 0.85 <= rows["bootstrap"]["coverage"]
    assert rows["bootstrap + delong"]["coverage"] >= 0.9 and rows["bootstrap + mover"]["coverage"] >= 0.9
