"""The report's pictures: quality against compute with its Pareto front, loss curves, final samples."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

from diffexp.metrics import HIGHER_IS_BETTER
from diffexp.report.ranking import pareto_front, size_order
from diffexp.run_folder import read_losses


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _colours(sizes: list[str]) -> dict[str, Any]:
    import matplotlib.pyplot as plt

    return {s: plt.get_cmap("tab10")(i % 10) for i, s in enumerate(sizes)}


def plot_pareto(rows: list[dict], metric: str, compute: str, path: Path) -> list[str]:
    """Each recipe's mean figure against its training compute, with its 95% interval, one colour per model size
    and the Pareto front of each basis; returns the legend's labels.

    A recipe with several training seeds shows its interval over them (filled circles); a one-seed recipe shows its
    run's interval over sampling seeds (hollow squares, labelled apart), which leaves out the training seed's spread.
    A fixed-budget sweep gives every recipe the same images seen, which would stack all points in one column:
    then training time is the x axis instead (the title says so).
    """
    import matplotlib.pyplot as plt

    higher = HIGHER_IS_BETTER[metric]
    scored = [r for r in rows if isinstance(r.get(compute), int | float)]
    xs = [r[compute] for r in scored]
    if compute == "images_seen" and xs and max(xs) <= 1.01 * min(xs):
        compute, note = "train_seconds", f" (all at {min(xs):.4g} images seen: against training time)"
        scored = [r for r in scored if isinstance(r.get(compute), int | float)]
    else:
        note = ""
    colours = _colours(size_order(rows))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for size in dict.fromkeys(r["size"] for r in scored):
        for one_seed, (marker, kind) in enumerate((("o", "training seeds"), ("s", "1 seed: sampling seeds only"))):
            mine = [r for r in scored if r["size"] == size and (r.get("seeds", 1) == 1) == bool(one_seed)]
            if not mine:
                continue
            ax.errorbar(
                [r[compute] for r in mine],
                [r["mean"] for r in mine],
                yerr=[
                    [r["mean"] - r["interval"][0] if r["interval"] else 0 for r in mine],
                    [r["interval"][1] - r["mean"] if r["interval"] else 0 for r in mine],
                ],
                fmt=marker,
                mfc="none" if one_seed else colours[size],
                color=colours[size],
                capsize=3,
                label=f"{size} (interval over {kind})",
                zorder=3,
            )
    for k, basis in enumerate(dict.fromkeys(r["basis"] for r in scored)):
        group = [r for r in scored if r["basis"] == basis]
        front = [group[i] for i in pareto_front([(r[compute], r["mean"]) for r in group], higher)]
        ax.plot(
            [r[compute] for r in front],
            [r["mean"] for r in front],
            "k--" if k == 0 else "k:",
            lw=1,
            drawstyle="steps-post",
            label=f"Pareto front ({basis})",
            zorder=2,
        )
        for r in front:
            label = textwrap.shorten(r["recipe"], 40, placeholder="…")
            ax.annotate(label, (r[compute], r["mean"]), fontsize=6, xytext=(4, 4), textcoords="offset points")
    xs, ys = [r[compute] for r in scored], [r["mean"] for r in scored]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    if ys and min(ys) > 0 and max(ys) / min(ys) >= 10:  # one diverged run would flatten the rest
        ax.set_yscale("log")
    ax.set_xlabel(compute.replace("_", " ") + (" (mean over seeds)" if compute == "train_seconds" else ""))
    ax.set_ylabel(f"{metric}, mean and 95% interval ({'higher' if higher else 'lower'} is better)")
    title = f"{metric} of each recipe against training compute" + note
    ax.set_title(title + ("" if scored else " (no scored runs)"), fontsize=9)
    labels = ax.get_legend_handles_labels()[1]
    if scored:
        ax.legend(fontsize=7)
    _save(fig, path)
    return labels


def loss_curve(path: str) -> tuple[list[int], list[float]]:
    rows = sorted(read_losses(Path(path)).items())
    return [s for s, _ in rows], [loss for _, (loss, _) in rows]


def plot_run_losses(runs: list[dict], path: Path) -> None:
    """Every run's training loss curve, one colour per recipe (its seeds share it), one line style per model size;
    log scale when losses span a decade or more."""
    import matplotlib.pyplot as plt

    with_losses = [r for r in runs if r["losses"]]
    recipes = list(dict.fromkeys((r["size"], r["recipe"]) for r in with_losses))
    cmap = plt.get_cmap("tab20" if len(recipes) > 10 else "tab10")
    colour = {key: cmap(i % cmap.N) for i, key in enumerate(recipes)}
    styles = dict(zip(size_order(runs), ["-", "--", ":", "-."] * 4, strict=False))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    labelled, seen = set(), []
    for r in with_losses:
        steps, values = loss_curve(r["losses"])
        key = (r["size"], r["recipe"])
        label = None if key in labelled else textwrap.shorten(f"{r['size']}: {r['recipe']}", 60, placeholder="…")
        ax.plot(steps, values, color=colour[key], ls=styles[r["size"]], alpha=0.8, lw=1, label=label)
        labelled.add(key)
        seen += [v for v in values if math.isfinite(v) and v > 0]
    if labelled:
        ax.legend(fontsize=6, ncol=1 if len(labelled) <= 10 else 2)
    if seen and max(seen) / min(seen) >= 10:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("training loss of every run (a colour per recipe)" + ("" if labelled else " (no losses.csv found)"))
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
