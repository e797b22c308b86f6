"""The report's tables and Markdown pages."""

from __future__ import annotations

from diffexp.report.ranking import spread
from diffexp.tables import cell, markdown

LEADERBOARD = ["rank", "size", "run", "status", "recipe", "seed", "{m}", "best {m}", "final_loss", "images_seen",
               "train_seconds", "parameters", "feature_net", "n_real", "n_fake", "reason"]  # fmt: skip
RECIPES = ["size", "recipe", "seeds", "seed_list", "{m} mean", "{m} std", "final_loss", "images_seen",
           "train_seconds", "parameters", "basis", "runs"]  # fmt: skip


def columns_for(template: list[str], metric: str) -> list[str]:
    """The table's columns named after the metric (ranking by final_loss needs no second loss column)."""
    columns = [c.format(m=metric) for c in template if not (metric == "final_loss" and c == "best {m}")]
    return list(dict.fromkeys(columns))


def by_size(rows: list[dict], columns: list[str], noun: str) -> str:
    """A Markdown table per model size, smallest first (rows come grouped by size and basis)."""
    parts = []
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == size]
        params = min((r["parameters"] for r in mine if r.get("parameters")), default=None)
        size_note = f", {params / 1e6:.3g}M parameters" if params else ""
        parts.append(f"## {size} ({len(mine)} {noun}{size_note})\n\n" + markdown(mine, columns))
    return "\n".join(parts)


REPORT = """# Recipe report

{count} runs ({finished} finished, {running} running, {failed} failed) from {sources}; made {date} by diffexp-compare.

{notes}
## Best recipe per model size

{best}
Details, and how to train them again: [best.md](best.md).

## Tables

- [leaderboard.md](leaderboard.md) ([csv](leaderboard.csv)): every run, per model size, best first
- [recipes.md](recipes.md) ([csv](recipes.csv)): runs that differ only by seed, averaged
{experiments}

## Quality against training compute ({compute})

![pareto](pareto.png)

## Loss curves

![losses](losses.png)

## Final samples

![samples](samples.png)

## Failed runs

{failed_list}

## Still running

{running_list}
"""


def best_markdown(best: list[dict], used: str, notes: list[str], several_bases: bool) -> str:
    lines = ["# Best recipe per model size", "", *notes, ""]
    for b in best:
        lines += [
            f"## {b['size']}" + (f" ({b['basis']})" if several_bases else ""),
            "",
            f"- recipe: `{b['recipe']}`",
            f"- {used}: {spread(b)} (mean over {b['seeds']} seed(s): {b['seed_list']}; runs {b['runs']})",
            f"- compute: {cell(b['images_seen'])} images seen, {cell(b['train_seconds'])} s, "
            f"{cell(b['parameters'])} parameters",
        ]
        if b["experiment"]:
            path = f"experiments/{b['experiment']}.yaml"
            lines.append(f"- [{path}]({path}): copy it into conf/experiment/, then `diffexp-train experiment=NAME`")
        lines.append("")
    return "\n".join(lines if best else [*lines, "No finished run has a figure to rank by.", ""])
