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
