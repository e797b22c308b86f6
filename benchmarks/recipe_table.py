"""The measurement behind docs/recipes.md's per-size table (issues 12 and 14): train, judge, report.

    python benchmarks/recipe_table.py [--out /tmp/diffexp-recipes] [--seeds 0 1 2] [--sizes tiny small base]
                                      [--only train,judge,posthoc,report] [--judges dpm_solver_sde ...]
                                      [--judge-steps 25 50] [--judge-n 500] [--judge-ddpm 1000] [OVERRIDE...]

OVERRIDEs go to every training run after the recipe's own: `trainer=gpu` on a CUDA machine (evaluation picks the GPU
itself). Measured on 2 CPU cores, one job at a time: tiny 1.5 h (6 training runs of ~8 min, the judge 27 min, the
post-hoc run 13 min); small 6 runs of ~11.6 min and the post-hoc run 15 min plus ~12 min of widths; base 7 runs of
9-10 min and the post-hoc run 15.5 min plus 24 min of widths. The judge is mostly DDPM-1000 at 500 samples (1000
network evaluations of each image, in batches of 256): a tiny run took 5 min, a small one 19-23 min, a base one about
an hour (1.75 s a step of a batch, cores idle).

- train: per size, diffexp's best recipe (`experiment=digits_best_<size>`) against the course's recipe
  (`experiment=course_recipe`) at the same budget of images seen, over `--seeds`; one evaluation, at the end (5
  sampling seeds x 256 samples with the default judge). Seed 0 also trains the base recipe with v-prediction, so
  every size has an epsilon and a v run for the judge check (not in the report: one seed).
- judge: seed 0 of every recipe scored at 500 samples (one sampling seed) by several fast samplers and by DDPM-1000,
  the reference: does the fast judge rank the recipes as DDPM-1000 does? Writes OUT/judge.md.
- posthoc: each size's best recipe with `ema=posthoc`, scored at several EMA widths (`diffexp-evaluate
  ema_sigma_rel=[...]`): the best width against the recipe's fixed one.
- report: `diffexp-compare` over the table's runs (OUT/report/): means, 95% intervals, Welch verdicts.

Every step is a plain diffexp command (printed as it starts, logged in OUT/logs/); the same command again skips
what is done and resumes an interrupted run from its last checkpoint (a sweep folder's own resume).
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from diffexp.features import load_feature_net

BUDGET = {"tiny": 96000, "small": 48000, "base": 16000}  # the showcase's images seen per size (sweeps/optuna_*.yaml)
COMMON = ["logger=csv", "eval.every_n_steps=0", "preview.every_n_steps=0", "threads=2"]
JUDGES = ["dpm_solver_sde", "dpm_solver", "unipc", "ddim"]  # at 25 and 50 steps; DDPM at 1000 is the reference
WIDTHS = "[0.02,0.05,0.075,0.1,0.15,0.2]"
ENV = os.environ | {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def command(out: Path, log: str, *args: str) -> bool:
    """One diffexp command in OUT, logged; False when it failed (the rest goes on)."""
    (out / "logs").mkdir(parents=True, exist_ok=True)
    print(f"{time.strftime('%H:%M:%S')} {' '.join(args)}", flush=True)
    with (out / "logs" / f"{log}.log").open("a") as f:
        ok = subprocess.run([sys.executable, "-m", *args], cwd=out, env=ENV, stdout=f, stderr=f).returncode == 0
    if not ok:
        print(f"  failed: see {out / 'logs' / log}.log", flush=True)
    return ok


def recipes(size: str, seed: int) -> dict[str, list[str]]:
    """Sweep name -> overrides of the runs of one size and seed."""
    runs = {f"best_{size}_s{seed}": [f"experiment=digits_best_{size}"]}
    if size == "base" and seed == 0:  # base's best predicts epsilon, as the course does: add a v run for the judge
        runs["bestv_base_s0"] = ["experiment=digits_best_base", "schedule.prediction_type=v_prediction"]
    runs[f"course_{size}_s{seed}"] = ["experiment=course_recipe", f"model={size}", f"budget.images={BUDGET[size]}"]
    return runs


def train(out: Path, name: str, overrides: list[str], extra: list[str]) -> None:
    if (out / "multirun" / name / "0" / "pipeline").exists():
        return
    command(out, name, "diffexp.train", "-m", *overrides, f"sweep_name={name}", *COMMON, *extra)


def judge(out: Path, runs: list[Path], judges: list[str], steps: list[int], n: int = 500, ddpm: int = 1000) -> None:
    """Each seed-0 run scored by the fast `judges` at `steps` and by DDPM-`ddpm` (the reference), `n` samples each
    (one sampling seed); OUT/judge.md."""
    for run in runs:
        done = run / "eval" / "judge.done"
        if run.exists() and not done.exists():
            fast = [f"samplers=[{','.join(judges)}]", f"steps=[{','.join(map(str, steps))}]"]
            args = [f"run={run}", *fast, f"ddpm_steps=[{ddpm}]", f"n={n}"]
            if command(out, f"judge_{run.parent.name}", "diffexp.evaluate", *args, "eval.seeds=1", "threads=2"):
                done.write_text(max((run / "eval").glob("*.csv"), key=os.path.getmtime).name)  # the table just written
    rows = []
    for run in runs:
        done = run / "eval" / "judge.done"
        if not done.exists():
            continue
        for r in list(csv.DictReader((run / "eval" / done.read_text()).open()))[1:]:  # row 0: the real-data floor
            rows.append((run.parent.name.rsplit("_s", 1)[0], f"{r['sampler']}-{r['steps']}", float(r["fid"])))
    if not rows:
        return
    recipes_ = list(dict.fromkeys(r[0] for r in rows))
    columns = list(dict.fromkeys(r[1] for r in rows))
    fid = {(r[0], r[1]): r[2] for r in rows}
    lines = ["| recipe | " + " | ".join(columns) + " |", "| --- |" + " --- |" * len(columns)]
    for rec in recipes_:
        lines.append(f"| {rec} | " + " | ".join(f"{fid.get((rec, j), float('nan')):.2f}" for j in columns) + " |")
    (out / "judge.md").write_text(
        f"FID (digits net, {n} samples, sampling seed 0, against the 360 held-out digits) of seed 0 of each recipe, "
        "per judge (sampler-steps).\n\n" + "\n".join(lines) + "\n"
    )
    print((out / "judge.md").read_text(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/diffexp-recipes"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sizes", nargs="+", default=list(BUDGET), choices=list(BUDGET))
    parser.add_argument("--only", default="train,judge,posthoc,report")
    parser.add_argument("--judges", nargs="+", default=JUDGES, help="fast samplers the judge step scores")
    parser.add_argument("--judge-steps", type=int, nargs="+", default=[25, 50])
    parser.add_argument("--judge-n", type=int, default=500, help="samples per judge (tests: fewer)")
    parser.add_argument("--judge-ddpm", type=int, default=1000, help="the reference's DDPM steps (tests: fewer)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every training run, e.g. trainer=gpu")
    a = parser.parse_args()
    width = load_feature_net("digits", channels=1, resolution=16).num_features  # the judge's feature net
    if a.judge_n <= width:  # at or below it the judge's FID would be refused (diffexp.metrics.fd_refusal)
        parser.error(f"--judge-n={a.judge_n}: the digits net's FID needs more than {width} samples")
    out, only = a.out.resolve(), a.only.split(",")
    out.mkdir(parents=True, exist_ok=True)
    seed0 = {name: o for size in a.sizes for name, o in recipes(size, 0).items()}
    if "train" in only:  # seed 0 of everything first: the judge needs it
        for name, overrides in seed0.items():
            train(out, name, [*overrides, "seed=0"], a.overrides)
    if "judge" in only:
        judge(out, [out / "multirun" / name / "0" for name in seed0], a.judges, a.judge_steps, a.judge_n, a.judge_ddpm)
    if "posthoc" in only:
        for size in a.sizes:
            name = f"posthoc_{size}_s0"
            train(out, name, [f"experiment=digits_best_{size}", "ema=posthoc", "seed=0"], a.overrides)
            run = out / "multirun" / name / "0"
            if run.exists() and not list((run / "eval").glob("ema_sigma_rel-*.csv")):
                command(out, f"widths_{size}", "diffexp.evaluate", f"run={run}", f"ema_sigma_rel={WIDTHS}", "threads=2")
    if "train" in only:
        for seed in a.seeds:
            for size in a.sizes:
                for name, overrides in recipes(size, seed).items():
                    train(out, name, [*overrides, f"seed={seed}"], a.overrides)
    if "report" in only:
        # the table's two recipes only: the one-seed v run is the judge's, and post-hoc runs have their own section
        sweeps = sorted(str(p) for p in (out / "multirun").glob("*_s*") if p.name.startswith(("best_", "course_")))
        command(out, "report", "diffexp.compare", f"sweep=[{','.join(sweeps)}]", f"out={out / 'report'}")


if __name__ == "__main__":
    main()
