"""`predict` and `explain`: a saved model applied to new images, files or folders, a manifest or an npz."""
from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd
import torch

from dualfuse.api.loading import LoadedModel, load_model
from dualfuse.atomic import atomic_write_bytes
from dualfuse.data.multimodal import PartnerDataset
from dualfuse.data.open import open_inputs
from dualfuse.data.transforms import build_transforms
from dualfuse.device import default_device
from dualfuse.evaluation.predictions import cases_frame, predict_loader
from dualfuse.explain.overlays import explain_batch, safe_name
from dualfuse.models.spec import ModelSpec


def prediction_loader(inputs: list[str], spec: ModelSpec, split: str | None = None, batch_size: int = 64,
                      skip_bad: bool = False) -> torch.utils.data.DataLoader:
    """The inputs, preprocessed exactly as the model's training data was (its spec's preprocessing)."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    prep = spec.preprocessing
    dataset = open_inputs([str(i) for i in inputs], spec.modalities, split, skip_bad=skip_bad)
    dataset.transform = build_transforms(
        spec.modalities, train=False, img_size=prep.img_size, resize=prep.resize, normalize=prep.normalize,
        overrides={m: {"in_chans": prep.in_chans[m]} for m in spec.modalities},
    )
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


def partner_loader(inputs: list[str], spec: ModelSpec, modalities: list[str], pools: dict, partners: int, seed: int,
                   split: str | None = None, batch_size: int = 64, skip_bad: bool = False
                   ) -> torch.utils.data.DataLoader:
    """Zip mode: the inputs as images of `modalities` (one, or each column of a manifest), each beside
    `partners` partner images of the model's other modalities drawn from `pools` (its training split),
    preprocessed as the model's training data was."""
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    prep = spec.preprocessing
    cases = {}
    for modality in modalities:
        dataset = open_inputs([str(i) for i in inputs], [modality], split, skip_bad=skip_bad)
        dataset.transform = build_transforms([modality], train=False, img_size=prep.img_size, resize=prep.resize,
                                             normalize=prep.normalize,
                                             overrides={modality: {"in_chans": prep.in_chans[modality]}})
        cases[modality] = dataset
    tasks = {m: t for t, m in spec.task_modality.items()}
    dataset = PartnerDataset(cases, pools, partners, seed=seed, tasks=tasks, modalities=spec.modalities)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)


def input_modalities(spec: ModelSpec, modality: str | None, inputs: list[str]) -> list[str]:
    """Which of a zip-mode model's modalities the inputs are: `modality` when named, else the
    modality columns of a CSV manifest; a one-line error naming `--modality` when it cannot tell."""
    choices = list(spec.modalities)
    if modality is not None:
        if modality not in choices:
            raise ValueError(f"--modality {modality!r} is not one of this model's modalities ({', '.join(choices)})")
        return [modality]
    if len(inputs) == 1 and str(inputs[0]).lower().endswith((".csv", ".tsv")):
        sep = "\t" if str(inputs[0]).lower().endswith(".tsv") else ","
        try:
            columns = list(pd.read_csv(inputs[0], sep=sep, nrows=0).columns)
        except (OSError, ValueError) as error:
            raise ValueError(f"{inputs[0]}: cannot read the manifest's header ({' '.join(str(error).split())})") from None
        present = [m for m in choices if m in columns]
        if present:
            return present
        raise ValueError(f"{inputs[0]}: no column names one of this zip-mode model's modalities "
                         f"({', '.join(choices)}); name yours with --modality {'|'.join(choices)}")
    raise ValueError(f"this zip-mode model takes images of one of {', '.join(choices)}: say which these are with "
                     f"--modality {'|'.join(choices)}")


def _predict_partners(loaded: LoadedModel, partners: int | None, tta: int | None) -> int:
    """The partner images per case for `predict` (see `predict`), or a one-line error."""
    if not loaded.zip_mode:
        if partners:
            raise ValueError(f"--partners applies to zip-mode models (data.mode: zip) only; {loaded.spec.name} was "
                             "trained in single mode: drop --partners")
        return 0
    partners = loaded.partners if partners is None else int(partners)
    if partners < 0:
        raise ValueError(f"--partners must be 0 or more (0: inputs holding every modality, as given), got {partners}")
    if partners and tta is not None and tta > 1:
        raise ValueError("--tta cannot be combined with a zip-mode model's partners: it averages over --partners K "
                         "partner images instead (drop --tta)")
    return partners


def _output_file(output: str | Path) -> Path:
    output = Path(output)
    if output.is_dir():
        raise IsADirectoryError(f"--output {output} is a directory; give the CSV file to write, e.g. "
                                f"{output / 'predictions.csv'}")
    return output


def predict(checkpoint: str | Path, inputs: list[str], output: str | Path, split: str | None = None,
            batch_size: int | None = None, mc_samples: int | None = None, skip_bad: bool = False,
            tta: int | None = None, modality: str | None = None, partners: int | None = None) -> pd.DataFrame:
    """Class probabilities and the predicted class for every input case, written as CSV to `output`.

    The predictor is every ensemble member with `mc_samples` MC samples and `tta` test-time
    augmentation views (defaults: as calibrated). If
    the model was calibrated (`evaluate --mc-samples`), that predictor's own temperature, referral
    threshold and conformal thresholds are applied (fitted now on the run's calibration split if
    `evaluate` did not fit this predictor): the output gains uncertainty columns, `<task>_refer`
    ("send this case to a specialist") and `<task>_set` (the conformal prediction set, LAC). A case's
    numbers do not depend on the batch it is in. With `skip_bad`, unreadable inputs are listed with
    their reason in an `error` column and the rest are predicted.

    A zip-mode model (DRIFA-Net's protocol) predicts images of one dataset: name their `modality`
    (inferred from a CSV manifest's columns), and each image is predicted beside `partners` K partner
    images of every other modality, drawn by (seed, case id, k) from the run's training split (the
    run folder's config and split files; default K: as calibrated, else `DEFAULT_PARTNERS`), and
    averaged over them; one row per image with its `modality` and its own task's columns.
    `partners=0` predicts inputs that hold every modality (a manifest) as given.
    """
    output = _output_file(output)
    if mc_samples is not None and mc_samples < 0:
        raise ValueError(f"--mc-samples must be 0 or more, got {mc_samples}")
    loaded = load_model(checkpoint)
    spec = loaded.spec
    if tta is not None and tta < 1:
        raise ValueError(f"--tta must be at least 1 (1: no test-time augmentation), got {tta}")
    partners = _predict_partners(loaded, partners, tta)
    if modality is not None and not partners:
        raise ValueError("--modality names the images of a zip-mode model predicted with partners; "
                         + ("drop --modality or --partners 0" if loaded.zip_mode else "this model is single mode: drop it"))
    modalities = input_modalities(spec, modality, [str(i) for i in inputs]) if partners else []
    pools = loaded.partner_pools() if partners else {}
    predictor = loaded.predictor(mc_samples, tta, partners)
    stored = None
    if loaded.calibration is not None:
        stored = loaded.calibrated(predictor)
        if stored is None:  # never borrow another predictor's temperature and thresholds: fit this one
            warnings.warn(f"{predictor.label} is not calibrated yet; calibrating it on the run's calibration split",
                          stacklevel=2)
            stored = loaded.calibrate(predictor)
    if partners:
        loader = partner_loader([str(i) for i in inputs], spec, modalities, pools, partners, loaded.seed, split,
                                batch_size or 64, skip_bad=skip_bad)
    else:
        loader = prediction_loader([str(i) for i in inputs], spec, split, batch_size or 64, skip_bad=skip_bad)
    predictions = predict_loader(loaded.members, loader, spec, default_device(), mc_samples=predictor.samples,
                                 seed=loaded.seed, tta=loaded.tta_config(predictor))
    # A deployed model predicts every task it has, whatever labels the input carries.
    predictions.labels = {}
    predictions = predictions.using(predictor, {t: entry["temperature"] for t, entry in (stored or {}).items()})
    frame = cases_frame(predictions, spec, calibration=stored)
    skipped = getattr(loader.dataset, "skipped", [])
    if skip_bad:
        frame["error"] = ""
        if skipped:
            shown = [_shown(where, inputs) for where, _ in skipped]
            bad = pd.DataFrame({"case_id": shown,
                                "error": [reason.replace(where, name) for (where, reason), name in zip(skipped, shown)]})
            frame = pd.concat([frame, bad], ignore_index=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(output, frame.to_csv(index=False).encode())
    frame.attrs["skipped"] = len(skipped)
    return frame


def _shown(where: str, inputs: list[str]) -> str:
    """A skipped file as the output may name it: relative to the folder given, never absolute."""
    path = Path(where.split("#", 1)[0])
    for root in inputs:
        try:
            return path.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            continue
    return path.name


def explain(checkpoint: str | Path, inputs: list[str], output: str | Path, method: str = "gradcam",
            target_class: str | None = None, task: str | None = None, batch_size: int = 16) -> pd.DataFrame:
    """Write one overlay PNG per case and map (one map per modality for multi-input models) to
    `output`, plus `explanations.csv` listing each file with the explained and predicted class."""
    loaded = load_model(checkpoint, with_members=False)
    model, spec = loaded.model, loaded.spec
    task = task or next(iter(spec.tasks))
    if task not in spec.tasks:
        raise ValueError(f"unknown task {task!r}; the model predicts {list(spec.tasks)}")
    names = spec.tasks[task]
    if target_class is not None and target_class not in names:
        raise ValueError(f"unknown class {target_class!r} for task {task!r}; classes are {names}")
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} is a file; give a folder for the overlay PNGs")
    loader = prediction_loader(inputs, spec, batch_size=batch_size)
    output.mkdir(parents=True, exist_ok=True)
    rows, used = [], {}
    for batch in loader:
        target = None if target_class is None else names.index(target_class)
        for item in explain_batch(model, spec, batch, task, method, target):
            stem = used.setdefault(item.case_id, _unique_stem(safe_name(item.case_id), set(used.values())))
            file = output / f"{stem}_{item.map_name}_{method}.png"
            atomic_write_bytes(file, item.png)
            rows.append({"case_id": item.case_id, "map": item.map_name, "file": file.name, "task": task,
                         "explained_class": names[item.explained_class], "predicted_class": names[item.predicted_class],
                         "probability": item.probability})
    frame = pd.DataFrame(rows)
    atomic_write_bytes(output / "explanations.csv", frame.to_csv(index=False).encode())
    return frame


def _unique_stem(stem: str, taken: set[str]) -> str:
    while stem in taken:
        stem += "_"
    return stem
