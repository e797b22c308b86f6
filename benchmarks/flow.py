"""Flow matching against diffexp's best recipe at equal images seen, and the few-step frontier of each family.

    python benchmarks/flow.py --out DIR [--only grid,tune,compare,frontier,timing,tables] [--seeds 0 1 2]
                              [--size tiny|small] [OVERRIDE...]

- `grid`: a tiny flow model (400 steps of 64, lr 3e-3), scored with flow Euler at 4-10 model calls on the uniform
  grid (sigma 1, ..., 1/N) and on diffusers' own `set_timesteps(N)` (last call at sigma 0.001); `DIR/grid.md`.
- `tune`: flow's learning rate x weighting_scheme on tiny at 96k images (one seed; `DIR/multirun/flow-tune`).
- `compare`: the best tuned flow recipe and `experiment=digits_best_<size>` over the training seeds at the size's
  images seen (tiny 96k, small 48k), each scored at the end with 5 sampling seeds x 256 samples; `diffexp-compare`
  over both (`DIR/report/`, `DIR/report-small/`). The flow recipe on small is tiny's tuned one on the small UNet.
- `frontier`: `diffexp-evaluate` on seed 0 of each: its family's samplers at 4-50 steps and its reference at 1000.
- `timing`: seconds per 256 samples at each frontier point, median of 3, one setting at a time (`DIR/timing.csv`);
  run it alone on otherwise idle cores.
- `tables`: `DIR/frontier.md`, each family's FID [95% CI] and seconds per 256 at each NFE (Heun's actual NFE after
  `@`), the reference, and each sampler's smallest NFE inside the reference.
- Another size's files and folders carry its name: `DIR/report-small/`, `timing-small.csv`, `frontier-small.md`.

Every step is a plain diffexp command logged in `DIR/logs/`; the same command again skips what is done (sweeps
skip finished jobs and resume unfinished ones). OVERRIDEs go to every training run (e.g. `trainer=gpu`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PY = sys.executable
BUDGET = ["threads=1", "logger=csv"]
SIZES = {"tiny": 96000, "small": 48000}  # images seen per size, as the digits_best_<size> experiments
PARALLEL = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]  # two one-thread trainings at once on 2 cores
TUNE = {"optim.optimizer.lr": "1e-3,3e-3,6e-3", "schedule.weighting_scheme": "logit_normal,uniform,cosmap"}
STEPS = [4, 5, 6, 8, 10]  # the grid stage's model calls
FRONTIER_STEPS = [4, 6, 8, 10, 16, 25, 50]  # the frontier's steps (model calls, but flow_heun's 2N - 1)
FRONTIER_RUNS = ("flow-best", "digits-best-tiny")  # tiny's two recipes' sweeps; seed 0 of each is evaluated


def sweeps(size: str) -> tuple[str, str]:
    """The flow and DDPM-family recipes' sweep names for a size (tiny's keep their first names)."""
    return FRONTIER_RUNS if size == "tiny" else (f"flow-best-{size}", f"digits-best-{size}")


def start(out: Path, name: str, args: list[str]) -> subprocess.Popen:
    """Starts `python -m diffexp.<args[0]> args[1:]`, its output in DIR/logs/<name>.log."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log = (out / "logs" / f"{name}.log").open("a")
    print(f"[flow bench] {name}: {' '.join(args)}", flush=True)
    return subprocess.Popen([PY, "-m", f"diffexp.{args[0]}", *args[1:]], stdout=log, stderr=log, cwd=out)


def wait(out: Path, jobs: dict[str, subprocess.Popen]) -> None:
    """Waits for every job; stops naming the log of the first that failed."""
    failed = [name for name, job in jobs.items() if job.wait()]
    if failed:
        sys.exit(f"{failed[0]} failed: see {out / 'logs' / f'{failed[0]}.log'}")


def command(out: Path, name: str, args: list[str]) -> None:
    """Runs one command to its end; stops on failure."""
    wait(out, {name: start(out, name, args)})


def finished(folder: Path) -> bool:
    record = folder / "metrics.json"
    return record.exists() and json.loads(record.read_text()).get("status") == "finished"


def grid_scores(out: Path, extra: list[str]) -> None:
    """Trains the grid model where missing, then scores both grids with the held-out reference (5 x 256)."""
    import torch

    from diffexp import flow_samplers
    from diffexp.data import to_uint8
    from diffexp.loading import load_run
    from diffexp.samplers import Sampler, seeded_noise

    model = out / "grid-model"
    if not finished(model):
        args = ["schedule=flow", "data.resolution=16", "data.batch_size=64", "trainer.max_steps=400",
                "optim.optimizer.lr=3e-3", "preview.every_n_steps=0", "eval=none", "threads=1"]  # fmt: skip
        args.append("logger=csv")
        command(out, "grid-train", ["train", *args, *extra, f"hydra.run.dir={model}"])
    torch.set_num_threads(1)
    loaded = load_run(model)
    reference = grid_reference(loaded)
    rows = []
    for kind in ("uniform", "diffusers"):
        flow_samplers.EULER_GRID = kind  # the setting this stage measures
        for steps in STEPS:
            images = []
            for seed in range(5):
                noise, g = seeded_noise(256, 1, 16, seed)
                images.append(to_uint8(Sampler("flow_euler", steps)(loaded.unet, loaded.scheduler, noise, g, False)))
            figures, _ = reference.score(images, seed=0)
            rows.append({"grid": kind, "nfe": steps, "fid": figures["fid"], "fid_ci": figures["fid_ci"]})
            print(f"[flow bench] grid {kind} {steps}: FID {figures['fid']:.2f} {figures['fid_ci']}", flush=True)
    (out / "grid.json").write_text(json.dumps(rows, indent=1))
    lines = ["| NFE | uniform grid FID (95% CI) | diffusers' set_timesteps(N) FID (95% CI) |", "| --- | --- | --- |"]
    for steps in STEPS:
        cells = [next(r for r in rows if r["grid"] == k and r["nfe"] == steps) for k in ("uniform", "diffusers")]
        lines.append(f"| {steps} | " + " | ".join(f"{c['fid']:.2f} [{c['fid_ci'][0]:.2f}, {c['fid_ci'][1]:.2f}]"
                                                  for c in cells) + " |")  # fmt: skip
    (out / "grid.md").write_text("\n".join(lines) + "\n\n5 sampling seeds x 256 samples against the held-out digits.\n")


def grid_reference(loaded):
    """The held-out digits reference the evaluation uses (digits features, 256 samples a seed)."""
    from omegaconf import OmegaConf

    from diffexp.config import instantiate
    from diffexp.heldout import evaluation_reference

    data = loaded.config["data"]
    datamodule = instantiate(data, seed=0)
    datamodule.prepare()
    ev = OmegaConf.create(loaded.config["eval"] | {"net": "digits", "n_samples": 256, "reference_size": None})
    return evaluation_reference(ev, data, datamodule, 256, setting="n", device="cpu")


def tune(out: Path, extra: list[str]) -> None:
    sweep = [f"{k}={v}" for k, v in TUNE.items()]
    args = ["train", "-m", "schedule=flow", f"budget.images={SIZES['tiny']}", *BUDGET, *PARALLEL, *sweep, *extra]
    command(out, "tune", [*args, "sweep_name=flow-tune"])


def named(out: Path, name: str, size: str) -> Path:
    """DIR/<name> for tiny, DIR/<stem>-<size><suffix> for another size (`frontier-small.md`)."""
    return out / (name if size == "tiny" else f"{Path(name).stem}-{size}{Path(name).suffix}")


def best_flow(out: Path) -> list[str]:
    """The tuned flow recipe with the lowest final FID (one seed each: a brief tuning, not a verdict)."""
    records = (out / "multirun" / "flow-tune").glob("*/metrics.json")
    runs = [json.loads(p.read_text()) | {"dir": p.parent} for p in records]
    runs = [r for r in runs if r.get("status") == "finished" and (r.get("eval") or {}).get("fid") is not None]
    if not runs:
        sys.exit("compare: run --only tune first (no finished tuning run)")
    best = min(runs, key=lambda r: r["eval"]["fid"])
    overrides = (best["dir"] / ".hydra" / "overrides.yaml").read_text().split("\n")
    return [o.removeprefix("- ").strip("'\"") for o in overrides if o.startswith("- ") and any(k in o for k in TUNE)]


def lanes(out: Path, stages: list[str], seeds: list[int], extra: list[str], size: str = "tiny") -> None:
    """Each recipe's lane, the two side by side (one thread each): its seeds trained at the size's images seen
    (`compare`), then `diffexp-evaluate` on its seed 0 (`frontier`: its family's samplers at `FRONTIER_STEPS` and its
    reference at 1000 steps, 5 sampling seeds x 256 samples); then `diffexp-compare` over both recipes' runs."""
    seed_list = "seed=" + ",".join(map(str, seeds))
    steps = "steps=[" + ",".join(map(str, FRONTIER_STEPS)) + "]"

    def lane(sweep: str, recipe: list[str]) -> None:
        if "compare" in stages:
            args = ["train", "-m", *recipe, f"budget.images={SIZES[size]}", *BUDGET, seed_list, *extra]
            args.append(f"sweep_name={sweep}")
            command(out, f"compare-{sweep}", args)
        marker = out / "logs" / f"frontier-{sweep}.done"
        if "frontier" in stages and not marker.exists():
            run = out / "multirun" / sweep / "0"
            args = ["evaluate", f"run={run}", steps, "ddpm_steps=[1000]", "n=256", "threads=1"]
            command(out, f"frontier-{sweep}", args)
            marker.write_text("done\n")

    flow = best_flow(out) if "compare" in stages else []
    flow_recipe = ["schedule=flow", f"model={size}", *flow]
    recipes = dict(zip(sweeps(size), (flow_recipe, [f"experiment=digits_best_{size}"]), strict=True))
    with ThreadPoolExecutor(len(recipes)) as pool:
        list(pool.map(lambda item: lane(*item), recipes.items()))  # re-raises a lane's failure
    if "compare" in stages:
        runs = sorted(str(p.parent) for sweep in recipes for p in (out / "multirun" / sweep).glob("*/metrics.json"))
        command(out, f"report-{size}", ["compare", f"runs=[{','.join(runs)}]", f"out={named(out, 'report', size)}"])


def timing(out: Path, size: str = "tiny", repeats: int = 3) -> None:
    """Seconds to sample 256 images at each few-step frontier point, one setting at a time on this process's cores
    (run it with the cores otherwise idle): the median of `repeats`; `DIR/timing.csv`."""
    import csv
    import statistics
    import time

    import torch
    from omegaconf import OmegaConf

    from diffexp.flow import is_flow_scheduler
    from diffexp.frontier import evaluation_grid
    from diffexp.loading import load_run
    from diffexp.samplers import Sampler, seeded_noise

    threads = torch.get_num_threads()
    settings = OmegaConf.create({"samplers": None, "steps": FRONTIER_STEPS, "ddpm_steps": [1000]})
    rows = []
    for sweep in sweeps(size):
        loaded = load_run(out / "multirun" / sweep / "0")
        for name, steps, is_reference in evaluation_grid(settings, is_flow_scheduler(loaded.scheduler)):
            if is_reference:
                continue  # 1000 calls: its time is the frontier CSV's `seconds` (5 x 256 samples)
            seconds = []
            for _ in range(repeats):
                noise, g = seeded_noise(256, loaded.unet.config.in_channels, loaded.unet.config.sample_size, 0)
                begin = time.perf_counter()
                with torch.no_grad():
                    Sampler(name, steps)(loaded.unet, loaded.scheduler, noise, g, False)
                seconds.append(time.perf_counter() - begin)
            row = {"run": sweep, "sampler": name, "steps": steps, "seconds_256": round(statistics.median(seconds), 3)}
            rows.append(row | {"repeats": repeats, "threads": threads})
            print(f"[flow bench] timing {sweep} {name}-{steps}: {row['seconds_256']} s per 256", flush=True)
    with named(out, "timing.csv", size).open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def tables(out: Path, size: str = "tiny", steps_shown: list[int] = FRONTIER_STEPS) -> None:
    """`DIR/frontier.md` from each recipe's newest `diffexp-evaluate` table: FID [95% CI] at each of `steps_shown`
    and seconds per 256 (timing stage), the reference, and the smallest NFE whose interval overlaps the reference's."""
    import csv

    seconds, timed, page = {}, named(out, "timing.csv", size), named(out, "frontier.md", size)
    if timed.exists():
        for r in csv.DictReader(timed.open()):
            seconds[(r["run"], r["sampler"], int(r["steps"]))] = float(r["seconds_256"])
    lines = []
    for sweep in sweeps(size):
        found = list((out / "multirun" / sweep / "0" / "eval").glob("*.csv"))
        if not found:
            continue
        rows = [r for r in csv.DictReader(max(found, key=lambda p: p.stat().st_mtime).open()) if r["steps"]]
        ref = next(r for r in rows if r["inside_reference"] == "reference")
        lines += [f"### `{sweep}` seed 0: reference {ref['sampler']}-{ref['steps']} FID {cell(ref)}", ""]
        lines += ["| sampler | " + " | ".join(f"NFE {s}" for s in steps_shown) + " | smallest NFE inside |"]
        lines += ["| --- " * (len(steps_shown) + 2) + "|"]
        for name in dict.fromkeys(r["sampler"] for r in rows if r is not ref):
            mine = {int(r["steps"]): r for r in rows if r["sampler"] == name}
            cells = []
            for steps in steps_shown:
                r, t = mine[steps], seconds.get((sweep, name, steps))
                cells.append(f"{cell(r)}" + (f" @{r['nfe']}" if int(r["nfe"]) != steps else "")
                             + (f", {t:.1f} s" if t is not None else ""))  # fmt: skip
            inside = [int(r["nfe"]) for r in mine.values() if r["inside_reference"] == "True"]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {min(inside) if inside else 'none'} |")
        lines.append("")
    page.write_text("\n".join(lines))
    print(page.read_text())


def cell(row: dict) -> str:
    """`6.65 [4.73, 8.57]`: a row's FID and its interval."""
    return f"{float(row['fid']):.2f} [{float(row['fid_lo']):.2f}, {float(row['fid_hi']):.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="grid,tune,compare,frontier,timing,tables")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", choices=list(SIZES), default="tiny", help="compare/frontier: the model size")
    args, extra = parser.parse_known_args()
    out = args.out.expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = args.only.split(",")
    if "grid" in stages:
        grid_scores(out, extra)
    if "tune" in stages:
        tune(out, extra)
    if "compare" in stages or "frontier" in stages:
        lanes(out, stages, args.seeds, extra, args.size)
    if "timing" in stages:
        timing(out, args.size)
    if "tables" in stages:
        tables(out, args.size)


if __name__ == "__main__":
    main()
