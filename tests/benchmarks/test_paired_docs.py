"""The docs' paired tables: "does fusion beat its backbones", ablations, recipe parts and zip vs alone."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.benchmarks.test_make_docs import _load, _record
from tests.evaluation.test_paired import _per_case


def test_docs_show_a_paired_win_for_the_better_model_and_a_tie_for_equals(tmp_path: Path):
    make_docs = _load("make_docs")
    rng = np.random.default_rng(1)
    records = []
    for seed in (0, 1, 2):
        labels = rng.integers(0, 2, 400)
        cases = [f"case{i}" for i in range(400)]
        for row, model, skill in (("p-dcat", "dcat", 1.5), ("p-resnet18", "resnet18", 0.5),
                                  ("p-concat_fusion", "concat_fusion", 1.5), ("p-dcat-no_cbam", "dcat no_cbam", 0.5)):
            record = _record(row, model, seed, "pneumoniamnist", 0.9, 0.85)
            probs = _per_case(np.random.default_rng(seed) if model != "resnet18" else rng, labels, skill)
            order = np.random.default_rng(seed + 10).permutation(400) if model == "resnet18" else np.arange(400)
            record["tasks"]["label"]["per_case"] = {  # another row order: cases are matched by id
                "case_id": [cases[i] for i in order], "patient_id": [cases[i] for i in order],
                "label": labels[order].tolist(), "probs": probs[order].tolist()}
            records.append(record)
    (tmp_path / "accuracy_cpu.json").write_text(json.dumps({"records": records}))
    text = make_docs.render(make_docs.load_results(tmp_path)[0], [], pairs={"ablation_of": {"p-dcat-no_cbam": "p-dcat"}})
    assert "## Does fusion beat its own backbones? (paired)" in text
    dcat_vs_resnet = next(line for line in text.splitlines() if "dcat − resnet18" in line)
    assert "**win**" in dcat_vs_resnet and "| 0, 1, 2 |" in dcat_vs_resnet
    dcat_vs_concat = next(line for line in text.splitlines() if "dcat − concat_fusion" in line)
    assert "+0.000 [+0.000, +0.000] | **tie**" in dcat_vs_concat  # identical predictions: exactly zero
    assert "DCAT against its backbones and concat fusion: 1 win(s), 1 tie(s), 0 loss(es) of 2." in text
    # an ablation is scored against its full model: the weaker model without the part loses
    ablation = next(line for line in text.splitlines() if "dcat no_cbam − dcat" in line)
    assert "**loss**" in ablation and "| 28 → 32 |" in ablation
    assert "Overall: 0 win(s), 0 tie(s), 1 loss(es) of 1." in text


def test_zip_rows_pair_with_each_dataset_alone_and_recipe_rows_with_the_plain_model(tmp_path: Path):
    """alone_of: the zip row's task on dataset X minus the alone row on X (zip − alone); recipe_of: the
    row with the part minus the plain row (a budget row at its own epoch cap too). A dataset whose test cases
    differ between the rows is left out."""
    make_docs = _load("make_docs")
    records = []
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, 300)
        cases = [f"mri{i}" for i in range(300)]
        strong, weak = _per_case(rng, labels, 2.0), _per_case(rng, labels, 0.3)

        def per_case(probs, ids=cases, labels=labels):
            return {"case_id": ids, "patient_id": ids, "label": labels.tolist(), "probs": probs.tolist()}

        zipped = _record("z-zip", "drifa_net zip", seed, "brain_mri", 0.9, 0.8)
        zipped["tasks"] = {"mri_label": zipped["tasks"]["label"] | {"per_case": per_case(strong)},
                           "ct_label": zipped["tasks"]["label"] | {"dataset": "lung_ct", "per_case": per_case(strong)}}
        alone_mri = _record("z-alone-mri", "drifa_net alone", seed, "brain_mri", 0.8, 0.7)
        alone_mri["tasks"]["label"]["per_case"] = per_case(weak)
        alone_ct = _record("z-alone-ct", "drifa_net alone", seed, "lung_ct", 0.8, 0.7)
        alone_ct["tasks"]["label"]["per_case"] = per_case(weak, [f"other{i}" for i in range(300)])
        plain = _record("b-dcat", "dcat", seed, "breastmnist", 0.8, 0.7)
        plain["tasks"]["label"]["per_case"] = per_case(strong)
        with_part = _record("b-dcat-ema", "dcat + ema", seed, "breastmnist", 0.8, 0.7)
        with_part["tasks"]["label"]["per_case"] = per_case(weak)
        longer = _record("b-dcat-24ep", "dcat + 24 epochs", seed, "breastmnist", 0.8, 0.7) | {"epochs": 24}
        longer["tasks"]["label"]["per_case"] = per_case(weak)
        backbone_longer = _record("b-resnet18-24ep", "resnet18 + 24 epochs", seed, "breastmnist", 0.8, 0.7) | {"epochs": 24}
        backbone_longer["tasks"]["label"]["per_case"] = per_case(strong)
        records += [zipped, alone_mri, alone_ct, plain, with_part, longer, backbone_longer]
    (tmp_path / "accuracy_cpu.json").write_text(json.dumps({"records": records}))
    pairs = {"alone_of": {"z-alone-mri": "z-zip", "z-alone-ct": "z-zip"},
             "recipe_of": {"b-dcat-ema": "b-dcat", "b-dcat-24ep": "b-dcat"}}
    lines = make_docs.render(make_docs.load_results(tmp_path)[0], [], pairs=pairs).splitlines()
    section = lines[lines.index("### Multitask (zip) training vs each dataset alone"):]
    zip_lines = [line for line in section if "drifa_net zip − drifa_net alone" in line]
    assert len(zip_lines) == 1 and "Brain" in zip_lines[0] and "**win**" in zip_lines[0]  # CT: other cases
    recipe = next(line for line in lines if "dcat + ema − dcat" in line)
    assert "**loss**" in recipe
    # a budget row differs from its plain row in the epoch cap by design: it still pairs
    assert "**loss**" in next(line for line in lines if "dcat + 24 epochs − dcat" in line)
    # the same change on both sides of a fusion comparison pairs them; a change on one side alone does not
    both = [line for line in lines if "| dcat − resnet18" in line]
    assert len(both) == 1 and "| dcat − resnet18, both + 24 epochs |" in both[0] and "**loss**" in both[0]


def test_an_offset_that_keeps_the_ranking_shows_in_accuracy_not_in_auc(tmp_path: Path):
    """The same scores with their logits shifted toward "normal" rank the cases identically (ΔAUC exactly
    0, a tie) but call many positives negative: the paired ΔACC beside it says so (a loss)."""
    make_docs = _load("make_docs")
    records = []
    for seed in (0, 1, 2):
        rng = np.random.default_rng(seed)
        labels = rng.integers(0, 2, 400)
        logits = 2.0 * (labels * 2 - 1) + rng.normal(size=400)
        for row, model, offset in (("p-dcat", "dcat", 0.0), ("p-dcat-val_loss", "dcat + val-loss checkpoint", -2.5)):
            p = 1 / (1 + np.exp(-(logits + offset)))
            record = _record(row, model, seed, "pneumoniamnist", 0.9, 0.85)
            record["tasks"]["label"]["per_case"] = {
                "case_id": [f"c{i}" for i in range(400)], "patient_id": [f"c{i}" for i in range(400)],
                "label": labels.tolist(), "probs": np.c_[1 - p, p].tolist()}
            records.append(record)
    (tmp_path / "accuracy_cpu.json").write_text(json.dumps({"records": records}))
    text = make_docs.render(make_docs.load_results(tmp_path)[0], [],
                            pairs={"recipe_of": {"p-dcat-val_loss": "p-dcat"}})
    assert "| ΔAUC [95% CI] | verdict | ΔACC [95% CI], verdict |" in text
    line = next(x for x in text.splitlines() if "dcat + val-loss checkpoint − dcat" in x)
    auc_cell, verdict, acc_cell = (cell.strip() for cell in line.split("|")[-4:-1])
    assert auc_cell == "+0.000 [+0.000, +0.000]" and verdict == "**tie**"
    assert acc_cell.startswith("-0.") and acc_cell.endswith(" loss")
