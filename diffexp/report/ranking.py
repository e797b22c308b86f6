"""Scoring and ranking: which figure compares which runs, seeds averaged into recipes, the best per size."""

from __future__ import annotations

import math
import statistics

from diffexp.report.runs import NOT_RECIPE, natural_key

HIGHER_IS_BETTER = {
    "fid": False,
    "kid": False,
    "precision": True,
    "recall": True,
    "top_prob": True,  # the digits net's mean top-class probability of the samples
    "final_loss": False,
}
STATUS_ORDER = {"finished": 0, "running": 1, "failed": 2}


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


def spread(b: dict) -> str:
    """A recipe's mean, with its standard deviation over seeds where it has several."""
    return f"{b['mean']:.4g}" + (f" ± {b['std']:.4g}" if b["std"] is not None else "")
