"""Issue 17: every kind of bad input, driven through the `dualfuse` command line, in one table.

Each row of `CASES` is `(kind_id, build, expected_status, expected_line)`. `build(tmp_path, ctx)`
writes the bad input under `tmp_path` and returns the argv for `dualfuse.cli.main`. One test runs
every row and checks what the user sees: the exit status, the expected line, never a traceback; for
an error (exit 2) exactly one error line and nothing the user already had replaced or added (no run
folder, no checkpoints, the earlier predictions CSV keeps its bytes). Exit 1 is a `data check`
finding; exit 0 a documented result (a listed skip, a withheld path), checked further by the row's
`ctx.check(...)` callables.

A kind is the part of `kind_id` before `[`; a kind read by several commands has one row per command.
The README's "Reliability: bad input" section states both counts; `test_readme_counts_match_the_table`
keeps them in step.

Resume rows continue a finished one-epoch run for a second epoch; a crash in mid-training and its
resume (same metrics as an uninterrupted run, the whole metrics.csv history) are checked in
tests/training/test_train.py::test_resume_after_interruption_reproduces_uninterrupted_run. Each
reader's `DataError` lines are in tests/data/test_bad_inputs.py, every config key's range in
tests/test_configs.py.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shutil
import sys
import warnings
from pathlib import Path

import lightning.pytorch  # noqa: F401  (its log handler is made now, on a stream that outlives each test)
import numpy as np
import pandas as pd
import pytest
import safetensors.torch
from bad_files import class_folders, deny_listing, fake_bomb_png, good_png, manifest, rt_dose, two_frame_dicom
from conftest import BREAST_CLASSES, REPO_ROOT
from PIL import Image

SMALL_MODEL = json.dumps({"backbone": "resnet18", "in_chans": 1})
EARLIER_PREDICTIONS = b"case_id,label_pred\nearlier,benign\n"


def stray_label_manifest(tmp_path: Path) -> Path:
    """200 cases labelled 0/1 and one labelled 7."""
    good_png(tmp_path / "img" / "stray.png", 77)
    rows = "".join(f"c{i},img/{i % 6}.png,{i % 6 % 2}\n" for i in range(200)) + "c200,img/stray.png,7\n"
    return manifest(tmp_path, rows)


# --- the shared pieces a row builds on ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(module_tmp) -> Path:
    """An untrained timm resnet18 (1 channel, 32 px) saved as a model folder: enough for predict."""
    from dualfuse.models import ModelSpec, Preprocessing, create_model
    from dualfuse.models.saved import save_model

    kwargs = {"backbone": "resnet18", "num_classes": {"label": 2}, "in_chans": 1}
    model = create_model("timm_classifier", **kwargs).eval()
    spec = ModelSpec(name="timm_classifier", kwargs=kwargs, tasks={"label": ["benign", "malignant"]},
                     modalities=["image"],
                     preprocessing=Preprocessing(img_size=32, resize="resize", normalize="zscore", in_chans={"image": 1}))
    return save_model(module_tmp("tiny") / "model", model, spec)


@pytest.fixture(scope="module")
def breast_run(data_root, module_tmp) -> Path:
    """One epoch on 32 BreastMNIST cases: a finished run folder for the report and resume rows."""
    from dualfuse.api import train
    from dualfuse.config import parse_run_args

    output = module_tmp("breast") / "run"
    config, _ = parse_run_args(train_argv(breast_source(data_root), output))
    train(config)
    return output


class Context:
    """What a row's `build` may use; `check` registers a callable run after the command (given
    the captured stdout and stderr)."""

    def __init__(self, request, monkeypatch, data_root: Path):
        self.request, self.monkeypatch, self.data_root = request, monkeypatch, data_root
        self.checks = []

    @property
    def model(self) -> Path:
        return self.request.getfixturevalue("tiny_model")

    @property
    def run(self) -> Path:
        return self.request.getfixturevalue("breast_run")

    def check(self, function) -> None:
        self.checks.append(function)


def breast_source(data_root: Path, **extra) -> dict:
    return {"format": "medmnist", "path": str(data_root / "medmnist" / "breastmnist.npz"), "classes": BREAST_CLASSES,
            **extra}


def train_argv(source: dict | Path, output: Path, *extra: str, model_kwargs: str = SMALL_MODEL, **source_keys) -> list[str]:
    """Tiny real training: resnet18 at 32 px, 32 training cases, one epoch (about 10 s on one core)."""
    if isinstance(source, Path):
        source = {"format": "manifest" if source.suffix == ".csv" else "folder", "path": str(source), **source_keys}
    return ["--model.name", "timm_classifier", "--model.kwargs", model_kwargs,
            "--data.sources", json.dumps({"x": source}), "--data.img_size", "32", "--data.max_train_cases", "32",
            "--train.epochs", "1", "--eval.n_bootstrap", "10", "--data.num_workers", "0",
            "--train.progress_bar", "false", "--output", str(output), *extra]


def train(source, tmp_path: Path, *extra: str, **keys) -> list[str]:
    return ["train", *train_argv(source, tmp_path / "run", *extra, **keys)]


def data_check(source: Path, *extra: str) -> list[str]:
    """`data check` printing its JSON report on stdout (where a finding's line is looked for)."""
    return ["data", "check", str(source), "--workers", "1", "--json", "-", *extra]


def predict(ctx: Context, tmp_path: Path, *inputs, model: Path | None = None, extra: tuple[str, ...] = ()) -> list[str]:
    """Predict into a CSV the user already has (an error must leave it as it was)."""
    output = tmp_path / "out" / "predictions.csv"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(EARLIER_PREDICTIONS)
    return ["predict", str(model or ctx.model), *map(str, inputs), "--output", str(output), *extra]


def scans(tmp_path: Path, n: int = 3) -> Path:
    folder = tmp_path / "scans"
    for k in range(n):
        good_png(folder / f"case{k}.png", k)
    return folder


def written_csv(tmp_path: Path) -> pd.DataFrame:
    return pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)


def no_absolute_path(text: str, *roots: Path) -> None:
    for root in roots:
        for form in {str(root), str(root.resolve())}:
            assert form not in text, f"{form} shown in {text[:500]}"


# --- the rows: tracebacks (each must become one line naming the file or key, exit 2) --------------------
def bomb_folder(tmp_path, ctx):
    return fake_bomb_png(class_folders(tmp_path / "root", per_class=12) / "a" / "huge.png").parent.parent


def unlistable_folder(tmp_path, ctx):
    root = class_folders(tmp_path / "root")
    deny_listing(root / "b", ctx.monkeypatch)
    ctx.request.addfinalizer(lambda: (root / "b").chmod(0o755))
    return data_check(root)


def predict_output_is_a_folder(tmp_path, ctx):
    argv = predict(ctx, tmp_path, scans(tmp_path))
    argv[argv.index("--output") + 1] = str(tmp_path / "out")
    return argv


# --- silent results ----------------------------------------------------------------------------------
def skip_bad_in_train(tmp_path, ctx):
    root = bomb_folder(tmp_path, ctx)
    ctx.check(lambda out, err: json.loads((tmp_path / "run" / "metrics.json").read_text())["epochs_trained"] == 1)
    return train(root, tmp_path, "--data.skip_bad", "true")


def broken_symlink(tmp_path, ctx):
    root = class_folders(tmp_path / "root")
    (root / "a" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    return data_check(root)


def suffix_twins(tmp_path, ctx):
    root = class_folders(tmp_path / "root")
    good_png(root / "a" / "twin.png", 50)
    Image.fromarray(np.random.default_rng(51).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / "a" / "twin.jpg")
    return data_check(root)  # 8 + 2 images: both twins stay cases


def identical_images_two_labels(tmp_path, ctx):
    root = class_folders(tmp_path / "root")
    shutil.copy(root / "a" / "0.png", root / "b" / "copy_of_a0.png")
    return data_check(root)


def single_image_class(tmp_path, ctx):
    root = class_folders(tmp_path / "root", per_class=30)
    good_png(root / "c" / "only.png", 999)
    return train(root, tmp_path)


def nan_weights(tmp_path, ctx):
    model = tmp_path / "model"
    shutil.copytree(ctx.model, model)
    weights = safetensors.torch.load_file(model / "model.safetensors")
    name = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[name].view(-1)[0] = float("nan")
    safetensors.torch.save_file(weights, model / "model.safetensors")
    return predict(ctx, tmp_path, scans(tmp_path), model=model)


def plain_pickle(tmp_path, ctx):
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"state_dict": {"w": [1.0, 2.0]}}, protocol=4))
    return predict(ctx, tmp_path, scans(tmp_path), model=legacy)


def latin1_manifest(tmp_path, ctx):
    path = tmp_path / "latin1.csv"
    path.write_bytes("case_id,image\nc1,r\xe9sum\xe9.png\n".encode("latin-1"))
    return predict(ctx, tmp_path, path)


def one_bad_file(tmp_path, ctx, *extra):
    folder = scans(tmp_path)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return predict(ctx, tmp_path, folder, extra=extra)


def one_bad_file_skipped(tmp_path, ctx):
    def listed(out, err):
        frame = written_csv(tmp_path)
        bad = frame[frame["error"] != ""]
        assert bad["case_id"].tolist() == ["broken.png"] and "broken.png" in bad["error"].iloc[0], frame
        assert (frame[frame["error"] == ""]["label_pred"] != "").sum() == 3, frame

    ctx.check(listed)
    return one_bad_file(tmp_path, ctx, "--skip-bad")


# --- resume and records ------------------------------------------------------------------------------
def stale_temporary_on_resume(tmp_path, ctx):
    """A `train` killed while writing best.ckpt left its temporary file; `--resume` removes it."""
    run = tmp_path / "run"
    shutil.copytree(ctx.run, run)
    stale = run / "checkpoints" / ".best.ckpt.0123456789ab.tmp"
    stale.write_bytes(b"half a checkpoint")
    ctx.check(lambda out, err: not stale.exists() and (run / "checkpoints" / "best.ckpt").is_file())
    return ["train", "--output", str(run), "--resume", "--train.epochs", "2"]


def history_after_resume(tmp_path, ctx):
    """`--resume` keeps the epochs before it in logs/csv/metrics.csv (Lightning's writer restarts the file)."""
    run = tmp_path / "run"
    shutil.copytree(ctx.run, run)
    before = pd.read_csv(run / "logs" / "csv" / "metrics.csv")

    def whole_history(out, err):
        after = pd.read_csv(run / "logs" / "csv" / "metrics.csv")
        assert sorted(before["epoch"].dropna().unique()) == [0], before
        assert sorted(after["epoch"].dropna().unique()) == [0, 1] and len(after) == 2 * len(before), after

    ctx.check(whole_history)
    return ["train", "--output", str(run), "--resume", "--train.epochs", "2"]


# --- compare -----------------------------------------------------------------------------------------
def predictions_csv(folder: Path, case_ids: list[str]) -> Path:
    """A two-class predictions.csv (as `train` writes it) for the test cases `case_ids`."""
    folder.mkdir(parents=True)
    rows = [f"{case},,test,{'ab'[i % 2]},0.{3 + i % 5},0.{7 - i % 5}" for i, case in enumerate(case_ids)]
    (folder / "predictions.csv").write_text("case_id,patient_id,split,label_true,label_prob_a,label_prob_b\n"
                                            + "\n".join(rows) + "\n")
    return folder


def compared_on_other_cases(tmp_path, ctx):
    a = predictions_csv(tmp_path / "run_a", [f"c{i}" for i in range(20)])
    b = predictions_csv(tmp_path / "run_b", [f"c{i}" for i in range(10, 30)])
    return ["compare", a, b, "--output", tmp_path / "cmp.json"]


def compare_unquoted_glob(tmp_path, ctx):
    runs = [predictions_csv(tmp_path / f"run_{seed}", ["c1", "c2", "c3", "c4"]) for seed in range(3)]
    return ["compare", *runs]


# --- privacy -----------------------------------------------------------------------------------------
def predicted_paths(tmp_path, ctx):
    folder = tmp_path / "ward 7" / "scans"
    good_png(folder / "sub" / "a.png", 1)
    good_png(folder / "b.png", 2)

    def relative(out, err):
        frame = written_csv(tmp_path)
        assert sorted(frame["case_id"]) == ["b.png", "sub/a.png"] and (frame["patient_id"] == "").all(), frame
        no_absolute_path((tmp_path / "out" / "predictions.csv").read_text(), tmp_path)

    ctx.check(relative)
    return predict(ctx, tmp_path, folder)


def report_of(tmp_path, ctx, *extra):
    run = tmp_path / "run"
    shutil.copytree(ctx.run, run, ignore=shutil.ignore_patterns("*.ckpt"))
    return ["report", str(run), "--mc-samples", "2", "--gallery", "1", "--tsne-points", "20", *extra]


def model_card_and_report(tmp_path, ctx):
    def relative(out, err):
        card = json.loads((tmp_path / "run" / "model" / "metadata.json").read_text())
        assert card["data_source"] == "x: medmnist (${DUALFUSE_DATA}/medmnist/breastmnist.npz)", card["data_source"]
        for file in ("model/metadata.json", "report.html"):
            no_absolute_path((tmp_path / "run" / file).read_text(), ctx.data_root, tmp_path)

    ctx.check(relative)
    return report_of(tmp_path, ctx)


def withheld(run: Path, *files: str):
    """The model card says the path is withheld; no file names the data (not even its file name)."""
    def check(out, err):
        card = json.loads((run / "model" / "metadata.json").read_text())
        assert "path withheld" in card["data_source"], card["data_source"]
        for file in files:
            assert "breastmnist" not in (run / file).read_text(), file
    return check


def report_redacted(tmp_path, ctx):
    ctx.check(withheld(tmp_path / "run", "model/metadata.json", "report.html"))
    return report_of(tmp_path, ctx, "--redact")


def sensitive_source(tmp_path, ctx):
    root = class_folders(tmp_path / "ward 7" / "root", per_class=12)

    def check(out, err):
        for folder in ("model", "checkpoints"):
            card = json.loads((tmp_path / "run" / folder / "metadata.json").read_text())
            assert card["data_source"] == "x: folder (path withheld (marked sensitive))", card["data_source"]
            no_absolute_path(json.dumps(card), tmp_path)

    ctx.check(check)
    return train(root, tmp_path, sensitive=True)


CASES = [
    # kind_id[command], build(tmp_path, ctx) -> argv, exit status, the line the user sees (a substring)
    # Tracebacks
    ("20000x20000 PNG[data check]", lambda t, c: data_check(bomb_folder(t, c)), 1,
     "huge.png: image too large (400000000 pixels, over PIL's decompression-bomb limit"),
    ("20000x20000 PNG[data check --allow-unreadable]", lambda t, c: data_check(bomb_folder(t, c), "--allow-unreadable"),
     0, "huge.png: image too large (400000000 pixels"),
    ("20000x20000 PNG[train]", lambda t, c: train(bomb_folder(t, c), t), 2, "huge.png: image too large"),
    ("20000x20000 PNG[predict]", lambda t, c: predict(c, t, fake_bomb_png(t / "scans" / "huge.png")), 2,
     "huge.png: image too large"),
    ("class folder without read permission[data check]", unlistable_folder, 2, "root/b: cannot list folder (Permission denied)"),
    ("model.kwargs.bogus_arg[train]",
     lambda t, c: train(breast_source(c.data_root), t, model_kwargs=json.dumps({"backbone": "resnet18", "in_chans": 1, "bogus_arg": 1})),
     2, "model.kwargs.bogus_arg: model 'timm_classifier' takes no such argument"),
    ("train.monitor: val/acuracy[train]", lambda t, c: train(breast_source(c.data_root), t, "--train.monitor", "val/acuracy"),
     2, "train.monitor 'val/acuracy' is not a logged metric"),
    ("predict --output an existing folder[predict]", predict_output_is_a_folder, 2, "out is a directory; give the CSV file"),
    # Silent results
    ("data.skip_bad: true[train]", skip_bad_in_train, 0, "data.sources.x: skipped 1 bad case(s) (data.skip_bad)"),
    ("broken symlink[data check]", broken_symlink, 1, "gone.png: broken symlink"),
    ("good.png and good.jpg in one class[data check]", suffix_twins, 0, '"num_cases": 10'),
    ("identical images under two labels[data check]", identical_images_two_labels, 1,
     "1 exact-duplicate group(s) have conflicting labels"),
    ("manifest without the label column[data check]",
     lambda t, c: data_check(manifest(t, "c1,img/0.png\nc2,img/1.png\n", header="case_id,image")), 2,
     "m.csv: missing column(s) ['label']"),
    ("header-only manifest[data check]", lambda t, c: data_check(manifest(t, "")), 2, "m.csv: no cases (a header line but no rows)"),
    ("duplicate case ids[data check]",
     lambda t, c: data_check(manifest(t, "c1,img/0.png,0\nc1,img/1.png,1\nc2,img/2.png,1\n")), 2,
     "m.csv: duplicate case id(s) in column 'case_id': 'c1' (lines 2, 3)"),
    ("label nan[train]", lambda t, c: train(manifest(t, "c1,img/0.png,0\nc2,img/1.png,nan\nc3,img/2.png,1\n"), t), 2,
     "m.csv line 3 (case c2) field 'label': missing label 'nan'"),
    ("stray label 7 among 0/1[train, no classes]", lambda t, c: train(stray_label_manifest(t), t), 2,
     "data.sources.x: rare class(es) label '2' (0 of 201 cases)"),
    ("stray label 7 among 0/1[train, classes 0/1]", lambda t, c: train(stray_label_manifest(t), t, classes=["0", "1"]), 2,
     "m.csv line 202 (case c200) field 'label': label '7' not in classes ['0', '1']"),
    ("a class with a single image[train]", single_image_class, 2, "data.sources.x: class 'c': only 1 case(s)"),
    ("data.val_fraction: 1.5[train]", lambda t, c: train(breast_source(c.data_root), t, "--data.val_fraction", "1.5"), 2,
     "data.val_fraction must be in [0, 1), got 1.5"),
    ("data.max_train_cases: -5[train]", lambda t, c: train(breast_source(c.data_root), t, "--data.max_train_cases", "-5"),
     2, "data.max_train_cases must be at least 1, got -5"),
    ("model.kwargs.drop_rate: 5.0[train]",
     lambda t, c: train(breast_source(c.data_root), t, model_kwargs=json.dumps({"backbone": "resnet18", "in_chans": 1, "drop_rate": 5.0})),
     2, "model.kwargs.drop_rate is a dropout probability and must be in [0, 1), got 5.0"),
    ("predict --batch-size 0[predict]", lambda t, c: predict(c, t, scans(t), extra=("--batch-size", "0")), 2,
     "argument --batch-size: must be at least 1, got 0"),
    ("2-frame DICOM[predict]", lambda t, c: predict(c, t, two_frame_dicom(t / "two.dcm")), 2,
     "two.dcm: multi-frame image (2 frames); expected one 2D image"),
    ("RT dose DICOM[predict]", lambda t, c: predict(c, t, rt_dose(t / "dose.dcm")), 2,
     "dose.dcm: not an image (SOP class RT Dose Storage, modality RTDOSE)"),
    ("NaN weights in model.safetensors[predict]", nan_weights, 2, "hold NaN or inf values"),
    ("plain pickle checkpoint[predict]", plain_pickle, 2, "plain pickle file"),
    ("undecodable CSV manifest[predict]", latin1_manifest, 2, "latin1.csv: unreadable CSV: not UTF-8 text (found byte 0xe9)"),
    ("one bad file in a predict folder[predict]", one_bad_file, 2, "broken.png"),
    ("one bad file in a predict folder[predict --skip-bad]", one_bad_file_skipped, 0,
     "1 unreadable input(s) listed there with their reason (column 'error')"),
    # Resume and records
    ("stale .best.ckpt.<12 hex>.tmp[train --resume]", stale_temporary_on_resume, 0, "run folder:"),
    ("metrics.csv history after --resume[train --resume]", history_after_resume, 0, "run folder:"),
    # Privacy
    ("two runs scored on different test cases[compare]", compared_on_other_cases, 2,
     "were scored on different test cases"),
    ("a glob the shell expanded into three runs[compare]", compare_unquoted_glob, 2, "quote a glob pattern"),
    ("paths in predict's case_id and patient_id[predict]", predicted_paths, 0, "wrote 2 predictions"),
    ("data paths in the model card and report[report]", model_card_and_report, 0, "wrote "),
    ("data paths with sensitive: true / --redact[report --redact]", report_redacted, 0, "wrote "),
    ("data paths with sensitive: true / --redact[train, sensitive: true]", sensitive_source, 0, "run folder:"),
]

KINDS = {kind_id.split("[")[0] for kind_id, *_ in CASES}


def snapshot(root: Path) -> dict[str, bytes | str | None]:
    """Every file (its bytes), link (its target) and folder under `root`, as a user would find them."""
    found = {}
    for folder, folders, files in os.walk(root):  # an unlistable folder is skipped, before and after
        for name in folders:
            found[os.path.join(folder, name) + "/"] = None
        for name in files:
            path = os.path.join(folder, name)
            found[path] = f"-> {os.readlink(path)}" if os.path.islink(path) else Path(path).read_bytes()
    return found


@pytest.mark.parametrize("build, status, line", [row[1:] for row in CASES], ids=[row[0] for row in CASES])
def test_bad_input(build, status, line, tmp_path, data_root, request, monkeypatch, capsys):
    from dualfuse.cli import main

    monkeypatch.setenv("DUALFUSE_DATA", str(data_root))
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() sets its one-line format
    monkeypatch.chdir(tmp_path)  # anything written to the working folder shows up in the snapshot
    for handler in logging.getLogger("lightning.pytorch").handlers:  # Lightning's lines, where the user sees them
        if isinstance(handler, logging.StreamHandler):
            monkeypatch.setattr(handler, "stream", sys.stderr)
    ctx = Context(request, monkeypatch, data_root)
    argv = [str(arg) for arg in build(tmp_path, ctx)]
    before = snapshot(tmp_path)
    capsys.readouterr()

    def show(message, category, filename, lineno, file=None, line=None):  # as outside pytest: on stderr
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    with warnings.catch_warnings():
        warnings.simplefilter("always", UserWarning)
        warnings.showwarning = show
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse
            code = exit_info.code
    out, err = capsys.readouterr()

    assert "Traceback" not in out + err, err
    assert code == status, f"exit {code}, expected {status}\nstderr: {err[-3000:]}"
    if status == 2:
        errors = [text for text in err.splitlines() if ": error: " in text]
        assert len(errors) == 1 and err.rstrip("\n").endswith(errors[0]), err  # one line, the last
        assert line in errors[0], errors[0]
        assert re.match(r"dualfuse [a-z ]+: error: ", errors[0]), errors[0]
        after = snapshot(tmp_path)
        assert {k: v for k, v in after.items() if k in before} == before, "an error changed or removed the user's files"
        new = [os.path.relpath(k, tmp_path) + ("/" if k.endswith("/") else "") for k in after if k not in before]
        # A failed command leaves nothing behind: no run folder, checkpoint, log or half-written (.tmp) file.
        assert new == [], new
    else:
        assert line in out + err, (out + err)[-3000:]
    for check in ctx.checks:
        assert check(out, err) is not False, check


def test_stale_temporaries_are_removed_by_name(tmp_path):
    """What `train` (via RunFolder.prepare) removes: only `.<name>.<12 hex>.tmp`, in the run's folders."""
    from dualfuse.api import RunFolder

    run = tmp_path / "run"
    stale = [run / "checkpoints" / ".best.ckpt.0123456789ab.tmp", run / ".metrics.json.abcdef012345.tmp",
             run / "model" / ".model.safetensors.00000000ffff.tmp"]
    kept = [run / "checkpoints" / "last.ckpt", run / "checkpoints" / ".best.ckpt.notahexid123.tmp",
            run / "checkpoints" / "notes.tmp", run / "data" / ".x.0123456789ab.tmp"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    assert sorted(RunFolder(run).prepare()) == sorted(stale)
    assert [path.exists() for path in stale + kept] == [False] * len(stale) + [True] * len(kept)


def test_readme_counts_match_the_table():
    """The README's reliability section states how many kinds (and rows) this table drives."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("### Reliability: bad input", 1)[1].split("\n#", 1)[0]
    found = re.search(r"(\d+) kinds of bad input \((\d+) rows", section)
    assert found, section
    assert (int(found.group(1)), int(found.group(2))) == (len(KINDS), len(CASES))
