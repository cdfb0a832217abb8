"""`report(run_dir)`: the clinician's HTML report of a finished run, and its refreshed model card.

The report shows what the saved model does: with the calibration stored by `evaluate --mc-samples`,
or, for an uncalibrated run, with a temperature and a 90%-coverage referral threshold fitted here on
the validation split (and a note saying so).
"""
from __future__ import annotations

from pathlib import Path

from dualfuse.api.calibration import calibration_split, fit_calibrations
from dualfuse.api.loading import load_model
from dualfuse.api.run_folder import RunFolder, RunFolderError
from dualfuse.device import default_device
from dualfuse.evaluation.predictions import Predictor, predict_loader
from dualfuse.evaluation.uncertainty_report import calibrate
from dualfuse.report.content import build_report
from dualfuse.report.html import write_html
from dualfuse.uncertainty.conformal import check_alpha


def report(run_dir: str | Path, mc_samples: int | None = None, gallery_size: int = 6, cam_method: str = "gradcam",
           redact: bool = False, max_tsne_points: int = 1500, device: str | None = None, alpha: float = 0.1) -> Path:
    """Write `RUN_DIR/report.html` and its PNG figures, refresh the model card; returns the HTML path.

    Nothing is written until every figure has been computed, so a failed run never leaves a broken
    report behind.
    """
    check_alpha(alpha)  # before minutes of prediction, not after
    run = RunFolder(run_dir).require_finished()
    config = run.config()
    loaded = load_model(run.path)
    spec, calibration = loaded.spec, loaded.calibration
    predictor = loaded.predictor(mc_samples if mc_samples is not None else (loaded.mc_samples if calibration else 30))
    tta = loaded.tta_config(predictor)
    device = device or default_device()
    redact = redact or run.sensitive()

    data = run.datamodule(spec, config)
    cal_split, cal_note = calibration_split(data)
    splits = [s for s in dict.fromkeys(("val", cal_split, "test")) if s in data.datasets and len(data.datasets[s])]
    if cal_split not in splits:
        raise RunFolderError(f"{run.path}: the report needs a {cal_split} split to calibrate on, and this data has none")
    raw = {s: predict_loader(loaded.members, data.eval_dataloader(s), spec, device, mc_samples=predictor.samples,
                             seed=loaded.seed, tta=tta) for s in splits}

    notes = [cal_note] if cal_note else []
    stored = loaded.calibrated(predictor)
    if stored is not None:
        calibration_source = (f"stored with the model by `dualfuse evaluate` for this predictor ({predictor.label}), "
                              f"fitted on the {calibration.calibration_split} split")
    else:
        stored = fit_calibrations(raw[cal_split], spec, [predictor], None, 0.9, alpha)[predictor.key]
        calibration_source = f"fitted here on the {cal_split} split for {predictor.label} (90% coverage referral target)"
        notes.append("This predictor has not been calibrated with `dualfuse evaluate`; the temperature and referral "
                     "threshold shown were fitted for this report and are not used by `predict`.")
    softmax_temperature = {task: calibrate(raw[cal_split].for_task(task, spec.modality_of(task)), task, Predictor(1, 0),
                                           None, 0.9, alpha)["temperature"] for task in spec.tasks}
    if "test" not in raw:
        notes.append("This data has no test split: figures show the validation split, which also chose the "
                     "checkpoint, so they are optimistic.")
    content = build_report(spec=spec, model=loaded.model, members=loaded.members, config=config, data=data, raw=raw,
                           stored=stored, calibration_source=calibration_source, notes=notes, trained=run.metrics(),
                           predictor=predictor, cal_split=cal_split, softmax_temperature=softmax_temperature,
                           gallery_size=gallery_size, cam_method=cam_method, redact=redact,
                           max_tsne_points=max_tsne_points, device=device, alpha=alpha)
    run.write_model_card(sensitive=redact)
    return write_html(content, run.path)
