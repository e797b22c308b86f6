"""The report's tables and Markdown pages."""

from __future__ import annotations

import re

from diffexp.report.ranking import spread, width_label
from diffexp.tables import NOISE_MARK, SCALE, cell, markdown, within_noise

# "{m} 95% CI" of a run: over its sampling seeds; of a recipe: over its training seeds. "samples": sampling seeds x
# samples per seed behind each run's figure.
LEADERBOARD = ["rank", "size", "run", "status", "recipe", "seed", "{m}", "{m} 95% CI", "samples", "best {m}",
               "memorised", "final_loss", "images_seen", "train_seconds", "parameters", "feature_net", "n_real",
               "reason"]  # fmt: skip
RECIPES = ["size", "recipe", "verdict", "{m} mean", "{m} 95% CI", "vs best", "seeds", "seed_list", "samples",
           "{m} std", "final_loss", "images_seen", "train_seconds", "parameters", "basis", "runs"]  # fmt: skip


POSTHOC = ["post-hoc EMA width", "{m} at fixed EMA"]  # ema=posthoc runs: the chosen width(s), the figure without it


def shown(rows: list[dict], metric: str, recipes: bool = False) -> list[dict]:
    """Copies of leaderboard (or, with `recipes`, recipe) rows with the columns the pages show, named after the
    metric; the rows the report computes with keep their own names."""
    out = []
    for r in rows:
        names = {f"{metric} 95% CI": r["ci"], "post-hoc EMA width": width_label(r)}
        names[f"{metric} at fixed EMA"] = r["fixed"]
        if recipes:
            names |= {f"{metric} mean": r["mean"], f"{metric} std": r["std"]}
        else:
            names |= {"run": r["name"], metric: r["value"], f"best {metric}": r["best"]}
            names["overrides"] = " ".join(r["overrides"])
        out.append(r | names)
    return out


def columns_for(template: list[str], metric: str, posthoc: bool = False) -> list[str]:
    """The table's columns named after the metric (ranking by final_loss needs no second loss column); with
    `posthoc`, the chosen post-hoc EMA width and the figure at the recipe's fixed width follow the figure's interval."""
    per_run_only = ("best {m}", "{m} 95% CI", "samples") if template is LEADERBOARD else ("samples",)
    columns = [c.format(m=metric) for c in template if not (metric == "final_loss" and c in per_run_only)]
    if posthoc and metric != "final_loss":
        at = columns.index(f"{metric} 95% CI") + 1
        columns[at:at] = [c.format(m=metric) for c in POSTHOC]
    return list(dict.fromkeys(columns))


def readable(rows: list[dict], columns: list[str]) -> tuple[list[dict], list[str]]:
    """The rows and columns as people read them: KID columns x10^3 (said in the header), and a run's interval
    marked `(within noise)` where it holds what real images score (the run's floor; KID: 0)."""
    renamed = {c: c.replace("kid", "kid x10^3", 1) for c in columns if re.match(r"(best )?kid( |$)", c)}
    out = []
    for r in rows:
        r = dict(r)
        for c in renamed:
            value = r.get(c)
            if isinstance(value, int | float):
                r[c] = value * SCALE["kid"]
            elif isinstance(value, str) and value.startswith("["):  # "[lo, hi]"
                lo, hi = (float(v) * SCALE["kid"] for v in value.strip("[]").split(","))
                r[c] = f"[{cell(lo)}, {cell(hi)}]"
        metric = next((c.removesuffix(" 95% CI") for c in columns if c.endswith(" 95% CI")), None)
        floor = (r["eval"].get("floor") or {}) if isinstance(r.get("eval"), dict) else {}
        ci_column = f"{metric} 95% CI"
        if r.get("interval") and r.get(ci_column) and within_noise(metric, r["interval"], floor.get(metric)):
            r[ci_column] = f"{r[ci_column]} {NOISE_MARK}"
        out.append({renamed.get(k, k): v for k, v in r.items()})
    return out, [renamed.get(c, c) for c in columns]


def by_size(rows: list[dict], columns: list[str], noun: str) -> str:
    """A Markdown table per model size, smallest first (rows come grouped by size and basis)."""
    parts = []
    for size in dict.fromkeys(r["size"] for r in rows):
        mine = [r for r in rows if r["size"] == size]
        params = min((r["parameters"] for r in mine if r.get("parameters")), default=None)
        size_note = f", {params / 1e6:.3g}M parameters" if params else ""
        parts.append(f"## {size} ({len(mine)} {noun}{size_note})\n\n" + markdown(*readable(mine, columns)))
    return "\n".join(parts)


REPORT = """# Recipe report

{count} runs ({finished} finished, {pruned} pruned, {running} running, {failed} failed) from {sources};
made {date} by diffexp-compare.

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

## Pruned by the search (stopped early: not scored against the finished runs)

{pruned_list}

## Still running

{running_list}
"""


VERDICTS = (
    "A recipe is called worse than its size's best only where Welch's 95% interval of the difference of their means "
    "over training seeds excludes 0 (degrees of freedom min(n1, n2) - 1: t = 4.30 at 3 seeds a side); otherwise it "
    "is a tie. One seed gives no interval, so no verdict. The best is the best mean among recipes with two seeds or "
    "more, where there are any."
)


def best_markdown(best: list[dict], rows: list[dict], used: str, notes: list[str], several_bases: bool) -> str:
    """best.md: each size's best recipe with its interval, what it beats and ties with, and how to train it."""
    lines = ["# Best recipe per model size", "", *notes, "", VERDICTS, ""]
    for b in best:
        rivals = [r for r in rows if r is not b and (r["size"], r["basis"]) == (b["size"], b["basis"])]
        ties = [f"`{r['recipe']}` ({r['vs best']})" for r in rivals if r["verdict"] == "tie"]
        lines += [
            f"## {b['size']}" + (f" ({b['basis']})" if several_bases else ""),
            "",
            f"- recipe: `{b['recipe']}`",
            f"- {used}: {spread(b)}; seeds {b['seed_list']}; runs {b['runs']}",
            *(
                [f"- behind each seed's figure: {b['samples']} samples (sampling seeds x per seed); {b['basis']}"]
                if b["samples"]
                else []
            ),
            f"- verdict: {b['verdict']}"
            + (f"; worse: {sum(r['verdict'] == 'worse' for r in rivals)} of {len(rivals)}" if rivals else ""),
            *([f"- ties with: {'; '.join(ties)}"] if ties else []),
            f"- compute: {cell(b['images_seen'])} images seen, {cell(b['train_seconds'])} s, "
            f"{cell(b['parameters'])} parameters",
        ]
        if b["experiment"]:
            lines.append(
                f"- [conf/experiment/{b['experiment']}.yaml](conf/experiment/{b['experiment']}.yaml): train it with "
                f"`diffexp-train --config-dir <this report>/conf experiment={b['experiment']}`"
            )
        lines.append("")
    return "\n".join(lines if best else [*lines, "No finished run has a figure to rank by.", ""])
