"""Every command in the README's code blocks parses: a `dualfuse` line's subcommand, flags and config keys,
and a `python benchmarks/X.py` line's flags.

Users copy these lines first; a renamed flag or config key must fail here, not on their machine. Optional
parts (`[--split test]`) are included, and each side of an `A | B` choice is tried."""
from __future__ import annotations

import argparse
import itertools
import re
import shlex
from pathlib import Path

import pytest

from dualfuse.cli import _cv_options, _train_argv, build_parser
from dualfuse.config import dump_run_config, parse_run_args
from tests.benchmarks.test_make_docs import _load

REPO = Path(__file__).resolve().parents[1]
COMMAND = re.compile(r"^\s*(?:srun\s+|[A-Z_]+=\S+\s+)*dualfuse\s+(.*)$")
BENCHMARK = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*(?:\.venv/bin/)?python\s+benchmarks/(\w+)\.py(.*)$")


def _tokens(code: str) -> list[str]:
    """Shell words of a command line, with `[`, `]` and `|` as words of their own and `...` dropped."""
    return [t for t in shlex.split(re.sub(r"([\[\]|])", r" \1 ", code)) if t != "..."]


def _expand(tokens: list[str]) -> list[list[str]]:
    """Every reading of `a [b [c] | d] e`: each optional group included, one variant per `|` choice."""
    def sequence(i: int, stop: set[str]) -> tuple[list[list[str]], int]:
        variants: list[list[str]] = [[]]
        while i < len(tokens) and tokens[i] not in stop:
            if tokens[i] == "[":
                choices, i = [], i + 1
                while True:
                    choice, i = sequence(i, {"|", "]"})
                    choices += choice
                    i += 1
                    if tokens[i - 1] == "]":
                        break
                variants = [v + c for v, c in itertools.product(variants, choices)]
            else:
                variants = [v + [tokens[i]] for v in variants]
                i += 1
        return variants, i

    return sequence(0, set())[0]


def readme_commands(text: str, pattern: re.Pattern = COMMAND) -> list[list[str]]:
    """The argv of each command line in the README's fenced code blocks that `pattern` matches: the groups
    before its last (a benchmark's name), then the arguments its last group holds."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            match = pattern.match(line)
            if match:
                code = re.split(r"\s#", match.groups()[-1])[0]
                commands += [[*match.groups()[:-1], *argv] for argv in _expand(_tokens(code))]
    return commands


README = (REPO / "README.md").read_text()
COMMANDS = readme_commands(README)
BENCHMARK_COMMANDS = readme_commands(README, BENCHMARK)


def test_the_readme_shows_every_subcommand():
    shown = {argv[0] for argv in COMMANDS}
    assert {"models", "data", "train", "cv", "evaluate", "compare", "predict", "explain", "report", "export",
            "serve"} <= shown


def test_optional_groups_and_choices_expand():
    tokens = _tokens("evaluate r [--ensemble a b] [--target-accuracy 0.95 [--guarantee 0.95]|--target-coverage 0.9] ...")
    assert _expand(tokens) == [
        ["evaluate", "r", "--ensemble", "a", "b", "--target-accuracy", "0.95", "--guarantee", "0.95"],
        ["evaluate", "r", "--ensemble", "a", "b", "--target-coverage", "0.9"]]


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(argv)[:80] for argv in COMMANDS])
def test_readme_command_parses(argv, tmp_path, monkeypatch):
    # Run from a folder that holds the repository's configs and the run folders a line continues or starts from.
    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    name, rest = argv[0], argv[1:]
    if name in ("train", "cv"):
        if name == "cv":
            _, rest = _cv_options(rest)
        if "--resume" in rest and "--config" not in rest:
            run = tmp_path / rest[rest.index("--output") + 1]
            run.mkdir(parents=True)
            config, _ = parse_run_args(["--config", str(REPO / "configs" / "quickstart.yaml")])
            (run / "config.yaml").write_text(dump_run_config(config))
        if "--model.init_from" in rest:  # an earlier run's folder: it must exist
            (tmp_path / rest[rest.index("--model.init_from") + 1]).mkdir(parents=True)
        parse_run_args(_train_argv(rest))
    else:
        build_parser().parse_args(argv)


class _Parsed(Exception):
    """Raised instead of running a benchmark once its arguments have parsed."""


def test_the_readme_shows_the_benchmarks():
    assert {"accuracy", "cv", "pretrain", "uncertainty", "speed", "make_docs"} <= {c[0] for c in BENCHMARK_COMMANDS}


@pytest.mark.parametrize("command", BENCHMARK_COMMANDS, ids=[" ".join(c)[:80] for c in BENCHMARK_COMMANDS])
def test_readme_benchmark_command_parses(command, monkeypatch):
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))  # a bad flag exits with argparse's error before this

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(_Parsed):
        _load(command[0]).main(command[1:])
