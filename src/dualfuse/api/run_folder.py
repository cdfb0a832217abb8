"""`RunFolder`: the layout of a run folder, and the one place that reads and writes it.

    config.yaml          the fully resolved config
    split.csv            the case → split assignment used
    checkpoints/         best.ckpt and last.ckpt (Lightning, weights_only-loadable, written atomically)
    model/               model.safetensors + model.json (the best weights and how to rebuild them),
                         uncertainty.json (calibration from `evaluate --mc-samples`), metadata.json (card)
    members/<k>/         further ensemble members (model folders), when a run holds several
    fold_<k>/            one run folder per cross-validation fold (`dualfuse cv`; then model/ is fold 0's
                         model and the other folds' models are its ensemble members)
    metrics.json         per task and split: every metric with its bootstrap confidence interval
    predictions.csv      per case: true class, predicted class, class probabilities
    evaluation/          metrics.json and predictions.csv of the latest `evaluate`
    logs/                CSV metrics and TensorBoard events
    report.html, report/ the clinician's report and its figures

Reading a run never imports Lightning.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from dualfuse.atomic import atomic_write_bytes, atomic_write_json, remove_stale_temporaries
from dualfuse.config import RunConfig, dump_run_config, load_run_config
from dualfuse.evaluation.model_card import CARD_FILE, build_model_card, card_json
from dualfuse.models.saved import SPEC_NAME
from dualfuse.models.spec import ModelSpec

CALIBRATION_FILE = "uncertainty.json"
_FOLD = re.compile(r"fold_(\d+)$")


class RunFolderError(ValueError):
    """A folder that is not (or not yet) the run folder an operation needs: one line saying why."""


class RunFolder:
    """A run folder on disk. Paths are properties; reads and writes are methods (writes are atomic)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- layout ------------------------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.yaml")
    split_path = property(lambda self: self.path / "split.csv")
    checkpoints_dir = property(lambda self: self.path / "checkpoints")
    last_checkpoint = property(lambda self: self.path / "checkpoints" / "last.ckpt")
    model_dir = property(lambda self: self.path / "model")
    calibration_path = property(lambda self: self.path / "model" / CALIBRATION_FILE)
    metrics_path = property(lambda self: self.path / "metrics.json")
    predictions_path = property(lambda self: self.path / "predictions.csv")
    evaluation_dir = property(lambda self: self.path / "evaluation")
    members_dir = property(lambda self: self.path / "members")
    report_path = property(lambda self: self.path / "report.html")

    @classmethod
    def containing(cls, path: str | Path) -> RunFolder | None:
        """The run folder a run, model folder, weights file or checkpoint belongs to (it holds config.yaml)."""
        path = Path(path)
        for candidate in (path, *path.parents[:3]):
            if (candidate / "config.yaml").is_file():
                return cls(candidate)
        return None

    def has_checkpoints(self) -> bool:
        return self.checkpoints_dir.is_dir() and any(self.checkpoints_dir.iterdir())

    def is_finished(self) -> bool:
        return self.config_path.is_file() and (self.model_dir / SPEC_NAME).is_file()

    def require_finished(self) -> RunFolder:
        for required in (self.config_path, self.model_dir / SPEC_NAME):
            if not required.is_file():
                raise RunFolderError(f"{self.path} is not a finished run folder: "
                                     f"{required.relative_to(self.path)} is missing")
        return self

    def member_dirs(self) -> list[Path]:
        """Model folders of the further ensemble members trained into this run (`members/<k>/`); in a
        cv folder (whose model/ is fold 0's), the models of the other folds."""
        if not self.members_dir.is_dir():
            return [fold.model_dir for fold in self.folds()[1:] if (fold.model_dir / SPEC_NAME).is_file()]
        found = [p for p in self.members_dir.iterdir() if (p / SPEC_NAME).is_file()]
        return sorted(found, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name))

    def folds(self) -> list[RunFolder]:
        """The cross-validation folds (`fold_<k>/`), in fold order."""
        found = [(int(m.group(1)), p) for p in self.path.glob("fold_*") if (m := _FOLD.search(p.name)) and p.is_dir()]
        return [RunFolder(p) for _, p in sorted(found)]

    # -- reading -----------------------------------------------------------------------------------
    def config(self) -> RunConfig:
        return load_run_config(self.config_path)

    def spec(self) -> ModelSpec:
        return ModelSpec.from_json(self.model_dir / SPEC_NAME)

    def metrics(self) -> dict:
        return _read_json(self.metrics_path) or {}

    def evaluation_metrics(self) -> dict | None:
        return _read_json(self.evaluation_dir / "metrics.json")

    def calibration(self) -> dict | None:
        return _read_json(self.calibration_path)

    def seed(self) -> int:
        """The training seed the config records, read raw (no data path is resolved; 0 where unset)."""
        return int((_read_yaml(self.config_path).get("train") or {}).get("seed") or 0)

    def sensitive(self) -> bool:
        """Whether any data source is marked `sensitive: true` (paths and names never shown)."""
        sources = (_read_yaml(self.config_path).get("data") or {}).get("sources") or {}
        return any(bool((source or {}).get("sensitive")) for source in sources.values())

    def datamodule(self, spec: ModelSpec, config: RunConfig | None = None):
        """The run's data, split exactly as at training time (its split.csv), ready to predict."""
        return self.datamodule_for(spec, config or self.config(), self.split_path)

    @staticmethod
    def datamodule_for(spec: ModelSpec, config: RunConfig, split_path: Path | None = None):
        """The data of `config` as `spec`'s model reads it (Lightning is imported here, not on load)."""
        from dualfuse.data.datamodule import ClassificationDataModule

        data = ClassificationDataModule(config.data, in_chans=spec.preprocessing.in_chans, seed=config.train.seed,
                                        split_path=split_path)
        data.setup()
        return data

    # -- writing -----------------------------------------------------------------------------------
    def prepare(self) -> list[Path]:
        """Create the folder and remove the temporary files a killed write left behind."""
        self.path.mkdir(parents=True, exist_ok=True)
        removed = []
        for folder in (self.path, self.checkpoints_dir, self.model_dir, self.evaluation_dir):
            removed += remove_stale_temporaries(folder)
        return removed

    def config_bytes(self, config: RunConfig) -> bytes:
        return dump_run_config(config).encode()

    def write_results(self, summary: dict, frame: pd.DataFrame, directory: Path | None = None) -> None:
        """metrics.json and predictions.csv, into the run folder or `directory` (e.g. evaluation/)."""
        directory = directory or self.path
        atomic_write_json(directory / "metrics.json", summary)
        atomic_write_bytes(directory / "predictions.csv", frame.to_csv(index=False).encode())

    def write_model_card(self, sensitive: bool = False) -> dict:
        """Build, validate and write the model card beside each checkpoint (`model/`, `checkpoints/`)."""
        card = build_model_card(self.spec(), _read_yaml(self.config_path), self.metrics(), self.evaluation_metrics(),
                                self.calibration(), sensitive=sensitive or self.sensitive())
        for folder in (self.model_dir, self.checkpoints_dir):
            if folder.is_dir():
                atomic_write_bytes(folder / CARD_FILE, card_json(card))
        return card


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunFolderError(f"{path}: malformed JSON: {error}") from None


def _read_yaml(path: Path) -> dict:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise RunFolderError(f"{path}: cannot read the run's config: {' '.join(str(error).split())}") from None
