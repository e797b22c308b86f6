"""The README cannot rot: every `diffexp-*` command it and the docs pages show composes against today's configs, and
every relative link in them leads to a file (and heading) that exists.

Running them is covered elsewhere (test_cli, test_sweeps, test_compare, ...); here each line of the README's
shell blocks is parsed as the user would type it and composed by Hydra with its own app config.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from diffexp.config import CONF_DIR
from helpers import REPO

DOCS = sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").rglob("*.md"))


def readme_commands(*docs: str) -> list[str]:
    text = "\n".join((REPO / doc).read_text() for doc in ("README.md", *docs))
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = [line.split(" #")[0].strip() for block in blocks for line in block.splitlines()]
    # `--config-dir REPORT/conf` needs a report: test_compare's close-the-loop test runs that line's command itself.
    return [line for line in lines if line.startswith("diffexp-") and "--config-dir" not in line]


def test_readme_shows_every_command():
    shown = {line.split()[0] for line in readme_commands()}
    assert shown == {f"diffexp-{c}" for c in ("train", "sample", "evaluate", "compare", "reproduce", "export")}


def test_docs_pages_are_checked():
    """The README's tour sends readers to these pages: their commands must be composed too."""
    assert {"docs/recipes.md", "docs/training.md", "docs/sweeps.md", "docs/search.md"} <= set(DOCS)


@pytest.mark.parametrize("line", readme_commands(*DOCS))
def test_readme_command_composes(line):
    command, *args = shlex.split(line)
    overrides = [a for a in args if a != "-m"]
    if "-m" in args:  # a sweep: compose its first job
        overrides = [o if "[" in o else o.split(",")[0] for o in overrides]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=command.removeprefix("diffexp-"), overrides=overrides, return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    for override in overrides:  # a group option the line names is the one composed
        key, _, value = override.partition("=")
        if key in choices and "," not in value:
            assert choices[key] == value, (line, key)


def heading_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def broken_links(doc: Path) -> list[str]:
    """Relative links of `doc` whose file, or whose `#anchor` in a Markdown file, does not exist."""
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (doc.parent / path).resolve() if path else doc
        if not file.exists():
            problems.append(f"{doc.relative_to(REPO)}: {target}: no such file")
        elif anchor and file.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
            if anchor not in {heading_anchor(h) for h in headings}:
                problems.append(f"{doc.relative_to(REPO)}: {target}: no such heading")
    return problems


def test_heading_anchor():
    assert heading_anchor("Does pruning pay? The search measured (2026-11-29)") == (
        "does-pruning-pay-the-search-measured-2026-11-29"
    )


@pytest.mark.parametrize("doc", ["README.md", "CONTRIBUTING.md", *DOCS])
def test_links_lead_somewhere(doc):
    assert broken_links(REPO / doc) == []
