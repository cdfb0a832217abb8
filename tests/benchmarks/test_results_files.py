"""Results files keep each record's per-case predictions in a gzip file of their own (benchmarks/_common.py):
the paired comparisons must read back exactly what was written, and a new (row, seed) must not rewrite
megabytes of other records."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from tests.benchmarks.test_make_docs import _load

REPO = Path(__file__).resolve().parents[2]


def _record(row: str, seed: int, probs: list[float]) -> dict:
    return {"row": row, "seed": seed, "device": "cpu", "out_of_fold": {"roc_auc": {"value": 0.8}},
            "tasks": {"label": {"auc": 0.8, "per_case": {"case_id": ["a", "b"], "label": [0, 1],
                                                         "probs": [[1 - p, p] for p in probs]}}},
            "reference_per_case": {"label": [0, 1]}}


def _payload(*records: dict) -> dict:
    return {"benchmark": "cv", "records": list(records)}


def test_per_case_predictions_live_beside_the_results_and_read_back_whole(tmp_path: Path):
    common = _load("_common")
    out = tmp_path / "cv_cpu.json"
    records = [_record("tb-dcat", 0, [0.2, 0.9]), _record("tb-dcat", 1, [0.4, 0.6])]
    snapshot = json.loads(json.dumps(records))
    common.write_json(out, _payload(*records))

    assert records == snapshot  # the caller's records keep their predictions
    text = out.read_text()
    assert "probs" not in text and "reference_per_case" not in text
    files = sorted((tmp_path / "cases" / "cv_cpu").iterdir())
    assert [f.name.split("-")[:3] for f in files] == [["tb", "dcat", "0"], ["tb", "dcat", "1"]]
    stored = json.loads(gzip.decompress(files[0].read_bytes()))
    assert set(stored) == {"tasks/label/per_case", "reference_per_case"}
    assert common.read_json(out, None) == _payload(*snapshot)
    # make_docs reads the same way: its paired comparisons see every case
    assert _load("make_docs").load_cv(tmp_path) == snapshot


def test_unchanged_records_keep_their_files_and_replaced_ones_leave_none_behind(tmp_path: Path):
    common = _load("_common")
    out = tmp_path / "cv_cpu.json"
    common.write_json(out, _payload(_record("tb-dcat", 0, [0.2, 0.9]), _record("tb-dcat", 1, [0.4, 0.6])))
    before = {f.name: f.read_bytes() for f in (tmp_path / "cases" / "cv_cpu").iterdir()}

    data = common.read_json(out, None)
    common.write_json(out, data)  # what run_and_merge does for every new row: read, merge, write
    assert {f.name: f.read_bytes() for f in (tmp_path / "cases" / "cv_cpu").iterdir()} == before

    data["records"][1] = _record("tb-dcat", 1, [0.3, 0.7])  # seed 1 rerun (--redo)
    common.write_json(out, data)
    after = {f.name: f.read_bytes() for f in (tmp_path / "cases" / "cv_cpu").iterdir()}
    assert len(after) == 2
    kept = [name for name in after if name.startswith("tb-dcat-0-")]
    assert len(kept) == 1 and after[kept[0]] == before[kept[0]]
    (added,) = set(after) - set(before)  # seed 1's new predictions: a new file, the stale one deleted
    assert added.startswith("tb-dcat-1-") and not [n for n in before if n.startswith("tb-dcat-1-") and n in after]
    assert common.read_json(out, None)["records"][1]["tasks"]["label"]["per_case"]["probs"][0] == [0.7, 0.3]


def test_a_missing_case_file_is_one_line_naming_it(tmp_path: Path):
    common = _load("_common")
    out = tmp_path / "cv_cpu.json"
    common.write_json(out, _payload(_record("herlev-dcat", 2, [0.5, 0.5])))
    (case_file,) = (tmp_path / "cases" / "cv_cpu").iterdir()
    case_file.unlink()
    with pytest.raises(common.BenchmarkError) as error:
        common.read_json(out, None)
    message = str(error.value)
    assert "\n" not in message and "herlev-dcat seed 2" in message and case_file.name in message


def test_files_without_records_are_plain_json(tmp_path: Path):
    common = _load("_common")
    stamp = tmp_path / "stamp.json"
    common.write_json(stamp, {"per_case": [1, 2], "argv": ["--seed", "0"]})
    assert json.loads(stamp.read_text()) == {"per_case": [1, 2], "argv": ["--seed", "0"]}
    assert not (tmp_path / "cases").exists()


def test_every_committed_results_file_reads_back_with_its_cases():
    """A commit that adds a record but forgets its case file would break every paired CI in the docs."""
    common = _load("_common")
    results = REPO / "docs" / "results"
    referenced = set()
    for path in sorted(results.glob("*.json")):
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or "records" not in raw:
            continue
        referenced |= {r[common.CASES_FILE_KEY] for r in raw["records"] if common.CASES_FILE_KEY in r}
        assert common.read_json(path, None)["records"] is not None
    on_disk = {f.relative_to(results).as_posix() for f in results.glob("cases/*/*.json.gz")}
    assert referenced and on_disk == referenced  # nothing missing, nothing orphaned


def _per_case_probs(node, trail=()):
    """Every stored `per_case` probability table in a record, with where it sits."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "per_case" and isinstance(value, dict) and "probs" in value:
                yield "/".join(trail), value["probs"]
            else:
                yield from _per_case_probs(value, (*trail, key))


def test_every_committed_per_case_probability_is_a_number():
    """Probabilities stored as text order as text ("9.5e-05" after "0.9"): a reader that forgets to
    convert them gets wrong AUCs without an error, as the zip rows' paired CIs once did."""
    common = _load("_common")
    checked = 0
    for path in sorted((REPO / "docs" / "results").glob("*.json")):
        for record in (common.read_json(path, {}) or {}).get("records", []) if path.is_file() else []:
            for where, probs in _per_case_probs(record):
                bad = [p for row in probs for p in row if isinstance(p, bool) or not isinstance(p, (int, float))]
                assert not bad, f"{path.name}: {record.get('row')} seed {record.get('seed')} {where}: {bad[0]!r}"
                checked += 1
    assert checked > 100
