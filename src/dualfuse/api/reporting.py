"""`report(run_dir)`: the clinician's HTML report of a finished run, and its refreshed model card.

The report shows what the saved model does: with the calibration stored by `evaluate --mc-samples`,
or, for an uncalibrated run, with a temperature and a 90%-coverage referral threshold fitted here on
the validation split (and a note saying so).
"""
from __future__ import annotations

from pathlib import Path

from dualfuse.api.evaluation import run_datamodule
from dualfuse.api.loading import load_model
from dualfuse.api.run_folder import RunFolder, RunFolderError
from dualfuse.evaluation.predictions import predict_loader
from dualfuse.evaluation.uncertainty_report import calibrate
from dualfuse.report.content import build_report
from dualfuse.report.html import write_html
from dualfuse.training.fit import default_device


def report(run_dir: str | Path, mc_samples: int | None = None, gallery_size: int = 6, cam_method: str = "gradcam",
           redact: bool = False, max_tsne_points: int = 1500, device: str | None = None, alpha: float = 0.1) -> Path:
    """Write `RUN_DIR/report.html` and its PNG figures, refresh the model card; returns the HTML path.

    Nothing is written until every figure has been computed, so a failed run never leaves a broken
    report behind.
    """
    run = RunFolder(run_dir).require_finished()
    config = run.config()
    loaded = load_model(run.path)
    spec, stored_all = loaded.spec, loaded.calibration
    samples = mc_samples if mc_samples is not None else (stored_all["mc_samples"] if stored_all else 30)
    device = device or default_device()
    redact = redact or run.sensitive()

    data = run_datamodule(spec, config, run)
    splits = [s for s in ("val", "test") if s in data.datasets and len(data.datasets[s])]
    if "val" not in splits:
        raise RunFolderError(f"{run.path}: the report needs a validation split to calibrate on, and this data has none")
    seed = stored_all["seed"] if stored_all else config.train.seed
    raw = {s: predict_loader(loaded.members, data.eval_dataloader(s), spec, device, mc_samples=samples, seed=seed)
           for s in splits}

    notes = []
    if stored_all and stored_all["mc_samples"] == samples:
        stored = stored_all["tasks"]
        calibration_source = "stored with the model by `dualfuse evaluate` (fitted on the validation split)"
    else:
        stored = {task: calibrate(raw["val"].for_task(task, spec.modality_of(task)), task, None, 0.9, alpha)
                  for task in spec.tasks}
        calibration_source = "fitted here on the validation split (90% coverage referral target)"
        notes.append("This model has not been calibrated with `dualfuse evaluate --mc-samples`; the temperature "
                     "and referral threshold shown were fitted for this report and are not used by `predict`.")
    if "test" not in raw:
        notes.append("This data has no test split: figures show the validation split, which also chose the "
                     "checkpoint and the calibration, so they are optimistic.")
    content = build_report(spec=spec, model=loaded.model, members=loaded.members, config=config, data=data, raw=raw,
                           stored=stored, calibration_source=calibration_source, notes=notes, trained=run.metrics(),
                           samples=samples, gallery_size=gallery_size, cam_method=cam_method, redact=redact,
                           max_tsne_points=max_tsne_points, device=device, alpha=alpha)
    run.write_model_card(sensitive=redact)
    return write_html(content, run.path)
