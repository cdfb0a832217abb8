"""The cross-validation benchmark: its rows parse and name real data, one tiny row runs end to end and
resumes, and a number measured below a target's resolution is never reported as meeting or missing it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dualfuse.config import expand_path
from tests.benchmarks.test_make_docs import _load

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    return _load("cv")


@pytest.fixture(scope="module")
def make_docs():
    return _load("make_docs")


@pytest.mark.realdata
def test_every_row_parses_and_names_real_data(bench, data_root, monkeypatch, tmp_path):
    monkeypatch.setenv("DUALFUSE_DATA", str(data_root))
    monkeypatch.chdir(REPO_ROOT)
    rows = bench.load_rows()
    kinds = {}
    for row in rows:
        if "model.init_from" in row["overrides"]:  # the trunk is made by benchmarks/pretrain.py: stand in for it
            row = row | {"overrides": {**row["overrides"], "model.init_from": str(tmp_path)}}
        config = bench.parse_row(row, 0, tmp_path / row["id"])
        (name, source), = config.data.sources.items()
        assert name == row["dataset"] and expand_path(source.path, name).exists(), row["id"]
        assert config.model.kwargs["in_chans"] == source.channels, f"{row['id']}: a grey model on RGB data or back"
        assert config.data.mode == "single" and config.train.members == 1 and not config.data.max_eval_cases
        assert row["folds"] == 5 and bench.SOURCE_PX[row["dataset"]]
        kinds.setdefault(row["dataset"], set()).add(config.model.name)
    assert kinds == dict.fromkeys(("tb", "herlev", "ham10000"), {"timm_classifier", "dcat", "concat_fusion", "drifa_net"})
    assert {r["id"].split("-", 1)[1] for r in rows if r["dataset"] == "herlev"} >= {"resnet18-recipe", "resnet18-pretrained"}


def test_a_changed_row_starts_its_cv_folder_over(bench, tmp_path):
    out = tmp_path / "seed0"
    bench.prepare(out, ["--folds", "5"], redo=False)
    (out / "fold_0").mkdir(parents=True)
    bench.prepare(out, ["--folds", "5"], redo=False)
    assert (out / "fold_0").is_dir()  # same arguments: cross_validate resumes it
    bench.prepare(out, ["--folds", "5", "--train.epochs", "3"], redo=False)
    assert not out.exists()


def test_weights_describe_what_init_from_holds_not_its_path(bench, tmp_path):
    """The docs' weights column names the pretraining (backbone, datasets, budget), not a seed template."""
    from dualfuse.config import parse_run_args

    run = tmp_path / "pretrain"
    run.mkdir()
    (run / "config.yaml").write_text(
        "model: {name: multitask, kwargs: {trunk: timm_classifier, trunk_kwargs: {backbone: resnet18}}}\n"
        "data: {sources: {tb: {}, ham10000: {}}, max_train_cases: 600}\ntrain: {epochs: 6}\n")
    (run / "model").mkdir()
    (tmp_path / "w.safetensors").write_bytes(b"")
    described = {}
    for source in (run, run / "model", tmp_path / "w.safetensors", None):
        extra = ["--model.init_from", str(source)] if source else []
        config, _ = parse_run_args(["--config", str(REPO_ROOT / "configs/cpu/herlev.yaml"),
                                    "--config", str(REPO_ROOT / "configs/cpu/resnet18.yaml"),
                                    *extra, "--output", str(tmp_path / "out")])
        described[source] = bench.weights(config)
    assert described[run] == described[run / "model"] == "resnet18 trained on tb, ham10000 (6 epochs, ≤ 600 images each)"
    assert described[tmp_path / "w.safetensors"] == "init_from w.safetensors"
    assert described[None] == "scratch"


@pytest.mark.realdata
def test_tiny_herlev_row_end_to_end_resumes_and_renders(bench, make_docs, data_root, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DUALFUSE_DATA", str(data_root))
    monkeypatch.chdir(REPO_ROOT)
    out = tmp_path / "results" / "cv_cpu.json"
    argv = ["--rows", "herlev-resnet18", "--seeds", "0", "--folds", "2", "--threads", "1", "--out", str(out),
            "--runs-dir", str(tmp_path / "runs"), "--set", "data.max_train_cases=40", "train.epochs=1",
            "data.img_size=32", "eval.n_bootstrap=100"]
    assert bench.main(argv) == 0
    (record,) = _load("_common").read_json(out, None)["records"]
    assert (record["row"], record["seed"], record["dataset"], record["folds"]) == ("herlev-resnet18", 0, "herlev", 2)
    assert (record["source_px"], record["img_size"], record["weights"], record["epochs"]) == (40, 32, "scratch", 1)
    oof = record["out_of_fold"]
    assert oof["n"] == record["cases"]["folds"] > 800  # every folded image scored once, not just 40
    for key in ("roc_auc", "balanced_accuracy", "accuracy"):
        assert oof[key]["ci_low"] <= oof[key]["value"] <= oof[key]["ci_high"]
        assert record["per_fold"][key]["folds"] == 2
    assert record["ensemble_test"] is None and record["epochs_trained"] == [1, 1] and record["train_seconds"] > 0
    assert record["folds_resumed"] == []  # so wall_seconds covers every fold
    cases = record["per_case"]  # each folded image's out-of-fold probabilities, for paired comparisons
    assert len(cases["case_id"]) == len(set(cases["case_id"])) == len(cases["probs"]) == oof["n"]
    assert set(cases["label"]) == set(range(7)) and all(abs(sum(p) - 1) < 1e-4 for p in cases["probs"])
    assert "--rows herlev-resnet18 --seeds 0 --folds 2" in record["command"]
    assert record["cv_command"].startswith("dualfuse cv --folds 2 --config configs/cpu/herlev.yaml")

    capsys.readouterr()
    assert bench.main(argv) == 0  # resume: same command, nothing retrained
    assert "already in" in capsys.readouterr().out
    assert _load("_common").read_json(out, None)["records"] == [record]

    text = make_docs.render([], [], cv=make_docs.load_cv(out.parent))
    assert "## Cross-validation (out of fold)" in text and "### Herlev pap smear" in text
    line = next(x for x in text.splitlines() if x.startswith("| resnet18 | CPU | 40 → 32, ≤ 40 training images per fold |"))
    assert f"{oof['roc_auc']['value']:.3f}" in line and line.count("|") == 14
    assert make_docs.cv_target_status("herlev", [record]) in line  # Herlev's target states no resolution


def _cv_record(dataset, img_size, auc, balanced, seed=0):
    metric = {"value": auc, "ci_low": auc - 0.01, "ci_high": min(auc + 0.01, 1.0)}
    out_of_fold = {"roc_auc": metric, "balanced_accuracy": {"value": balanced, "ci_low": None, "ci_high": None},
                   "accuracy": metric, "n": 600}
    return {"row": f"{dataset}-resnet18", "seed": seed, "dataset": dataset, "model": "resnet18", "device": "cpu",
            "device_name": "Test CPU", "torch": "2.x", "source_px": 128, "img_size": img_size, "weights": "scratch",
            "epochs": 20, "early_stopping_patience": None, "epochs_trained": [20] * 5, "folds": 5,
            "max_train_cases": None, "test_fraction": 0.0, "out_of_fold": out_of_fold, "per_fold": {},
            "ensemble_test": {"roc_auc": metric, "n": 120} if dataset == "tb" else None,
            "train_seconds": 100.0, "command": f"python benchmarks/cv.py --rows {dataset}-resnet18"}


@pytest.mark.parametrize("dataset", ["tb", "ham10000"])
def test_a_32px_number_neither_meets_nor_misses_a_128px_target(make_docs, dataset):
    good, poor = _cv_record(dataset, 32, 0.999, 0.95), _cv_record(dataset, 32, 0.5, 0.1)
    for record in (good, poor):
        assert make_docs.cv_target_status(dataset, [record]) == "not measured at 128 px"
        rows = [x for x in make_docs.cv_section([record]) if x.startswith("| resnet18 |")]
        assert "not measured at 128 px" in rows[0] and " met " not in rows[0] and "missed" not in rows[0]
    assert make_docs.cv_target_status(dataset, [_cv_record(dataset, 128, 0.999, 0.95)]) == "met"
    assert make_docs.cv_target_status(dataset, [_cv_record(dataset, 128, 0.5, 0.1)]) == "**missed**"
    both = [_cv_record(dataset, 128, 0.999, 0.95), _cv_record(dataset, 128, 0.5, 0.1, seed=1)]
    assert make_docs.cv_target_status(dataset, both) == "**missed**"  # judged on the mean over seeds


def test_rows_sharing_folds_are_paired_case_by_case(make_docs):
    rng = __import__("numpy").random.default_rng(0)
    labels = rng.integers(0, 2, 300).tolist()
    def cases(noise):  # the label's probability, blurred by `noise`
        p = [min(max(y + rng.normal(0, noise), 0.0), 1.0) for y in labels]
        return {"case_id": [f"c{i}" for i in range(300)], "patient_id": [""] * 300, "label": labels,
                "probs": [[1 - q, q] for q in p]}
    records = []
    for seed in (0, 1):
        for model, noise in (("resnet18", 0.9), ("dcat", 0.3), ("resnet18 + small-data recipe", 0.9)):
            record = _cv_record("herlev", 32, 0.8, 0.7, seed=seed) | {"model": model, "row": f"herlev-{model}"}
            records.append(record | {"per_case": cases(noise)})
    odd = _cv_record("herlev", 64, 0.8, 0.7) | {"model": "resnet18 in-domain pretrained", "per_case": cases(0.1)}
    text = "\n".join(make_docs.cv_section([*records, odd]))
    assert "### Paired, out of fold" in text
    dcat = next(x for x in text.splitlines() if "| dcat − resnet18 |" in x)
    assert "| 128 → 32 | 0, 1 |" in dcat and "| **win** | +" in dcat  # better out-of-fold accuracy too
    recipe = next(x for x in text.splitlines() if "| resnet18 + small-data recipe − resnet18 |" in x)
    assert "| **tie** |" in recipe
    assert "in-domain pretrained − resnet18" not in text  # another input size: never paired


def test_out_of_fold_pairs_show_a_balanced_loss_that_trades_accuracy_for_balanced_accuracy(make_docs):
    """On a set where one class is most cases, the balanced-loss row wins on balanced accuracy while it
    loses plain accuracy: the paired table must show both, each with its own CI and verdict."""
    rng = np.random.default_rng(0)
    labels = rng.choice(3, 400, p=[0.8, 0.1, 0.1])
    onehot = np.eye(3)[labels]

    def record(model, probs, seed):
        base = _cv_record("ham10000", 32, 0.8, 0.5, seed=seed)
        return base | {"model": model, "row": f"ham10000-{model}",
                       "per_case": {"case_id": [str(i) for i in range(400)], "label": labels.tolist(),
                                    "probs": probs.tolist()}}

    plain = 0.4 * onehot + 0.6 * np.array([1.0, 0, 0])  # always class 0: accuracy ~.75, balanced accuracy 1/3
    right = rng.random((400, 1)) < np.where(labels == 0, 0.5, 0.9)[:, None]  # the rare classes mostly right
    balanced = np.where(right, onehot, np.roll(onehot, 1, axis=1))  # accuracy ~.58, balanced accuracy ~.77
    # both seeds predict alike on the same 400 cases: the evidence of one seed, resampled as one test set
    records = [record(m, p, s) for s in (0, 1) for m, p in (("resnet18", plain), ("resnet18 + balanced loss", balanced))]
    lines = make_docs.cv_section(records)
    header = next(x for x in lines if x.startswith("| dataset | comparison |"))
    assert header.endswith("Δbalanced ACC [95% CI], verdict |")
    row = next(x for x in lines if "| resnet18 + balanced loss − resnet18 |" in x)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert row.count("|") == header.count("|")
    assert cells[-2].startswith("-") and cells[-2].endswith(" loss")
    assert cells[-1].startswith("+") and cells[-1].endswith(" win")
