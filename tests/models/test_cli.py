"""`dualfuse models` lists every model with parameter and MAC counts."""
from __future__ import annotations

import json

from dualfuse.cli import main
from dualfuse.models.summary import count_macs


def test_models_json(capsys):
    assert main(["models", "dcat", "timm_classifier", "--img-size", "64", "--in-chans", "1", "--json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"dcat", "timm_classifier"}
    assert rows["dcat"]["params"] == rows["dcat"]["trainable_params"] > 9_000_000
    assert rows["dcat"]["macs"] > rows["timm_classifier"]["macs"] > 0


def test_models_table_lists_all(capsys):
    assert main(["models", "--img-size", "32"]) == 0
    out = capsys.readouterr().out
    for name in ("dcat", "drifa_net", "timm_classifier", "concat_fusion"):
        assert name in out


def test_models_unknown_name_is_one_line_error(capsys):
    assert main(["models", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dualfuse models: error: unknown model 'nope'") and "\n" not in err


def test_macs_count_attention():
    import torch
    from torch import nn

    class Attend(nn.Module):
        def forward(self, q):
            return nn.functional.scaled_dot_product_attention(q, q, q)

    # QK^T and AV: 2 * (heads * tokens^2 * dim) multiply-accumulates.
    assert count_macs(Attend(), torch.randn(1, 2, 10, 4)) == 2 * 2 * 10 * 10 * 4
