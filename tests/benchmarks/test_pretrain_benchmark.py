"""The leave-one-dataset-out pretraining benchmark's pure parts: the runs it asks for, and its statistics.

No training here: the argument lists are parsed as `dualfuse train` parses them, and the paired
statistics run on synthetic per-case predictions with a known answer.
"""
from __future__ import annotations

import numpy as np
import pytest

from dualfuse.config import parse_run_args
from tests.benchmarks.test_make_docs import _load


@pytest.fixture(scope="module")
def bench():
    return _load("pretrain")


def _parse(argv):
    config, _ = parse_run_args(argv)
    return config


def test_pretraining_never_opens_the_held_out_set(bench, tmp_path):
    config = bench.load_trunk_config("resnet18")
    sets = bench.parse_sets(["train.epochs=2", "pretrain.data.max_train_cases=50"])
    run = _parse(bench.pretrain_argv("resnet18", config, "tb", 3, tmp_path / "pre", sets))
    assert run.model.name == "multitask" and run.data.mode == "zip"
    assert set(run.data.sources) == set(config["data"]["sources"]) - {"tb"}
    assert bench.pretrain_datasets(config, "tb") == [n for n in config["data"]["sources"] if n != "tb"]
    assert (run.train.epochs, run.data.max_train_cases, run.train.seed) == (2, 50, 3)
    assert run.output == str(tmp_path / "pre") and "test" not in run.eval.splits


@pytest.mark.parametrize(("trunk", "heldout", "model", "in_chans"), [
    ("resnet18", "breastmnist", "timm_classifier", 1), ("resnet18", "ham10000", "timm_classifier", 3),
    ("dcat", "tb", "dcat", 1)])
def test_scratch_and_finetune_differ_only_in_their_start(bench, tmp_path, trunk, heldout, model, in_chans):
    config = bench.load_trunk_config(trunk)
    sets = bench.parse_sets(["train.epochs=2", "target.train.epochs=3", "data.img_size=32"])
    (tmp_path / "pre").mkdir()
    scratch = _parse(bench.target_argv(trunk, config, heldout, 1, tmp_path / "out", sets))
    finetune = _parse(bench.target_argv(trunk, config, heldout, 1, tmp_path / "out", sets, init_from=tmp_path / "pre",
                                        split_file=tmp_path / "split.csv"))
    assert scratch.model.name == model and scratch.model.kwargs["in_chans"] == in_chans
    assert scratch.model.kwargs == {**config["model"]["kwargs"]["trunk_kwargs"], "in_chans": in_chans, "pretrained": False}
    assert list(scratch.data.sources) == [heldout] and scratch.data.mode == "single"
    assert scratch.data.max_eval_cases is None and scratch.eval.splits == ["val", "test"]
    assert (scratch.train.epochs, scratch.data.img_size, scratch.train.monitor) == (3, 32, "val/auc")
    assert scratch.model.init_from is None and finetune.model.init_from == str(tmp_path / "pre")
    assert finetune.data.split_file == str(tmp_path / "split.csv")
    finetune.model.init_from, finetune.data.split_file = None, None
    assert finetune == scratch


def test_the_longer_trunk_differs_from_its_base_only_in_pretraining(bench, tmp_path):
    """resnet18_longer = pretrain/resnet18.yaml + pretrain/longer.yaml: more images and epochs for the
    trunk, the same sets, and runs on the held-out set identical to resnet18's (only the start differs)."""
    base, longer = bench.load_trunk_config("resnet18"), bench.load_trunk_config("resnet18_longer")
    assert longer["data"]["sources"] == base["data"]["sources"] and longer["model"] == base["model"]
    sets = bench.parse_sets([])
    pre = {trunk: _parse(bench.pretrain_argv(trunk, config, "tb", 0, tmp_path / "pre", sets))
           for trunk, config in (("resnet18", base), ("resnet18_longer", longer))}
    assert (pre["resnet18"].train.epochs, pre["resnet18"].data.max_train_cases, pre["resnet18"].data.zip_length) == (6, 600, "min")
    assert (pre["resnet18_longer"].train.epochs, pre["resnet18_longer"].data.max_train_cases,
            pre["resnet18_longer"].data.zip_length) == (10, 1000, "max")
    pre["resnet18_longer"].train.epochs, pre["resnet18_longer"].data.max_train_cases = 6, 600
    pre["resnet18_longer"].data.zip_length = "min"
    assert pre["resnet18_longer"] == pre["resnet18"]
    target = {trunk: _parse(bench.target_argv(trunk, config, "tb", 0, tmp_path / "out", sets))
              for trunk, config in (("resnet18", base), ("resnet18_longer", longer))}
    target["resnet18_longer"].data.zip_length = "min"  # read only in zip mode; these runs are single
    assert target["resnet18_longer"] == target["resnet18"]


@pytest.mark.parametrize(("items", "message"), [
    (["epochs"], "KEY=VALUE"), (["model.kwargs.drop_rate=0.2"], "only data.*, train.*, eval.*"),
    (["target.epochs=2"], "only data"), (["pretrain.model.name=dcat"], "only data")])
def test_bad_set_items_are_one_line_errors(bench, items, message):
    with pytest.raises(bench.BenchmarkError, match=message):
        bench.parse_sets(items)


def _per_case(labels, probs, ids=None):
    ids = ids or [f"c{i}" for i in range(len(labels))]
    return {"case_id": ids, "patient_id": [f"p{i // 2}" for i in range(len(labels))], "label": list(labels),
            "probs": [[1 - p, p] for p in probs]}


def _records(rng, finetune_noise: float, scratch_noise: float, seeds=(0, 1, 2)) -> list[dict]:
    records = []
    for seed in seeds:
        labels = rng.integers(0, 2, 200)
        for arm, noise in (("finetune", finetune_noise), ("scratch", scratch_noise)):
            scores = np.clip(labels * 0.5 + 0.25 + rng.normal(0, noise, 200), 0, 1)
            records.append({"heldout": "tb", "trunk": "resnet18", "arm": arm, "seed": seed, "img_size": 64,
                            "source_px": {"tb": 128}, "pretrained_on": ["pneumoniamnist"] if arm == "finetune" else [],
                            "per_case": _per_case(labels, scores)})
    return records


def test_summary_says_win_only_when_the_paired_ci_excludes_zero(bench):
    rng = np.random.default_rng(0)
    better = bench.summarise(_records(rng, 0.1, 0.4), n_bootstrap=200)[0]
    assert better["verdict"] == "win" and better["ci_low"] > 0 and better["seeds"] == [0, 1, 2]
    assert better["finetune_auc"] > better["scratch_auc"] and better["pretrained_on"] == ["pneumoniamnist"]
    # the CI is the union of the bootstrap's and the MOVER interval, both kept; each seed drew its own test cases
    assert better["ci_low"] == min(better["bootstrap_ci"][0], better["score_ci"][0])
    assert better["ci_high"] == max(better["bootstrap_ci"][1], better["score_ci"][1])
    assert better["seeds_resampled"] == "apart"
    same = bench.summarise(_records(rng, 0.3, 0.3), n_bootstrap=200)[0]
    assert same["verdict"] == "tie" and same["ci_low"] < 0 < same["ci_high"]
    worse = bench.summarise(_records(rng, 0.4, 0.1), n_bootstrap=200)[0]
    assert worse["verdict"] == "loss"


def _variant_records(rng, variant_noise: float, base_noise: float) -> list[dict]:
    """The base trunk's three arms per seed (_records) and its variant's, on the same test cases."""
    records = []
    for seed in (0, 1, 2):
        labels = rng.integers(0, 2, 200)
        for trunk, noise in (("resnet18", base_noise), ("resnet18_longer", variant_noise)):
            for arm in ("scratch", "finetune"):
                scores = np.clip(labels * 0.5 + 0.25 + rng.normal(0, noise if arm == "finetune" else 0.3, 200), 0, 1)
                records.append({"heldout": "tb", "trunk": trunk, "arm": arm, "seed": seed, "img_size": 64,
                                "source_px": {"tb": 128}, "pretrained_on": ["pneumoniamnist"] if arm == "finetune" else [],
                                "per_case": _per_case(labels, scores)})
    return records


def test_a_variant_trunk_is_compared_with_its_base_fine_tuned_on_the_same_cases(bench):
    rng = np.random.default_rng(1)
    (better,) = bench.compare_variants(_variant_records(rng, 0.1, 0.4), n_bootstrap=200)
    assert (better["variant"], better["base"], better["heldout"], better["seeds"]) == ("resnet18_longer", "resnet18",
                                                                                       "tb", [0, 1, 2])
    assert better["verdict"] == "win" and better["variant_auc"] > better["base_auc"]
    assert better["bootstrap_over"] == "patients"
    (worse,) = bench.compare_variants(_variant_records(rng, 0.4, 0.1), n_bootstrap=200)
    assert worse["verdict"] == "loss"
    (same,) = bench.compare_variants(_variant_records(rng, 0.3, 0.3), n_bootstrap=200)
    assert same["verdict"] == "tie"
    # Only seeds both trunks were fine-tuned with are paired; no base, no comparison.
    records = [r for r in _variant_records(rng, 0.1, 0.4) if not (r["trunk"] == "resnet18" and r["seed"] == 2)]
    assert bench.compare_variants(records, n_bootstrap=50)[0]["seeds"] == [0, 1]
    assert bench.compare_variants([r for r in records if r["trunk"] != "resnet18"], n_bootstrap=50) == []
    assert bench.results(records, n_bootstrap=50)["variants"][0]["seeds"] == [0, 1]
    for record in records:  # each trunk's runs on its own machine: the comparison names both
        record["device_name"] = "CPU A, 1 threads" if record["trunk"] == "resnet18" else "CPU B, 2 threads"
    (apart,) = bench.compare_variants(records, n_bootstrap=50)
    assert (apart["variant_machines"], apart["base_machines"]) == (["CPU B, 2 threads"], ["CPU A, 1 threads"])


def test_arms_are_paired_by_case_id_and_must_score_the_same_cases(bench):
    labels, probs = [0, 1, 1, 0], [0.1, 0.9, 0.6, 0.3]
    scratch = _per_case(labels, probs)
    shuffled = _per_case([0, 1, 1, 0][::-1], probs[::-1], ["c3", "c2", "c1", "c0"])
    a, b, groups = bench.align(shuffled, scratch, "tb")
    np.testing.assert_array_equal(a["probs"], b["probs"])
    assert groups == scratch["patient_id"]  # two cases per patient: resampled together
    one_case_each = {k: v for k, v in scratch.items() if k != "patient_id"}
    assert bench.align(one_case_each, one_case_each, "tb")[2] is None
    with pytest.raises(bench.BenchmarkError, match="different test cases"):
        bench.align(_per_case(labels[:3], probs[:3]), scratch, "tb")


def test_a_cell_is_done_only_with_all_three_arms_from_the_same_command(bench):
    command = bench.reproduce_command("resnet18", "tb", 0, ["train.epochs=2"])
    records = [{"trunk": "resnet18", "heldout": "tb", "seed": 0, "arm": arm, "command": command}
               for arm in ("pretrain", "scratch")]
    assert not bench.cell_done(records, "resnet18", "tb", 0, command)
    records.append({**records[-1], "arm": "finetune"})
    assert bench.cell_done(records, "resnet18", "tb", 0, command)
    assert not bench.cell_done(records, "resnet18", "tb", 0, bench.reproduce_command("resnet18", "tb", 0, []))


def test_trunks_only_trains_the_pretraining_runs_and_records_nothing(bench, tmp_path, monkeypatch):
    """A fresh checkout has a cell's records but not the trunk a cv row fine-tunes from."""
    trained = []
    monkeypatch.setattr(bench, "ensure_trained", lambda argv, run_dir, fresh=False: (
        trained.append((_parse(argv), run_dir)) or ({}, None, True)))
    out = tmp_path / "pretrain.json"
    assert bench.main(["--heldout", "herlev", "tb", "--trunks", "resnet18", "--seeds", "0", "--trunks-only",
                       "--set", "train.epochs=1", "--out", str(out), "--runs-dir", str(tmp_path / "runs")]) == 0
    assert [run_dir for _, run_dir in trained] == [tmp_path / "runs" / "resnet18" / x / "seed0" / "pretrain"
                                                   for x in ("herlev", "tb")]
    assert all(config.model.name == "multitask" and config.train.epochs == 1 for config, _ in trained)
    assert "herlev" not in trained[0][0].data.sources and "tb" not in trained[1][0].data.sources
    assert not out.exists()
