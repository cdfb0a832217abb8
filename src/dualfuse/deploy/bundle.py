"""A MONAI-bundle-style folder that `dualfuse.load_model`, `dualfuse predict` and `dualfuse serve` accept.

configs/metadata.json      the model card (MONAI bundle metadata keys)
models/model.safetensors   the weights, models/model.json the spec that rebuilds the network
models/uncertainty.json    the calibration (when the model was calibrated)
models/model.onnx          the whole network, eval mode (images → logits per task)
models/deterministic.onnx, models/stochastic.onnx, models/dualfuse-export.json   exact MC dropout
docs/README.md             what it is, what it expects, how to run it
"""
from __future__ import annotations

import json
from pathlib import Path

from dualfuse.api import LoadedModel
from dualfuse.api.loading import BUNDLE_MODELS
from dualfuse.api.run_folder import CALIBRATION_FILE
from dualfuse.atomic import atomic_write_bytes
from dualfuse.deploy.card import BUNDLE_CARD, model_card
from dualfuse.evaluation.model_card import card_json
from dualfuse.models.saved import save_model


def write_bundle(folder: Path, loaded: LoadedModel, manifest: dict) -> None:
    """Everything but the graphs (already in `folder/models`): weights, spec, calibration, card, README."""
    models = folder / BUNDLE_MODELS
    save_model(models, loaded.model, loaded.spec)
    if loaded.calibration is not None:
        calibration = loaded.calibration.to_dict()
        calibration["members"] = []  # a bundle is one network; ensembles are refused before this
        atomic_write_bytes(models / CALIBRATION_FILE, (json.dumps(calibration, indent=2) + "\n").encode())
    card = model_card(loaded)
    atomic_write_bytes(folder / BUNDLE_CARD, card_json(card))
    atomic_write_bytes(folder / "docs" / "README.md", readme(card, manifest).encode())


def readme(card: dict, manifest: dict) -> str:
    """docs/README.md: the card's essentials and how to run the bundle with and without dualfuse."""
    spec = manifest["spec"]
    prep = manifest["preprocessing"]
    parity = manifest["parity"]
    diffs = parity["max_abs_diff"]
    inputs = "\n".join(f"- `{m}`: float32 (batch, {c}, {prep['img_size']}, {prep['img_size']}), "
                       f"resize `{prep['resize']}`, normalize `{prep['normalize']}`" for m, c in prep["in_chans"].items())
    outputs = "\n".join(f"- `logits_{task}`: {', '.join(names)}" for task, names in spec["tasks"].items())
    masks = manifest["graphs"]["stochastic"]["inputs"]
    mask_lines = "\n".join(f"- `{m['name']}`: dropout `{m['module']}`, p = {m['p']}, shape per case {m['shape_per_case']}"
                           for m in masks if m["name"].startswith("mask_"))
    calibration = manifest.get("calibration")
    if calibration:
        default = calibration["predictors"].get(calibration["default"], {})
        calibrated = "\n".join(f"- `{task}`: temperature {entry['temperature']:.3f}, referral threshold "
                               f"{_number(entry['referral_threshold'])}, conformal LAC qhat "
                               f"{_number(entry['conformal']['lac']['qhat'])} (alpha {entry['conformal']['lac']['alpha']})"
                               for task, entry in default.items())
        calibration_text = (f"Calibrated predictor `{calibration['default']}` (members x MC samples), seed "
                            f"{calibration['seed']}:\n\n{calibrated}\n\nRefer a case when its top probability is below "
                            "the referral threshold or its conformal set is empty or holds more than one class.")
    else:
        calibration_text = "Not calibrated: run `dualfuse evaluate RUN --mc-samples 30` on the run before exporting."
    return f"""# {card['name']}: a dualfuse bundle

{card['description']}

**Task.** {card['task']}

**Intended use.** {card['intended_use']}

**Training data.** {card['data_source']}

## Files

- `configs/metadata.json`: the model card (performance with 95% confidence intervals, calibration, referral)
- `models/model.safetensors` + `models/model.json`: the weights and the spec that rebuilds the network
- `models/model.onnx`: the whole network in eval mode (images → logits per task)
- `models/deterministic.onnx` + `models/stochastic.onnx` + `models/dualfuse-export.json`: MC dropout
  exactly as dualfuse draws it (the JSON gives every shape, the mask rule, the calibration and the parity numbers)

## Inputs and outputs

{inputs}

{outputs}

Dropout masks of the stochastic graph (values 0 or 1/(1-p); all ones = eval mode):

{mask_lines}

## Calibration

{calibration_text}

## Parity (checked when this bundle was written)

{parity['runtime']} vs {parity['reference']} on {parity['images']} images: max |Δp| deterministic
{diffs['deterministic']:.2e}, MC mean over {parity['mc_samples']} samples with the same masks {diffs['mc_mean']:.2e},
whole-network graph {diffs.get('model', float('nan')):.2e} (tolerance {parity['tolerance']:.0e}).

## Use

```bash
dualfuse predict BUNDLE scans/ --output predictions.csv
dualfuse serve BUNDLE --port 8000
```

```python
import dualfuse
loaded = dualfuse.load_model("BUNDLE")
```

With onnxruntime alone: preprocess as above, run `models/model.onnx`, softmax the logits divided by the
temperature; for MC dropout follow `mc_dropout.draw` in `models/dualfuse-export.json`.
"""


def _number(value) -> str:
    return "none (infinite)" if value is None else f"{value:.4f}"
