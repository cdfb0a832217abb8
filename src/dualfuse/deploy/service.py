"""What the server computes, without any HTTP: a batch of decoded cases → one JSON answer per case.

The numbers are `dualfuse predict`'s: the same predictor (every ensemble member, T MC samples as
calibrated or asked), its own temperature, referral threshold and conformal thresholds, and MC masks
drawn per case from a hash of the case's pixels (`content_ids`), so the samples a case gets never
depend on which requests shared its forward pass.

`runtime`: "onnx" runs the exported graphs in onnxruntime (`onnx_path`; several times faster on
CPU for one image), "torch" the PyTorch model, "auto" onnxruntime for a single network unless
`rows` is given, PyTorch otherwise (ensembles, or a failed startup check).

`rows` (PyTorch): how many rows each model call computes. `None` computes exactly the batch, so a
lone request costs one row and 32 concurrent ones share one pass; batched CPU kernels then sum in
an order that depends on the batch size, so a probability can move in the 7th digit with load (so
can onnxruntime's). A fixed value computes chunks of exactly that many rows (padding the last), so
answers are identical bit for bit under any load; `CANONICAL_ROWS` (32) reproduces `dualfuse
predict`, at the cost of 32 rows of compute for a lone request.
"""
from __future__ import annotations

import base64
import hashlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dualfuse.api import load_model
from dualfuse.api.loading import content_ids
from dualfuse.deploy.card import model_card
from dualfuse.deploy.graphs import ExportError
from dualfuse.deploy.onnx_path import OnnxPredictor
from dualfuse.deploy.uploads import UploadDecoder
from dualfuse.evaluation.predictions import (
    Predictions,
    conformal_sets,
    predict_batch,
    refer_flags,
)
from dualfuse.explain.overlays import display_image, explain_batch
from dualfuse.uncertainty.mc_dropout import case_keys
from dualfuse.uncertainty.measures import uncertainty_measures

RUNTIMES = ("auto", "onnx", "torch")
DISPLAY_SIDE = 384  # overlays are enlarged to at least this many pixels, whatever the model's input size

Case = dict[str, torch.Tensor]  # modality → (C, H, W)


class InferenceService:
    """A loaded model, its calibration and its card; `predict` and `explain` run on the caller's thread."""

    def __init__(self, path: str | Path, mc_samples: int | None = None, rows: int | None = None,
                 runtime: str = "auto"):
        if mc_samples is not None and mc_samples < 0:
            raise ValueError(f"--mc-samples must be 0 or more, got {mc_samples}")
        if rows is not None and rows < 1:
            raise ValueError(f"--rows must be at least 1, got {rows}")
        if runtime not in RUNTIMES:
            raise ValueError(f"--runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        if runtime == "onnx" and rows is not None:
            raise ValueError("--rows applies to --runtime torch (onnxruntime computes the batch as it comes)")
        self.loaded = load_model(path)
        self.spec = self.loaded.spec
        self.rows = rows
        # One view per upload: the server does not run test-time augmentation (a calibrated TTA
        # predictor's plain counterpart, K x T, has its own calibration; `evaluate` fits both).
        self.predictor = self.loaded.predictor(mc_samples, tta=1)
        self.stored = None
        if self.loaded.calibration is not None:
            self.stored = self.loaded.calibrated(self.predictor)
            if self.stored is None:  # as `predict` does: never borrow another predictor's thresholds
                warnings.warn(f"{self.predictor.label} is not calibrated yet; calibrating it on the run's "
                              "calibration split", stacklevel=2)
                self.stored = self.loaded.calibrate(self.predictor)
        self.decoder = UploadDecoder(self.spec)
        self.card = model_card(self.loaded)
        self.weights = weights_digest(self.loaded.model)
        self.onnx = None
        if runtime == "onnx" or (runtime == "auto" and rows is None and len(self.loaded.members) == 1):
            try:
                self.onnx = OnnxPredictor(self.loaded, self.predictor.samples)
            except ExportError as error:
                if runtime == "onnx":
                    raise
                warnings.warn(f"serving with PyTorch: {error}", stacklevel=2)

    @property
    def modalities(self) -> list[str]:
        return list(self.spec.modalities)

    def describe(self) -> dict:
        """What the page and /healthz show about the model."""
        return {"model": self.spec.name, "version": self.card.get("version", self.spec.dualfuse_version),
                "weights_sha256": self.weights, "modalities": self.modalities, "tasks": self.spec.tasks,
                "mc_samples": self.predictor.samples, "ensemble_size": self.predictor.members,
                "calibrated": self.stored is not None, "img_size": self.spec.preprocessing.img_size,
                "runtime": self.onnx.runner.name if self.onnx else f"PyTorch {torch.__version__}"}

    def _inputs(self, cases: list[Case]):
        stacked = {m: torch.stack([case[m] for case in cases]) for m in self.modalities}
        return stacked if self.loaded.model.multi_input else stacked[self.modalities[0]]

    @torch.no_grad()
    def predict(self, cases: list[Case]) -> list[dict]:
        """One answer per case: per task the probabilities, predicted class, uncertainty and referral."""
        inputs = self._inputs(cases)
        ids = content_ids(inputs)
        tasks = list(self.spec.tasks)
        if self.onnx is not None:
            members, samples = self.onnx([torch.stack([case[m] for case in cases]) for m in self.modalities], ids)
        else:
            members, samples = predict_batch(self.loaded.members, inputs, case_keys(ids), tasks,
                                             self.predictor.samples, self.loaded.seed, self.rows or len(cases))
        view = Predictions(ids, [""] * len(ids), {t: v[0] for t, v in members.items()}, sample_logits=samples,
                           member_logits=members if len(self.loaded.members) > 1 else {},
                           samples=self.predictor.samples)
        stored = self.stored or {}
        view = view.using(self.predictor, {t: entry["temperature"] for t, entry in stored.items()})
        answers = [{"model": self.spec.name, "version": self.describe()["version"], "weights_sha256": self.weights,
                    "mc_samples": self.predictor.samples, "calibrated": self.stored is not None, "tasks": {}}
                   for _ in cases]
        for task in tasks:
            for answer, entry in zip(answers, self._task_answers(task, view, stored.get(task))):
                answer["tasks"][task] = entry
        return answers

    def _task_answers(self, task: str, view: Predictions, stored: dict | None) -> list[dict]:
        names = self.spec.tasks[task]
        probs = view.probs(task)
        measures = uncertainty_measures(view.sample_probs(task))
        refer = refer_flags(probs, stored) if stored else np.zeros(len(probs), dtype=bool)
        sets = conformal_sets(probs, stored) if stored else None
        threshold = _finite(stored["referral"]["threshold"]) if stored else None
        answers = []
        for i, row in enumerate(probs):
            top = int(row.argmax())
            entry = {"probabilities": {name: float(p) for name, p in zip(names, row)}, "predicted": names[top],
                     "confidence": float(row[top]),
                     "predictive_entropy": float(measures["predictive_entropy"][i]),
                     "mutual_information": float(measures["mutual_information"][i]),
                     "refer": bool(refer[i]), "refer_reasons": [],
                     "conformal_set": [n for n, keep in zip(names, sets[i]) if keep] if sets is not None else None,
                     "referral_threshold": threshold,
                     "conformal_coverage": 1 - stored["conformal"]["lac"]["alpha"] if stored else None}
            if stored:
                entry["refer_reasons"] = _reasons(entry, stored)
            answers.append(entry)
        return answers

    def explain(self, case: Case, task: str | None = None, target_class: str | None = None) -> dict:
        """Grad-CAM of one case: per map, the image as the model saw it and the overlay, as PNG base64."""
        task = task or next(iter(self.spec.tasks))
        if task not in self.spec.tasks:
            raise KeyError(f"unknown task {task!r}; the model predicts {', '.join(self.spec.tasks)}")
        names = self.spec.tasks[task]
        if target_class is not None and target_class not in names:
            raise KeyError(f"unknown class {target_class!r} for task {task!r}; classes are {', '.join(names)}")
        batch = {m: case[m][None] for m in self.modalities} | {"case_id": ["upload"]}
        target = None if target_class is None else names.index(target_class)
        overlays = explain_batch(self.loaded.model, self.spec, batch, task, "gradcam", target)
        maps = []
        for item in overlays:
            modality = item.map_name if item.map_name in self.modalities else self.modalities[0]
            picture = display_image(case[modality], self.spec.preprocessing.normalize)
            maps.append({"map": item.map_name, "modality": modality,
                         "image_png": _png_base64((picture * 255).round().astype(np.uint8)),
                         "overlay_png": _png_base64(np.asarray(Image.open(io.BytesIO(item.png)).convert("RGB")))})
        return {"task": task, "method": "gradcam", "explained_class": names[overlays[0].explained_class],
                "maps": maps}


def _reasons(entry: dict, stored: dict) -> list[str]:
    """Why a case is referred, in plain words (empty when it is not)."""
    reasons = []
    threshold = _finite(stored["referral"]["threshold"])
    if threshold is None:
        reasons.append("the referral threshold refers every case (the target could not be reached on calibration)")
    elif entry["confidence"] < threshold:
        reasons.append(f"confidence {entry['confidence']:.0%} is below the referral threshold {threshold:.0%}")
    size = len(entry["conformal_set"])
    coverage = 1 - stored["conformal"]["lac"]["alpha"]
    if size == 0:
        reasons.append(f"no class is probable enough for the {coverage:.0%} prediction set")
    elif size > 1:
        reasons.append(f"the {coverage:.0%} prediction set holds {size} classes")
    return reasons


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def _png_base64(rgb: np.ndarray, side: int = DISPLAY_SIDE) -> str:
    """An RGB image as base64 PNG, enlarged so its shorter side is at least `side` pixels."""
    image = Image.fromarray(rgb)
    scale = max(1.0, side / min(image.size))
    if scale > 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def weights_digest(model: torch.nn.Module) -> str:
    """The first 16 hex digits of a SHA-256 over the weights: which exact model answered."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
