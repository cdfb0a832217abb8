"""The report as one self-contained HTML file a clinician can open anywhere.

Every figure is inlined as a base64 PNG and the page carries a Content-Security-Policy that allows
nothing but inline styles and `data:` images, so it loads nothing from the network. The same PNGs
are also written to `RUN_DIR/report/` for slides and papers.
"""
from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path

import jinja2

from dualfuse.atomic import atomic_write_bytes
from dualfuse.evaluation.model_card import INTENDED_USE
from dualfuse.explain.overlays import safe_name
from dualfuse.report.content import ReportContent

REPORT_FILE = "report.html"
FIGURES_DIR = "report"
GALLERIES = (
    ("uncertain", "Most uncertain cases",
     "Highest predictive entropy first; each input beside its Grad-CAM for the predicted class: "
     "where the model hesitates."),
    ("confidently_wrong", "Most confidently wrong cases",
     "Wrong predictions with the highest confidence first: the errors that uncertainty alone would not catch."),
)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _view(content: ReportContent, figures_dir: Path) -> tuple[dict, dict[Path, bytes]]:
    """The template's data (figures as data URIs) and the PNG files to write beside it."""
    files: dict[Path, bytes] = {}
    tasks = []
    for section in content.tasks:
        task = asdict(section)
        prefix = safe_name(section.name)
        task["figures"] = {}
        for name, png in section.figures.items():
            files[figures_dir / f"{prefix}_{name}.png"] = png
            task["figures"][name] = _data_uri(png)
        for key, _, _ in GALLERIES:
            cases = []
            for index, case in enumerate(getattr(section, key)):
                images = []
                for map_name, png in case.images:
                    files[figures_dir / f"{prefix}_{key}_{index:02d}_{safe_name(map_name)}.png"] = png
                    images.append((map_name, _data_uri(png)))
                cases.append({"title": case.title, "caption": case.caption, "images": images})
            task[key] = cases
        tasks.append(task)
    splits = list(dict.fromkeys(split for section in content.tasks for row in section.metric_rows
                                for split in row if split != "metric"))
    return {"content": {**asdict(content), "tasks": tasks}, "splits": splits, "galleries": GALLERIES,
            "intended_use": INTENDED_USE}, files


def render_html(content: ReportContent, figures_dir: Path) -> tuple[str, dict[Path, bytes]]:
    """The report as HTML text, and the PNG files to write beside it (nothing is written here)."""
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("dualfuse.report", "templates"), autoescape=True,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    view, files = _view(content, figures_dir)
    return environment.get_template("report.html.j2").render(**view), files


def write_html(content: ReportContent, run_dir: Path) -> Path:
    """Write `RUN_DIR/report.html` and its PNG figures; returns the HTML path.

    Everything is rendered before the first byte is written, and the HTML replaces an older report
    atomically, so a failed run never leaves a broken report behind.
    """
    html, files = render_html(content, run_dir / FIGURES_DIR)
    for path, png in files.items():
        atomic_write_bytes(path, png)
    atomic_write_bytes(run_dir / REPORT_FILE, html.encode("utf-8"))
    return run_dir / REPORT_FILE
