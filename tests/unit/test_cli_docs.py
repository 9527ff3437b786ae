"""Every verb of `kubectl cellar` is in the README's Day two and has its part of the user guide."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.parser import build_parser

REPO = Path(__file__).resolve().parents[2]


def verbs() -> list[str]:
    parser = build_parser()
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return list(found[0].choices)


def test_the_readme_shows_every_verb() -> None:
    readme = (REPO / "README.md").read_text()
    day_two = readme[readme.index("## Day two") : readme.index("## What cellar is not")]
    for verb in verbs():
        assert (
            f"kubectl cellar {verb} " in day_two or f"kubectl-cellar {verb} " in day_two or f"cellar {verb}`" in day_two
        ), verb


def test_the_guide_has_a_part_for_every_verb() -> None:
    guide = (REPO / "docs" / "guide.md").read_text()
    day_two = guide[guide.index("## Day two") : guide.index("## Running it locally or by hand")]
    headings = " ".join(line.lower() for line in day_two.splitlines() if line.startswith("### "))
    for verb in verbs():
        assert verb in headings, verb
