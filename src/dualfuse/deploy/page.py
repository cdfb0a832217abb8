"""The page at `/`: one self-contained HTML file (inline CSS and JavaScript, images as data: URLs).

Its Content-Security-Policy allows exactly the inline style and script it ships (by SHA-256),
images from data: URLs, and requests to the server itself; nothing else can load or run, so the
page makes no request beyond the server whatever a response contains.
"""
from __future__ import annotations

import base64
import hashlib
import json
from importlib import resources

import jinja2

_TEMPLATES = resources.files("dualfuse.deploy").joinpath("templates")
CSS = _TEMPLATES.joinpath("page.css").read_text(encoding="utf-8")
JS = _TEMPLATES.joinpath("page.js").read_text(encoding="utf-8")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; script-src {_hash(JS)}; style-src {_hash(CSS)}; img-src data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff",
           "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def render_page(about: dict, max_upload_mb: float) -> str:
    """The page for one served model (`InferenceService.describe()`)."""
    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    template = environment.from_string(_TEMPLATES.joinpath("index.html.j2").read_text(encoding="utf-8"))
    tasks = "; ".join(f"{task}: {', '.join(names)}" for task, names in about["tasks"].items())
    if about["calibrated"]:
        line = (f"Probabilities are the mean of {about['mc_samples']} MC-dropout samples"
                f"{' per ensemble member' if about['ensemble_size'] > 1 else ''}, temperature-calibrated; the "
                "referral threshold and conformal prediction sets were fitted on held-out data.")
    else:
        line = "This model is not calibrated: probabilities are not temperature-scaled and no referral threshold exists."
    return template.render(model=about["model"], modalities=about["modalities"],
                           modalities_json=json.dumps(about["modalities"]), tasks_line=tasks,
                           max_upload_mb=f"{max_upload_mb:g}", uncertainty_line=line, css=CSS, js=JS)
