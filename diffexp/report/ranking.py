"""Scoring and ranking: which figure compares which runs, seeds averaged into recipes, the best per size."""

from __future__ import annotations

import logging
import math
import statistics

from diffexp.flow_samplers import model_calls
from diffexp.identity import describe
from diffexp.metrics import HIGHER_IS_BETTER
from diffexp.report.runs import natural_key, recipe_setting
from diffexp.stats import mean_interval, welch

log = logging.getLogger("diffexp.report")
STATUS_ORDER = {"finished": 0, "running": 1, "pruned": 2, "failed": 3}


def drop_repeats(runs: list[dict]) -> tuple[list[dict], str | None]:
    """One run per model size, recipe and seed: the same recipe trained again at the same seed measures nothing new,
    and counted twice it would make one seed look like two (with a zero-width interval). Keeps the newest finished
    run of each (else the newest) and returns the runs kept, in order, and the one line naming the repeats."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["seed"] is not None and r["config"]:  # a job refused before its config was saved has no recipe
            groups.setdefault((r["size"], r["recipe_key"], str(r["seed"])), []).append(r)
    dropped: dict[str, str] = {}
    for members in groups.values():
        keep = max(members, key=lambda r: (r["status"] == "finished", r.get("updated") or 0.0))
        dropped |= {r["path"]: keep["name"] for r in members if r is not keep}
    if not dropped:
        return runs, None
    repeats = [r for r in runs if r["path"] in dropped]
    line = (
        f"{len(repeats)} run{'s' * (len(repeats) > 1)} repeated a recipe at a seed it already has and count once, "
        f"as the newest finished run: " + ", ".join(f"`{r['name']}` (as `{dropped[r['path']]}`)" for r in repeats)
    )
    log.warning(line)
    return [r for r in runs if r["path"] not in dropped], line


def choose_metric(runs: list[dict], metric: str) -> tuple[str, str | None]:
    """The figure to rank by, and a note when the runs lack `metric`: a sample-quality figure where the runs have
    one (FD refused, KID), else the held-out denoising error, else the final training loss (compared only within
    groups of equal schedule, target and weighting: see `score`)."""
    finished = [r for r in runs if r["status"] == "finished"]

    def has(name: str) -> bool:
        return any(r["eval"].get(name) is not None for r in finished)

    if metric == "final_loss" or has(metric):
        return metric, None
    if metric == "fid" and has("kid"):
        return "kid", "No run has an FD (`fid`; eval=dinov2 refuses it below its feature width): ranked by KID."
    if has("denoise"):
        return "denoise", (
            f"No run has `{metric}` (trained with eval=none?), so runs are ranked by their held-out denoising error, "
            f"which compares across schedules and loss weightings but only within one prediction target "
            f"(docs/recipes.md: trained epsilon models score worse at equal FID)."
        )
    return "final_loss", (
        f"No run has `{metric}` or a held-out denoising error, so runs are ranked by their final training loss, "
        f"which compares only runs with the same noise schedule, prediction target and loss weighting."
    )


def data_basis(run: dict) -> str:
    """What data a run's figure is of: the dataset (name or path), resolution, channels and held-out set (its
    fingerprint; runs made before it was recorded say so). Figures of different data are never compared."""
    data = (run.get("config") or {}).get("data") or {}
    name = data.get("name") or data.get("path") or str(data.get("_target_", "?")).rsplit(".", 1)[-1]
    held = f"held-out {describe(run['heldout'])}" if run.get("heldout") else "no held-out fingerprint"
    return f"{name} {data.get('resolution', '?')}px {data.get('channels', '?')}ch, {held}"


def basis_note(metric: str, bases: list[str]) -> str | None:
    """The line saying why runs of several bases are ranked apart (None with one basis)."""
    if len(bases) < 2:
        return None
    data = sorted({b.split(" | ", 1)[0] for b in bases})
    if len(data) > 1:
        return (
            f"Runs are of different data ({'; '.join(data)}): a figure is only comparable on one dataset, resolution, "
            f"channel count and held-out set, so each is ranked on its own."
        )
    if metric == "denoise":
        return (
            f"Held-out denoising errors of different prediction targets do not rank runs as sample quality does "
            f"({'; '.join(bases)}; docs/recipes.md): each group is ranked on its own."
        )
    if metric == "final_loss":
        return (
            f"Training losses of different schedules, prediction targets or loss weightings measure different errors "
            f"({'; '.join(bases)}): no ranking across them, each group is ranked on its own."
        )
    return (
        f"Runs differ in feature net or sample count ({'; '.join(bases)}): their figures are not comparable, "
        f"so each group is ranked on its own."
    )


def loss_group(config: dict) -> str:
    """What makes two training losses comparable: the schedule, the prediction target and the loss weighting."""
    schedule, loss = config.get("schedule") or {}, config.get("loss") or {}
    parts = [f"{schedule.get('beta_schedule', '?')} schedule"]
    if schedule.get("rescale_betas_zero_snr"):
        parts[0] += " (zero terminal SNR)"
    if schedule.get("num_train_timesteps") not in (None, 1000):
        parts[0] += f" of {schedule['num_train_timesteps']} steps"
    parts.append(f"{schedule.get('prediction_type', '?')} target")
    gamma = loss.get("snr_gamma")
    parts.append(f"min-SNR-{gamma:g} weighting" if isinstance(gamma, int | float) else "plain MSE")
    if schedule.get("weighting_scheme"):  # schedule=flow: its shift and timestep density or loss weighting
        parts[0] = f"flow schedule (shift {schedule.get('shift', 1.0):g})"
        parts[-1] = f"{schedule['weighting_scheme']} weighting"
    return ", ".join(parts)


def score(run: dict, metric: str) -> dict:
    """Adds `value` (the final model's figure), `best` (best during training) and `basis` (what makes two figures
    comparable: feature net (and model) and sample counts, the denoising error's image and level counts, or the
    loss's schedule, target and weighting); unranked runs get basis None."""
    higher = HIGHER_IS_BETTER[metric]
    if metric == "final_loss":
        value, best, basis = run["final_loss"], None, f"training loss, {loss_group(run['config'])}"
    else:
        ev = run["eval"]
        value = ev.get(metric)
        history = [h[metric] for h in run["eval_history"] if h.get(metric) is not None]
        best = (max if higher else min)(history) if history else None
        reference = "held-out" if ev.get("reference") == "heldout" else "training"
        net = " ".join(str(ev[k]) for k in ("feature_net", "feature_model") if ev.get(k))  # eval=dinov2: its model
        basis = f"{net}, {ev.get('n_real')} {reference} real / {ev.get('n_fake')} fake"
        if ev.get("sampler") and ev.get("sampler_steps"):  # either family's sampler, ranked together at equal calls
            basis += f", {model_calls(ev['sampler'], int(ev['sampler_steps']))} model calls"
        if metric == "denoise":
            levels = len(ev.get("denoise_levels") or ())
            target = (run["config"].get("schedule") or {}).get("prediction_type", "?")
            basis = f"held-out denoising error, {target} target, {ev.get('denoise_images')} images x {levels} levels"
    basis = f"{data_basis(run)} | {basis}"
    ranked = run["status"] == "finished" and isinstance(value, int | float) and math.isfinite(value)
    ev = run["eval"]
    ci = ev.get(f"{metric}_ci") if metric != "final_loss" else None
    return run | {
        "value": value,
        "best": best,
        "basis": basis if ranked else None,
        "ci": f"[{ci[0]:.4g}, {ci[1]:.4g}]" if ci else None,
        "interval": tuple(ci) if ci else None,
        "samples": f"{ev.get('n_seeds') or 1}×{ev['n_fake']}" if ev.get("n_fake") else None,
        **{k: ev.get(k) for k in ("feature_net", "n_real", "n_fake", "memorised")},
        # ema=posthoc: the width the run chose, and its figure at the recipe's fixed width (ema.sigma_rel)
        "ema_sigma_rel": ev.get("ema_sigma_rel"),
        "ema_profile_error": ev.get("ema_profile_error"),  # how well the snapshots built it (diffexp.profiles)
        "fixed": ev.get(f"{metric}_fixed") if metric != "final_loss" else None,
    }


def width_label(run: dict) -> str | None:
    """A post-hoc run's chosen width with its profile error beside it (runs recorded before the error: the width)."""
    width, error = run.get("ema_sigma_rel"), run.get("ema_profile_error")
    if not isinstance(width, int | float):
        return width
    return f"{width:g}" + (f" (profile error {error:.1%})" if isinstance(error, int | float) else "")


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
        own = [o for o in r["overrides"] if o not in common and recipe_setting(o)]
        out.append(r | {"recipe": " ".join(own) or "(the shared settings)"})
    return out


def _mean(values: list) -> float | None:
    values = [v for v in values if isinstance(v, int | float)]
    return statistics.fmean(values) if values else None


def recipes(runs: list[dict], higher_is_better: bool) -> list[dict]:
    """Runs that differ only by seed are one recipe: its mean over seeds with a 95% interval, best mean first per
    model size and basis; `judge` then says which differences are more than noise."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        if r["basis"]:
            groups.setdefault((r["size"], r["basis"], r["recipe_key"]), []).append(r)
    rows = []
    for key, members in groups.items():  # an interval over seeds takes each seed once
        seeds = [str(m["seed"]) for m in members]
        if len(set(seeds)) < len(seeds):
            groups[key] = drop_repeats(members)[0]
    for (size, basis, _), members in groups.items():
        values = [m["value"] for m in members]
        interval = mean_interval(values)
        rows.append(
            {
                "size": size,
                "recipe": members[0]["recipe"],
                "seeds": len(members),
                "seed_list": " ".join(str(m["seed"]) for m in members),
                "values": values,
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "ci": f"[{interval[1]:.4g}, {interval[2]:.4g}]" if interval else None,
                # where one seed gives no interval over seeds, its run's interval over sampling seeds, if any
                "interval": interval[1:] if interval else members[0]["interval"] if len(members) == 1 else None,
                "samples": " ".join(sorted({m["samples"] for m in members if m.get("samples")})) or None,
                "ema_sigma_rel": " ".join(width_label(m) for m in members if m.get("ema_sigma_rel")) or None,
                "fixed": _mean([m.get("fixed") for m in members]),
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


def judge(rows: list[dict]) -> list[dict]:
    """Adds `verdict` to each recipe row (in `recipes`' order) against the reference of its size and basis.

    The reference is the best mean among recipes with two seeds or more, so that one lucky single run cannot leave
    every verdict of its size untested; where no recipe has two seeds, the best mean. A recipe is `worse` only where
    Welch's 95% interval of its difference to the reference excludes 0, else `tie`; with one seed on either side
    there is no interval (`untested`). The reference is `best` when every other recipe is worse, `best (tied)` when
    some tie. `vs best` holds the difference and its interval.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["basis"]), []).append(r)
    for members in groups.values():
        ref = next((r for r in members if r["seeds"] > 1), members[0])
        ref["reference"] = True
        others = [r for r in members if r is not ref]
        for r in others:
            d = welch(r["values"], ref["values"])
            r["vs best"] = str(d)
            r["verdict"] = "untested (1 seed)" if d.lo is None else "tie" if d.tie else "worse"
        verdicts = [r["verdict"] for r in others]
        untested = verdicts.count("untested (1 seed)")
        if not others:
            ref["verdict"] = "only recipe"
        elif ref["seeds"] == 1:
            ref["verdict"] = "best by mean, untested (1 seed)"
        else:
            ref["verdict"] = ("best (tied)" if "tie" in verdicts else "best") + (
                f"; {untested} one-seed recipe{'s' * (untested > 1)} untested" if untested else ""
            )
    return rows


def best_recipes(rows: list[dict]) -> list[dict]:
    """The reference (see `judge`) of each model size and basis, in `recipes`' order."""
    return [r for r in rows if r.get("reference")]


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
    """A recipe's mean, with its 95% interval over seeds where it has several."""
    return f"{b['mean']:.4g}" + (f" {b['ci']} (95%, {b['seeds']} seeds)" if b.get("ci") else " (1 seed)")
