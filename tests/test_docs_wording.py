"""The project's pages speak of the project only: no work sessions, no paths of the machine a figure was measured on.

A figure is dated ("2026-11-29"), and an output folder is `DIR` or a relative path; illustrative paths such as
`/shared/...` or `/path/to/...` are fine. Run as a script (a pre-commit hook does) it checks the files it is given,
or by default README.md, CONTRIBUTING.md, docs/**/*.md and benchmarks/*.md, and exits 1 with `file:line: problem` lines.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# "session" as a word of prose; part of an identifier (`start_new_session`, `session_id`, `requests.Session`,
# `Session(`) is code, not prose.
SESSION = re.compile(r"(?<![\w.])sessions?(?![\w(])", re.IGNORECASE)
# An absolute /work or /tmp path; `a/tmp/b` (relative) or a URL's `.org/work/` is not one.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|tmp)\b")


def wording_problems(text: str) -> list[str]:
    """`line N: problem` for every mention of a work session or a machine path in `text`."""
    problems = []
    for number, line in enumerate(text.splitlines(), start=1):
        for match in SESSION.finditer(line):
            problems.append(f"line {number}: {match.group()!r}: date the work instead of naming its session")
        for match in MACHINE_PATH.finditer(line):
            problems.append(f"line {number}: {match.group()!r}: a machine path; write DIR or a relative path")
    return problems


def project_pages() -> list[Path]:
    """The pages the check covers: README.md, CONTRIBUTING.md, every docs/**/*.md and benchmarks/*.md."""
    pages = [REPO / "README.md", REPO / "CONTRIBUTING.md"]
    return [*pages, *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "benchmarks").glob("*.md"))]


def file_problems(paths: list[Path]) -> list[str]:
    """`file:line: problem` for every problem in `paths` (relative to the repository where they lie in it)."""
    messages = []
    for path in paths:
        name = path.resolve().relative_to(REPO) if path.resolve().is_relative_to(REPO) else path
        for problem in wording_problems(path.read_text(encoding="utf-8")):
            number, _, rest = problem.removeprefix("line ").partition(": ")
            messages.append(f"{name}:{number}: {rest}")
    return messages


def test_project_pages_have_no_sessions_or_machine_paths():
    problems = file_problems(project_pages())
    assert problems == [], "\n".join(problems)


def test_the_check_covers_readme_docs_and_benchmarks():
    names = {str(p.relative_to(REPO)) for p in project_pages()}
    assert {"README.md", "CONTRIBUTING.md", "docs/recipes.md", "docs/timings.md", "benchmarks/RESULTS.md"} <= names


def test_a_session_in_prose_is_found():
    text = "Measured on 2026-11-29.\nMeasured in the ninth session on 2 CPU cores.\n"
    assert wording_problems(text) == [
        "line 2: 'session': date the work instead of naming its session",
    ]
    assert len(wording_problems("Sessions differ.")) == 1


def test_a_machine_path_is_found():
    assert wording_problems("python benchmarks/search.py --out /tmp/searchbench") == [
        "line 1: '/tmp': a machine path; write DIR or a relative path",
    ]
    assert len(wording_problems("the arms in /work/search90/multirun and `/tmp` scripts")) == 2


def test_identifiers_and_illustrative_paths_pass():
    text = "\n".join(
        [
            "subprocess.Popen(..., start_new_session=True)",
            "the `session_id` key and `requests.Session()`",
            "hydra.sweep.dir=/shared/multirun/optuna_small and data.path=/path/to/pictures",
            "a relative a/tmp/b folder, ~/work/x and https://example.org/work/page",
            "python benchmarks/search.py --out DIR",
        ]
    )
    assert wording_problems(text) == []


def test_file_problems_name_file_and_line(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("fine\nfine\nthe output in /tmp/showcase\n")
    assert file_problems([page]) == [f"{page}:3: '/tmp': a machine path; write DIR or a relative path"]


def main(argv: list[str]) -> int:
    """Check the files named in `argv` (default: the project's pages); print each problem, 1 if there were any."""
    problems = file_problems([Path(a) for a in argv] if argv else project_pages())
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
