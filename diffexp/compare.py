"""diffexp-compare: the recipe report of sweeps: which recipe wins per model size, and at what training cost.

`diffexp-compare sweep=multirun/lr-sweep [metric=fid compute=images_seen out=FOLDER name=best]` (also
`sweep=[DIR1,DIR2]` or `runs=[RUN1,RUN2]`) writes, into a new folder (`<first sweep>/report`, else `report-2`, ...,
built aside and renamed into place whole): `leaderboard.csv/.md`, `recipes.csv/.md` (seeds averaged), `best.md`,
`pareto.png`, `losses.png`, `samples.png`, `experiments/<name>_<size>.yaml` and `report.md`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import statistics
import tempfile
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig, OmegaConf

from diffexp.config import CONF_DIR
from diffexp.errors import ConfigError, report
from diffexp.run_folder import read_losses
from diffexp.tables import cell, markdown, write_table

log = logging.getLogger("diffexp.compare")

HIGHER_IS_BETTER = {
    "fid": False,
    "kid": False,
    "precision": True,
    "recall": True,
    "top_prob": True,  # the digits net's mean top-class probability of the samples
    "final_loss": False,
}
COMPUTE = ("images_seen", "train_seconds")
# Settings that do not change what a run learns (the seed is averaged over instead), and group choices that are no
# part of a recipe themselves (a sweep file or experiment only sets other settings, which the config holds).
NOT_RECIPE = ("seed", "threads", "resume", "logger", "hydra", "sweep_name", "tag")
NOT_RECIPE_GROUPS = ("logger", "experiment", "sweep")
STATUS_ORDER = {"finished": 0, "running": 1, "failed": 2}


def natural_key(text: str | Path) -> list:
    """Sorts `sweep/2` before `sweep/10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple | ListConfig) else [str(value)]


def find_runs(sweeps: list[str], runs: list[str]) -> list[Path]:
    """The run folders to compare: each `runs=` entry and every run folder (job) under each `sweep=` folder."""
    if not sweeps and not runs:
        raise ConfigError("neither sweep= nor runs= is set: give sweep=DIR (a multirun folder) or runs=[RUN1,RUN2]")
    found: list[Path] = []
    for s in sweeps:
        folder = Path(s).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"sweep={s}: no such folder: point sweep= at a multirun folder (multirun/<sweep name>)")
        jobs = {p.parent.parent for p in folder.rglob(".hydra/config.yaml")} | set(
            p.parent for p in folder.rglob("metrics.json")
        )
        if not jobs:
            raise ConfigError(
                f"sweep={s} holds no run folders (none with .hydra/config.yaml or metrics.json): point sweep= at a "
                f"multirun folder, or list run folders with runs=[RUN1,RUN2]"
            )
        found += sorted(jobs, key=natural_key)
    for r in runs:
        folder = Path(r).expanduser()
        if not ((folder / ".hydra" / "config.yaml").exists() or (folder / "metrics.json").exists()):
            raise ConfigError(
                f"runs: {r} is not a run folder (no .hydra/config.yaml or metrics.json): list run folders"
            )
        found.append(folder)
    return list(dict.fromkeys(p.resolve() for p in found))


def _yaml(path: Path) -> Any:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else None


def _logged_error(folder: Path) -> str | None:
    """The `error: ...` line a job logs when its config was rejected (diffexp.errors.report in a multirun)."""
    lines = [line for log_file in sorted(folder.glob("*.log")) for line in log_file.read_text().splitlines()]
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    return errors[-1] if errors else None


def load_run(folder: Path) -> dict[str, Any]:
    """One run folder as a flat record; a job without metrics.json (its config was rejected) is a failed run."""
    folder = Path(folder)
    config = _yaml(folder / ".hydra" / "config.yaml") or {}
    overrides = [o for o in _yaml(folder / ".hydra" / "overrides.yaml") or [] if not o.lstrip("+~").startswith("hydra")]
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else {}
    hydra_record = _yaml(folder / ".hydra" / "hydra.yaml") or {}
    choices = hydra_record.get("hydra", {}).get("runtime", {}).get("choices") or metrics.get("recipe") or {}
    choices = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    status, error = metrics.get("status", "failed"), _logged_error(folder)
    if status == "running" and error:
        status = "failed"
    reason = None
    if status == "failed":
        reason = metrics.get("reason") or error or "no metrics.json: the job stopped before training started"
    recipe = {k: v for k, v in config.items() if k not in NOT_RECIPE}
    key_choices = {k: v for k, v in choices.items() if k not in NOT_RECIPE_GROUPS}
    grids = sorted((folder / "samples").glob("step_*.png"))
    return {
        "name": "/".join(folder.parts[-2:]),
        "path": str(folder),
        "size": str(choices.get("model", "?")),
        "choices": choices,
        "config": config,
        "overrides": overrides,
        "recipe_key": json.dumps([key_choices, recipe], sort_keys=True, default=str),
        "seed": config.get("seed"),
        "status": status,
        "reason": reason,
        "eval": metrics.get("eval") or {},
        "eval_history": metrics.get("eval_history") or [e for e in [metrics.get("eval_best")] if e],
        "prediction": (config.get("schedule") or {}).get("prediction_type"),
        **{k: metrics.get(k) for k in ("final_loss", "images_seen", "train_seconds", "parameters", "steps")},
        "losses": str(folder / "losses.csv") if (folder / "losses.csv").exists() else None,
        "grid": str(grids[-1]) if grids else None,
    }


def choose_metric(runs: list[dict], metric: str) -> tuple[str, str | None]:
    """The metric to rank by, and a note when no run has it so the final training loss stands in."""
    if metric == "final_loss" or any(metric in r["eval"] for r in runs if r["status"] == "finished"):
        return metric, None
    return "final_loss", (
        f"No run has `{metric}` (trained with eval=none?), so runs are ranked by their final training loss, "
        f"which compares only runs with the same noise schedule and prediction target."
    )


def score(run: dict, metric: str) -> dict:
    """Adds `value` (the final model's figure), `best` (best during training) and `basis` (what makes two figures
    comparable: feature net and sample counts, or the loss's prediction target); unranked runs get basis None."""
    higher = HIGHER_IS_BETTER[metric]
    if metric == "final_loss":
        value, best, basis = run["final_loss"], None, f"training loss, {run['prediction']} target"
    else:
        ev = run["eval"]
        value = ev.get(metric)
        history = [h[metric] for h in run["eval_history"] if h.get(metric) is not None]
        best = (max if higher else min)(history) if history else None
        basis = f"{ev.get('feature_net')}, {ev.get('n_real')} real / {ev.get('n_fake')} fake"
    ranked = run["status"] == "finished" and isinstance(value, int | float) and math.isfinite(value)
    ev = run["eval"]
    return run | {
        "value": value,
        "best": best,
        "basis": basis if ranked else None,
        **{k: ev.get(k) for k in ("feature_net", "n_real", "n_fake")},
    }


def size_order(runs: list[dict]) -> list[str]:
    """Model sizes from the smallest (fewest parameters) up."""
    params: dict[str, float] = {}
    for r in runs:
        p = r.get("parameters") or math.inf
        params[r["size"]] = min(params.get(r["size"], math.inf), p)
    return sorted(params, key=lambda s: (params[s], s))


def rank(runs: list[dict], higher_is_better: bool) -> list[dict]:
    """Leaderboard order: per model size, per basis, the scored runs best first, then running, then failed runs.
    Adds `rank` (1 = best of its size and basis; None when unranked)."""
    sizes = size_order(runs)

    def key(r: dict) -> tuple:
        value = r["value"] if r["basis"] else 0.0
        return (
            sizes.index(r["size"]),
            r["basis"] is None,
            r["basis"] or "",
            -value if higher_is_better else value,
            STATUS_ORDER.get(r["status"], 3),
            natural_key(r["name"]),
        )

    out, counts = [], {}
    for r in sorted(runs, key=key):
        group = (r["size"], r["basis"])
        counts[group] = counts.get(group, 0) + 1
        out.append(r | {"rank": counts[group] if r["basis"] else None})
    return out


def label_recipes(runs: list[dict]) -> list[dict]:
    """Adds `recipe`: the overrides that set a run apart (those shared by all runs and the seed left out)."""
    common = set.intersection(*(set(r["overrides"]) for r in runs)) if runs else set()
    out = []
    for r in runs:
        own = [o for o in r["overrides"] if o not in common and o.lstrip("+~").split("=")[0] not in NOT_RECIPE]
        out.append(r | {"recipe": " ".join(own) or "(the shared settings)"})
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if isinstance(v, int | float)]
    return statistics.fmean(values) if values else None


def recipes(runs: list[dict], higher_is_better: bool) -> list[dict]:
    """Runs that differ only by seed are one recipe: its mean and standard deviation over seeds, best first per
    model size and basis. Decisions use the mean."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["basis"]:
            groups.setdefault((r["size"], r["basis"], r["recipe_key"]), []).append(r)
    rows = []
    for (size, basis, _), members in groups.items():
        values = [m["value"] for m in members]
        rows.append(
            {
                "size": size,
                "recipe": members[0]["recipe"],
                "seeds": len(members),
                "seed_list": " ".join(str(m["seed"]) for m in members),
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "final_loss": _mean([m["final_loss"] for m in members]),
                "images_seen": _mean([m["images_seen"] for m in members]),
                "train_seconds": _mean([m["train_seconds"] for m in members]),
                "parameters": members[0]["parameters"],
                "basis": basis,
                "runs": " ".join(m["name"] for m in members),
                "members": members,
            }
        )
    sizes = size_order(runs)
    rows.sort(key=lambda r: (sizes.index(r["size"]), r["basis"], -r["mean"] if higher_is_better else r["mean"]))
    return rows


def best_recipes(rows: list[dict]) -> list[dict]:
    """The first (best mean) recipe of each model size and basis, from `recipes`' order."""
    seen, out = set(), []
    for r in rows:
        if (r["size"], r["basis"]) not in seen:
            seen.add((r["size"], r["basis"]))
            out.append(r)
    return out


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points that no other point beats with no more compute, ordered by compute."""
    sign = -1 if higher_is_better else 1
    order = sorted(range(len(points)), key=lambda i: (points[i][0], sign * points[i][1]))
    front, best = [], math.inf
    for i in order:
        if sign * points[i][1] < best:
            front.append(i)
            best = sign * points[i][1]
    return front


def config_diff(run: dict, base: dict) -> dict:
    """The leaves of `run` that `base` lacks or holds otherwise, nested: what an experiment must set."""
    out = {}
    for k, v in run.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            sub = config_diff(v, base[k])
            if sub:
                out[k] = sub
        elif k not in base or base[k] != v:
            out[k] = v
    return out


def train_defaults() -> dict[str, str]:
    """The group choices of conf/train.yaml's defaults list: an experiment overrides only those it changes."""
    out = {}
    for entry in OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "train.yaml"))["defaults"]:
        if isinstance(entry, dict):
            out.update({k.removeprefix("optional ").strip(): v for k, v in entry.items()})
    return out


def compose_train(choices: dict[str, str]) -> dict:
    """conf/train.yaml with the given group choices: the base an experiment's settings are applied to."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"{g}={c}" for g, c in choices.items() if g not in ("experiment", "sweep") and c is not None]
    if GlobalHydra.instance().is_initialized():  # inside diffexp-compare's own Hydra app (same conf/)
        cfg = compose(config_name="train", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


def experiment_yaml(run: dict, defaults: dict[str, str], base: dict, comment: list[str]) -> str:
    """A Hydra experiment config (`conf/experiment/<name>.yaml`) that recreates the recipe of `run`."""
    choices = {g: c for g, c in run["choices"].items() if g not in NOT_RECIPE_GROUPS and c is not None}
    entries = [
        {f"override /{g}": choices[g]} for g in defaults if g in choices and (g == "model" or choices[g] != defaults[g])
    ]
    entries += [{f"/{g}": c} for g, c in choices.items() if g not in defaults]
    strip = {k: v for k, v in run["config"].items() if k not in NOT_RECIPE}
    body = config_diff(strip, {k: v for k, v in base.items() if k not in NOT_RECIPE})
    lines = ["# @package _global_", *(f"# {c}" for c in comment)]
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(OmegaConf.create({"defaults": entries, **body}))


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


LEADERBOARD = ["rank", "size", "run", "status", "recipe", "seed", "{m}", "best {m}", "final_loss", "images_seen",
               "train_seconds", "parameters", "feature_net", "n_real", "n_fake", "reason"]  # fmt: skip
RECIPES = ["size", "recipe", "seeds", "seed_list", "{m} mean", "{m} std", "final_loss", "images_seen",
           "train_seconds", "parameters", "basis", "runs"]  # fmt: skip


def _columns(template: list[str], metric: str) -> list[str]:
    """The table's columns named after the metric (ranking by final_loss needs no second loss column)."""
    columns = [c.format(m=metric) for c in template if not (metric == "final_loss" and c == "best {m}")]
    return list(dict.fromkeys(columns))


def _by_size(rows: list[dict], columns: list[str], noun: str) -> str:
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


def _spread(b: dict) -> str:
    return f"{b['mean']:.4g}" + (f" ± {b['std']:.4g}" if b["std"] is not None else "")


def write_experiments(best: list[dict], used: str, name: str, sources: list[str], folder: Path) -> None:
    """`experiments/<name>_<size>.yaml` for each best recipe; sets each one's `experiment` (None where it failed)."""
    folder.mkdir()
    defaults, sizes = train_defaults(), [b["size"] for b in best]
    for k, b in enumerate(best):
        suffix = f"_{sizes[:k].count(b['size']) + 1}" if sizes.count(b["size"]) > 1 else ""
        b["experiment"] = f"{name}_{b['size']}{suffix}"
        comment = [
            f"Best {b['size']} recipe by mean {used} ({b['basis']}): {_spread(b)} over {b['seeds']} seed(s),",
            f"runs {b['runs']}, from {', '.join(sources)}; written by diffexp-compare {datetime.now():%Y-%m-%d %H:%M}.",
            f"Copy into conf/experiment/ and train with `diffexp-train experiment={b['experiment']}`.",
        ]
        try:
            base = compose_train(b["members"][0]["choices"])
        except Exception as e:  # a group option that no longer exists in conf/
            log.warning("no experiment config for %s: %s", b["experiment"], e)
            b["experiment"] = None
            continue
        (folder / f"{b['experiment']}.yaml").write_text(experiment_yaml(b["members"][0], defaults, base, comment))


def best_markdown(best: list[dict], used: str, notes: list[str], several_bases: bool) -> str:
    lines = ["# Best recipe per model size", "", *notes, ""]
    for b in best:
        lines += [
            f"## {b['size']}" + (f" ({b['basis']})" if several_bases else ""),
            "",
            f"- recipe: `{b['recipe']}`",
            f"- {used}: {_spread(b)} (mean over {b['seeds']} seed(s): {b['seed_list']}; runs {b['runs']})",
            f"- compute: {cell(b['images_seen'])} images seen, {cell(b['train_seconds'])} s, "
            f"{cell(b['parameters'])} parameters",
        ]
        if b["experiment"]:
            path = f"experiments/{b['experiment']}.yaml"
            lines.append(f"- [{path}]({path}): copy it into conf/experiment/, then `diffexp-train experiment=NAME`")
        lines.append("")
    return "\n".join(lines if best else [*lines, "No finished run has a figure to rank by.", ""])


def build(runs: list[dict], metric: str, compute: str, name: str, sources: list[str], folder: Path) -> list[dict]:
    """Writes every part of the report into `folder`; returns the best recipe per model size (and basis)."""
    import matplotlib

    matplotlib.use("Agg")
    used, fallback = choose_metric(runs, metric)
    higher = HIGHER_IS_BETTER[used]
    board = rank([score(r, used) for r in label_recipes(runs)], higher)
    common = [o for o in runs[0]["overrides"] if all(o in r["overrides"] for r in runs)] if runs else []
    for r in board:
        r |= {"run": r["name"], used: r["value"], f"best {used}": r["best"], "overrides": " ".join(r["overrides"])}
    table = recipes(board, higher)
    for r in table:
        r |= {f"{used} mean": r["mean"], f"{used} std": r["std"]}
    best = best_recipes(table)
    bases = sorted({r["basis"] for r in board if r["basis"]})

    ranking = f"Ranked by `{used}` ({'higher' if higher else 'lower'} is better) of the final model" + (
        "." if used == "final_loss" else f"; `best {used}` is the best evaluation during training."
    )
    notes = [ranking, *([fallback] if fallback else [])]
    if len(bases) > 1:
        notes.append(
            f"Runs differ in feature net or sample count ({'; '.join(bases)}): their figures are not comparable, "
            f"so each group is ranked on its own."
        )
    header = "\n\n".join([*notes, f"Settings shared by all runs: `{' '.join(common) or '(none)'}`."]) + "\n\n"
    columns, recipe_columns = _columns(LEADERBOARD, used), _columns(RECIPES, used)
    write_table(board, [*columns, "basis", "overrides", "path"], folder / "leaderboard.csv", columns)
    (folder / "leaderboard.md").write_text("# Leaderboard\n\n" + header + _by_size(board, columns, "runs"))
    write_table(table, recipe_columns, folder / "recipes.csv")
    title = "# Recipes (runs that differ only by seed, averaged)\n\n"
    (folder / "recipes.md").write_text(title + header + _by_size(table, recipe_columns, "recipes"))
    write_experiments(best, used, name, sources, folder / "experiments")
    (folder / "best.md").write_text(best_markdown(best, used, notes, len(bases) > 1))
    plot_pareto(board, used, compute, folder / "pareto.png")
    plot_losses(board, folder / "losses.png")
    plot_samples(board, used, folder / "samples.png")

    failed = [r for r in board if r["status"] == "failed"]
    running = [r for r in board if r["status"] == "running"]
    for b in best:
        b["experiment config"] = f"[{b['experiment']}](experiments/{b['experiment']}.yaml)" if b["experiment"] else ""
    text = REPORT.format(
        count=len(board),
        finished=len(board) - len(failed) - len(running),
        running=len(running),
        failed=len(failed),
        sources=", ".join(f"`{s}`" for s in sources),
        date=f"{datetime.now():%Y-%m-%d %H:%M}",
        notes=header,
        best=markdown(
            best, ["size", "recipe", f"{used} mean", f"{used} std", "seeds", "images_seen", "experiment config"]
        ),
        experiments="\n".join(
            f"- [experiments/{p.name}](experiments/{p.name})" for p in sorted(folder.glob("experiments/*.yaml"))
        ),
        compute=compute,
        failed_list="\n".join(f"- `{r['name']}` ({r['size']}, `{r['recipe']}`): {r['reason']}" for r in failed)
        or "None.",
        running_list="\n".join(f"- `{r['name']}` ({r['size']}, `{r['recipe']}`)" for r in running) or "None.",
    )
    (folder / "report.md").write_text(text)
    return best


def free_folder(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`... whichever does not exist yet."""
    candidate, k = path, 2
    while candidate.exists():
        candidate, k = path.with_name(f"{path.name}-{k}"), k + 1
    return candidate


def run(cfg: DictConfig) -> Path:
    """Loads the runs, writes the report into a temporary folder and renames it into place, so no report is
    ever half-written or overwritten; prints where the leaderboard is and the best recipe per model size."""
    if cfg.metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"metric={cfg.metric}: use one of {', '.join(HIGHER_IS_BETTER)}")
    if cfg.compute not in COMPUTE:
        raise ConfigError(f"compute={cfg.compute}: use images_seen or train_seconds")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(cfg.name)):
        raise ConfigError(f"name={cfg.name}: use letters, digits, '_', '-' or '.' (it names the experiment files)")
    sweeps, run_list = _as_list(cfg.sweep), _as_list(cfg.runs)
    folders = find_runs(sweeps, run_list)
    runs = [load_run(f) for f in folders]
    out = Path(cfg.out).expanduser() if cfg.out else (Path(sweeps[0]) if sweeps else folders[0].parent) / "report"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        best = build(runs, cfg.metric, cfg.compute, cfg.name, [str(s) for s in sweeps + run_list], tmp)
        while True:
            final = free_folder(out)
            try:
                os.rename(tmp, final)
                break
            except OSError:
                if not final.exists():
                    raise
                # another report took the name meanwhile: take the next one
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"leaderboard: {final / 'leaderboard.md'}")
    for b in best:
        experiment = f" -> {final / 'experiments' / b['experiment']}.yaml" if b["experiment"] else ""
        print(f"best {b['size']}: {b['recipe']} (mean {_spread(b)}, {b['seeds']} seed(s)){experiment}")
    return final


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def main(cfg: DictConfig) -> None:
    report(run, cfg)


if __name__ == "__main__":
    main()
