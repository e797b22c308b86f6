"""The search measured: TPE with pruning against TPE without, side by side, on the digits (issue 13, item 7).

    python benchmarks/search.py [--minutes 30] [--images 24000] [--seeds 0 1] [--out /tmp/diffexp-search-bench]

For each TPE seed both arms run at once, one worker each (`threads=1`, one core each), `sweeps=optuna_tiny` at
`--images` a trial, for `--minutes` (the sweeper's timeout: a worker starts no trial after it; the running one ends).
The arms differ only in the pruner (the sweep file's pruner against `hydra/sweeper/pruner=none`); both
evaluate at the same 4 images points. Afterwards every trial that improved its arm's best-so-far is scored again
with the final evaluation on fresh sampling seeds (a search's best figure is optimistic: it won on its own noise).
An arm *reached* the seed's best recipe when one of its re-scored figures lies inside (or below) that recipe's 95%
interval; the time it needed is that trial's completion, counted from the arm's start. Each seed's line under the
table says how many times sooner the pruning arm got there, and for how many leading trials both arms drew the same
parameters: as far as they do, the arms differ only in time (TPE ranks a pruned trial below every finished one, so
the draws part only when a pruned trial's twin would have been among TPE's few best).

Writes OUT/results.json, OUT/results.md (the table for benchmarks/RESULTS.md) and OUT/search.png. The same command
again reuses finished arms (their studies and trial folders) and re-scores only what is missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

ARMS = {"pruning": [], "no pruning": ["hydra/sweeper/pruner=none"]}  # the sweep file's pruner, or none
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


def speedup(reach: dict[str, float | None]) -> float | None:
    """How many times sooner the pruning arm reached the best than the no-pruning arm (None unless both did)."""
    with_, without = reach.get("pruning"), reach.get("no pruning")
    return without / with_ if with_ and without else None


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


def run_arms(out: Path, seed: int, minutes: float, images: int) -> None:
    """Both arms of one seed at once; returns when both workers have ended."""
    procs = {}
    for arm, extra in ARMS.items():
        folder = sweep_dir(out, arm, seed)
        if (folder / "done").exists():
            continue
        args = ["-m", "sweeps=optuna_tiny", f"sweep_name={folder.name}", f"budget.images={images}", "threads=1"]
        args += [f"hydra.sweeper.sampler.seed={seed}", f"hydra.sweeper.timeout={int(minutes * 60)}"]
        args += ["hydra.sweeper.n_trials=10000", "logger=csv", "preview.every_n_steps=0", *extra]
        folder.mkdir(parents=True, exist_ok=True)
        log = (folder / "worker.log").open("a")
        procs[arm] = subprocess.Popen([sys.executable, "-m", "diffexp.train", *args], cwd=out, stdout=log, stderr=log)
    start = time.time()
    while any(p.poll() is None for p in procs.values()):
        time.sleep(30)
        done = {arm: ended(sweep_dir(out, arm, seed)) for arm in procs}
        print(f"seed {seed}: {(time.time() - start) / 60:.1f} min, trials ended per arm {done}", flush=True)
    for arm, p in procs.items():
        if p.returncode != 0:
            log = sweep_dir(out, arm, seed) / "worker.log"
            raise SystemExit(f"arm {arm!r} seed {seed} failed (exit {p.returncode}): see {log}")
        (sweep_dir(out, arm, seed) / "done").touch()


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


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (seed, arms) in enumerate(results["seeds"].items()):
        for arm, r in arms.items():
            pts = [p for p in r["incumbents"] if p["fid"] is not None]
            style = "-" if arm == "pruning" else "--"
            ax.step(
                [p["minutes"] for p in pts],
                [p["fid"] for p in pts],
                style,
                where="post",
                color=f"C{i}",
                marker="o",
                label=f"TPE seed {seed}, {arm}",
            )
            ax.errorbar(
                [p["minutes"] for p in pts],
                [p["fid"] for p in pts],
                yerr=[[p["fid"] - p["lo"] for p in pts], [p["hi"] - p["fid"] for p in pts]],
                fmt="none",
                color=f"C{i}",
                alpha=0.4,
            )
    ax.set_xlabel("minutes of search (one worker, one core)")
    ax.set_ylabel("FID of the best trial so far, re-scored (95% CI)")
    ax.set_title(f"TPE with and without pruning: tiny, {results['images']} images a trial")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30, help="search time of each arm")
    parser.add_argument("--images", type=int, default=24000, help="images seen by each trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="TPE seeds, one pair of arms each")
    parser.add_argument("--rescore-seeds", type=int, default=5, help="sampling seeds of the re-scoring")
    parser.add_argument("--out", type=Path, default=Path("/tmp/diffexp-search-bench"))
    a = parser.parse_args()
    out = a.out.resolve()
    results = {"minutes": a.minutes, "images": a.images, "rescore_seeds": a.rescore_seeds, "seeds": {}}
    rows, notes = [], []
    for seed in a.seeds:
        run_arms(out, seed, a.minutes, a.images)
        arms, params = {}, []
        for arm in ARMS:
            folder = sweep_dir(out, arm, seed)
            trials, states, drawn = arm_trials(folder)
            params.append(drawn)
            points = incumbents(trials)
            for p in points:
                print(f"seed {seed}, {arm}: re-scoring trial {p.trial}", flush=True)
                p.fid, p.lo, p.hi = rescore(folder / f"trial-{p.trial:04d}", a.rescore_seeds)
            arms[arm] = {"states": states, "incumbents": points}
        scored = [(p, arm) for arm, r in arms.items() for p in r["incumbents"]]
        best, best_arm = min(scored, key=lambda s: s[0].fid)
        for arm, r in arms.items():
            mine = min(r["incumbents"], key=lambda p: p.fid)
            reach = time_to_reach(r["incumbents"], best.hi)
            r |= {"best": asdict(mine), "minutes_to_reach": reach}
            rows.append(
                f"| {seed} | {arm} | {r['states']['complete']} + {r['states']['pruned']} pruned | "
                f"{mine.fid:.2f} [{mine.lo:.2f}, {mine.hi:.2f}] (trial {mine.trial}) | "
                f"{'yes' if reach is not None else 'no'} | {'' if reach is None else f'{reach:.1f}'} |"
            )
        sooner = speedup({arm: r["minutes_to_reach"] for arm, r in arms.items()})
        shared = shared_recipes(params)
        notes.append(
            f"TPE seed {seed}: pruning reached the best "
            + ("(one arm never reached it)" if sooner is None else f"{sooner:.2f}x sooner")
            + f"; the arms drew the same parameters for their first {shared} trials."
        )
        arms = {arm: r | {"incumbents": [asdict(p) for p in r["incumbents"]]} for arm, r in arms.items()}
        results["seeds"][str(seed)] = arms
        results.setdefault("best", {})[str(seed)] = asdict(best) | {"arm": best_arm}
        results.setdefault("speedup", {})[str(seed)] = sooner
        results.setdefault("shared_recipes", {})[str(seed)] = shared
    header = (
        f"TPE with and without pruning, `sweeps=optuna_tiny` at {a.images} images a trial, {a.minutes:g} min an arm, "
        f"one worker each (`threads=1`), arms side by side; best figures re-scored on {a.rescore_seeds} fresh "
        "sampling seeds x the trial's eval.n_samples (95% CI). Reached: a re-scored figure at or below the upper bound "
        "of the seed's best recipe.\n\n"
        "| TPE seed | arm | trials | best FID, re-scored [95% CI] | reached the best | minutes to reach |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
    )
    table = header + "\n".join(rows) + "\n\n" + "\n".join(notes) + "\n"
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(table)
    plot(results, out / "search.png")
    print(table + f"\nwrote {out / 'results.md'}, {out / 'results.json'}, {out / 'search.png'}")


if __name__ == "__main__":
    main()
