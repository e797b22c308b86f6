"""Cores shared or fought over: tiny search trials per hour on this machine, three arms one after another.

    python benchmarks/threads.py [--minutes 12] [--images 6000] [--out DIR]

Each arm runs `sweeps=optuna_tiny` workers on a study of its own (no pruning, `--images` a trial) for `--minutes`
(the sweeper's timeout: no trial starts after it; running ones end), then counts the finished trials:

- `1 worker x all cores`: one worker, `threads` = every usable core;
- `2 workers, threads=auto`: two workers on one study, each taking its share of the cores (the default);
- `2 workers x all cores`: two workers, each with `threads` = every usable core (diffexp's default before
  `threads=auto`: the two fight over the cores).

Writes OUT/results.json and OUT/results.md (the table for benchmarks/RESULTS.md). The same command again reuses
finished arms. Run it on otherwise idle cores: it measures how the arms share them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

CORES = len(os.sched_getaffinity(0))
ARMS = {  # name: (workers, threads)
    "1 worker x all cores": (1, str(CORES)),
    "2 workers, threads=auto": (2, "auto"),
    "2 workers x all cores": (2, str(CORES)),
}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def finished(folder: Path) -> tuple[int, list[int], list[float]]:
    """Finished trials of an arm, the torch threads each recorded, and each one's training seconds."""
    records = [json.loads(p.read_text()) for p in sorted(folder.glob("trial-*/metrics.json"))]
    done = [r for r in records if r.get("status") == "finished"]
    threads = sorted((r.get("environment") or {}).get("threads", 0) for r in done)
    return len(done), threads, [r["train_seconds"] for r in done if r.get("train_seconds")]


def run_arm(out: Path, name: str, workers: int, threads: str, minutes: float, images: int) -> dict:
    """Starts the arm's workers at once on one study and waits for them; returns what it measured."""
    folder = out / slug(name)
    result_file = folder / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    args = ["-m", "sweeps=optuna_tiny", f"sweep_name={folder.name}", f"hydra.sweep.dir={folder}", f"threads={threads}"]
    args += [f"budget.images={images}", "hydra/sweeper/pruner=none", "hydra.sweeper.n_trials=10000"]
    args += [f"hydra.sweeper.timeout={int(minutes * 60)}", "logger=csv", "preview.every_n_steps=0"]
    logs = [(folder / f"worker{k}.log").open("a") for k in range(workers)]
    start = time.time()
    procs = [
        subprocess.Popen([sys.executable, "-m", "diffexp.train", *args], cwd=out, stdout=log, stderr=log)
        for log in logs
    ]
    while any(p.poll() is None for p in procs):
        time.sleep(20)
        print(f"{name}: {(time.time() - start) / 60:.1f} min, {finished(folder)[0]} trials finished", flush=True)
    if any(p.returncode for p in procs):
        raise SystemExit(f"{name}: a worker failed: see {folder}/worker*.log")
    hours = (time.time() - start) / 3600
    count, threads_used, seconds = finished(folder)
    result = {"arm": name, "workers": workers, "threads": threads, "trials": count, "hours": round(hours, 3),
              "trials_per_hour": round(count / hours, 1), "threads_recorded": threads_used,
              "train_seconds": seconds}  # fmt: skip
    result_file.write_text(json.dumps(result, indent=1))
    return result


def seconds_text(seconds: list[float]) -> str:
    from diffexp.stats import mean_interval

    m = mean_interval(seconds)
    return "n/a (fewer than 2 trials)" if m is None else f"{m[0]:.0f} [{m[1]:.0f}, {m[2]:.0f}] (n={len(seconds)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--out", type=Path, default=Path("threads-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run_arm(args.out.resolve(), n, w, t, args.minutes, args.images) for n, (w, t) in ARMS.items()]
    lines = [
        f"tiny trials at {args.images} images, no pruning, {args.minutes:g} minutes an arm, {CORES} cores:",
        "",
        "| arm | trials finished | trials per hour | seconds a trial trains, mean [95% CI] | torch threads a trial |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {r['arm']} | {r['trials']} | {r['trials_per_hour']} | {seconds_text(r['train_seconds'])} "
            f"| {sorted(set(r['threads_recorded']))} |"
            for r in results
        ),
        "",
        "The start-up trials (TPE's first 4, random) draw the same recipes in every arm: their state follows from "
        "the sampler's seed and the trial number; later draws depend on the results each arm had when it asked.",
    ]
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
