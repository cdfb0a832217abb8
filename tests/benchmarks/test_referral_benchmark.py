"""The referral benchmark: random calibration splits of stored predictions, and its docs section.

No training: the stored predictions are synthetic with a known answer. Confidence c ~ U(0.5, 1) and
P(right | c) = c, so the cases above a threshold t are (1 + t) / 2 accurate.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.test_make_docs import _load


@pytest.fixture(scope="module")
def bench():
    return _load("referral")


def _per_case(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.5, 1, n)
    label = (rng.random(n) >= confidence).astype(int)  # the predicted class (0) is right with probability c
    return {"case_id": [f"c{i}" for i in range(n)], "label": label.tolist(),
            "probs": np.stack([confidence, 1 - confidence], axis=1).tolist()}


def _write_results(folder: Path) -> None:
    folder.mkdir()
    accuracy = {"records": [{"row": "toy-dcat", "seed": seed, "device": "cpu",
                             "tasks": {"label": {"dataset": "toy", "per_case": _per_case(600, seed)}}}
                            for seed in (0, 1)]}
    cv = {"records": [{"row": "toy-cv", "seed": 0, "device": "cpu", "dataset": "toy", "per_case": _per_case(400, 7)}]}
    (folder / "accuracy_cpu.json").write_text(json.dumps(accuracy))
    (folder / "cv_cpu.json").write_text(json.dumps(cv))


def test_plain_thresholds_break_their_promise_and_certified_ones_do_not(bench, tmp_path, capsys):
    _write_results(tmp_path / "results")
    out = tmp_path / "referral_cpu.json"
    assert bench.main(["--results", str(tmp_path / "results"), "--draws", "20", "--out", str(out)]) == 0
    rows = {(r["target"], r["n_cal"], r["rule"]): r for r in json.loads(out.read_text())["rows"]}
    assert {n for _, n, _ in rows} == {50, 100, 200}  # 500 needs 1000 cases
    assert rows[(0.9, 50, "plain")]["case_sets"] == 3 and rows[(0.9, 200, "plain")]["draws"] == 3 * 20
    for (target, n_cal, rule), row in rows.items():
        if rule == "plain":  # it picks the boundary: about half its thresholds fall short
            assert row["failure_rate"] > 0.2 and row["mean_coverage"] > 0, row
        else:
            assert row["failure_rate"] <= 0.05 and row["guarantee"] == 0.95, row
            assert row["mean_coverage"] <= rows[(target, n_cal, "plain")]["mean_coverage"]
    # The oracle: the held-out cases above t = 0.8 are 90% accurate, so about 40% can be decided.
    assert rows[(0.9, 200, "plain")]["mean_best_coverage"] == pytest.approx(0.4, abs=0.1)
    # Each search alone with the whole budget; together each has half, and the larger coverage is kept.
    for target, n_cal in {(t, n) for t, n, _ in rows}:
        both = rows[(target, n_cal, "certified")]["mean_coverage"]
        assert both <= max(rows[(target, n_cal, rule)]["mean_coverage"] for rule in ("binary search", "fixed sequence"))
    # Paired on the same draws: one difference per (target, size) and search, its CI around it.
    paired = json.loads(out.read_text())["paired"]
    assert len(paired) == 2 * len({(t, n) for t, n, _ in rows})
    for pair in paired:
        mine = rows[(pair["target"], pair["n_cal"], "certified")]["mean_coverage"]
        theirs = rows[(pair["target"], pair["n_cal"], pair["versus"])]["mean_coverage"]
        assert pair["ci_low"] <= pair["coverage_difference"] <= pair["ci_high"] and pair["case_sets"] == 3
        assert pair["coverage_difference"] == pytest.approx(mine - theirs, abs=1e-9)  # equal draws per set
    printed = capsys.readouterr().out
    assert "certified" in printed and "fixed sequence" in printed and f"wrote {out}" in printed
    # The coverage target: here the predicted class's conformal set holds both classes for about a third of
    # the cases, so deciding 90% is out of reach. Chosen on confidence alone, the threshold decides fewer
    # than asked without a word; among the one-class sets it decides at least as many and warns.
    coverage = {(r["n_cal"], r["rule"]): r for r in json.loads(out.read_text())["coverage_rows"]}
    assert set(coverage) == {(n, rule) for n in (50, 100, 200) for rule in ("confidence only", "one-class sets")}
    for n_cal in (50, 100, 200):
        alone, among = coverage[(n_cal, "confidence only")], coverage[(n_cal, "one-class sets")]
        assert alone["warned_rate"] == 0 and alone["silent_shortfall_rate"] > 0.9 and alone["mean_share"] < 0.8
        assert among["warned_rate"] > 0.9 and among["silent_shortfall_rate"] < 0.1 and among["draws"] == 3 * 20
    for pair in json.loads(out.read_text())["coverage_paired"]:
        assert pair["versus"] == "confidence only" and pair["ci_low"] >= 0  # never fewer decisions, draw by draw


def test_a_reachable_coverage_is_kept_on_held_out_cases(bench):
    """3 classes, a fifth of the cases nearly tied between two classes: enough one-class sets for 90%."""
    rng = np.random.default_rng(0)
    sets = []
    for seed in (0, 1):
        y = rng.integers(0, 3, 1000)
        logits = rng.normal(0, 1, (1000, 3))
        logits[np.arange(1000), y] += rng.uniform(2, 6, 1000)
        tied, other = rng.random(1000) < 0.2, (y + 1) % 3
        logits[tied, other[tied]] = logits[tied, y[tied]] + rng.normal(0, 0.3, tied.sum())
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        sets.append({"source": "toy", "row": "toy", "seed": seed, "task": "label", "dataset": "toy",
                     "probs": probs, "labels": y})
    _, _, coverage, _ = bench.measure(sets, cal_sizes=(200,), targets=(0.9,), draws=10)
    among = next(r for r in coverage if r["rule"] == "one-class sets")
    assert among["warned_rate"] < 0.2 and among["mean_share_unwarned"] == pytest.approx(0.9, abs=0.02)


def test_docs_section_shows_every_row_and_how_to_reproduce(bench, tmp_path):
    _write_results(tmp_path / "results")
    bench.main(["--results", str(tmp_path / "results"), "--draws", "2", "--out", str(tmp_path / "referral_cpu.json")])
    make_docs = _load("make_docs")
    lines = make_docs.referral_section(make_docs.load_referral(tmp_path))
    assert lines[0] == "## Referral thresholds for a target accuracy"
    assert sum(line.startswith("| 0.90 | 50 | ") for line in lines) == 4 + 2  # 4 rules; 2 paired differences
    assert any(line.startswith("| 0.90 | 50 | binary search | 3 | ") and line.endswith("** |") for line in lines)
    assert any("python benchmarks/referral.py --draws 2 --seed 0" in line for line in lines)
    assert any(line.startswith("**For a target coverage** (`evaluate` without `--target-accuracy`: decide 90%")
               for line in lines)
    assert sum(line.startswith(("| 50 | confidence only | 3 (6) | ", "| 50 | one-class sets | 3 (6) | "))
               for line in lines) == 2
    assert sum(line.startswith("| 50 | 3 | +0.0") for line in lines) == 1  # the paired share difference


def test_no_stored_predictions_is_a_one_line_error(bench, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert bench.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "r.json")]) == 2
    assert "no per-case predictions" in capsys.readouterr().err and not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("guarantee", [0.95, None])
def test_the_benchmark_decides_as_evaluate_does(bench, guarantee):
    """Temperature, conformal sets and threshold fitted on the calibration part, as `calibrate` fits them."""
    from dualfuse.evaluation.predictions import Predictions, Predictor, refer_flags
    from dualfuse.evaluation.uncertainty_report import calibrate

    per_case = _per_case(400, 3)
    case_set = {"probs": np.asarray(per_case["probs"]), "labels": np.asarray(per_case["label"])}
    cal = np.zeros(400, dtype=bool)
    cal[np.random.default_rng(0).choice(400, 200, replace=False)] = True
    confidence, correct, decidable = bench.decision_inputs(case_set, cal)
    rule = "certified" if guarantee else "plain"
    mine = bench.threshold(confidence[cal & decidable], correct[cal & decidable], 0.9, rule)

    logits = np.log(case_set["probs"])
    part = Predictions([str(i) for i in range(200)], [""] * 200, {"label": logits[cal]},
                       labels={"label": case_set["labels"][cal]})
    stored = calibrate(part, "label", Predictor(1, 0), target_accuracy=0.9, guarantee=guarantee)
    assert mine == pytest.approx(stored["referral"]["threshold"])
    rest = Predictions([str(i) for i in range(200)], [""] * 200, {"label": logits[~cal]},
                       labels={"label": case_set["labels"][~cal]})
    probs = rest.using(Predictor(1, 0), {"label": stored["temperature"]}).probs("label")
    decided = decidable[~cal] & (confidence[~cal] >= mine)
    assert np.array_equal(decided, ~refer_flags(probs, stored))
