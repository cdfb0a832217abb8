"""`dualfuse export`: ONNX, TorchScript or a MONAI-style bundle, checked against PyTorch before it lands.

Every export holds two graphs, the deterministic part (images → state) and the stochastic part
(state + one dropout mask per dropout call → logits per task), so that a runtime without dualfuse
draws MC-dropout samples exactly as dualfuse does, plus `dualfuse-export.json`: the model spec,
every input and output with its shape, the masks (module, p, shape per case), the rule dualfuse
draws them by, the calibration (temperature, referral and conformal thresholds per predictor) and
the parity numbers. A bundle adds the whole network as one graph (`models/model.onnx`), the weights
and spec that `dualfuse.load_model` reads, the model card and a README.

Everything is written into a temporary folder beside `--output` and moved into place only after the
parity check passed: a failed export leaves whatever was there untouched.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from dualfuse.api import LoadedModel, load_model
from dualfuse.api.prediction import prediction_loader
from dualfuse.atomic import atomic_write_json
from dualfuse.deploy.bundle import write_bundle
from dualfuse.deploy.graphs import ExportError, SplitModel, split_model
from dualfuse.deploy.masks import DRAW_RULE
from dualfuse.deploy.parity import Parity, check_parity
from dualfuse.deploy.runners import EagerRunner, OnnxRunner, TorchScriptRunner
from dualfuse.evaluation.predictions import Predictor
from dualfuse.version import __version__

FORMATS = ("onnx", "torchscript", "bundle")
MANIFEST = "dualfuse-export.json"
MIN_OPSET = 17
PARITY_IMAGES = 100
DEFAULT_MC_SAMPLES = 30  # for the MC parity check of a model calibrated without MC dropout
_EXAMPLE_ROWS = 2  # traced with 2 rows, checked on chunks of 25: a batch size baked into a graph fails parity


class ParityError(ExportError):
    """The exported graphs disagree with PyTorch by more than the tolerance."""


@dataclass
class ExportResult:
    output: Path
    format: str
    files: list[str]
    parity: Parity
    manifest: dict


def export_model(path: str | Path, format: str, output: str | Path, parity_images: str | Path | None = None,
                 opset: int = MIN_OPSET, parity_count: int = PARITY_IMAGES, mc_samples: int | None = None
                 ) -> ExportResult:
    """Export the model at `path` (run folder, bundle, model folder or weights file) to `output`."""
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if opset < MIN_OPSET:
        raise ExportError(f"--opset must be at least {MIN_OPSET}, got {opset}")
    if parity_count < 1:
        raise ExportError(f"--parity-count must be at least 1, got {parity_count}")
    if mc_samples is not None and mc_samples < 1:
        raise ExportError(f"--mc-samples must be at least 1 for the MC parity check, got {mc_samples}")
    output = Path(output)
    _check_output(output)
    loaded = load_model(path)
    if len(loaded.members) > 1:
        raise ExportError(f"{path}: an ensemble of {len(loaded.members)} models; export each member's model folder "
                          "on its own (an exported graph is one network)")
    images = parity_batch(loaded, parity_images, parity_count)
    example = [x[:_EXAMPLE_ROWS].repeat(_EXAMPLE_ROWS, 1, 1, 1)[:_EXAMPLE_ROWS] for x in images]  # 2 rows, always
    split = split_model(loaded.model, example, list(loaded.spec.tasks), loaded.spec.modalities)
    samples = mc_samples or loaded.mc_samples or DEFAULT_MC_SAMPLES
    temperature = {t: entry["temperature"] for t, entry in (loaded.calibrated(Predictor(1, samples)) or {}).items()}
    staging = output.with_name(f".{output.name}.staging-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        graphs_dir = staging / "models" if format == "bundle" else staging
        graphs_dir.mkdir(parents=True)
        if format == "torchscript":
            files = write_torchscript(split, example, graphs_dir)
            runner = TorchScriptRunner(graphs_dir, files)
        else:
            files = write_onnx(split, example, graphs_dir, opset, whole=format == "bundle")
            runner = OnnxRunner(graphs_dir, files)
        manifest = export_manifest(loaded, split, format, files, opset, samples)
        parity = check_parity(split, EagerRunner(split), runner, images, samples, loaded.seed, temperature,
                              with_model="model" in files)
        manifest = _json_safe({**manifest, "parity": parity.to_dict()})
        if not parity.passed:
            raise ParityError(f"parity check failed, {output} left as it was: {parity.line()}")
        atomic_write_json(graphs_dir / MANIFEST, manifest)
        if format == "bundle":
            write_bundle(staging, loaded, manifest)
        _move_into_place(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    listed = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    return ExportResult(output, format, listed, parity, manifest)


# ----------------------------------------------------------------------------------------------------
# parity images


def parity_batch(loaded: LoadedModel, images: str | Path | None, count: int) -> list[torch.Tensor]:
    """Up to `count` real images, preprocessed as the model's training data: from `images` (files, a
    folder, a manifest or an npz), else the run's own test split. One (N, C, H, W) tensor per modality."""
    spec = loaded.spec
    if images is not None:
        loader = prediction_loader([str(images)], spec, batch_size=count)
    else:
        loader = _test_split_loader(loaded)
    batches, total = [], 0
    for batch in loader:
        batches.append([batch[m] for m in spec.modalities])
        total += len(batch[spec.modalities[0]])
        if total >= count:
            break
    if not batches:
        raise ExportError("no images for the parity check: the source given holds none")
    return [torch.cat([b[i] for b in batches])[:count].float() for i in range(len(spec.modalities))]


def _test_split_loader(loaded: LoadedModel):
    run = loaded.run
    hint = "pass --parity-images PATH (image files, a folder, a CSV manifest or an .npz)"
    if run is None or not run.config_path.is_file():
        raise ExportError(f"{loaded.path}: not a run folder, so there is no test split for the parity check; {hint}")
    try:
        data = run.datamodule(loaded.spec)
    except (OSError, ValueError) as error:
        raise ExportError(f"{run.path}: cannot read the run's test data for the parity check "
                          f"({' '.join(str(error).split())}); {hint}") from None
    if not len(data.datasets.get("test") or ()):
        raise ExportError(f"{run.path}: the run has no test split for the parity check; {hint}")
    return data.eval_dataloader("test")


# ----------------------------------------------------------------------------------------------------
# graphs


def _names(split: SplitModel) -> dict[str, list[str]]:
    states = [f"state_{i}" for i in range(len(split.state_shapes))]
    return {"images": list(split.modalities), "states": states, "masks": [f"mask_{k}" for k in range(len(split.calls))],
            "logits": [f"logits_{task}" for task in split.tasks]}


def write_onnx(split: SplitModel, example: list[torch.Tensor], folder: Path, opset: int, whole: bool = False
               ) -> dict[str, str]:
    """deterministic.onnx and stochastic.onnx (and model.onnx, the whole network, when `whole`)."""
    names = _names(split)
    with torch.no_grad():
        states = list(split.deterministic(*example))
    rows = len(example[0])
    jobs = [("deterministic", split.deterministic, example, names["images"], names["states"], "batch"),
            ("stochastic", split.stochastic, [*states, *split.ones(rows)], names["states"] + names["masks"],
             names["logits"], "rows")]
    if whole:
        jobs.append(("model", split.full, example, names["images"], names["logits"], "batch"))
    files = {}
    for graph, module, args, inputs, outputs, axis in jobs:
        file = folder / f"{graph}.onnx"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tracer and deprecation notes; parity is the real check
                torch.onnx.export(module, tuple(args), str(file), input_names=inputs, output_names=outputs,
                                  opset_version=opset, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={name: {0: axis} for name in inputs + outputs})
        except ExportError:
            raise
        except Exception as error:  # torch's exporter raises many types; the first line says what failed
            raise ExportError(f"ONNX export of the {graph} graph failed (opset {opset}): "
                              f"{_first_line(error)}") from None
        files[graph] = file.name
    return files


def write_torchscript(split: SplitModel, example: list[torch.Tensor], folder: Path) -> dict[str, str]:
    """deterministic.pt and stochastic.pt: traced TorchScript modules."""
    with torch.no_grad():
        states = list(split.deterministic(*example))
    jobs = [("deterministic", split.deterministic, example),
            ("stochastic", split.stochastic, [*states, *split.ones(len(example[0]))])]
    files = {}
    for graph, module, args in jobs:
        file = folder / f"{graph}.pt"
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer notes and TorchScript's deprecation; parity is the check
                traced = torch.jit.trace(module, tuple(args), check_trace=False)
                torch.jit.save(traced, str(file))
        except Exception as error:
            raise ExportError(f"TorchScript trace of the {graph} graph failed: {_first_line(error)}") from None
        files[graph] = file.name
    return files


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# ----------------------------------------------------------------------------------------------------
# the manifest


def export_manifest(loaded: LoadedModel, split: SplitModel, format: str, files: dict[str, str], opset: int,
                    samples: int) -> dict:
    """What a runtime needs besides the graphs: inputs, outputs, masks, how to draw them, calibration."""
    spec, names = loaded.spec, _names(split)
    prep = spec.preprocessing
    images = [{"name": m, "shape": ["batch", prep.in_chans[m], prep.img_size, prep.img_size], "dtype": "float32"}
              for m in split.modalities]
    states = [{"name": n, "shape": ["batch", *shape], "dtype": "float32"}
              for n, shape in zip(names["states"], split.state_shapes)]
    masks = [{"name": n, "shape": ["rows", *call.shape], "dtype": "float32", **call.to_dict()}
             for n, call in zip(names["masks"], split.calls)]
    logits = [{"name": n, "task": t, "classes": spec.tasks[t], "shape": ["rows", len(spec.tasks[t])], "dtype": "float32"}
              for n, t in zip(names["logits"], split.tasks)]
    graphs = {"deterministic": {"file": files["deterministic"], "inputs": images, "outputs": states},
              "stochastic": {"file": files["stochastic"], "inputs": [{**s, "shape": ["rows", *s["shape"][1:]]}
                                                                      for s in states] + masks,
                             "outputs": logits}}
    if "model" in files:
        graphs["model"] = {"file": files["model"], "inputs": images,
                           "outputs": [{**entry, "shape": ["batch", entry["shape"][1]]} for entry in logits]}
    return {
        "format": "dualfuse-export/1",
        "runtime": "onnx" if format != "torchscript" else "torchscript",
        **({"opset": opset} if format != "torchscript" else {}),
        "dualfuse_version": __version__,
        "torch_version": torch.__version__,
        "spec": spec.to_dict(),
        "preprocessing": {"img_size": prep.img_size, "resize": prep.resize, "normalize": prep.normalize,
                          "in_chans": prep.in_chans, "note": "as dualfuse.data.transforms.build_transform(train=False)"},
        "graphs": graphs,
        "mc_dropout": {"samples": samples, "seed": loaded.seed,
                       "rows": "the stochastic graph takes rows = T*B: row t*B + b is sample t of case b",
                       "draw": DRAW_RULE},
        "calibration": _calibration(loaded),
    }


def _calibration(loaded: LoadedModel) -> dict | None:
    """The calibrated single-model predictors ("1x0": softmax, "1xT": T MC samples), per task."""
    calibration = loaded.calibration
    if calibration is None:
        return None
    predictors = {key: {task: {"temperature": entry["temperature"],
                               "referral_threshold": entry["referral"]["threshold"],
                               "referral": entry["referral"], "conformal": entry["conformal"]}
                        for task, entry in tasks.items()}
                  for key, tasks in calibration.predictors.items() if Predictor.from_key(key).members == 1}
    return {"default": calibration.default, "seed": calibration.seed, "predictors": predictors,
            "note": "use the predictor matching the runtime's T (key '1xT'); null thresholds are infinite "
                    "(referral: refer every case; conformal qhat: every class in the set)"}


def _json_safe(value):
    """JSON has no infinity or NaN: such floats become null (the manifest says what null means)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------------
# output folder


def is_export(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() or (folder / "models" / MANIFEST).is_file()


def _check_output(output: Path) -> None:
    """An output may be new, an empty folder, or an earlier export (replaced only once parity passed)."""
    if output.exists() and not output.is_dir():
        raise ExportError(f"--output {output} is a file; give a folder")
    if output.is_dir() and any(output.iterdir()) and not is_export(output):
        raise ExportError(f"--output {output} exists and is not a dualfuse export; give a new or empty folder")
    if not output.parent.is_dir():
        raise ExportError(f"--output {output}: its parent folder does not exist")


def _move_into_place(staging: Path, output: Path) -> None:
    """Swap the finished export in: an earlier export is moved aside first and removed afterwards."""
    old = None
    if output.exists():
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(staging, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def manifest_of(folder: Path) -> dict:
    """Read an export's manifest (a bundle keeps it in models/)."""
    path = folder / MANIFEST if (folder / MANIFEST).is_file() else folder / "models" / MANIFEST
    return json.loads(path.read_text(encoding="utf-8"))
