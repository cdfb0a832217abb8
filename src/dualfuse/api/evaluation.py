"""`evaluate(run)`: metrics with confidence intervals for a saved model, and its calibration.

With `mc_samples` T > 0 or several members (K), every case gets T MC-dropout samples per member and
the metrics use the mean of all K·T. Then every predictor those support (softmax, MC, ensemble,
ensemble x MC) gets its own temperature, referral threshold (for `target_accuracy`, else
`target_coverage`, default 90%) and conformal thresholds, fitted on the calibration split (`cal`, or
`val` with a note), stored beside the model (`uncertainty.json`, used by `predict`); calibration,
selective prediction, conformal coverage with its CI, a comparison of the predictors and (given
`ood`, another dataset) out-of-distribution AUROC are added to metrics.json.

A zip-mode model (DRIFA-Net's protocol) is judged per task on its own modality's images of each
split, each once, beside `partners` K partner images of every other modality drawn from the training
split (by seed, case and k; see `PartnerDataset`); its probabilities are the mean over the K
partners, so partner spread is part of its uncertainty and of every predictor it calibrates.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from dualfuse.api.calibration import Calibration, calibration_split, fit_calibrations
from dualfuse.api.loading import DEFAULT_PARTNERS, calibration_path, load_model
from dualfuse.api.prediction import prediction_loader
from dualfuse.api.run_folder import RunFolder, RunFolderError
from dualfuse.config import RunConfig
from dualfuse.data.datamodule import ClassificationDataModule
from dualfuse.device import default_device
from dualfuse.evaluation.predictions import Predictions, Predictor, cases_frame, predict_loader
from dualfuse.evaluation.summary import has_patient_ids, split_metrics
from dualfuse.evaluation.uncertainty_report import compare_predictors, predictors_of, task_report
from dualfuse.models.spec import ModelSpec
from dualfuse.uncertainty.conformal import check_alpha
from dualfuse.uncertainty.selective import DEFAULT_GUARANTEE, check_target
from dualfuse.uncertainty.tta import TTAConfig


def evaluate_datamodule(models: list, spec: ModelSpec, data: ClassificationDataModule, config: RunConfig,
                        device: str | None = None, mc_samples: int = 0, extra_splits: tuple[str, ...] = (),
                        tta: TTAConfig | None = None, partners: int = 0
                        ) -> tuple[dict, pd.DataFrame, dict[str, Predictions]]:
    """Predict every configured split; return `{task: {split: metrics}}`, the per-case table of the
    configured splits, and the raw predictions of every split predicted (`extra_splits` too). With
    `partners` K > 0 (zip mode) every image of a split is a case, predicted beside K partners from
    the training split; 0 keeps the split's one zip pairing."""
    metrics: dict[str, dict] = {task: {} for task in spec.tasks}
    frames, raw = [], {}
    for split in dict.fromkeys([*config.eval.splits, *extra_splits]):
        dataset = data.datasets.get(split)
        if dataset is None or len(dataset) == 0:
            continue
        loader = (data.partner_dataloader(split, partners, seed=config.train.seed) if partners
                  else data.eval_dataloader(split))
        predictions = predict_loader(models, loader, spec, device or default_device(),
                                     mc_samples=mc_samples, seed=config.train.seed, tta=tta)
        raw[split] = predictions
        if split not in config.eval.splits:
            continue
        per_task = split_metrics(predictions, spec, has_patient_ids(dataset), config.eval, config.train.seed)
        for task, values in per_task.items():
            metrics[task][split] = values
        frames.append(cases_frame(predictions, spec, split))
    return metrics, pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(), raw


def evaluate(checkpoint: str | Path, config: RunConfig | None = None, splits: list[str] | None = None,
             output: str | Path | None = None, mc_samples: int = 0, ensemble: list[str] | None = None,
             target_accuracy: float | None = None, target_coverage: float | None = None, alpha: float = 0.1,
             ood: str | None = None, tta: int = 1, partners: int | None = None, calibrate: bool = False,
             guarantee: float | None = DEFAULT_GUARANTEE) -> dict:
    """Evaluate a saved model on its run's splits (or the data of `config`), with confidence intervals.

    `tta` A > 1 adds test-time augmentation views (small shifts; flips only where the training
    augmentation used them, because laterality can matter).

    `target_accuracy` picks the referral threshold whose accepted cases are at least that accurate
    with probability `guarantee` (default 0.95; a Clopper-Pearson bound certified on the calibration
    split, so a small split refers more rather than promise what it cannot); `guarantee=None` reads the
    threshold off the calibration cases' own accuracy instead.

    `partners` K (zip-mode models only; default `DEFAULT_PARTNERS`): each case is predicted beside K
    partner images per other modality from the training split and averaged over them; 0 keeps each
    split's single zip pairing. Test-time augmentation does not combine with zip mode.

    With `calibrate` (the calibrated softmax: the default uncertainty source, see
    benchmarks/uncertainty.py), MC samples or several members (the run's own `members/` and
    `ensemble`), every predictor the predictions support (softmax, MC, ensemble, ensemble x MC) is
    calibrated on the calibration split and compared, and the calibration of all of them is stored
    beside the model for `predict`. Writes
    `metrics.json` and `predictions.csv` to `output` (default: `RUN_DIR/evaluation`).
    """
    for name, target in (("target_accuracy", target_accuracy), ("target_coverage", target_coverage)):
        if target is not None:  # before the model is loaded or any prediction made, not after
            check_target(name, target)
    check_alpha(alpha)
    loaded = load_model(checkpoint, expected_model=config.model.name if config else None)
    spec, run = loaded.spec, loaded.run
    members = loaded.members + [load_model(p, expected_model=spec.name, with_members=False).model
                                for p in (ensemble or [])]
    if config is None:
        if run is None:
            raise RunFolderError(f"{checkpoint}: no config.yaml in its run folder; pass --config with the data to use")
        config = run.config()
    if splits:
        config.eval.splits = list(splits)
    data = run.datamodule(spec, config) if run else RunFolder.datamodule_for(spec, config)
    if tta < 1:
        raise ValueError(f"--tta must be at least 1 (1: no test-time augmentation), got {tta}")
    partners = _partners(spec, partners, tta, ood)
    augment = config.data.augment or {}
    tta_config = TTAConfig(views=tta, translate=float(augment.get("translate", 0.05)),
                           hflip=float(augment.get("hflip_prob", 0.0)) > 0,
                           vflip=float(augment.get("vflip_prob", 0.0)) > 0) if tta > 1 else None
    cal_split, cal_note = calibration_split(data)
    calibrating = calibrate or bool(mc_samples) or len(members) > 1 or tta > 1 or partners > 1
    metrics, frame, raw = evaluate_datamodule(members, spec, data, config, mc_samples=mc_samples,
                                              extra_splits=("val", cal_split) if calibrating else (), tta=tta_config,
                                              partners=partners)
    summary: dict = {"model": spec.name, "checkpoint": str(checkpoint), "tasks": metrics}
    if spec.task_modality:
        summary["partners"] = partners
    out_dir = Path(output) if output else (run.evaluation_dir if run else Path(checkpoint).parent / "evaluation")
    if calibrating:
        if cal_split not in raw:
            raise ValueError(f"calibration needs a {cal_split} split, and this data has none")
        ood_predictions = None
        if ood:
            loader = prediction_loader([ood], spec, split="test" if ood.endswith(".npz") else None)
            ood_predictions = predict_loader(members, loader, spec, default_device(), mc_samples, config.train.seed,
                                             tta=tta_config)
        predictors = predictors_of(raw[cal_split])
        used = raw[cal_split].drawn
        calibrations = fit_calibrations(raw[cal_split], spec, predictors, target_accuracy, target_coverage, alpha,
                                        guarantee)
        uncertainty = {}
        softmax_key = Predictor(partners=1 if partners else 0).key  # the first member's softmax (first partner)
        for task in spec.tasks:
            views = {split: p.for_task(task, spec.modality_of(task)) for split, p in raw.items()}
            ood_view = ood_predictions.for_task(task, spec.modality_of(task)) if ood_predictions else None
            uncertainty[task] = task_report(views, task, calibrations[used.key][task], alpha, cal_split,
                                            softmax_temperature=calibrations[softmax_key][task]["temperature"], ood=ood_view)
            uncertainty[task]["predictors"] = compare_predictors(views, task, {k: c[task] for k, c in calibrations.items()})
        summary.update(mc_samples=mc_samples, ensemble_size=len(members), predictor=used.key,
                       calibration_split=cal_split, calibration_note=cal_note, uncertainty=uncertainty)
        if ood:
            summary["ood_source"] = str(ood)
        # The table shows what `predict` will: the calibrated predictor, the referral decision, the set.
        frame = pd.concat([
            cases_frame(raw[s].using(used, {t: c["temperature"] for t, c in calibrations[used.key].items()}),
                        spec, s, calibrations[used.key])
            for s in config.eval.splits if s in raw], ignore_index=True)
        Calibration(seed=config.train.seed, default=used.key, predictors=calibrations,
                    members=[str(Path(p).resolve()) for p in (ensemble or [])], calibration_split=cal_split,
                    calibration_note=cal_note, tta=tta_config.to_dict() if tta_config else {}
                    ).write(calibration_path(Path(checkpoint)))
    out_dir.mkdir(parents=True, exist_ok=True)
    (run or RunFolder(out_dir)).write_results(summary, frame, out_dir)
    if run is not None and run.is_finished():
        run.write_model_card()  # now with calibration and referral
    summary["output"] = str(out_dir)
    return summary


def _partners(spec: ModelSpec, partners: int | None, tta: int, ood: str | None) -> int:
    """The partner images per case for this model (see `evaluate`), or a one-line error."""
    if not spec.task_modality:
        if partners:
            raise ValueError(f"--partners applies to zip-mode models (data.mode: zip) only; {spec.name} was trained "
                             "in single mode: drop --partners")
        return 0
    partners = DEFAULT_PARTNERS if partners is None else int(partners)
    if partners < 0:
        raise ValueError(f"--partners must be 0 or more (0: each split's one zip pairing), got {partners}")
    if partners and tta > 1:
        raise ValueError("--tta cannot be combined with a zip-mode model's partners: it averages over --partners K "
                         "partner images instead (drop --tta)")
    if partners and ood:
        raise ValueError("--ood is not supported for a zip-mode model with partners (its OOD data has no "
                         "modality to pair); drop --ood or pass --partners 0")
    return partners
