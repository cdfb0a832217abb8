"""The model card of whatever is being exported or served, built without writing into the source.

A bundle carries its card (`configs/metadata.json`); a run folder's card is built from the run
as `dualfuse report` builds it; a bare model folder uses the card saved beside it, or a card that
says its training data was not recorded.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from dualfuse.api import LoadedModel, RunFolder
from dualfuse.evaluation.model_card import CARD_FILE, build_model_card

BUNDLE_CARD = Path("configs") / CARD_FILE
_UNRECORDED = {"data": {"sources": {"training data": {"format": "not recorded (a model folder without its run)",
                                                      "sensitive": True}}}}


def model_card(loaded: LoadedModel) -> dict:
    """The card of a loaded run folder, bundle or model folder (validated against the card schema)."""
    path = loaded.path
    for saved in (path / BUNDLE_CARD, path / CARD_FILE, path / "model" / CARD_FILE):
        if path.is_dir() and saved.is_file():
            return json.loads(saved.read_text(encoding="utf-8"))
    run = loaded.run
    if run is not None and run.is_finished():
        return run_card(run)
    stored = loaded.calibration.to_dict() if loaded.calibration is not None else None
    return build_model_card(loaded.spec, _UNRECORDED, stored=stored)


def run_card(run: RunFolder) -> dict:
    """A run's card as `RunFolder.write_model_card` builds it, without writing it into the run."""
    try:
        config = yaml.safe_load(run.config_path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{run.config_path}: cannot read the run's config: {' '.join(str(error).split())}") from None
    return build_model_card(run.spec(), config, run.metrics(), run.evaluation_metrics(), run.calibration(),
                            sensitive=run.sensitive())
