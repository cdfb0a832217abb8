"""The masked stochastic graph draws MC-dropout samples exactly as dualfuse does (no export needed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from deploy_helpers import PX, TINY, tiny_model_folder

from dualfuse.api import load_model
from dualfuse.api.loading import content_ids
from dualfuse.deploy.graphs import EXPORTABLE_DROPOUT, ExportError, masked_copy, split_model
from dualfuse.deploy.masks import draw_masks, repeat_rows
from dualfuse.evaluation.predictions import predict_batch
from dualfuse.uncertainty.mc_dropout import case_keys


@pytest.mark.parametrize("name", ["dcat", "drifa_net"])
def test_drawn_masks_reproduce_dualfuse_mc_samples(name, tmp_path):
    loaded = load_model(tiny_model_folder(tmp_path, name))
    modalities, tasks = TINY[name][1], list(TINY[name][2])
    torch.manual_seed(3)
    images = [torch.randn(3, 1, PX, PX) for _ in modalities]
    inputs = dict(zip(modalities, images)) if loaded.model.multi_input else images[0]
    split = split_model(loaded.model, images, tasks, modalities)
    ids = content_ids(inputs)
    samples, seed = 4, 7
    _, expected = predict_batch([loaded.model], inputs, case_keys(ids), tasks, samples, seed)
    states = split.deterministic(*images)
    with torch.no_grad():
        got = split.stochastic(*[repeat_rows(s, samples) for s in states], *draw_masks(split.calls, ids, samples, seed))
    for task, logits in zip(tasks, got):
        np.testing.assert_allclose(logits.reshape(samples, 3, -1).numpy(), expected[task], atol=1e-5)


def test_masks_of_ones_are_eval_mode_exactly(tmp_path):
    loaded = load_model(tiny_model_folder(tmp_path, "dcat"))
    x = torch.randn(4, 1, PX, PX)
    split = split_model(loaded.model, [x], ["label"], ["image"])
    with torch.no_grad():
        got = split.stochastic(*split.deterministic(x), *split.ones(4))[0]
        expected = loaded.model(x)["label"]
    assert torch.equal(got, expected)
    assert [c.module for c in split.calls] == ["head.0", "head.3"]


def test_alpha_dropout_is_refused_with_one_line():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.AlphaDropout(0.2))
    with pytest.raises(ExportError, match="AlphaDropout.*only Dropout"):
        masked_copy(model)
    assert torch.nn.Dropout2d in EXPORTABLE_DROPOUT
