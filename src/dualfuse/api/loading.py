"""`load_model(path)`: a ready model from a run folder, a model folder or a weights file.

It returns the network (eval mode), its typed `ModelSpec`, the calibration `evaluate --mc-samples`
stored beside it and every ensemble member, so `predict`, `explain`, `report`, benchmarks and a
server all start from the same object. Loading never imports Lightning and never downloads.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dualfuse.api.calibration import Calibration, CalibrationError, calibration_split, fit_calibrations
from dualfuse.api.run_folder import CALIBRATION_FILE, RunFolder, RunFolderError
from dualfuse.device import default_device
from dualfuse.evaluation.predictions import Predictions, Predictor, predict_batch, predict_loader
from dualfuse.models.saved import SPEC_NAME
from dualfuse.models.saved import load_model as load_saved_model
from dualfuse.models.spec import ModelSpec
from dualfuse.uncertainty.mc_dropout import case_keys
from dualfuse.uncertainty.tta import TTAConfig

#: Partner images per case of a zip-mode model (`evaluate/predict --partners K`) unless calibrated otherwise.
DEFAULT_PARTNERS = 8


class PartnerError(ValueError):
    """Zip-mode partner images that cannot be had: one line naming what to pass."""


@dataclass
class LoadedModel:
    """A trained model ready for inference: `model` (the first ensemble member), `spec`, `calibration`
    (every calibrated predictor's temperature, referral and conformal thresholds, or `None`), and
    all ensemble `members`."""

    model: nn.Module
    spec: ModelSpec
    calibration: Calibration | None = None
    members: list[nn.Module] = field(default_factory=list)
    run: RunFolder | None = None
    path: Path | None = None

    @property
    def mc_samples(self) -> int:
        """MC-dropout samples of the calibrated default predictor (0: the softmax)."""
        return self.calibration.mc_samples if self.calibration else 0

    @property
    def seed(self) -> int:
        return self.calibration.seed if self.calibration else 0

    @property
    def zip_mode(self) -> bool:
        """Whether the model was trained in zip mode (one task per modality, each judged on its own)."""
        return bool(self.spec.task_modality)

    @property
    def partners(self) -> int:
        """Partner images per case `predict` uses by default: as calibrated (`evaluate --partners`), else
        `DEFAULT_PARTNERS` for a zip-mode model; 0 for every other model."""
        if not self.zip_mode:
            return 0
        if self.calibration is not None and self.calibration.partners:
            return self.calibration.partners
        return DEFAULT_PARTNERS

    def predictor(self, mc_samples: int | None = None, tta: int | None = None, partners: int | None = None
                  ) -> Predictor:
        """What `predict` runs: every member, with `mc_samples` MC samples and `tta` views each (default:
        as calibrated) and `partners` zip-mode partner images (default 0: the inputs as given; `predict`
        passes `self.partners`)."""
        default = self.calibration.default_predictor if self.calibration else Predictor()
        return Predictor(len(self.members), default.samples if mc_samples is None else mc_samples,
                         default.views if tta is None else tta, partners or 0)

    def partner_pools(self) -> dict:
        """Zip mode: `{modality: its training split}` from the run folder (config.yaml and split files),
        where a case's partner images come from; a one-line `PartnerError` without one."""
        if self.run is None:
            raise PartnerError(
                f"{self.path}: this zip-mode model predicts each image beside partner images of its other "
                f"modalities ({', '.join(self.spec.modalities)}) drawn from its training data, and there is no run "
                "folder with them here; pass the run folder (config.yaml and split files) as the checkpoint, or "
                "--partners 0 with a CSV manifest holding every modality per case")
        try:
            return self.run.datamodule(self.spec).partner_pools()
        except (OSError, ValueError) as error:
            raise PartnerError(f"{self.run.path}: cannot read the training data that partner images come from "
                               f"({' '.join(str(error).split())}); restore it, or pass --partners 0 with a CSV "
                               "manifest holding every modality per case") from None

    def tta_config(self, predictor: Predictor) -> TTAConfig | None:
        """How the predictor's TTA views are drawn (as calibrated), or None without views."""
        if predictor.views == 1:
            return None
        return self.calibration.tta_config(predictor.views) if self.calibration else TTAConfig(views=predictor.views)

    def calibrated(self, predictor: Predictor) -> dict[str, dict] | None:
        """The calibration of exactly this predictor, or None (never another predictor's)."""
        return self.calibration.for_predictor(predictor) if self.calibration else None

    def calibrate(self, predictor: Predictor, alpha: float = 0.1) -> dict[str, dict]:
        """Fit a predictor `evaluate` did not calibrate, on the run's calibration split, with the
        default predictor's referral target, and store it beside the others (`uncertainty.json`)."""
        if self.calibration is None or self.run is None:
            raise CalibrationError(f"{self.path}: predictor {predictor.key} ({predictor.label}) is not calibrated and "
                                   "there is no run folder to calibrate it on; run `dualfuse evaluate` with it")
        data = self.run.datamodule(self.spec)
        split, _ = calibration_split(data)
        loader = (data.partner_dataloader(split, predictor.partners, seed=self.seed) if predictor.partners
                  else data.eval_dataloader(split))
        cal = predict_loader(self.members, loader, self.spec, default_device(),
                             mc_samples=predictor.samples, seed=self.seed, tta=self.tta_config(predictor))
        referral = next(iter(self.calibration.predictors[self.calibration.default].values()))["referral"]
        fitted = fit_calibrations(cal, self.spec, [predictor], referral.get("target_accuracy"),
                                  referral.get("target_coverage"), alpha, referral.get("guarantee"))
        self.calibration.predictors.update(fitted)
        self.calibration.write(calibration_path(self.path))
        return fitted[predictor.key]

    @torch.no_grad()
    def predict_proba(self, inputs, case_ids: Sequence[str] | None = None, mc_samples: int | None = None,
                      tta: int | None = None) -> dict[str, np.ndarray]:
        """`{task: (B, C) probabilities}` for a batch of preprocessed inputs, as `predict` computes them:
        the predictor's calibrated mean when it is calibrated, else the raw mean. MC masks follow each
        case's id (default: a hash of its pixels), so a case gets the same numbers in any batch. A
        zip-mode model takes the inputs of every modality as given here (no partner images: use
        `predict`, which draws them from the run's training split)."""
        predictor = self.predictor(mc_samples, tta)
        if case_ids is None:
            case_ids = content_ids(inputs)
        members, samples = predict_batch(self.members, inputs, case_keys(case_ids), list(self.spec.tasks),
                                         predictor.samples, self.seed, tta=self.tta_config(predictor))
        view = Predictions(list(case_ids), [""] * len(case_ids), {t: v[0] for t, v in members.items()},
                           sample_logits=samples, member_logits=members if len(self.members) * predictor.views > 1
                           else {}, samples=predictor.samples, views=predictor.views)
        stored = self.calibrated(predictor) or {}
        view = view.using(predictor, {t: entry["temperature"] for t, entry in stored.items()})
        return {t: view.probs(t) for t in self.spec.tasks}


def content_ids(inputs) -> list[str]:
    """A case id per row from its pixels (SHA-256), for inputs that come without names."""
    tensors = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
    ids = []
    for row in range(len(tensors[0])):
        digest = hashlib.sha256()
        for tensor in tensors:
            digest.update(tensor[row].detach().float().cpu().contiguous().numpy().tobytes())
        ids.append("sha256:" + digest.hexdigest()[:32])
    return ids


BUNDLE_MODELS = "models"  # where a bundle (`dualfuse export --format bundle`) keeps its model


def is_bundle(path: Path) -> bool:
    """A MONAI-style bundle: `models/` holds model.safetensors + model.json (and its calibration)."""
    return (path / BUNDLE_MODELS / SPEC_NAME).is_file() and not (path / "model" / SPEC_NAME).is_file()


def model_dir_of(path: Path) -> Path:
    """A run folder means its exported best model, a bundle its models/; anything else is taken as given."""
    if (path / "model" / SPEC_NAME).is_file():
        return path / "model"
    return path / BUNDLE_MODELS if is_bundle(path) else path


def calibration_path(path: Path) -> Path:
    """Where the calibration of a saved model lives: beside its model.json."""
    model_dir = model_dir_of(path)
    if model_dir.is_dir():
        return model_dir / CALIBRATION_FILE
    run = RunFolder.containing(path)
    return run.calibration_path if run else path.parent / CALIBRATION_FILE


def load_model(path: str | Path, expected_model: str | None = None, with_members: bool = True) -> LoadedModel:
    """Load a run folder, model folder, `model.safetensors` or Lightning `.ckpt`, with its calibration
    and (unless `with_members=False`) the ensemble members the calibration or the run names."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir() and not (model_dir_of(path) / SPEC_NAME).is_file():
        raise RunFolderError(f"{path}: neither a run folder (no model/{SPEC_NAME}), a bundle (no models/{SPEC_NAME}) "
                             f"nor a model folder (no {SPEC_NAME}); train into it first, or point at a .safetensors/.ckpt file")
    model, spec = load_saved_model(model_dir_of(path), expected_model=expected_model)
    calibration = Calibration.read(calibration_path(path))
    run = None if is_bundle(path) else RunFolder.containing(path)  # a bundle travels alone, even inside a run
    members = [model]
    if with_members:
        extra = [Path(p) for p in (calibration.members if calibration else [])]
        if run is not None and not extra:
            extra = run.member_dirs()
        members += [load_saved_model(model_dir_of(p), expected_model=spec.name)[0] for p in extra]
    return LoadedModel(model, spec, calibration, members, run, path)
