"""The search measured: two arms of one Optuna search on the digits, each lever against the plain search.

    python benchmarks/search.py [--compare pruning|warm-start|workers] [--minutes 30] [--images N] [--seeds 0 1]
                                [--tiny-minutes 30] [--tiny-images N] [--out /tmp/diffexp-search-bench] [OVERRIDE...]

The comparisons (`--compare`; its arms, the plain search first):
- `pruning` (default): `sweeps=optuna_tiny` at 24k images a trial, the sweep file's pruner against
  `hydra/sweeper/pruner=none`; the arms side by side, one worker and one core each. "Reached": a re-scored figure
  at or below the upper 95% bound of the best recipe either arm found.
- `warm-start`: `sweeps=optuna_small` at its own 48k images a trial, from scratch against
  `hydra.sweeper.warm_start=` a finished tiny study of the same TPE seed (`sweeps=optuna_tiny` at its own budget or
  `--tiny-images`, run first, alone on every core, for `--tiny-minutes`; its minutes are reported beside the ratio,
  the ratio counts the small search alone); the arms side by side, one core each. "Reached": the from-scratch
  arm's best's bound.
- `workers`: `sweeps=optuna_tiny` at 24k images a trial, one worker against two distinct workers on one study, one
  arm after the other, each on the whole machine (`threads=auto`: one worker takes every core, two take half each).
  "Reached": the one-worker arm's best's bound.

Each arm runs for `--minutes` (the sweeper's timeout: a worker starts no trial after it; the running one ends).
Afterwards every trial that improved its arm's best-so-far is scored again with the final evaluation on fresh
sampling seeds (a search's best figure is optimistic: it won on its own noise); the time an arm needed is that
trial's completion, counted from the arm's first trial start. Each seed's line under the table says how many times
sooner the lever's arm got there, and for how many leading trials both arms drew the same parameters (as far as
they do, the arms differ only in time: e.g. TPE ranks a pruned trial below every finished one, so pruning changes
the draws only when a pruned trial's twin would have been among TPE's few best).

Writes OUT/results.json, OUT/results.md (the table for benchmarks/RESULTS.md) and OUT/search.png; for another
comparison than pruning, OUT/<compare>-results.* and OUT/<compare>-search.png. The same command again reuses
finished arms (their studies and trial folders) and re-scores only what is missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@dataclass(frozen=True)
class Comparison:
    """Two arms of one search: the plain one (the baseline) first, then the lever's."""

    sweep: str  # the sweep file both arms run
    arms: dict[str, list[str]]  # arm: its overrides
    images: int | None  # images a trial; None: the sweep file's own budget
    workers: dict[str, int] = field(default_factory=dict)  # workers on an arm's study, where more than one
    together: bool = True  # side by side at one thread a worker; else one after the other on every core
    target: str = "either"  # whose best recipe "reached" means: either arm's, or "baseline"
    warm_start: bool = False  # the lever's arm starts from a finished tiny study of the same TPE seed

    @property
    def baseline(self) -> str:
        return list(self.arms)[0]

    @property
    def lever(self) -> str:
        return list(self.arms)[1]


COMPARISONS = {
    "pruning": Comparison("optuna_tiny", {"no pruning": ["hydra/sweeper/pruner=none"], "pruning": []}, 24000),
    "warm-start": Comparison(
        "optuna_small", {"from scratch": [], "warm start": []}, None, target="baseline", warm_start=True
    ),
    "workers": Comparison(
        "optuna_tiny", {"1 worker": [], "2 workers": []}, 24000, {"2 workers": 2}, together=False, target="baseline"
    ),
}
RESCORE_SEED = 10_000  # first sampling seed of the re-scoring (the trials' own final evaluation used seeds 0-4)


@dataclass
class Point:
    """One trial that improved its arm's best-so-far."""

    trial: int
    minutes: float  # completion, from the arm's first trial start
    objective: float  # the trial's own figure (its final evaluation)
    fid: float | None = None  # re-scored on fresh seeds
    lo: float | None = None
    hi: float | None = None


def incumbents(trials: list[tuple[int, float, float]]) -> list[Point]:
    """The trials (number, minutes, objective) that improved the best-so-far, in completion order."""
    best, out = float("inf"), []
    for number, minutes, value in sorted(trials, key=lambda t: t[1]):
        if value < best:
            best = value
            out.append(Point(number, minutes, value))
    return out


def time_to_reach(points: list[Point], hi: float) -> float | None:
    """Minutes until the arm's first re-scored figure at or below `hi` (the best recipe's upper 95% bound)."""
    return next((p.minutes for p in points if p.fid is not None and p.fid <= hi), None)


def speedup(reach: dict[str, float | None], c: Comparison) -> float | None:
    """How many times sooner the lever's arm reached the best than the baseline (None unless both did)."""
    lever, baseline = reach.get(c.lever), reach.get(c.baseline)
    return baseline / lever if lever and baseline else None


def target(points: dict[str, list[Point]], c: Comparison) -> tuple[Point, str]:
    """The re-scored recipe an arm must reach, and its arm: the best of either arm, or of the baseline's."""
    pool = [(p, arm) for arm, mine in points.items() for p in mine if c.target == "either" or arm == c.baseline]
    return min(pool, key=lambda s: s[0].fid)


def shared_recipes(params: list[list[dict]]) -> int:
    """How many leading trials drew the same parameters in every arm: over those, the arms differ only in time."""
    n = 0
    for same in zip(*params, strict=False):
        if any(p != same[0] for p in same[1:]):
            break
        n += 1
    return n


def sweep_dir(out: Path, arm: str, seed: int) -> Path:
    return out / "multirun" / f"bench-{arm.replace(' ', '-')}-seed{seed}"


def ended(folder: Path) -> dict[str, int]:
    """Trials of an arm by their `metrics.json` status (finished, pruned, failed), running ones left out."""
    states = [json.loads(p.read_text()).get("status") for p in folder.glob("trial-*/metrics.json")]
    return {s: states.count(s) for s in sorted(set(states)) if s != "running"}


def start_workers(out: Path, c: Comparison, arm: str, seed: int, minutes: float, extra: list[str]) -> list:
    """Starts an arm's workers on its study (`sweeps=<c.sweep>`, TPE seed `seed`, `minutes` of search)."""
    folder = sweep_dir(out, arm, seed)
    args = ["-m", f"sweeps={c.sweep}", f"sweep_name={folder.name}", f"threads={1 if c.together else 'auto'}"]
    args += [f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweeper.timeout={int(minutes * 60)}"]
    args += ["hydra.sweeper.n_trials=10000", "logger=csv", "preview.every_n_steps=0", *c.arms[arm], *extra]
    folder.mkdir(parents=True, exist_ok=True)
    logs = [(folder / f"worker{k}.log").open("a") for k in range(c.workers.get(arm, 1))]
    return [subprocess.Popen([sys.executable, "-m", "diffexp.train", *args], cwd=out, stdout=f, stderr=f) for f in logs]


def wait_workers(out: Path, seed: int, procs: dict[str, list]) -> None:
    """Waits for every arm's workers, printing the trials ended so far; marks each arm done."""
    start = time.time()
    while any(p.poll() is None for workers in procs.values() for p in workers):
        time.sleep(30)
        done = {arm: ended(sweep_dir(out, arm, seed)) for arm in procs}
        print(f"seed {seed}: {(time.time() - start) / 60:.1f} min, trials ended per arm {done}", flush=True)
    for arm, workers in procs.items():
        if any(p.returncode for p in workers):
            raise SystemExit(f"arm {arm!r} seed {seed} failed: see {sweep_dir(out, arm, seed)}/worker*.log")
        (sweep_dir(out, arm, seed) / "done").touch()


def tiny_study(out: Path, seed: int, minutes: float, extra: list[str]) -> Path:
    """A tiny search of TPE seed `seed` at its own budget, alone on every core, for `minutes` (warm-start's source)."""
    c = Comparison("optuna_tiny", {"tiny": []}, None, together=False)
    if not (sweep_dir(out, "tiny", seed) / "done").exists():
        wait_workers(out, seed, {"tiny": start_workers(out, c, "tiny", seed, minutes, extra)})
    return sweep_dir(out, "tiny", seed)


def run_arms(out: Path, c: Comparison, seed: int, minutes: float, extra: list[str], tiny: Path | None) -> None:
    """The comparison's arms of one seed: side by side or one after the other; returns when all have ended."""
    procs = {}
    for arm in c.arms:
        if (sweep_dir(out, arm, seed) / "done").exists():
            continue
        warm = [f"hydra.sweeper.warm_start={tiny}"] if arm == c.lever and tiny is not None else []
        procs[arm] = start_workers(out, c, arm, seed, minutes, [*extra, *warm])
        if not c.together:
            wait_workers(out, seed, {arm: procs.pop(arm)})
    wait_workers(out, seed, procs)


def arm_trials(folder: Path) -> tuple[list[tuple[int, float, float]], dict[str, int], list[dict]]:
    """(number, minutes to completion, objective) of the COMPLETE trials, the count of each state, and every trial's
    parameters in trial order."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'optuna.db'}")
    trials = study.get_trials(deepcopy=False)
    t0 = min(t.datetime_start for t in trials if t.datetime_start)
    done = [
        (t.number, (t.datetime_complete - t0).total_seconds() / 60, t.value)
        for t in trials
        if t.state == TrialState.COMPLETE and t.value is not None
    ]
    states = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    return done, states, [t.params for t in sorted(trials, key=lambda t: t.number)]


def rescore(trial_folder: Path, seeds: int) -> tuple[float, float, float]:
    """FID of the trial's final weights with its own evaluation sampler, on `seeds` fresh sampling seeds."""
    from omegaconf import OmegaConf

    from diffexp import api

    cached = trial_folder / "eval" / "rescore.json"
    if cached.exists():
        return tuple(json.loads(cached.read_text()))
    cfg = OmegaConf.load(trial_folder / ".hydra" / "config.yaml")
    table = api.evaluate(
        trial_folder,
        samplers=[cfg.eval.sampler],
        steps=[cfg.eval.sampler_steps],
        ddpm_steps=[],
        seed=RESCORE_SEED,
        threads=2,
        **{"eval.seeds": seeds},
    )
    _, row = csv.DictReader(table.with_suffix(".csv").open())  # the real-data floor, then the samples
    figures = float(row["fid"]), float(row["fid_lo"]), float(row["fid_hi"])
    cached.write_text(json.dumps(figures))
    return figures


def plot(results: dict, c: Comparison, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (seed, arms) in enumerate(results["seeds"].items()):
        for j, (arm, r) in enumerate(arms.items()):  # a colour an arm, a line style a seed
            pts = [p for p in r["incumbents"] if p["fid"] is not None]
            x, y = [p["minutes"] for p in pts], [p["fid"] for p in pts]
            style = ["-", "--", ":", "-."][i % 4]
            ax.step(x, y, style, where="post", color=f"C{j}", marker="o", label=f"TPE seed {seed}, {arm}")
            errors = [[p["fid"] - p["lo"] for p in pts], [p["hi"] - p["fid"] for p in pts]]
            ax.errorbar(x, y, yerr=errors, fmt="none", color=f"C{j}", alpha=0.4)
    ax.set_xlabel("minutes of search" + (" (one core an arm)" if c.together else " (the whole machine an arm)"))
    ax.set_ylabel("FID of the best trial so far, re-scored (95% CI)")
    ax.set_yscale("log")  # a bad start-up trial (FID ~100) leaves the near-ties readable
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 1.5, 2, 3, 5, 7)))  # ticks on a near-tie too
    ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_title(f"{c.lever} against {c.baseline}\n{c.sweep}, {results['images']} images a trial", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_seed(out: Path, c: Comparison, seed: int, rescore_seeds: int) -> tuple[dict, list[str], str]:
    """Re-scores each arm's incumbents; returns the seed's results, its table rows and its line under the table."""
    arms, params, rows = {}, [], []
    for arm in c.arms:
        folder = sweep_dir(out, arm, seed)
        trials, states, drawn = arm_trials(folder)
        params.append(drawn)
        points = incumbents(trials)
        for p in points:
            print(f"seed {seed}, {arm}: re-scoring trial {p.trial}", flush=True)
            p.fid, p.lo, p.hi = rescore(folder / f"trial-{p.trial:04d}", rescore_seeds)
        arms[arm] = {"states": states, "incumbents": points}
    best, best_arm = target({arm: r["incumbents"] for arm, r in arms.items()}, c)
    for arm, r in arms.items():
        mine = min(r["incumbents"], key=lambda p: p.fid)
        reach = time_to_reach(r["incumbents"], best.hi)
        r |= {"best": asdict(mine), "minutes_to_reach": reach}
        rows.append(
            f"| {seed} | {arm} | {r['states']['complete']} + {r['states']['pruned']} pruned | "
            f"{mine.fid:.2f} [{mine.lo:.2f}, {mine.hi:.2f}] (trial {mine.trial}) | "
            f"{'yes' if reach is not None else 'no'} | {'' if reach is None else f'{reach:.1f}'} |"
        )
    sooner = speedup({arm: r["minutes_to_reach"] for arm, r in arms.items()}, c)
    shared = shared_recipes(params)
    note = (
        f"TPE seed {seed}: {c.lever} reached the best "
        + ("(one arm never reached it)" if sooner is None else f"{sooner:.2f}x sooner")
        + f"; the arms drew the same parameters for their first {shared} trials."
    )
    result = {
        "arms": {arm: r | {"incumbents": [asdict(p) for p in r["incumbents"]]} for arm, r in arms.items()},
        "best": asdict(best) | {"arm": best_arm},
        "speedup": sooner,
        "shared_recipes": shared,
    }
    return result, rows, note


def header(c: Comparison, a: argparse.Namespace, images: str, tiny_minutes: dict[str, float]) -> str:
    """The table's head: what ran, how, and what "reached" means."""
    how = (
        "side by side, one worker and one core each (`threads=1`)"
        if c.together
        else "one after the other, on every core (`threads=auto`)"
    )
    whose = "the seed's best recipe (either arm)" if c.target == "either" else f"the {c.baseline} arm's best recipe"
    budget = f"{a.tiny_images} images a trial" if a.tiny_images else "its own budget"
    tiny = "".join(
        f" The warm start's tiny study (TPE seed {seed}, `sweeps=optuna_tiny` at {budget}, alone on every core) "
        f"searched {m:.1f} minutes before it, not counted in the ratio."
        for seed, m in tiny_minutes.items()
    )
    return (
        f"{c.lever} against {c.baseline}, `sweeps={c.sweep}` at {images} images a trial, {a.minutes:g} min an arm, "
        f"{how}; best figures re-scored on {a.rescore_seeds} fresh sampling seeds x the trial's eval.n_samples "
        f"(95% CI). Reached: a re-scored figure at or below the upper bound of {whose}.{tiny}\n\n"
        "| TPE seed | arm | trials | best FID, re-scored [95% CI] | reached the best | minutes to reach |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", choices=list(COMPARISONS), default="pruning", help="which lever's two arms")
    parser.add_argument("--minutes", type=float, default=30, help="search time of each arm")
    parser.add_argument("--images", type=int, help="images seen by each trial (default: the comparison's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="TPE seeds, one pair of arms each")
    parser.add_argument("--rescore-seeds", type=int, default=5, help="sampling seeds of the re-scoring")
    parser.add_argument("--tiny-minutes", type=float, default=30, help="warm-start: the tiny study's search time")
    parser.add_argument("--tiny-images", type=int, help="warm-start: images a tiny trial (default: optuna_tiny's)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/diffexp-search-bench"))
    a, extra = parser.parse_known_args()  # the rest: overrides for every worker (e.g. trainer=gpu)
    c, out = COMPARISONS[a.compare], a.out.resolve()
    images = a.images or c.images
    results = {"compare": a.compare, "minutes": a.minutes, "images": images or "its own budget's", "seeds": {}}
    results["rescore_seeds"] = a.rescore_seeds
    rows, notes, tiny_minutes = [], [], {}
    tiny_budget = [f"budget.images={a.tiny_images}"] * bool(a.tiny_images)
    for seed in a.seeds:
        tiny = tiny_study(out, seed, a.tiny_minutes, tiny_budget + extra) if c.warm_start else None
        if tiny is not None:
            tiny_minutes[seed] = max((t[1] for t in arm_trials(tiny)[0]), default=0.0)
        run_arms(out, c, seed, a.minutes, [f"budget.images={images}"] * bool(images) + extra, tiny)
        result, seed_rows, note = score_seed(out, c, seed, a.rescore_seeds)
        results["seeds"][str(seed)] = result.pop("arms")
        for key, value in result.items():
            results.setdefault(key, {})[str(seed)] = value
        rows += seed_rows
        notes.append(note)
    results["tiny_minutes"] = tiny_minutes
    table = header(c, a, str(results["images"]), tiny_minutes) + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"
    prefix = "" if a.compare == "pruning" else f"{a.compare}-"
    (out / f"{prefix}results.json").write_text(json.dumps(results, indent=2))
    (out / f"{prefix}results.md").write_text(table)
    plot(results, c, out / f"{prefix}search.png")
    print(
        table + f"\nwrote {out / f'{prefix}results.md'}, {out / f'{prefix}results.json'}, {out / f'{prefix}search.png'}"
    )


if __name__ == "__main__":
    main()
