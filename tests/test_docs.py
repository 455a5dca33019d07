"""The documentation stays true: the site builds strictly (a broken link or anchor in docs/ fails mkdocs), the
README's relative links resolve, and every `make` target and `fair` command the README and the pages name exists
(targets read from the Makefile's rules, commands from the CLI's own parser)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

from cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_spans(text: str) -> list[str]:
    """Fenced blocks and inline code: commands are named there, so prose ("make the student better") is not read."""
    fenced = re.findall(r"^```.*?^```", text, flags=re.S | re.M)
    rest = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return fenced + re.findall(r"`([^`\n]+)`", rest)


def named(pattern: str) -> set[tuple[str, str]]:
    """(page, what follows the pattern) for every command the pages name."""
    found = set()
    for page in PAGES:
        for span in code_spans(page.read_text()):
            found |= {(page.name, m) for m in re.findall(pattern, span)}
    return found


def make_targets() -> set[str]:
    rules = re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", (ROOT / "Makefile").read_text(), flags=re.M)
    return set(rules)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def slug(heading: str) -> str:
    """Python-Markdown's toc anchor for a heading (its default slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading.replace("`", "")).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def test_site_builds_strictly(tmp_path):
    # Strict mode (mkdocs.yml): a link to a missing page or anchor under docs/ is an error, not a warning.
    build = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                           cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, build.stdout + build.stderr
    assert (tmp_path / "site" / "index.html").exists()


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert links
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / (target or "README.md")  # "#heading": this file
        assert path.exists(), f"README.md links to {link}: no such file"
        if anchor:
            headings = re.findall(r"^#+\s+(.*)$", path.read_text(), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"README.md links to {link}: no such heading"


def test_named_make_targets_exist():
    targets = make_targets()
    assert {"demo", "test", "docs"} <= targets
    missing = {(page, t) for page, t in named(r"\bmake ([a-z][a-z0-9-]*)") if t not in targets}
    assert not missing, f"pages name make targets the Makefile lacks: {sorted(missing)}"


def test_named_fair_commands_exist():
    commands = subcommands(build_parser())
    missing = set()
    for page, (first, second) in named(r"(?<![\w/.-])fair ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?"):
        if first not in commands:
            missing.add((page, first))
        elif (nested := subcommands(commands[first])) and second not in nested:
            missing.add((page, f"{first} {second}"))
    assert not missing, f"pages name fair commands the CLI lacks: {sorted(missing)}"


def test_checks_catch_what_they_should():
    # The pattern reads commands in code only; a made-up one would be caught.
    assert named(r"\bmake ([a-z][a-z0-9-]*)") and named(r"(?<![\w/.-])fair ([a-z][a-z-]*)")
    assert "demo" in make_targets() and "bench-nothing" not in make_targets()
    assert code_spans("prose: make the student better, `make demo`") == ["make demo"]
    assert slug("The Batch API (half price)") == "the-batch-api-half-price"
