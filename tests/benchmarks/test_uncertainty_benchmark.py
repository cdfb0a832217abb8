"""The uncertainty benchmark's statistics (paired bootstrap, verdicts, the default) and its docs section.

No training here: records are synthetic, so each property is checked against a known answer.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.test_make_docs import _load


@pytest.fixture(scope="module")
def bench():
    return _load("uncertainty")


def _cases(n: int, rng: np.random.Generator, informative: bool) -> dict:
    """Per-case arrays of a source: 20% errors; an informative source is least confident on them."""
    correct = rng.random(n) > 0.2
    noise = rng.random(n)
    confidence = np.where(correct, 0.6 + 0.4 * noise, 0.5 + 0.1 * noise) if informative else 0.5 + 0.5 * noise
    return {"confidence": confidence, "correct": correct, "entropy": 1 - confidence}


def _records(bench, informative: str, cost: float = 1.1, seeds=(0, 1, 2)) -> list[dict]:
    """Softmax and MC-head records for two datasets; `informative` says which source ranks errors."""
    rng = np.random.default_rng(0)
    records = []
    for dataset in ("pneumoniamnist", "tb"):
        for seed in seeds:
            good = _cases(400, rng, True)
            bad = {**good, "confidence": 0.5 + 0.5 * rng.random(400)}
            bad["entropy"] = 1 - bad["confidence"]
            per_source = {"softmax": good if informative == "softmax" else bad,
                          "mc_head": good if informative == "mc_head" else bad}
            for source, cases in per_source.items():
                from dualfuse.uncertainty.selective import aurc

                records.append({
                    "dataset": dataset, "seed": seed, "source": source, "predictor": "1x0" if source == "softmax"
                    else "1x30", "aurc": aurc(cases["confidence"], cases["correct"]), "error_auroc": 0.5,
                    "accuracy": float(cases["correct"].mean()), "accuracy_at_90": 0.9, "ece": 0.02, "nll": 0.3,
                    "conformal_coverage": 0.9, "conformal_below_target": False, "conformal_set_size": 1.0,
                    "referred": 0.1, "cost": 1.0 if source == "softmax" else cost,
                    "per_case": {k: v.tolist() for k, v in cases.items()},
                    "source_px": 28, "img_size": 32, "epochs": 4, "epochs_trained": 4, "max_train_cases": 1000,
                    "n_cal": 100, "n_test": 400, "device_name": "Test CPU", "train_command": "dualfuse train ...",
                })
    return records


def test_rank_auroc_equals_sklearn(bench):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    entropy, correct = np.round(rng.random(300), 2), rng.random(300) > 0.3  # rounding makes ties
    assert bench._error_auroc(entropy, correct) == pytest.approx(roc_auc_score(~correct, entropy), abs=1e-12)


def test_paired_difference_of_identical_sources_is_exactly_zero(bench):
    records = [r for r in _records(bench, "mc_head") if r["source"] == "softmax"]
    pairs = bench.reference_pairs(records, records)
    diff = bench.paired_difference(pairs, lambda c: bench._aurc(c["confidence"], c["correct"]), n_bootstrap=50)
    assert {k: diff[k] for k in ("delta", "ci_low", "ci_high", "seeds")} == {"delta": 0.0, "ci_low": 0.0, "ci_high": 0.0,
                                                                        "seeds": 6}
    assert bench.verdict(diff, lower_is_better=True) == "tie"


@pytest.mark.parametrize("informative, expected", [("mc_head", "win"), ("softmax", "loss")])
def test_a_source_that_ranks_errors_wins_and_one_that_does_not_loses(bench, informative, expected):
    summary = bench.summarise(_records(bench, informative), n_bootstrap=200)
    for dataset in ("pneumoniamnist", "tb"):
        entry = summary[dataset]["mc_head"]
        assert entry["aurc_vs_softmax"]["verdict"] == expected
        assert entry["error_auroc_vs_softmax"]["verdict"] == expected
        assert entry["aurc"]["sd"] is not None and entry["seeds"] == [0, 1, 2]


def test_default_is_the_winner_within_the_cost_budget_else_softmax(bench):
    assert bench.choose_default(bench.summarise(_records(bench, "mc_head"), 100))["source"] == "mc_head"
    expensive = bench.choose_default(bench.summarise(_records(bench, "mc_head", cost=bench.COST_LIMIT + 1), 100))
    assert expensive["source"] == "softmax" and "mc_head" not in expensive["candidates"]
    assert bench.choose_default(bench.summarise(_records(bench, "softmax"), 100))["source"] == "softmax"
    # One win and one loss is no reason to leave the one-pass softmax.
    mixed = [r for r in _records(bench, "mc_head") if r["dataset"] == "tb"] + \
        [r for r in _records(bench, "softmax") if r["dataset"] == "pneumoniamnist"]
    chosen = bench.choose_default(bench.summarise(mixed, 100))
    assert chosen["candidates"]["mc_head"]["wins"] == chosen["candidates"]["mc_head"]["losses"] == 1
    assert chosen["source"] == "softmax"


def test_docs_render_the_uncertainty_section_with_the_paired_cis(bench, tmp_path: Path):
    make_docs = _load("make_docs")
    records = _records(bench, "mc_head")
    summary = bench.summarise(records, 100)
    payload = {"records": records, "summary": summary, "default": bench.choose_default(summary)}
    (tmp_path / "uncertainty_cpu.json").write_text(json.dumps(payload))
    out = tmp_path / "benchmarks.md"
    assert make_docs.main(["--results", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Uncertainty sources" in text and "**Default chosen from it: MC dropout, head**" in text
    diff = summary["tb"]["mc_head"]["aurc_vs_softmax"]
    assert f"{diff['delta']:+.4f} [{diff['ci_low']:+.4f}, {diff['ci_high']:+.4f}] win" in text
    assert "28-px source pixels resized to 32 px, 1000 training cases, 4 epochs" in text


def test_seeds_on_one_test_split_share_each_draw_of_cases(bench):
    """Three seeds scored on the same cases (as PneumoniaMNIST's fixed test split): with case ids stored
    they are one test set, drawn together; without (older records) apart, and then about 1/sqrt(3) as
    wide, since three seeds that predict alike are counted as three test sets."""
    records = _records(bench, "mc_head")
    ids = [f"case{i}" for i in range(400)]
    same = {}
    for record in records:  # every seed predicts alike: each source's seed-0 arrays, with one id per case
        cases = same.setdefault((record["dataset"], record["source"]), record["per_case"])
        record["per_case"] = {**cases, "case_id": ids, "label": [0] * 400}
    together = bench.summarise(records, n_bootstrap=400)["pneumoniamnist"]["mc_head"]["aurc_vs_softmax"]
    for record in records:
        record["per_case"] = {k: v for k, v in record["per_case"].items() if k != "case_id"}
    apart = bench.summarise(records, n_bootstrap=400)["pneumoniamnist"]["mc_head"]["aurc_vs_softmax"]
    assert together["seeds_resampled"] == "together" and apart["seeds_resampled"] == "apart"
    assert together["delta"] == pytest.approx(apart["delta"])
    ratio = (together["ci_high"] - together["ci_low"]) / (apart["ci_high"] - apart["ci_low"])
    assert 1.4 < ratio < 2.1  # sqrt(3) = 1.73
