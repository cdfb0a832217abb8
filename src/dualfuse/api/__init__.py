"""The public API: what the CLI, the report, benchmarks and a server call.

    load_model(path)                 a ready model: network, typed spec, calibration, ensemble members
    RunFolder(path)                  a run folder's layout, reads and writes
    train(config, resume=False)      fit, evaluate, write the run folder
    evaluate(run, ...)               metrics with CIs; with MC samples, calibration and referral
    predict(run, inputs, output)     probabilities (and uncertainty, referral, conformal sets) as CSV
    explain(run, inputs, output)     Grad-CAM overlays
    report(run)                      the HTML report and model card
    compare(a, b)                    A - B on the same cases: paired AUC and accuracy differences with CIs

`load_model` and `RunFolder` never import Lightning; the others load it when first used.
"""
from __future__ import annotations

import importlib

from dualfuse.api.loading import LoadedModel, load_model
from dualfuse.api.run_folder import RunFolder, RunFolderError

_LAZY = {"train": "dualfuse.api.training", "evaluate": "dualfuse.api.evaluation", "predict": "dualfuse.api.prediction",
         "explain": "dualfuse.api.prediction", "report": "dualfuse.api.reporting",
         "compare": "dualfuse.api.compare"}

__all__ = ["LoadedModel", "RunFolder", "RunFolderError", "compare", "evaluate", "explain", "load_model", "predict", "report",
           "train"]


def __getattr__(name: str):
    # The workflows import Lightning (training) or grad-cam; only load them when they are used.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dualfuse.api' has no attribute {name!r}")
