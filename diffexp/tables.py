"""Tables of figures, written as CSV (every column, for tools) and Markdown (the readable columns, for people)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


def cell(v: Any) -> str:
    """One value as a table shows it."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v).replace("|", "\\|")


def with_interval(value: float, ci: list[float] | None) -> str:
    """`5.68 [5.12, 6.24]`: a figure with its 95% interval (the figure alone where there is none)."""
    return cell(float(value)) + (f" [{cell(float(ci[0]))}, {cell(float(ci[1]))}]" if ci is not None else "")


def markdown(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table of `columns`; floats to 4 significant digits, missing values empty."""
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]) + "\n"


def write_table(rows: list[dict], columns: list[str], path: Path, md_columns: list[str] | None = None) -> str:
    """`rows` as `path` (.csv, every column) and `path.md` (the readable columns); returns the Markdown."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{c: "" if r.get(c) is None else r.get(c) for c in columns} for r in rows])
    md = markdown(rows, md_columns or columns)
    path.with_suffix(".md").write_text(md)
    return md
