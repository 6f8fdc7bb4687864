"""The README and docs/ stay true: the README short, every page listed and starting with what it covers,
every link and every reference from the code to a page resolving, every command documented, and every
`interest-stream` command line written in them one the CLI accepts. (The settings table is checked in
tests/test_deploy_config.py.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
WRITTEN = [ROOT / "README.md", *PAGES]
LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_REFERENCE = re.compile(r"docs/([a-z_-]+\.md)")
INLINE = re.compile(r"`(interest-stream [a-z][^`]*)`")
FENCE = re.compile(r"```(?:bash|sh)?\n(.*?)```", re.S)


def command_lines(text: str) -> list[str]:
    """Each `interest-stream ...` line of the text's code blocks, its trailing comment and a leading
    variable assignment (``INTEREST_X=1 interest-stream ...``) removed."""
    lines = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"^(\w+=\S*\s+)+", "", line.split(" #")[0].strip())
            if line.startswith("interest-stream "):
                lines.append(line)
    return lines


def test_the_readme_is_read_in_five_minutes_and_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first = FENCE.findall(readme)[0].splitlines()
    assert [line.split("#")[0].strip() for line in first] == ["make demo", "make test"]


def test_the_docs_index_lists_every_page_and_each_page_says_what_it_covers():
    index = (DOCS / "README.md").read_text()
    listed = {m for m in LINK.findall(index) if not m.startswith("..")}
    assert listed == {p.name for p in PAGES if p.name != "README.md"}
    readme = (ROOT / "README.md").read_text()
    assert {Path(m).name for m in LINK.findall(readme) if m.startswith("docs/")} >= listed
    for page in PAGES:
        title, blank, first, *_ = page.read_text().splitlines()
        assert title.startswith("# ") and blank == "" and first, page.name


@pytest.mark.parametrize("page", WRITTEN, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.name}: {target}"


def test_every_reference_from_the_code_to_a_page_resolves():
    sources = [
        p
        for folder in ("cli", "streams", "models", "state", "deploy", "benchmarks", "tests")
        for p in (ROOT / folder).rglob("*")
        if p.is_file() and p.suffix in {".py", ".yaml", ".yml", ".json", ".xml", ".md"}
    ] + [ROOT / "Makefile", ROOT / "docker-compose.yml", ROOT / "pyproject.toml"]
    missing = {
        f"{p.relative_to(ROOT)}: docs/{name}"
        for p in sources
        for name in CODE_REFERENCE.findall(p.read_text(errors="replace"))
        if not (DOCS / name).exists()
    }
    assert not missing


def test_every_command_is_documented():
    documented = {
        line.split()[1]
        for page in WRITTEN
        for line in command_lines(page.read_text()) + INLINE.findall(page.read_text())
    }
    commands = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert commands <= documented, commands - documented


@pytest.mark.parametrize("page", WRITTEN, ids=lambda p: p.name)
def test_every_documented_command_line_is_accepted_by_the_cli(page):
    parser = build_parser()
    for line in command_lines(page.read_text()):
        try:
            parser.parse_args(shlex.split(line)[1:])
        except SystemExit:
            pytest.fail(f"{page.name}: `{line}` is refused by the CLI")
