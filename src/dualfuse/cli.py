"""The `dualfuse` command line: parse arguments, call the public API, print. Nothing else lives here."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence


def _cmd_models(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dualfuse.models.summary import summarize_models

    rows = summarize_models(
        names=args.names or None, img_size=args.img_size, in_chans=args.in_chans, num_classes=args.num_classes
    )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = Table(title=f"dualfuse models at {args.img_size}x{args.img_size}, {args.in_chans} channel(s)")
    for column in ("model", "inputs", "params (M)", "trainable (M)", "MACs (G)", "description"):
        table.add_column(column, justify="right" if "(" in column else "left", no_wrap=column != "description")
    for row in rows:
        table.add_row(
            row["model"],
            str(row["num_inputs"]),
            f"{row['params'] / 1e6:.2f}",
            f"{row['trainable_params'] / 1e6:.2f}",
            f"{row['macs'] / 1e9:.3f}",
            row["description"],
        )
    Console(width=max(Console().width, 150)).print(table)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _guarantee(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a probability in [0, 1) (0: no guarantee), got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def _miscoverage(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be a number strictly between 0 and 1, got {text}")
    return value


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _cmd_data_check(args: argparse.Namespace) -> int:
    from rich.console import Console

    from dualfuse.data.check import check_source, check_summary, check_tables

    report = check_source(
        args.source, args.format, args.near_threshold, args.workers, modalities=args.modalities, tasks=args.tasks
    )
    if args.json == "-":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        console = Console()
        console.print(check_summary(report))
        for table in check_tables(report):
            console.print(table)
        if args.json:
            try:
                with open(args.json, "w") as handle:
                    json.dump(report.to_dict(), handle, indent=1)
            except OSError as error:
                raise ValueError(f"--json {args.json}: cannot write ({error.strerror or type(error).__name__})") from None
    problems = report.problems(args.allow_leakage, args.allow_unreadable, args.fail_on_near,
                               args.allow_label_conflicts, args.allow_rare_classes)
    for problem in problems:
        print(f"dualfuse data check: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _print_metrics(summary: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from dualfuse.evaluation import summarize

    table = Table(title=title)
    for column in ("task", "split", "metric", "value [95% CI]"):
        table.add_column(column)
    for task, splits in summary["tasks"].items():
        for split, metrics in splits.items():
            for name, text in summarize(metrics):
                if name != "ci":
                    table.add_row(task, split, name, text)
    console = Console(width=max(Console().width, 100))
    console.print(table)


def _train_argv(argv: list[str]) -> list[str]:
    """`--resume` without `--config` continues from the run folder's own saved config."""
    if "--resume" in argv and "--config" not in argv and "--output" in argv:
        output = argv[argv.index("--output") + 1]
        return ["--config", f"{output}/config.yaml", *argv]
    return argv


def _print_transfer(report) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"model.init_from {report.source}")
    for column in ("status", "tensors", "reason", "example"):
        table.add_column(column, justify="right" if column == "tensors" else "left")
    for row in report.rows():
        table.add_row(row["status"], str(row["tensors"]), row["reason"], row["example"])
    Console(width=max(Console().width, 120)).print(table)


def _cmd_train(args: argparse.Namespace) -> int:
    from dualfuse.api import train
    from dualfuse.config import parse_run_args

    config, resume = parse_run_args(_train_argv(list(args.args)))
    summary = train(config, resume=resume, on_transfer=_print_transfer)
    if summary is None:  # another DDP rank: rank zero prints
        return 0
    if summary.get("interrupted"):
        print(f"training interrupted; continue with: dualfuse train --output {summary['run_dir']} --resume")
        return 0
    _print_metrics(summary, f"{summary['model']}: best checkpoint, {summary['epochs_trained']} epochs, "
                            f"{summary['train_seconds']:.0f} s")
    print(f"run folder: {summary['run_dir']} (metrics.json, predictions.csv, model/, checkpoints/)")
    return 0


CV_OPTIONS = {"--folds": int, "--repeats": int, "--test-fraction": float}


def _cv_options(argv: list[str]) -> tuple[dict, list[str]]:
    """`dualfuse cv`'s own options, and the rest for the run-config parser."""
    options, rest, i = {}, [], 0
    while i < len(argv):
        name, _, value = argv[i].partition("=")
        if name in CV_OPTIONS:
            if not value:
                if i + 1 >= len(argv):
                    raise ValueError(f"{name} needs a value")
                i += 1
                value = argv[i]
            try:
                options[name[2:].replace("-", "_")] = CV_OPTIONS[name](value)
            except ValueError:
                raise ValueError(f"{name} must be a number, got {value!r}") from None
        else:
            rest.append(argv[i])
        i += 1
    if "folds" not in options:
        raise ValueError("dualfuse cv needs --folds K (e.g. --folds 5)")
    return options, rest


def _cmd_cv(args: argparse.Namespace) -> int:
    from dualfuse.api.cv import cross_validate
    from dualfuse.config import parse_run_args

    options, rest = _cv_options(list(args.args))
    config, _ = parse_run_args(rest)  # an existing DIR continues at the fold it stopped in: no --resume needed

    def on_fold(k: int, total: int, path) -> None:
        print(f"fold {k + 1} of {total}: {path}")

    summary = cross_validate(config, on_fold=on_fold, on_transfer=_print_transfer, **options)
    if summary.get("interrupted"):
        print(f"cv interrupted in fold {summary['fold']}; run the same command again to continue")
        return 0
    settings = summary["cv"]
    _print_metrics(summary, f"{summary['model']}: {settings['folds']}-fold cv x {settings['repeats']}, pooled out of "
                            f"fold ({settings['cases']['folds']} cases)")
    if "ensemble" in summary:
        _print_metrics({"tasks": summary["ensemble"]}, f"the {len(summary['fold_models'])} fold models as one "
                                                       "ensemble, calibrated on the shared cal cases")
    print(f"cv folder: {summary['run_dir']} (metrics.json, predictions.csv, fold_<k>/; evaluate, predict, report "
          "and serve take it as one ensemble)")
    return 0


def _print_uncertainty(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    first = next(iter(summary["uncertainty"].values()))
    table = Table(title=f"uncertainty: {first['predictor_label']}, calibrated on the {summary['calibration_split']} split")
    for column in ("task", "split", "ECE softmax", "ECE (its T)", "ECE predictor (its T)", "NLL", "AURC", "referred",
                   "acc. kept [95% CI]", "conformal cov. [95% CI] / size"):
        table.add_column(column, justify="left" if column in ("task", "split") else "right")
    for task, report in summary["uncertainty"].items():
        for split, calibration in report["calibration"].items():
            referral = report["referral"][split]
            conformal = report.get("conformal", {}).get("lac") if split == "test" else None
            kept = referral["accuracy_of_accepted"]
            table.add_row(
                task, split, f"{calibration['softmax']['ece']:.3f}", f"{calibration['softmax_temperature']['ece']:.3f}",
                f"{calibration['predictor_temperature']['ece']:.3f}", f"{calibration['predictor_temperature']['nll']:.3f}",
                f"{report['selective'][split]['aurc']:.3f}", f"{1 - referral['coverage']:.1%}",
                "-" if kept is None else f"{kept:.3f} [{referral['accuracy_of_accepted_ci'][0]:.3f}, "
                                         f"{referral['accuracy_of_accepted_ci'][1]:.3f}]",
                f"{conformal['coverage']:.3f} [{conformal['coverage_ci_low']:.3f}, {conformal['coverage_ci_high']:.3f}]"
                f" / {conformal['mean_set_size']:.2f}" if conformal else "",
            )
        if "ood" in report:
            table.caption = "OOD AUROC vs " + summary.get("ood_source", "other data") + ": " + ", ".join(
                f"{k} {v['auroc']:.3f}" for k, v in report["ood"].items() if isinstance(v, dict) and "auroc" in v)
    console.print(table)
    compare = Table(title="predictors, each after its own calibration (test split)")
    for column in ("task", "predictor", "ECE", "NLL", "AURC", "acc.", "acc. at 90%", "AUROC wrong vs right"):
        compare.add_column(column, justify="left" if column in ("task", "predictor") else "right")
    for task, report in summary["uncertainty"].items():
        for entry in report.get("predictors", {}).values():
            row = entry.get("test")
            if row:
                compare.add_row(task, entry["label"], f"{row['ece']:.3f}", f"{row['nll']:.3f}", f"{row['aurc']:.3f}",
                                f"{row['accuracy']:.3f}", f"{row['accuracy_at_90']:.3f}",
                                "-" if row["error_auroc_entropy"] is None else f"{row['error_auroc_entropy']:.3f}")
    if compare.row_count:
        console.print(compare)
    from dualfuse.evaluation.uncertainty_report import referral_promise

    for task, report in summary["uncertainty"].items():
        promise = referral_promise(task, report["referral"])
        if promise:
            console.print(f"[bold]referral:[/] {promise}")
    notes = [summary["calibration_note"]] if summary.get("calibration_note") else []
    notes += [w for report in summary["uncertainty"].values() for w in report.get("warnings", [])]
    for note in notes:
        console.print(f"[bold red]warning:[/] {note}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from dualfuse.api import evaluate
    from dualfuse.config import load_run_config

    config = load_run_config(args.config) if args.config else None
    summary = evaluate(args.checkpoint, config=config, splits=args.split, output=args.output,
                       mc_samples=args.mc_samples, ensemble=args.ensemble, target_accuracy=args.target_accuracy,
                       target_coverage=args.target_coverage, alpha=args.alpha, ood=args.ood, tta=args.tta,
                       partners=args.partners, calibrate=args.calibrate,
                       guarantee=args.guarantee or None)
    _print_metrics(summary, f"{summary['model']}: {summary['checkpoint']}")
    if "uncertainty" in summary:
        _print_uncertainty(summary)
    print(f"wrote {summary['output']}/metrics.json and predictions.csv")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from dualfuse.api.compare import compare
    from dualfuse.evaluation.paired import format_difference, interval_method

    if len(args.runs) != 2:
        hint = ("; quote a glob pattern that names one run per seed (\"runs/dcat_seed*\") so the shell does not "
                "expand it" if len(args.runs) > 2 else "")
        raise ValueError(f"give two runs, A and B, got {len(args.runs)}{hint}")
    result = compare(args.runs[0], args.runs[1], task=args.task, split=args.split,
                     names=tuple(args.names) if args.names else None, n_bootstrap=args.n_bootstrap,
                     output=args.output)
    a, b = result["a"]["name"], result["b"]["name"]
    console = Console(width=max(Console().width, 110))
    for task, entry in result["tasks"].items():
        unit = f"{entry['cases']} cases" + (f" of {entry['patients']} patients" if entry["patients"] else "")
        seeds = result["seeds"]
        table = Table(title=f"{task}: {a} − {b}, paired on the same {unit} ({result['split']}), {seeds} seed(s)"
                            + (f" resampled {entry['seeds_resampled']}" if seeds > 1 else ""))
        for column in ("metric", a, b, "A − B [95% CI]", "verdict"):
            table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
        methods = {}  # how each CI was made -> the metrics it was made for
        for metric in entry["metrics"].values():
            table.add_row(metric["label"], f"{metric['a']:.3f}", f"{metric['b']:.3f}",
                          format_difference(metric["difference"]), metric["verdict"])
            methods.setdefault(interval_method(metric["difference"]), []).append(metric["label"])
        table.caption = (f"win / loss only where the 95% CI excludes 0; paired over {entry['resampled']}; CI: "
                         + "; ".join(f"{how} for {', '.join(labels)}" for how, labels in methods.items()))
        console.print(table)
    if args.output:
        print(f"wrote {args.output}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from dualfuse.api import predict

    frame = predict(args.checkpoint, args.inputs, args.output, split=args.split, batch_size=args.batch_size,
                    mc_samples=args.mc_samples, skip_bad=args.skip_bad, tta=args.tta, modality=args.modality,
                    partners=args.partners)
    skipped = frame.attrs.get("skipped", 0)
    print(f"wrote {len(frame) - skipped} predictions to {args.output}"
          + (f"; {skipped} unreadable input(s) listed there with their reason (column 'error')" if skipped else ""))
    return 0


def _cmd_explain(args: argparse.Namespace) -> int:
    from dualfuse.api import explain

    frame = explain(args.checkpoint, args.inputs, args.output, method=args.method, target_class=args.target_class,
                    task=args.task, batch_size=args.batch_size)
    print(f"wrote {len(frame)} overlays and explanations.csv to {args.output}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dualfuse.api import report

    path = report(args.run_dir, mc_samples=args.mc_samples, gallery_size=args.gallery, cam_method=args.method,
                        redact=args.redact, max_tsne_points=args.tsne_points)
    print(f"wrote {path} (figures in {path.parent / 'report'}, model card in {path.parent / 'model' / 'metadata.json'})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dualfuse.deploy.export import export_model

    result = export_model(args.checkpoint, args.format, args.output, parity_images=args.parity_images,
                          opset=args.opset, parity_count=args.parity_count, mc_samples=args.mc_samples)
    print(result.parity.line())
    print(f"wrote {args.format} export to {result.output}: {', '.join(result.files)}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from dualfuse.deploy.serve import run_server

    def ready(app) -> None:
        about = app.state.service.describe()
        print(f"serving {about['model']} ({about['mc_samples']} MC samples, "
              f"{'calibrated' if about['calibrated'] else 'not calibrated'}, {about['runtime']}) on "
              f"http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C stops", flush=True)

    run_server(args.checkpoint, host=args.host, port=args.port, workers=args.workers, mc_samples=args.mc_samples,
               max_upload_mb=args.max_upload_mb, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
               rows=args.rows, runtime=args.runtime, on_ready=ready)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualfuse", description="Trustworthy medical image classification.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    models = commands.add_parser("models", help="list every model with its parameter and MAC count")
    models.add_argument("names", nargs="*", help="model names (default: all registered models)")
    models.add_argument("--img-size", type=int, default=224, help="square input size in pixels (default 224)")
    models.add_argument("--in-chans", type=int, default=3, choices=(1, 3), help="input channels (default 3)")
    models.add_argument("--num-classes", type=int, default=2, help="classes of the (first) task (default 2)")
    models.add_argument("--json", action="store_true", help="print JSON instead of a table")
    models.set_defaults(handler=_cmd_models)

    passthrough = {  # every argument goes on to the run-config parser (cv's own options first)
        "train": (_cmd_train, "train a model from a YAML config, then evaluate it with confidence intervals",
                  "All arguments go to the run config parser: --config FILE, --output DIR, --resume, and dotted "
                  "overrides such as --train.epochs 3 (see `dualfuse train --help`)."),
        "cv": (_cmd_cv, "K-fold cross-validation grouped by patient; the folder becomes a K-model ensemble",
               "--folds K [--repeats R] [--test-fraction F], then the run config's arguments: --config FILE, "
               "--output DIR and dotted overrides. Running the same command again continues at the fold it stopped in."),
    }
    for name, (handler, summary, description) in passthrough.items():
        command = commands.add_parser(name, add_help=False, help=summary, description=description)
        command.add_argument("args", nargs=argparse.REMAINDER)
        command.set_defaults(handler=handler)

    evaluate = commands.add_parser("evaluate", help="metrics with confidence intervals for a trained model")
    evaluate.add_argument("checkpoint", help="run folder, model folder, model.safetensors or a .ckpt")
    evaluate.add_argument("--config", help="run config whose data to use (default: the run folder's config.yaml)")
    evaluate.add_argument("--split", nargs="+", help="splits to evaluate (default: the config's eval.splits)")
    evaluate.add_argument("--output", help="folder for metrics.json and predictions.csv (default: RUN_DIR/evaluation)")
    evaluate.add_argument("--mc-samples", type=int, nargs="?", const=30, default=0, metavar="T",
                          help="MC-dropout samples per case (30 if no number is given); adds calibration, "
                          "referral, conformal sets, OOD")
    evaluate.add_argument("--ensemble", nargs="+", default=[], metavar="CKPT",
                          help="more checkpoints of the same model: K models x T samples (deep ensemble)")
    target = evaluate.add_mutually_exclusive_group()
    target.add_argument("--target-accuracy", type=_fraction, help="choose the referral threshold for this accuracy")
    target.add_argument("--target-coverage", type=_fraction,
                        help="... or to decide this share of cases (default 0.9)")
    evaluate.add_argument("--guarantee", type=_guarantee, default=0.95, metavar="P",  # selective.DEFAULT_GUARANTEE
                          help="with --target-accuracy: the probability that the accepted cases meet it (default "
                          "%(default)s, a certified Clopper-Pearson bound; 0: read it off the calibration cases)")
    evaluate.add_argument("--tta", type=_positive, default=1, metavar="A",
                          help="test-time augmentation views per case (default 1: none); small shifts, flips only "
                          "where training used them")
    evaluate.add_argument("--alpha", type=_miscoverage, default=0.1, help="conformal miscoverage (default 0.1: 90%% sets)")
    evaluate.add_argument("--calibrate", action="store_true",
                          help="calibrate the softmax (temperature, referral and conformal thresholds on the "
                               "calibration split) even without --mc-samples: the measured default source")
    evaluate.add_argument("--ood", metavar="DATA", help="another dataset (.npz or folder) to test OOD detection on")
    evaluate.add_argument("--partners", type=_non_negative, default=None, metavar="K",
                          help="zip-mode models: predict each image beside K partner images of the other modalities "
                               "from the training split and average (default 8; 0: each split's one zip pairing)")
    evaluate.set_defaults(handler=_cmd_evaluate)

    from dualfuse.evaluation.paired import N_BOOTSTRAP

    compare = commands.add_parser(
        "compare", help="is model A better than B? the paired difference of AUC and accuracy on the same cases",
        description="A - B on the cases both were scored on, with a 95% CI from a paired bootstrap (whole patients "
                    "where ids repeat) joined with a closed-form interval; win or loss only where it excludes 0.")
    compare.add_argument("runs", nargs="+", metavar="RUN",
                         help="A then B: each a run folder, cv folder, evaluate output folder or predictions.csv, or "
                              "a quoted glob pattern naming one run per seed (paired with B's run of the same seed)")
    compare.add_argument("--task", help="compare this task only (default: every task both predict)")
    compare.add_argument("--split", default="test",
                         help="which rows of a run's predictions (default test); a cv folder's are all out of fold")
    compare.add_argument("--names", nargs=2, metavar=("A", "B"), help="how to call the two sides (default: folder names)")
    compare.add_argument("--n-bootstrap", type=_positive, default=N_BOOTSTRAP,
                         help=f"bootstrap draws (default {N_BOOTSTRAP})")
    compare.add_argument("--output", help="also write the comparison to this JSON file")
    compare.set_defaults(handler=_cmd_compare)

    predict = commands.add_parser("predict", help="class probabilities for images, folders, a manifest or an npz")
    predict.add_argument("checkpoint", help="run folder, model folder, model.safetensors or a .ckpt")
    predict.add_argument("inputs", nargs="+", help="image/DICOM/NIfTI files, folders, one CSV manifest or one .npz")
    predict.add_argument("--output", required=True, help="CSV file to write")
    predict.add_argument("--split", help="for an .npz: the split to predict (default: all)")
    predict.add_argument("--batch-size", type=_positive, default=None,
                         help="default: the calibration's batch size (reproduces evaluate's MC samples), else 64")
    predict.add_argument("--mc-samples", type=_non_negative, default=None, metavar="T",
                         help="MC-dropout samples (default: as calibrated by `evaluate --mc-samples`, else 0)")
    predict.add_argument("--tta", type=_positive, default=None, metavar="A",
                         help="test-time augmentation views (default: as calibrated, else 1)")
    predict.add_argument("--modality", metavar="M",
                         help="zip-mode models: the modality of the input images, e.g. mri (default: a manifest's "
                              "modality columns)")
    predict.add_argument("--partners", type=_non_negative, default=None, metavar="K",
                         help="zip-mode models: partner images per case from the run's training split (default: as "
                              "calibrated by `evaluate`, else 8; 0: inputs holding every modality, as given)")
    predict.add_argument("--skip-bad", action="store_true",
                         help="predict the readable inputs and list each unreadable one with its reason "
                         "(column 'error') instead of stopping at the first")
    predict.set_defaults(handler=_cmd_predict)

    from dualfuse.explain import CAM_METHOD_NAMES

    explain = commands.add_parser("explain", help="Grad-CAM overlays (PNG) for images, folders, a manifest or an npz")
    explain.add_argument("checkpoint", help="run folder, model folder, model.safetensors or a .ckpt")
    explain.add_argument("inputs", nargs="+", help="image/DICOM/NIfTI files, folders, one CSV manifest or one .npz")
    explain.add_argument("--output", required=True, help="folder for the overlay PNGs and explanations.csv")
    explain.add_argument("--method", default="gradcam", choices=CAM_METHOD_NAMES, help="CAM method (default gradcam)")
    explain.add_argument("--class", dest="target_class", help="class to explain (default: each case's predicted class)")
    explain.add_argument("--task", help="task to explain (default: the model's first)")
    explain.add_argument("--batch-size", type=_positive, default=16, help="cases per batch (default 16)")
    explain.set_defaults(handler=_cmd_explain)

    report = commands.add_parser("report", help="self-contained HTML report of a run, for clinicians")
    report.add_argument("run_dir", help="a finished run folder (from dualfuse train)")
    report.add_argument("--mc-samples", type=int, default=None, metavar="T",
                        help="MC-dropout samples (default: as calibrated by `evaluate --mc-samples`, else 30)")
    report.add_argument("--gallery", type=int, default=6, metavar="N", help="cases per gallery (default 6)")
    report.add_argument("--method", default="gradcam", choices=CAM_METHOD_NAMES, help="CAM method (default gradcam)")
    report.add_argument("--redact", action="store_true",
                        help="show no file names or data paths (always on for sources marked `sensitive: true`)")
    report.add_argument("--tsne-points", type=int, default=1500, metavar="N", help="cases in the t-SNE map (default 1500)")
    report.set_defaults(handler=_cmd_report)

    export = commands.add_parser("export", help="ONNX, TorchScript or a MONAI-style bundle, parity-checked on real images")
    export.add_argument("checkpoint", help="run folder, bundle, model folder, model.safetensors or a .ckpt")
    export.add_argument("--format", required=True, choices=("onnx", "torchscript", "bundle"),
                        help="onnx: deterministic + stochastic graphs; torchscript: the same, traced; bundle: "
                        "MONAI-style folder (weights, ONNX graphs, model card, README) that load_model reads")
    export.add_argument("--output", required=True, help="folder to write (new, empty, or an earlier export)")
    export.add_argument("--parity-images", metavar="PATH",
                        help="real images for the parity check (files, folder, manifest, .npz); default: the run's "
                        "test split")
    export.add_argument("--parity-count", type=_positive, default=100, metavar="N",
                        help="images in the parity check (default 100)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 or more (default 17)")
    export.add_argument("--mc-samples", type=_positive, default=None, metavar="T",
                        help="MC samples of the parity check and the JSON (default: as calibrated, else 30)")
    export.set_defaults(handler=_cmd_export)

    serve = commands.add_parser("serve", help="HTTP API and a page for clinicians (FastAPI + uvicorn)")
    serve.add_argument("checkpoint", help="run folder, bundle, model folder, model.safetensors or a .ckpt")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--mc-samples", type=_non_negative, default=None, metavar="T",
                       help="MC-dropout samples per case (default: as calibrated by `evaluate --mc-samples`, else 0)")
    serve.add_argument("--workers", type=_positive, default=1, help="uvicorn worker processes (default 1)")
    serve.add_argument("--max-upload-mb", type=float, default=20.0, metavar="M",
                       help="largest upload accepted, per file (default 20)")
    serve.add_argument("--max-batch", type=_positive, default=32, help="requests per forward pass at most (default 32)")
    serve.add_argument("--max-wait-ms", type=float, default=5.0,
                       help="how long a batch waits for requests still being decoded (default 5)")
    serve.add_argument("--runtime", choices=("auto", "onnx", "torch"), default="auto",
                       help="onnx: the exported graphs in onnxruntime (checked against PyTorch at startup); "
                       "torch: PyTorch; auto (default): onnxruntime for one network, PyTorch for ensembles")
    serve.add_argument("--rows", type=_positive, default=None, metavar="N",
                       help="with --runtime torch: rows per model call (default: the batch; 32 gives bit for bit "
                       "the numbers of `dualfuse predict` under any load, at 32 rows of compute per batch)")
    serve.set_defaults(handler=_cmd_serve)

    # `dualfuse data ...` commands are added below by the data layer.
    data = commands.add_parser("data", help="inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    from dualfuse.config import SOURCE_FORMATS

    check = data_commands.add_parser(
        "check",
        help="counts, sizes, unreadable files, exact/near duplicates, label conflicts and patient overlap",
        description="Reads SOURCE exactly as `train` reads a configured source. Exit status: 0 clean; 1 on a "
        "finding unless allowed: leakage across splits (exact duplicates, shared patients), unreadable images "
        "(undecodable, too large, broken symlinks), identical images with conflicting labels, rare classes "
        "(under 1% of cases and fewer than 3: a stray label?), and near duplicates across splits with "
        "--fail-on-near; 2 when SOURCE cannot be read at all (one line naming the file or folder: missing, "
        "unlistable folder, manifest without its label column, no rows, duplicate case ids, a missing label).",
    )
    check.add_argument("source", help="image folder, MedMNIST .npz or CSV manifest")
    check.add_argument("--format", choices=SOURCE_FORMATS, help="source format (default: detect from SOURCE)")
    check.add_argument("--json", metavar="FILE", help="also write the full report as JSON ('-': print JSON only)")
    check.add_argument("--modalities", type=_names, help="manifest image column(s), comma-separated (default: image)")
    check.add_argument("--tasks", type=_names,
                       help="manifest label column(s), comma-separated (default: label; '' for an unlabelled manifest)")
    check.add_argument("--near-threshold", type=int, default=4, metavar="N", help="max phash Hamming distance (default 4)")
    check.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count)")
    check.add_argument("--allow-leakage", action="store_true", help="exit 0 despite cross-split duplicates/patients")
    check.add_argument("--allow-unreadable", action="store_true", help="exit 0 despite unreadable images")
    check.add_argument("--allow-label-conflicts", action="store_true",
                       help="exit 0 despite identical images under different labels")
    check.add_argument("--allow-rare-classes", action="store_true",
                       help="exit 0 despite classes with under 1%% of cases and fewer than 3")
    check.add_argument("--fail-on-near", action="store_true", help="exit 1 on near duplicates across splits")
    check.set_defaults(handler=_cmd_data_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["train"], ["cv"]):
        # Everything after `train` (and cv's own options) belongs to the run-config parser.
        if any(a in ("-h", "--help") for a in argv[1:]):
            from dualfuse.config import build_parser as build_run_parser

            if argv[0] == "cv":
                print("usage: dualfuse cv --folds K [--repeats R] [--test-fraction F] --config FILE --output DIR "
                      "[overrides]\n\nK stratified folds grouped by patient (test and cal cases outside them), "
                      "each an ordinary run DIR/fold_<k>/; DIR/metrics.json pools the out-of-fold predictions.\n")
            build_run_parser().print_help()
            return 0
        handler = _cmd_train if argv[0] == "train" else _cmd_cv
        args = argparse.Namespace(command=argv[0], args=argv[1:], handler=handler)
    else:
        args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "data_command", None))))
    # Warnings (skipped images, a mismatched calibration, ...) are findings for the user: one line each.
    warnings.formatwarning = lambda message, category, *rest, **kw: f"dualfuse {command}: warning: {message}\n"
    try:
        return int(args.handler(args) or 0)
    except (ValueError, OSError, KeyError) as error:  # one line naming the file or key, never a traceback
        message = " ".join(str(error).split())
        print(f"dualfuse {command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
