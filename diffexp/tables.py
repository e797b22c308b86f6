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


FIGURE_NAMES = ("fid", "kid", "precision", "recall")  # the quality figures every evaluation gives
SCALE = {"kid": 1e3}  # KID x10^3, as papers print Inception's (raw 1e-4..1e-2; the digits net's raw KID is ~1-100)
NOISE_MARK = "(within noise)"


def within_noise(name: str, ci: list[float] | None, floor: float | None) -> bool:
    """Whether a figure cannot be told from real data's: its 95% interval holds what real images score (the floor;
    for KID 0, its expected value when samples and real images come from one distribution)."""
    reference = 0.0 if name == "kid" else floor
    return ci is not None and reference is not None and float(ci[0]) <= float(reference) <= float(ci[1])


def figure_text(name: str, value: float, ci: list[float] | None, floor: float | None = None, mark: bool = True) -> str:
    """`0.42 [-0.1, 0.9] (within noise)`: a figure in its shown units (KID x10^3), its interval, the noise mark."""
    scale = SCALE.get(name, 1.0)
    shown = with_interval(float(value) * scale, [float(c) * scale for c in ci] if ci is not None else None)
    return shown + (f" {NOISE_MARK}" if mark and within_noise(name, ci, floor) else "")


def kid_note() -> str:
    return (
        f"KID is shown x10^3; {NOISE_MARK} marks a figure whose 95% interval holds what real images score (the "
        "floor; for KID 0): at these sample counts it cannot be told from real data's."
    )


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
