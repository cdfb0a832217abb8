"""The benchmark docs generator and the accuracy row table (fast: no training, no torch in make_docs)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from dualfuse.config import parse_run_args

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _metric(value, low=None, high=None):
    return {"value": value, "ci_low": low, "ci_high": high}


def _record(row, model, seed, dataset, auc, acc, ci=None, device="cpu"):
    low, high = ci or (None, None)
    return {
        "row": row, "seed": seed, "suite": "cpu", "model": model, "device": device,
        "device_name": "Test CPU, 2 cores", "torch": "2.x", "platform": "Linux", "img_size": 32, "epochs": 8,
        "epochs_trained": 7, "train_seconds": 100.0 + seed, "eval_seconds": 5.0, "mc_samples": 30,
        "command": f"python benchmarks/accuracy.py --rows {row} --seeds {seed}", "train_command": "dualfuse train",
        "tasks": {"label": {"dataset": dataset, "n_test": 624, "auc": _metric(auc, low, high),
                            "acc": _metric(acc, low, high), "f1": _metric(0.8), "mc": {"auc": auc},
                            "temperature": 1.2, "aurc": 0.05, "ece": 0.08, "ece_temperature": 0.03}},
    }


@pytest.fixture()
def results(tmp_path: Path) -> Path:
    records = [
        _record("pneumoniamnist-dcat", "dcat", 0, "pneumoniamnist", 0.970, 0.900),
        _record("pneumoniamnist-dcat", "dcat", 1, "pneumoniamnist", 0.960, 0.880),
        _record("breastmnist-resnet18", "resnet18", 0, "breastmnist", 0.890, 0.850, ci=(0.84, 0.93)),
    ]
    records[2]["data_note"] = "images re-encoded for transfer"
    (tmp_path / "accuracy_cpu.json").write_text(json.dumps({"records": records}))
    speed = {"machine": {"device_name": "Test CPU, 2 cores", "torch": "2.x"}, "command": "python benchmarks/speed.py",
             "repeats": 5, "rows": [{"model": "dcat", "px": 64, "train_images_per_s": 12.5, "infer_images_per_s": 40.0,
                                     "train_peak_mb": 300.0, "infer_peak_mb": None, "mc_fast_ratio": 1.25,
                                     "mc_naive_ratio": 20.0, "forward_overhead": 1.1, "train_overhead": 1.2,
                                     "mc_samples": 30}]}
    (tmp_path / "speed_cpu.json").write_text(json.dumps(speed))
    return tmp_path


def test_make_docs_renders_rows_anchors_and_comparison(results: Path, tmp_path: Path):
    make_docs = _load("make_docs")
    out = tmp_path / "benchmarks.md"
    assert make_docs.main(["--results", str(results), "--out", str(out)]) == 0
    text = out.read_text()
    # Published anchors sit in the tables next to our rows.
    assert "| *ResNet-18 @28 (published)* | – | – | – | – | 28 px, 100 epochs | – | *0.944* | *0.854* |" in text
    assert "*Google AutoML Vision (published)*" in text and "*0.991*" in text and "*0.919*" in text
    # Each row says what the model saw: source pixels → input, modality, weights, epochs cap and run.
    # Two seeds: mean ± sd, then each seed with its own CI; one seed: value with its CI.
    assert "| dcat | CPU | 28 → 32 | single | scratch | 8 fixed, ran 7 | 2 | 0.965 ± 0.007 | 0.890 ± 0.014 |" in text
    assert "| dcat | CPU | 1 | 7 | 0.960 | 0.880 |" in text
    assert "0.890 [0.840, 0.930]" in text
    assert "0.080 → 0.030" in text
    # Targets: the measured mean against the number, with what the model saw.
    assert "| PneumoniaMNIST | dcat | AUC | ≥ 0.975 | 0.965 ± 0.007 | 2 | CPU, 28 → 32 px, scratch, 8 fixed, " \
           "ran 7 epochs | **missed** |" in text
    assert "| Brain tumor MRI (4 classes) | dcat | ACC | ≥ 0.960 | – | 0 | – | not measured |" in text
    # Every run's command and machine are listed.
    assert "`python benchmarks/accuracy.py --rows pneumoniamnist-dcat --seeds 1` — Test CPU, 2 cores" in text
    assert "torch 2.x (note A)" in text and "Note A: images re-encoded for transfer" in text
    # Against a published number only a CI can speak: without one (these two seeds have none) a higher
    # mean beats nothing; the anchor inside the CI cannot be told apart; outside it, beaten or not.
    dcat_line = next(line for line in text.splitlines() if line.startswith("- **PneumoniaMNIST, dcat (CPU)"))
    assert "cannot be told apart from ResNet-18 @28 AUC (0.965 vs 0.944)" in dcat_line
    assert "Google AutoML Vision AUC (0.965 vs 0.991)" in dcat_line and "Beats" not in dcat_line
    breast_line = next(line for line in text.splitlines() if line.startswith("- **BreastMNIST, resnet18 (CPU)"))
    assert breast_line.startswith("- **BreastMNIST, resnet18 (CPU)**: cannot be told apart from ResNet-18 @28 AUC "
                                  "(0.890 vs 0.901); ResNet-18 @28 ACC (0.850 vs 0.863); Google AutoML Vision AUC "
                                  "(0.890 vs 0.919); Google AutoML Vision ACC (0.850 vs 0.861) (within our 95% CIs). "
                                  "Ours: 28-px source at 32 px, 8 fixed, ran 7 epochs, from scratch, a budget sized for a "
                                  "CPU, one seed; theirs:")

    # Speed table, missing values as a dash.
    assert "| dcat | 64 | 12.5 | 40.0 | 300 | – | 1.25 | 20.00 | 1.10 | 1.20 |" in text
    # Idempotent: a second run writes the same bytes.
    assert make_docs.main(["--results", str(results), "--out", str(out)]) == 0
    assert out.read_text() == text


def test_an_anchor_is_beaten_only_below_every_seeds_ci():
    make_docs = _load("make_docs")

    def entry(*cis):
        return {"runs": [{"numbers": {"auc": _metric(0.9, low, high)}} for low, high in cis]}

    assert make_docs._against_anchor(entry((0.88, 0.93), (0.89, 0.95)), "auc", 0.87) == "above"
    assert make_docs._against_anchor(entry((0.88, 0.93), (0.86, 0.95)), "auc", 0.87) == "inside"  # one seed spans it
    assert make_docs._against_anchor(entry((0.88, 0.93), (0.89, 0.95)), "auc", 0.96) == "below"
    assert make_docs._against_anchor(entry((0.88, 0.93), (0.89, 0.97)), "auc", 0.96) == "inside"
    assert make_docs._against_anchor(entry((None, None)), "auc", 0.5) == "inside"  # no CI: a mean alone decides nothing


def test_rows_of_another_protocol_are_never_averaged_and_labels_say_what_the_model_saw(tmp_path: Path):
    make_docs = _load("make_docs")
    old = _record("breastmnist-dcat", "dcat", 0, "breastmnist", 0.80, 0.75)
    new = [_record("breastmnist-dcat", "dcat", seed, "breastmnist", 0.90, 0.85, ci=(0.85, 0.95)) for seed in (0, 1)]
    for seed, record in enumerate(new):
        record.update(epochs=30, early_stopping_patience=6, epochs_trained=12 + 5 * seed, seed=seed + 1,
                      source_px={"breastmnist": 28}, modality="single", weights="init_from runs/pretrain")
    gpu = _record("brain_mri-dcat", "dcat", 0, "brain_mri", 0.95, 0.80, device="cuda")
    gpu.update(img_size=64, data_note="brain MRI re-encoded to 128 px JPEG for transfer")
    (tmp_path / "accuracy_cpu.json").write_text(json.dumps({"records": [old, *new, gpu]}))
    text = make_docs.render(make_docs.load_results(tmp_path)[0], [])
    # the fixed-epoch record keeps its own row; the two early-stopped seeds are averaged together
    assert "| dcat | CPU | 28 → 32 | single | scratch | 8 fixed, ran 7 | 1 | 0.800 |" in text
    assert "| dcat | CPU | 28 → 32 | single | init_from runs/pretrain | ≤ 30, ran 12–17 | 2 | 0.900 ± 0.000 |" in text
    assert "| dcat | CPU | 2 | 17 | 0.900 [0.850, 0.950] | 0.850 [0.850, 0.950] |" in text
    # a GPU run of that time read the 128-px transfer copy, not the 224-px source
    assert "| dcat | GPU | 128 → 64 | single | scratch | 8 fixed, ran 7 |" in text


def test_balanced_accuracy_of_older_records_and_targets_stated_at_one_resolution(tmp_path: Path):
    make_docs = _load("make_docs")
    ham = []
    for seed, img_size in ((0, 128), (1, 128), (2, 64), (3, 64), (4, 64)):
        record = _record("ham10000-dcat", "dcat", seed, "ham10000", 0.85, 0.80)
        record["img_size"] = img_size
        # 3 of class 0 right, 1 of 2 of class 1 right: accuracy .8, balanced accuracy (1 + .5) / 2 = .75;
        # the older records hold no `bacc`, so it comes from their test cases.
        record["tasks"]["label"]["per_case"] = {
            "case_id": list("abcde"), "patient_id": list("abcde"), "label": [0, 0, 0, 1, 1],
            "probs": [[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.4, 0.6], [0.6, 0.4]]}
        ham.append(record)
    ham[1]["tasks"]["label"]["bacc"] = _metric(0.65, 0.5, 0.8)  # a newer record: its own number is used
    (tmp_path / "accuracy_cpu.json").write_text(json.dumps({"records": ham}))
    text = make_docs.render(make_docs.load_results(tmp_path)[0], [])
    # the 128-px target reads only the two 128-px seeds, not the three 64-px ones (more seeds, wrong size)
    assert "| HAM10000 dermoscopy (7 classes) | dcat | balanced ACC | ≥ 0.700 | 0.700 ± 0.071 | 2 | " \
           "CPU, 128 → 128 px, scratch, 8 fixed, ran 7 epochs | met |" in text
    assert "| 3 | 0.850 ± 0.000 | 0.800 ± 0.000 | 0.750 ± 0.000 |" in text  # the 64-px row's balanced ACC column
    assert "| TB chest X-ray (Shenzhen + Montgomery) | dcat | AUC | ≥ 0.980 | – | 0 | – | not measured |" in text


def test_a_target_prefers_the_run_on_all_training_images_and_says_what_each_saw(tmp_path: Path):
    make_docs = _load("make_docs")
    subset = _record("brain_mri-dcat", "dcat", 0, "brain_mri", 0.95, 0.80)  # older: no max_train_cases field
    subset["img_size"] = 64
    subset["train_command"] = "dualfuse train --config configs/cpu/dcat_brain_mri.yaml --train.seed 0 && x"
    full = _record("brain_mri64-dcat", "dcat", 0, "brain_mri", 0.99, 0.97) | {"max_train_cases": None}
    full["img_size"] = 64
    (tmp_path / "accuracy_cpu.json").write_text(json.dumps({"records": [subset, full]}))
    assert make_docs.train_cases(subset) == (True, 1500)  # read from the committed config it names
    assert make_docs.train_cases(_record("x", "dcat", 0, "tb", 0.9, 0.9)) == (False, None)  # cannot tell
    text = make_docs.render(make_docs.load_results(tmp_path)[0], [])
    # one seed each: the run on all 5501 images answers the target, not the 1500-image subset listed first
    assert "| Brain tumor MRI (4 classes) | dcat | ACC | ≥ 0.960 | 0.970 | 1 | CPU, 224 → 64 px, scratch, " \
           "8 fixed, ran 7 epochs, all training images | met |" in text
    # the results table labels each run with the training images it had
    assert "| dcat | CPU | 224 → 64, 1500 training images | single | scratch | 8 fixed, ran 7 | 1 | 0.950 |" in text
    assert "| dcat | CPU | 224 → 64, all training images | single | scratch | 8 fixed, ran 7 | 1 | 0.990 |" in text


def test_paired_lines_of_two_protocols_say_which_is_which(tmp_path: Path):
    """The same two models on a subset and on every training image: two paired lines a reader can tell apart."""
    make_docs = _load("make_docs")
    ids = [str(i) for i in range(60)]  # enough cases that no bootstrap draw lacks a class
    cases = {"case_id": ids, "patient_id": ids, "label": [0, 0, 0, 1, 1, 1] * 10}
    records = []
    for cap in (1000, None):
        for row, model, good in (("dcat", "dcat", 0.9), ("resnet18", "resnet18", 0.6)):
            record = _record(f"pneumoniamnist{'' if cap else '_all'}-{row}", model, 0, "pneumoniamnist", good, 0.8)
            record["max_train_cases"] = cap
            record["tasks"]["label"]["per_case"] = cases | {
                "probs": ([[good, 1 - good]] * 3 + [[1 - good, good], [1 - good, good], [good, 1 - good]]) * 10}
            records.append(record)
    (tmp_path / "accuracy_cpu.json").write_text(json.dumps({"records": records}))
    text = make_docs.render(make_docs.load_results(tmp_path)[0], [])
    lines = [line for line in text.splitlines() if "| dcat − resnet18 |" in line]
    assert len(lines) == 2
    assert any("| 28 → 32, 1000 training images | 0 |" in line for line in lines)
    assert any("| 28 → 32, all training images | 0 |" in line for line in lines)


def test_make_docs_fails_in_one_line_without_results(tmp_path: Path, capsys):
    make_docs = _load("make_docs")
    assert make_docs.main(["--results", str(tmp_path), "--out", str(tmp_path / "x.md")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_accuracy_rows_reference_configs_that_parse(monkeypatch):
    accuracy = _load("accuracy")
    monkeypatch.setenv("DUALFUSE_DATA", "/nonexistent/data")  # parsing never touches the data
    monkeypatch.chdir(BENCHMARKS.parent)
    rows = accuracy.load_rows()
    ids = {row["id"] for row in rows}
    models = {row["model"].split()[0] for row in rows if row["suite"] == "cpu"}
    assert {"dcat", "drifa_net", "resnet18", "efficientnet_b4", "concat_fusion"} <= models
    for dataset in ("pneumoniamnist", "breastmnist", "brain_mri"):
        assert {f"{dataset}-{m}" for m in ("dcat", "drifa_net", "resnet18", "efficientnet_b4", "concat_fusion")} <= ids
    assert any(row["suite"] == "paper" for row in rows)
    for row in rows:
        for config in row["configs"]:
            assert (BENCHMARKS.parent / config).is_file(), f"{row['id']}: {config} does not exist"
        config, _ = parse_run_args(accuracy.train_argv(row, 0, Path("/tmp/run"), None, None))
        assert config.train.seed == 0
        expected_tasks = set(row["datasets"]) - {None}
        if expected_tasks:  # multitask rows: zip sources must match the declared task -> dataset map
            assert config.data.mode == "zip"
            assert {f"{name}_label" for name in config.data.sources} == expected_tasks
        else:
            assert len(config.data.sources) == 1


def test_accuracy_row_selection():
    accuracy = _load("accuracy")
    rows = accuracy.load_rows()
    picked = accuracy.select_rows(rows, ids=["breastmnist-dcat", "pneumoniamnist-dcat"])
    assert [r["id"] for r in picked] == ["breastmnist-dcat", "pneumoniamnist-dcat"]
    brain = accuracy.select_rows(rows, datasets=["brain_mri"], suite="cpu")
    assert {r["id"] for r in brain} >= {"brain_mri-dcat", "zip-drifa_net"}
    assert all(r["suite"] == "cpu" for r in brain)
    with pytest.raises(accuracy.BenchmarkError, match="unknown row"):
        accuracy.select_rows(rows, ids=["nope"])


def test_a_matrix_resumes_only_records_of_the_same_protocol(tmp_path: Path):
    accuracy = _load("accuracy")
    row = accuracy.select_rows(accuracy.load_rows(), ids=["breastmnist-dcat"])[0]
    args = accuracy.parse_args(["--threads", "1", "--runs-dir", str(tmp_path)])
    run_dir = tmp_path / row["id"] / "seed0"
    record = {"row": row["id"], "seed": 0, "device": "cpu", "mc_samples": 30,
              "train_command": f"dualfuse train {accuracy.shlex.join(accuracy.train_argv(row, 0, run_dir, None, None))} "
                               f"&& dualfuse evaluate {run_dir} --mc-samples 30"}
    assert accuracy.already_measured([record], row, 0, "cpu", args)
    assert not accuracy.already_measured([record], row, 1, "cpu", args)  # another seed
    assert not accuracy.already_measured([record], row, 0, "cuda", args)  # another device
    changed = row | {"overrides": {**row["overrides"], "train.epochs": 99}}  # rows.yaml changed since
    assert not accuracy.already_measured([record], changed, 0, "cpu", args)
    assert not accuracy.already_measured([record], row, 0, "cpu", accuracy.parse_args(["--mc-samples", "5"]))
    two_threads = accuracy.parse_args(["--threads", "2", "--runs-dir", str(tmp_path)])  # threads: speed only
    assert accuracy.already_measured([record], row, 0, "cpu", two_threads)


def test_parallel_lanes_claim_each_run_once(tmp_path: Path):
    accuracy = _load("accuracy")
    row = {"id": "breastmnist-dcat"}
    assert accuracy.claim(tmp_path / "claims", row, 0)
    assert not accuracy.claim(tmp_path / "claims", row, 0)
    assert accuracy.claim(tmp_path / "claims", row, 1)
    assert accuracy.claim(None, row, 0)


def test_pretraining_section_states_what_each_arm_saw_and_the_paired_verdict(tmp_path: Path):
    make_docs = _load("make_docs")
    common = {"heldout": "tb", "trunk": "resnet18", "seed": 0, "device_name": "Test CPU, 2 cores", "torch": "2.x",
              "command": "python benchmarks/pretrain.py --heldout tb --trunks resnet18 --seeds 0", "max_train_cases": 1000,
              "epochs": 15, "in_chans": 1, "img_size": 64}
    records = [common | {"arm": "pretrain", "epochs_trained": 6, "max_train_cases": 600,
                         "source_px": {"pneumoniamnist": 28, "ham10000": 128},
                         "val_auc": {"pneumoniamnist_label": 0.91, "ham10000_label": 0.62}},
               common | {"arm": "scratch", "epochs_trained": 15}, common | {"arm": "finetune", "epochs_trained": 15}]
    records.append(common | {"arm": "scratch", "epochs_trained": 15, "trunk": "dcat", "device_name": "Other CPU, 2 threads",
                             "command": "python benchmarks/pretrain.py --heldout tb --trunks dcat --seeds 0 --threads 2"})
    summary = [{"heldout": "tb", "trunk": "resnet18", "seeds": [0], "scratch_auc": 0.80, "finetune_auc": 0.86,
                "delta": 0.06, "ci_low": 0.01, "ci_high": 0.11, "verdict": "win", "pretrained_on": ["pneumoniamnist", "ham10000"],
                "source_px": {"tb": 128}, "img_size": 64}]
    (tmp_path / "pretrain_cpu.json").write_text(json.dumps({"records": records, "summary": summary}))
    text = make_docs.pretrain_section(make_docs.load_pretrain(tmp_path))
    assert ("| TB chest X-ray (Shenzhen + Montgomery) | resnet18 | 128 → 64 px, 1 channel(s), ≤ 1000 training images, "
            "15 epochs (ran 15), CPU | pneumoniamnist (28 px), ham10000 (128 px); 6 epochs, ≤ 600 images each; "
            "its heads' val AUC median 0.77 (0.62–0.91) | 0 | "
            "0.800 | 0.860 | +0.060 [+0.010, +0.110] | **win** |") in text
    assert ("Machine (resnet18): Test CPU, 2 cores, torch 2.x. Reproduce one cell: "
            "`python benchmarks/pretrain.py --heldout tb --trunks resnet18 --seeds 0`.") in text
    assert "Machine (dcat): Other CPU, 2 threads, torch 2.x. Reproduce one cell: `python benchmarks/pretrain.py " \
           "--heldout tb --trunks dcat --seeds 0 --threads 2`." in text  # each trunk's own machine
    assert ("- **resnet18**: fine-tuning from the in-domain trunk beats scratch on 1 of 1 held-out dataset(s) "
            "(1 win(s), 0 tie(s), 0 loss(es)). Not held out yet: PneumoniaMNIST, BreastMNIST, Brain tumor MRI "
            "(4 classes), Lung CT IQ-OTH/NCCD (3 classes), HAM10000 dermoscopy (7 classes), Herlev pap smear "
            "(7 classes).") in text
    # A trunk pretrained with zip_length max (configs/pretrain/longer.yaml) says its smaller sets were cycled.
    records[0] |= {"zip_length": "max", "max_train_cases": 1000}
    (tmp_path / "pretrain_cpu.json").write_text(json.dumps({"records": records, "summary": summary}))
    text = make_docs.pretrain_section(make_docs.load_pretrain(tmp_path))
    assert ("; 6 epochs, ≤ 1000 images each, the smaller sets cycled to the largest one's length; its heads' val AUC"
            in "\n".join(text))
    variants = [{"heldout": "tb", "variant": "resnet18_longer", "base": "resnet18", "seeds": [0, 1], "variant_auc": 0.87,
                 "base_auc": 0.85, "delta": 0.02, "ci_low": -0.01, "ci_high": 0.05, "verdict": "tie",
                 "bootstrap_over": "patients"}]
    (tmp_path / "pretrain_cpu.json").write_text(json.dumps({"records": records, "summary": summary, "variants": variants}))
    text = make_docs.pretrain_section(make_docs.load_pretrain(tmp_path))
    assert ("- **resnet18_longer** against **resnet18**, both fine-tuned on TB chest X-ray (Shenzhen + Montgomery) "
            "(seeds 0, 1, the same test cases; bootstrap over patients): AUC 0.870 against 0.850, "
            "ΔAUC +0.020 [-0.010, +0.050] **tie**.") in text
    variants[0] |= {"variant_machines": ["CPU B, 2 threads"], "base_machines": ["CPU A, 1 threads"]}
    (tmp_path / "pretrain_cpu.json").write_text(json.dumps({"records": records, "summary": summary, "variants": variants}))
    line = next(x for x in make_docs.pretrain_section(make_docs.load_pretrain(tmp_path)) if "resnet18_longer** against" in x)
    assert line.endswith("**tie**. Confounded: resnet18_longer ran on CPU B, 2 threads, resnet18 on CPU A, 1 threads; "
                         "runs of one config on two machines differ too, so this difference is not the trunk's alone.")


def test_pretraining_verdicts_name_where_pretraining_does_not_beat_scratch():
    make_docs = _load("make_docs")
    summary = [{"heldout": name, "trunk": "resnet18", "verdict": verdict}
               for name, verdict in zip(make_docs.DATASET_ORDER, ("tie", "loss", "win", "tie", "tie", "tie", "tie"))]
    summary.append({"heldout": "breastmnist", "trunk": "dcat", "verdict": "tie"})
    resnet, dcat = make_docs.pretrain_verdicts(summary)
    assert resnet.startswith("- **resnet18**: fine-tuning from the in-domain trunk beats scratch on 1 of 7 held-out "
                             "dataset(s) (1 win(s), 5 tie(s), 1 loss(es)). It does not on: PneumoniaMNIST (tie), "
                             "BreastMNIST (loss), Brain tumor MRI (4 classes) (tie),")
    assert "Not held out yet" not in resnet
    assert dcat.startswith("- **dcat**: fine-tuning from the in-domain trunk beats scratch on 0 of 1 held-out dataset(s)")
    assert dcat.endswith("Herlev pap smear (7 classes).") and "Not held out yet: PneumoniaMNIST, TB" in dcat


def test_ci_coverage_section_shows_each_interval_with_its_coverage(tmp_path: Path):
    make_docs = _load("make_docs")
    rows = [{"n_test": 20, "metric": "roc_auc", "dataset": "all", "interval": interval, "case_sets": 3, "draws": 60,
             "coverage": coverage, "coverage_ci": [coverage - 0.05, min(1.0, coverage + 0.05)], "truth_above": 0.01,
             "truth_below": 0.99 - coverage, "median_width": width}
            for interval, coverage, width in (("bootstrap", 0.7, 0.1), ("widened", 0.97, 0.2))]
    rows.append(rows[0] | {"dataset": "toy"})  # per-dataset rows stay in the JSON
    metrics = {"command": "python benchmarks/ci_coverage.py --parts metrics --draws 20", "device_name": "Test CPU",
               "seconds": 9.0, "rows": rows}
    (tmp_path / "ci_coverage_cpu.json").write_text(json.dumps({"metrics": metrics}))
    text = "\n".join(make_docs.ci_coverage_section(make_docs.load_ci_coverage(tmp_path)))
    assert "| 20 | roc_auc | percentile bootstrap alone (before) | 3 | 60 | 0.700 [0.650, 0.750] | 0.010 / 0.290 | 0.100 |" \
        in text
    assert "| 20 | roc_auc | **the two joined (what `evaluate` prints)** | 3 | 60 | 0.970 [0.920, 1.000] |" in text
    assert text.count("| 20 | roc_auc |") == 2 and "The paired differences" not in text
    assert ("Reproduce (ci_coverage_cpu.json): `python benchmarks/ci_coverage.py --parts metrics --draws 20` — Test CPU; "
            "no training, 9.0 s.") in text
    paired = [{"n_test": 50, "seeds": seeds, "interval": interval, "pairs": 4, "draws": 20, "coverage": 0.95,
               "coverage_ci": [0.75, 0.999], "truth_above": 0.05, "truth_below": 0.0, "median_width": 0.1,
               "decided": 0.25, "wrong_verdicts": 0.0}
              for seeds in ("one seed", "seeds pooled") for interval in ("bootstrap, seeds apart", "bootstrap + delong",
                                                                         "bootstrap + mover")]
    (tmp_path / "ci_coverage_cpu.json").write_text(json.dumps({"metrics": metrics, "paired": {
        "command": "python benchmarks/ci_coverage.py --parts paired", "device_name": "Test CPU", "seconds": 5.0,
        "rows": paired}}))
    text = "\n".join(make_docs.ci_coverage_section(make_docs.load_ci_coverage(tmp_path)))
    assert "| 20 | roc_auc | **the two joined" in text  # the single-model table stays beside the paired one
    assert ("| 50 | seeds pooled | bootstrap, each seed's cases drawn apart (before) | 4 | 20 | 0.950 [0.750, 0.999] | "
            "0.050 / 0.000 | 0.100 | 25.0% | 0.0% |") in text
    printed = {"delong": "DeLong", "mover": "MOVER"}[make_docs.SCORE_METHOD]
    assert f"| 50 | one seed | **bootstrap + {printed} (what this page prints)** | 4 | 20 |" in text
    assert text.count("(what this page prints)") == 2  # one seed and pooled; the other union is named plainly
    assert "`python benchmarks/ci_coverage.py --parts paired` — Test CPU; no training, 5.0 s." in text
    accuracy = [row | {"interval": interval, "metric": "accuracy difference"} for row in paired[:2]
                for interval in ("bootstrap + wald", "bootstrap + mover")]
    (tmp_path / "ci_coverage_cpu.json").write_text(json.dumps({"metrics": metrics, "paired": {
        "command": "python benchmarks/ci_coverage.py --parts paired", "device_name": "Test CPU", "seconds": 5.0,
        "rows": paired}, "paired_accuracy": {"command": "python benchmarks/ci_coverage.py --parts paired_accuracy",
                                             "device_name": "Test CPU", "seconds": 3.0, "rows": accuracy}}))
    text = "\n".join(make_docs.ci_coverage_section(make_docs.load_ci_coverage(tmp_path)))
    auc_table, accuracy_table = text.split("*AUC difference*")[1].split("*accuracy difference*")
    assert f"**bootstrap + {printed} (what this page prints)**" in auc_table
    names = {"mover": "MOVER", "wald": "Wald"}
    assert f"**bootstrap + {names[make_docs.ACCURACY_METHOD]} (what this page prints)**" in accuracy_table
    assert accuracy_table.count("(what this page prints)") == 2 and accuracy_table.count("| 50 |") == 4
    assert "--parts paired_accuracy` — Test CPU; no training, 3.0 s." in accuracy_table


def test_paired_accuracy_differences_join_the_bootstrap_with_the_closed_form_interval():
    """ΔACC and Δbalanced ACC are printed with the bootstrap's CI joined with ACCURACY_METHOD's interval,
    both kept; ΔAUC with SCORE_METHOD's; seeds on one test split share each draw."""
    import numpy as np

    make_docs = _load("make_docs")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)

    def entry(skill: float) -> dict:
        runs = []
        for seed in (0, 1):
            logits = np.eye(3)[labels] * skill + rng.normal(0, 1, (60, 3))
            probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
            runs.append({"seed": seed, "numbers": {"per_case": {
                "case_id": [f"c{i}" for i in range(60)], "label": labels.tolist(), "probs": probs.tolist()}}})
        return {"runs": runs}

    a, b = entry(2.0), entry(1.0)
    diff = make_docs.paired_differences(a, b, 200)
    assert diff["score_method"] == make_docs.SCORE_METHOD and diff["seeds_resampled"] == "together"
    for acc in (diff["acc"], make_docs.paired_difference(a, b, 200, metric=make_docs.balanced_accuracy)):
        assert acc["score_method"] == make_docs.ACCURACY_METHOD and acc["seed_list"] == [0, 1]
        assert acc["ci_low"] == min(acc["bootstrap_ci"][0], acc["score_ci"][0])
        assert acc["ci_high"] == max(acc["bootstrap_ci"][1], acc["score_ci"][1])
        assert acc["ci_low"] < acc["delta"] < acc["ci_high"]
