"""The temperature benchmark: random calibration splits of stored predictions, and its docs section.

No training: the stored probabilities are the truth (each label drawn from them), so T = 1 is the right
temperature. The model is right about 95% of the time, so 20 calibration cases are often all right, and
plain temperature scaling then sharpens to its bound.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks.test_make_docs import _load


@pytest.fixture(scope="module")
def bench():
    return _load("temperature")


def _per_case(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    confidence = rng.uniform(0.9, 1.0, n)
    predicted = rng.integers(0, 2, n)  # both classes predicted, so a stratified draw can be all right
    label = np.where(rng.random(n) < confidence, predicted, 1 - predicted)  # right with probability c: calibrated
    probs = np.where(predicted[:, None] == np.arange(2), confidence[:, None], 1 - confidence[:, None])
    return {"case_id": [f"c{i}" for i in range(n)], "label": label.tolist(), "probs": probs.tolist()}


def _write_results(folder: Path) -> None:
    folder.mkdir()
    accuracy = {"records": [{"row": "toy-dcat", "seed": seed, "device": "cpu",
                             "tasks": {"label": {"dataset": "toy", "per_case": _per_case(800, seed)}}}
                            for seed in range(3)]}
    (folder / "accuracy_cpu.json").write_text(json.dumps(accuracy))


def test_the_prior_keeps_small_calibration_splits_from_sharpening_to_the_bound(bench, tmp_path, capsys):
    _write_results(tmp_path / "results")
    out = tmp_path / "temperature_cpu.json"
    assert bench.main(["--results", str(tmp_path / "results"), "--draws", "20", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["n_cal"], r["rule"]): r for r in result["rows"]}
    assert {n for n, _ in rows} == {20, 50, 100, 200}  # 500 needs 2000 cases
    before, now, none = (rows[(20, rule)] for rule in (bench.BEFORE, bench.NOW, bench.NONE))
    assert before["case_sets"] == 3 and before["draws"] == 3 * 20
    assert before["all_right_rate"] > 0.15  # .95^20: about a third of the draws
    assert before["near_bound_rate"] >= before["all_right_rate"] * 0.9 and now["near_bound_rate"] == 0
    # Wrong cases called certain: plain scaling about doubles them; the prior (still sharpening an all-right
    # draw somewhat) halves that; no scaling is right here, as the probabilities are the truth.
    assert before["mean_wrong_certain"] > 1.5 * now["mean_wrong_certain"] > 1.5 * none["mean_wrong_certain"]
    assert now["mean_nll"] < before["mean_nll"] / 2
    assert none["temperature_median"] == 1.0 and none["near_bound_rate"] == 0
    paired = {(p["n_cal"], p["versus"], p["score"]): p for p in result["paired"]}
    assert paired[(20, bench.BEFORE, "nll")]["verdict"] == "better"
    assert paired[(20, bench.BEFORE, "nll")]["ci_high"] < 0
    # With 200 calibration cases the prior barely moves T: the two rules score alike.
    assert abs(paired[(200, bench.BEFORE, "nll")]["difference"]) < 0.005
    assert rows[(200, bench.NOW)]["temperature_median"] == pytest.approx(1.0, abs=0.25)
    # how far the prior moves T: far on 20 cases (the all-right draws), barely on 200
    assert rows[(20, bench.NOW)]["t_change_p95"] > 1.0 > 0.01 > rows[(200, bench.NOW)]["t_change_median"]
    assert rows[(20, bench.BEFORE)]["t_change_median"] is None
    shown = capsys.readouterr().out
    assert "temperature fitted on n calibration cases" in shown and "wrote" in shown

    docs = _load("make_docs")
    section = "\n".join(docs.temperature_section(docs.load_temperature(out.parent)))
    assert "## Temperature on a small calibration split" in section
    assert f"| 20 | {bench.BEFORE} | 3 (60) |" in section
    assert "How far the prior moves the temperature plain scaling fits" in section and "200 cases 0." in section
    assert "Reproduce (temperature_cpu.json): `python benchmarks/temperature.py --draws 20 --seed 0`" in section


def test_no_stored_predictions_is_one_line(bench, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert bench.main(["--results", str(tmp_path / "empty"), "--out", str(tmp_path / "t.json")]) == 2
    assert "no per-case predictions" in capsys.readouterr().err
