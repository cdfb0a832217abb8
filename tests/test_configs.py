"""Every shipped config parses, stacks with its ablation overlays, and builds its model."""
from __future__ import annotations

import re
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


# --- numeric keys that would silently misbehave: one ConfigError line naming the key (exit 2) ---------
BAD_VALUES = [
    ("--data.val_fraction", "1.5", r"data\.val_fraction must be in \[0, 1\), got 1\.5"),
    ("--data.test_fraction", "-0.1", r"data\.test_fraction must be in \[0, 1\), got -0\.1"),
    ("--data.val_fraction", "0.8", r"data\.val_fraction \+ data\.test_fraction \+ data\.cal_fraction must be below 1 "
                                   r".*got 0\.8 \+ 0\.2 \+ 0\.1"),
    ("--data.cal_fraction", "1", r"data\.cal_fraction must be in \[0, 1\), got 1"),
    ("--data.cal_fraction", "-0.1", r"data\.cal_fraction must be in \[0, 1\), got -0\.1"),
    ("--data.cal_fraction", "0.75", r"data\.val_fraction \+ data\.test_fraction \+ data\.cal_fraction must be below 1 "
                                    r".*got 0\.1 \+ 0\.2 \+ 0\.75"),
    ("--data.max_train_cases", "-5", r"data\.max_train_cases must be at least 1, got -5"),
    ("--data.max_eval_cases", "0", r"data\.max_eval_cases must be at least 1, got 0"),
    ("--data.num_workers", "-1", r"data\.num_workers must be at least 0, got -1"),
    ("--data.eval_batch_size", "0", r"data\.eval_batch_size must be at least 1, got 0"),
    ("--data.batch_size", "0", r"data\.batch_size must be at least 1, got 0"),
    ("--data.zip_length", "longest", r"data\.zip_length must be one of \['min', 'max'\], got 'longest'"),
    ("--eval.n_bootstrap", "-1", r"eval\.n_bootstrap must be at least 0, got -1"),
    ("--eval.splits", '["test", "test"]', r"eval\.splits lists a split twice"),
    ("--eval.splits", '["tset"]', r"eval\.splits must be one of \['train', 'val', 'test'\], got 'tset'"),
    ("--train.grad_clip", "0", r"train\.grad_clip must be positive, got 0"),
    ("--train.backbone_lr", "0", r"train\.backbone_lr must be positive, got 0"),
    ("--train.early_stopping_patience", "-1", r"train\.early_stopping_patience must be at least 0, got -1"),
    ("--train.weight_decay", "-0.1", r"train\.weight_decay must be at least 0, got -0\.1"),
    ("--train.warmup_epochs", "-2", r"train\.warmup_epochs must be at least 0, got -2"),
    ("--train.plateau_factor", "1.5", r"train\.plateau_factor must be in \(0, 1\), got 1\.5"),
    ("--train.label_smoothing", "1", r"train\.label_smoothing must be in \[0, 1\), got 1"),
    ("--train.limit_train_batches", "0", r"train\.limit_train_batches must be a fraction in \(0, 1\] or a number of batches >= 1, got 0"),
    ("--train.num_nodes", "0", r"train\.num_nodes must be at least 1, got 0"),
    ("--data.sources", '{"x": {"format": "manifest", "path": "m.csv", "tasks": []}}',
     r"data\.sources\.x\.tasks must be a non-empty list of distinct names, got \[\]"),
    ("--data.sources", '{"x": {"format": "folder", "path": "d", "channels": 2}}', r"data\.sources\.x\.channels must be one of \[1, 3\], got 2"),
    ("--data.sources", '{"x": {"format": "npz", "path": "d.npz"}}',
     r"data\.sources\.x\.format must be one of \['medmnist', 'folder', 'manifest'\], got 'npz'"),
]


@pytest.mark.parametrize("key, value, line", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_bad_numeric_values_name_the_key(key, value, line, capsys):
    from dualfuse.cli import main
    from dualfuse.config import ConfigError

    argv = ["--config", str(CONFIGS / "quickstart.yaml"), key, value]
    with pytest.raises(ConfigError) as error:
        parse_run_args(argv)
    message = str(error.value)
    assert "\n" not in message and re.search(r"^config: " + line, message), message
    assert main(["train", *argv]) == 2  # the CLI turns it into exit status 2 and one line
    printed = capsys.readouterr()
    assert "Traceback" not in printed.err and re.search(line, printed.err), printed.err


def test_valid_edge_values_are_accepted():
    config, _ = parse_run_args(["--config", str(CONFIGS / "quickstart.yaml"), "--data.val_fraction", "0",
                                "--data.test_fraction", "0.5", "--data.max_train_cases", "1", "--train.grad_clip", "null",
                                "--train.limit_train_batches", "3", "--eval.n_bootstrap", "0", "--data.cal_fraction", "0"])
    assert config.data.test_fraction == 0.5 and config.train.grad_clip is None and config.train.limit_train_batches == 3
    assert config.data.cal_fraction == 0
    assert parse_run_args(["--config", str(CONFIGS / "quickstart.yaml")])[0].data.cal_fraction == 0.1  # the default
