"""The README's result tables say what the committed summaries say.

Every number in a table of the README's results sections (from "## Headline result" to "## The
pipeline") must be a number of a committed summary (docs/figures/*/summary.md): a "mean ± sd" cell
verbatim, a plain number as the mean of some cell. The first column (row labels) and percentages
derived in the text ("keeps 79%") are not checked. `make docs` copies the summaries from results/.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"-?\d+\.\d+")
MEAN_SD = re.compile(r"-?\d+\.\d+ ± \d+\.\d+")


def result_tables(readme: str) -> list[list[str]]:
    """The body rows (cells) of the tables in the results sections."""
    text = readme[readme.index("## Headline result") : readme.index("## The pipeline")]
    lines = text.splitlines()
    rows = []
    for i, line in enumerate(lines):
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        if i + 1 < len(lines) and set(lines[i + 1]) <= set("|- ") and lines[i + 1].startswith("|---"):
            continue  # a header
        rows.append([c.strip().replace("**", "").replace("`", "") for c in line.strip("|").split("|")])
    return rows


def summary_numbers(texts: list[str]) -> tuple[set[str], set[str]]:
    """(every "mean ± sd" cell, every mean or plain number of a cell) of the summaries."""
    pairs, means = set(), set()
    for text in texts:
        for line in text.splitlines():
            if not line.startswith("|"):
                continue
            for cell in line.strip("|").split("|"):
                cell = cell.strip()
                pairs.update(MEAN_SD.findall(cell))
                first = NUMBER.match(cell)
                if first:
                    means.add(first.group())
    return pairs, means


def unsupported(readme: str, summaries: list[str]) -> list[str]:
    """The README table numbers that no committed summary holds."""
    pairs, means = summary_numbers(summaries)
    missing = []
    for cells in result_tables(readme):
        for cell in cells[1:]:
            for pair in MEAN_SD.findall(cell):
                if pair not in pairs:
                    missing.append(f"{cells[0]}: {pair}")
            rest = MEAN_SD.sub("", cell)
            for number in NUMBER.findall(rest):
                if not re.search(re.escape(number) + r"\s*%", rest) and number not in means:
                    missing.append(f"{cells[0]}: {number}")
    return missing


def committed_summaries() -> list[str]:
    return [p.read_text() for p in sorted((REPO / "docs" / "figures").glob("*/summary.md"))]


def test_every_number_of_the_readme_tables_is_in_a_committed_summary():
    readme = (REPO / "README.md").read_text()
    assert len(result_tables(readme)) >= 8  # the headline, scene, frameworks and fine-tuning tables
    assert unsupported(readme, committed_summaries()) == []


def test_a_number_no_summary_holds_is_reported():
    summary = "| vicreg | base | 3 | 11.1 ± 3.0 | 18.8 ± 2.1 |\n"
    readme = ("## Headline result\n\n| variant | R@1 | probe |\n|---|---|---|\n"
              "| base | 11.1 ± 3.0 | 18.8 |\n| vididi | 72.6 ± 6.4 | 76.4 / 18.8 |\n\n## The pipeline\n")  # fmt: skip
    assert unsupported(readme, [summary]) == ["vididi: 72.6 ± 6.4", "vididi: 76.4"]
