"""`uncertainty.json`: the calibration `evaluate --mc-samples` stores beside a model, per predictor.

    {"format": 2, "seed": 0, "rows": 32, "calibration_split": "cal", "calibration_note": null,
     "members": [...], "default": "1x30", "tta": {"views": 1, "translate": 0.05, "hflip": false, ...},
     "predictors": {"1x0": {task: {...}}, "1x30": {task: {"predictor", "temperature", "temperature_prior_sd",
                                                          "referral", "conformal"}}}}

A predictor (K members x T MC samples [x A TTA views] [p P zip-mode partners]; "1x0" is the softmax,
"1x30p8" MC dropout averaged over 8 partner images) is only ever used with its own calibration: `predict` looks up the predictor it runs, and refits it on the run's calibration split
when it is missing, never borrowing another's temperature or thresholds. Round-1 files (no
"format") fitted one temperature on the softmax and applied it to MC samples; they are refused with
one line saying how to recalibrate.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from dualfuse.atomic import atomic_write_json
from dualfuse.evaluation.predictions import CANONICAL_ROWS, Predictions, Predictor
from dualfuse.evaluation.uncertainty_report import calibrate
from dualfuse.models.spec import ModelSpec
from dualfuse.uncertainty.tta import TTAConfig

CALIBRATION_FORMAT = 2


class CalibrationError(ValueError):
    """A calibration file that cannot be used: one line naming the file and what to do."""


@dataclass
class Calibration:
    """Every calibrated predictor of a model, and how its MC samples are drawn (seed, rows)."""

    seed: int
    default: str
    predictors: dict[str, dict[str, dict]] = field(default_factory=dict)
    members: list[str] = field(default_factory=list)
    calibration_split: str = "val"
    calibration_note: str | None = None
    rows: int = CANONICAL_ROWS
    tta: dict = field(default_factory=dict)  # TTAConfig fields: how views are drawn

    def tta_config(self, views: int | None = None) -> TTAConfig:
        """The TTA views as calibrated (or `views` of them, drawn the same way)."""
        config = TTAConfig(**self.tta) if self.tta else TTAConfig()
        return replace(config, views=config.views if views is None else views)

    @property
    def default_predictor(self) -> Predictor:
        return Predictor.from_key(self.default)

    @property
    def mc_samples(self) -> int:
        return self.default_predictor.samples

    @property
    def partners(self) -> int:
        """Zip-mode partner images of the default predictor (0: none)."""
        return self.default_predictor.partners

    def for_predictor(self, predictor: Predictor) -> dict[str, dict] | None:
        return self.predictors.get(predictor.key)

    def to_dict(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "seed": self.seed, "rows": self.rows,
                "calibration_split": self.calibration_split, "calibration_note": self.calibration_note,
                "members": list(self.members), "default": self.default, "predictors": self.predictors,
                "tta": dict(self.tta)}

    @classmethod
    def read(cls, path: Path) -> Calibration | None:
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CalibrationError(f"{path}: malformed JSON: {error}") from None
        if not isinstance(data, dict) or data.get("format") != CALIBRATION_FORMAT:
            raise CalibrationError(
                f"{path}: a calibration from dualfuse 0.1, whose temperature was fitted to another predictor "
                "than the one it was applied to; recalibrate with `dualfuse evaluate RUN --mc-samples 30` "
                "(or delete the file to predict uncalibrated)")
        return cls(seed=int(data["seed"]), default=str(data["default"]), predictors=dict(data["predictors"]),
                   members=list(data.get("members", [])), calibration_split=str(data.get("calibration_split", "val")),
                   calibration_note=data.get("calibration_note"), rows=int(data.get("rows", CANONICAL_ROWS)),
                   tta=dict(data.get("tta") or {}))

    def write(self, path: Path) -> None:
        atomic_write_json(path, self.to_dict())


def calibration_split(data) -> tuple[str, str | None]:
    """The split temperature, referral and conformal thresholds are fitted on, and a note when it is
    `val` (which also chose the checkpoint) for want of a calibration split."""
    split = getattr(data, "calibration_split", "val")
    note = getattr(data, "calibration_note", None)
    if split == "val" and note is None:
        note = ("no calibration split: temperature, referral and conformal thresholds were fitted on val, "
                "which also chose the checkpoint")
    return split, note


def fit_calibrations(cal: Predictions, spec: ModelSpec, predictors: list[Predictor], target_accuracy: float | None,
                     target_coverage: float | None, alpha: float,
                     guarantee: float | None = None) -> dict[str, dict[str, dict]]:
    """`{predictor key: {task: calibration}}`: each predictor calibrated on its own samples."""
    return {predictor.key: {task: calibrate(cal.for_task(task, spec.modality_of(task)), task, predictor,
                                            target_accuracy, target_coverage, alpha, guarantee)
                            for task in spec.tasks}
            for predictor in predictors}
