"""Test-time augmentation: views drawn per (seed, case, view), label-preserving, batch-independent."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dualfuse
from dualfuse.evaluation.predictions import Predictions, Predictor, predict_batch
from dualfuse.evaluation.uncertainty_report import predictors_of
from dualfuse.uncertainty.mc_dropout import case_keys
from dualfuse.uncertainty.tta import TTAConfig, view_batch, view_inputs


def test_views_follow_seed_case_and_view_only():
    images = torch.rand(5, 1, 20, 20)
    keys = case_keys([f"c{i}" for i in range(5)])
    config = TTAConfig(views=4, translate=0.1)
    assert torch.equal(view_batch(images, keys, 0, 0, config), images)
    one = view_batch(images, keys, 2, 0, config)
    assert one.shape == images.shape and not torch.equal(one, images)
    # The same case gets the same view alone, shuffled, or next to other cases.
    assert torch.equal(view_batch(images[3:4], keys[3:4], 2, 0, config), one[3:4])
    order = [4, 2, 0, 3, 1]
    assert torch.equal(view_batch(images[order], [keys[i] for i in order], 2, 0, config), one[order])
    assert not torch.equal(view_batch(images, keys, 2, 1, config), one)


def test_shift_moves_content_and_replicates_edges():
    image = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    config = TTAConfig(views=2, translate=0.3)
    for view in range(1, 20):
        out = view_batch(image, [7], view, 0, config)[0, 0]
        # Every output pixel comes from the input (a shift with replicated borders, no interpolation).
        assert set(out.flatten().tolist()) <= set(image.flatten().tolist())


def test_flips_only_when_allowed():
    image = torch.rand(1, 1, 8, 8)
    no_shift = TTAConfig(views=2, translate=0.0)
    assert all(torch.equal(view_batch(image, [k], 1, 0, no_shift), image) for k in range(10))
    flips = TTAConfig(views=2, translate=0.0, hflip=True)
    outs = [view_batch(image, [k], 1, 0, flips) for k in range(20)]
    assert any(torch.equal(o, image.flip(-1)) for o in outs) and all(
        torch.equal(o, image) or torch.equal(o, image.flip(-1)) for o in outs)


def test_several_modalities_refuse_views():
    inputs = {"a": torch.rand(2, 1, 8, 8), "b": torch.rand(2, 1, 8, 8)}
    with pytest.raises(ValueError, match="several modalities"):
        view_inputs(inputs, [1, 2], 1, 0, TTAConfig(views=2))


@torch.no_grad()
def test_tta_predictions_are_batch_independent_and_slice_into_predictors():
    torch.manual_seed(0)
    model = dualfuse.create_model("timm_classifier", in_chans=1, num_classes={"label": 3}).eval()
    x = torch.randn(40, 1, 32, 32)
    keys = case_keys([f"c{i}" for i in range(40)])
    config = TTAConfig(views=3)
    members, samples = predict_batch([model], x, keys, ["label"], mc_samples=2, seed=1, tta=config)
    assert members["label"].shape == (3, 40, 3) and samples["label"].shape == (6, 40, 3)
    part_members, part_samples = predict_batch([model], x[5:12], keys[5:12], ["label"], 2, 1, tta=config)
    assert (part_members["label"] == members["label"][:, 5:12]).all()
    assert (part_samples["label"] == samples["label"][:, 5:12]).all()
    # View 0 of a TTA run is exactly the run without TTA (adding views never changes plain predictors).
    plain_members, plain_samples = predict_batch([model], x, keys, ["label"], 2, 1)
    assert (plain_members["label"][0] == members["label"][0]).all()
    assert (plain_samples["label"] == samples["label"][:2]).all()

    predictions = Predictions([str(i) for i in range(40)], [""] * 40, {"label": members["label"][0]},
                              sample_logits=samples, member_logits=members, samples=2, views=3)
    assert predictions.drawn == Predictor(1, 2, 3)
    assert {p.key for p in predictors_of(predictions)} == {"1x0", "1x2", "1x0x3", "1x2x3"}
    assert np.array_equal(predictions.predictor_logits("label", Predictor(1, 0, 3)), members["label"])
    assert np.array_equal(predictions.predictor_logits("label", Predictor(1, 2)), samples["label"][:2])
    assert Predictor.from_key("2x30x4") == Predictor(2, 30, 4) and Predictor(1, 0).key == "1x0"
