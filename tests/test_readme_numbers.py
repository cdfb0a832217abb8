"""Every 95% CI and every mean ± sd the README quotes is one that docs/benchmarks.md prints.

docs/benchmarks.md is generated from the results files (benchmarks/make_docs.py); the README's prose is
written by hand, and its intervals went stale each time the CI method improved (40 of 104 disagreed with the docs
before this test). A number a user reads in the README must be one the benchmarks print now."""
from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"[−+-]?\d*\.\d+"
INTERVAL = re.compile(rf"(?:({NUMBER}) )?\[({NUMBER}), ({NUMBER})\]")  # optional estimate, then [low, high]
MEAN_SD = re.compile(rf"({NUMBER}) ± ({NUMBER})")


def _value(text: str) -> tuple[float, int]:
    """A printed number and its decimals: "−.0133" -> (-0.0133, 4); the README drops the leading 0."""
    return float(text.replace("−", "-")), len(text.split(".")[1])


def _agrees(quoted: str, printed: str) -> bool:
    """Equal at the coarser of the two precisions (the README may round the docs' 0.0133 to .013, or
    quote a value the docs round: .0006 against 0.001)."""
    (a, da), (b, db) = _value(quoted), _value(printed)
    return round(a, min(da, db)) == round(b, min(da, db))


def unmatched(readme: str, docs: str) -> list[str]:
    """README intervals (with their estimate where one precedes them) and mean ± sd pairs that no number
    in `docs` agrees with, as "line N: text"."""
    intervals = INTERVAL.findall(docs)
    spreads = MEAN_SD.findall(docs)
    missing = []
    for number, line in enumerate(readme.splitlines(), 1):
        for match in INTERVAL.finditer(line):
            estimate, low, high = match.groups()
            if not any(_agrees(low, lo) and _agrees(high, hi) and (not estimate or (est and _agrees(estimate, est)))
                       for est, lo, hi in intervals):
                missing.append(f"line {number}: {match.group(0)}")
        for match in MEAN_SD.finditer(line):
            mean, sd = match.groups()
            if not any(_agrees(mean, m) and _agrees(sd, s) for m, s in spreads):
                missing.append(f"line {number}: {match.group(0)}")
    return missing


def test_every_interval_and_spread_in_the_readme_is_printed_in_the_docs():
    readme = (REPO / "README.md").read_text()
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    assert len(INTERVAL.findall(readme)) > 50  # the README quotes many: the check is not vacuous
    missing = unmatched(readme, docs)
    assert not missing, "README numbers docs/benchmarks.md does not print:\n" + "\n".join(missing)


def test_a_stale_or_misrounded_number_is_named_with_its_line():
    docs = "| x | -0.039 [-0.070, -0.007] | **loss** |\n| y | 0.925 ± 0.013 |\n| z | +0.001 [+0.000, +0.001] |"
    readme = ("mixup hurt (−.039 [−.070, −.007]) and DCAT .925 ± .013;\n"
              "barely moves (+.0006 [+.0003, +.0010]);\n"
              "printed before (−.039 [−.073, −.004]), or another estimate (−.040 [−.070, −.007]), or .925 ± .018")
    assert unmatched(readme, docs) == ["line 3: −.039 [−.073, −.004]", "line 3: −.040 [−.070, −.007]",
                                       "line 3: .925 ± .018"]
