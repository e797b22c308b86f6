"""The report's pictures: quality against compute with its Pareto front, loss curves, final samples."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from diffexp.report.ranking import HIGHER_IS_BETTER, pareto_front, size_order
from diffexp.run_folder import read_losses


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _colours(sizes: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    return {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(sizes)}


def plot_pareto(runs: list[dict], metric: str, compute: str, path: Path) -> None:
    """The metric against training compute, one colour per model size, the Pareto front of each basis drawn."""
    import matplotlib.pyplot as plt

    higher = HIGHER_IS_BETTER[metric]
    scored = [r for r in runs if r["basis"] and isinstance(r.get(compute), int | float)]
    colours = _colours(size_order(runs))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for size in dict.fromkeys(r["size"] for r in scored):
        mine = [r for r in scored if r["size"] == size]
        ax.scatter([r[compute] for r in mine], [r["value"] for r in mine], color=colours[size], label=size, zorder=3)
    for k, basis in enumerate(dict.fromkeys(r["basis"] for r in scored)):
        group = [r for r in scored if r["basis"] == basis]
        front = [group[i] for i in pareto_front([(r[compute], r["value"]) for r in group], higher)]
        ax.plot(
            [r[compute] for r in front],
            [r["value"] for r in front],
            "k--" if k == 0 else "k:",
            lw=1,
            drawstyle="steps-post",
            label=f"Pareto front ({basis})",
            zorder=2,
        )
        for r in front:
            ax.annotate(r["name"], (r[compute], r["value"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    xs, ys = [r[compute] for r in scored], [r["value"] for r in scored]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    if ys and min(ys) > 0 and max(ys) / min(ys) >= 10:  # one diverged run would flatten the rest
        ax.set_yscale("log")
    ax.set_xlabel(compute.replace("_", " "))
    ax.set_ylabel(f"{metric} ({'higher' if higher else 'lower'} is better)")
    ax.set_title(f"{metric} against training compute" + ("" if scored else " (no scored runs)"))
    if scored:
        ax.legend(fontsize=7)
    _save(fig, path)


def loss_curve(path: str) -> tuple[list[int], list[float]]:
    rows = sorted(read_losses(Path(path)).items())
    return [s for s, _ in rows], [loss for _, (loss, _) in rows]


def plot_losses(runs: list[dict], path: Path) -> None:
    """Every run's training loss curve, coloured by model size (log scale when losses span a decade or more)."""
    import matplotlib.pyplot as plt

    colours = _colours(size_order(runs))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    labelled, seen = set(), []
    for r in (r for r in runs if r["losses"]):
        steps, values = loss_curve(r["losses"])
        label = None if r["size"] in labelled else r["size"]
        ax.plot(steps, values, color=colours[r["size"]], alpha=0.7, lw=1, label=label)
        labelled.add(r["size"])
        seen += [v for v in values if math.isfinite(v) and v > 0]
    if labelled:
        ax.legend(fontsize=7)
    if seen and max(seen) / min(seen) >= 10:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss of every run" + ("" if labelled else " (no losses.csv found)"))
    _save(fig, path)


def plot_samples(runs: list[dict], metric: str, path: Path) -> None:
    """The final sample grid of each run side by side, labelled with its recipe and metric."""
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    shown = [r for r in runs if r["grid"]]
    cols = max(1, min(4, len(shown)))
    rows = max(1, math.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, r in zip(axes.flat, shown, strict=False):
        ax.imshow(np.asarray(Image.open(r["grid"]).convert("RGB")))
        figure = f"{metric} {r['value']:.4g}" if r["basis"] else r["status"]
        title = f"{r['name']} [{r['size']}] {figure}\n" + "\n".join(textwrap.wrap(r["recipe"], 42)[:3])
        ax.set_title(title, fontsize=7)
    if not shown:
        axes.flat[0].text(0.5, 0.5, "no sample grids", ha="center", va="center")
    _save(fig, path)
