"""Every shipped config parses, stacks with its ablation overlays, and builds its model."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import dualfuse
from dualfuse.config import expand_path, parse_run_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FULL = sorted([CONFIGS / "quickstart.yaml", *(CONFIGS / "dcat").glob("*.yaml"), *(CONFIGS / "drifa_net").glob("*.yaml"),
               CONFIGS / "cpu" / "drifa_net.yaml", CONFIGS / "cpu" / "dcat_breast.yaml",
               CONFIGS / "cpu" / "dcat_brain_mri.yaml"])
OVERLAYS = {
    "dcat": [CONFIGS / "quickstart.yaml", CONFIGS / "dcat" / "paper.yaml"],
    "drifa": [CONFIGS / "cpu" / "drifa_net.yaml", CONFIGS / "drifa_net" / "paper.yaml"],
}


def parse(config_files: list[Path]):
    config, _ = parse_run_args([arg for path in config_files for arg in ("--config", str(path))]
                               + ["--model.kwargs.pretrained", "false"])
    return config


def build(config_files: list[Path]):
    config = parse(config_files)
    kwargs = dict(config.model.kwargs)
    if config.model.name == "drifa_net":
        kwargs.setdefault("modalities", list(config.data.sources))
    return config, dualfuse.create_model(config.model.name, **kwargs)


@pytest.mark.parametrize("path", FULL, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_full_configs_build(path, data_root, monkeypatch):
    monkeypatch.setenv("DUALFUSE_DATA", str(data_root))
    config, model = build([path])
    for name, source in config.data.sources.items():
        assert expand_path(source.path, name).exists(), f"{path.name}: {source.path}"
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("overlay", sorted((CONFIGS / "ablations").glob("*.yaml")), ids=lambda p: p.stem)
def test_ablation_overlays_stack_on_their_base_configs(overlay):
    for base in OVERLAYS["dcat" if overlay.stem.startswith("dcat") else "drifa"]:
        config, base_config = parse([base, overlay]), parse([base])
        assert config.data == base_config.data and config.train == base_config.train
        changed = {k: v for k, v in config.model.kwargs.items() if base_config.model.kwargs.get(k) != v}
        assert changed and set(changed) <= set(yaml.safe_load(overlay.read_text())["model"]["kwargs"])


@pytest.mark.parametrize("overlay", sorted([*(CONFIGS / "baselines").glob("*.yaml"), *(CONFIGS / "cpu").glob("[rec]*.yaml")]),
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_baseline_overlays_replace_the_model(overlay):
    base = CONFIGS / ("dcat/paper.yaml" if overlay.parent.name == "baselines" else "quickstart.yaml")
    config, model = build([base, overlay])
    assert config.model.name in ("timm_classifier", "concat_fusion")
    assert "embed_dim" not in config.model.kwargs  # DCAT's arguments did not leak into the baseline
