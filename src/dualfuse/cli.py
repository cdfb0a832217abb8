"""The `dualfuse` command line: parse arguments, call the public API, print. Nothing else lives here."""
from __future__ import annotations

import argparse
import json
import sys
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


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _cmd_data_check(args: argparse.Namespace) -> int:
    from dualfuse.data.check import check_source, render_report

    report = check_source(
        args.source, args.format, args.near_threshold, args.workers, modalities=args.modalities, tasks=args.tasks
    )
    if args.json == "-":
        print(json.dumps(report.to_dict(), indent=1))
    else:
        render_report(report)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report.to_dict(), handle, indent=1)
    problems = report.problems(args.allow_leakage, args.allow_unreadable, args.fail_on_near)
    for problem in problems:
        print(f"dualfuse data check: {problem}", file=sys.stderr)
    return 1 if problems else 0


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

    # `dualfuse data ...` commands are added below by the data layer.
    data = commands.add_parser("data", help="inspect datasets")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    check = data_commands.add_parser(
        "check",
        help="counts, sizes, unreadable files, exact/near duplicates and patient overlap",
        description="Exit status 1 on leakage across splits (exact duplicates, shared patients) or unreadable "
        "images unless allowed; near duplicates across splits are reported, and fatal only with --fail-on-near.",
    )
    check.add_argument("source", help="image folder, MedMNIST .npz or CSV manifest")
    check.add_argument("--format", choices=("folder", "npz", "manifest"), help="source format (default: detect)")
    check.add_argument("--json", metavar="FILE", help="also write the full report as JSON ('-': print JSON only)")
    check.add_argument("--modalities", type=_names, help="manifest image column(s), comma-separated (default: image)")
    check.add_argument("--tasks", type=_names, help="manifest label column(s), comma-separated (default: label)")
    check.add_argument("--near-threshold", type=int, default=4, metavar="N", help="max phash Hamming distance (default 4)")
    check.add_argument("--workers", type=int, default=None, help="decoding threads (default: CPU count)")
    check.add_argument("--allow-leakage", action="store_true", help="exit 0 despite cross-split duplicates/patients")
    check.add_argument("--allow-unreadable", action="store_true", help="exit 0 despite unreadable images")
    check.add_argument("--fail-on-near", action="store_true", help="exit 1 on near duplicates across splits")
    check.set_defaults(handler=_cmd_data_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError) as error:
        print(f"dualfuse {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
