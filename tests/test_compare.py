"""diffexp-compare on real tiny runs: leaderboard per size, seeds averaged, failed and running jobs, plots, and an
experiment config that `diffexp-train experiment=<name>` composes back into the best recipe."""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from diffexp.compare import run as compare
from diffexp.errors import ConfigError, report
from diffexp.report.ranking import pareto_front, rank
from diffexp.report.runs import NOT_RECIPE
from diffexp.train import run as train
from helpers import REPO, TINY, compose_app, compose_train, crafted

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
# Two steps, scored with the shipped digits net at the end of each step (so final and best can differ). One thread:
# on 2 busy cores a 2-thread tiny run takes ~25 s, a 1-thread one ~2 s.
EVAL = [
    "threads=1",
    "eval=digits",
    "data.resolution=16",
    "eval.n_samples=65",
    "eval.reference_size=200",
    "eval.sampler_steps=2",
    "eval.every_n_steps=1",
    "trainer.max_steps=2",
    "preview.every_n_steps=0",
]
SMALL = ["model=small", "model.block_out_channels=[32,64]"]  # TINY narrows every model to [32,32]: widen small back
GRID = {  # job -> (model size, overrides)
    "0": ("tiny", ["optim.optimizer.lr=1e-3"]),
    "1": ("tiny", ["optim.optimizer.lr=3e-3"]),
    "2": ("small", [*SMALL, "optim.optimizer.lr=1e-3"]),
    "3": ("small", [*SMALL, "optim.optimizer.lr=3e-3"]),
    "4": ("small", [*SMALL, "optim.optimizer.lr=-1"]),  # rejected before training: fails with a reason
}


def cli(command: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / f"diffexp-{command}"
    return subprocess.run([str(exe), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def hydra_record(folder: Path, *overrides: str) -> DictConfig:
    """What Hydra writes into a job's folder before the job runs: `.hydra/` with config, hydra and overrides."""
    cfg = compose_train([*TINY, "logger=csv", *EVAL, *overrides], folder)
    saved, hydra_cfg = folder / ".hydra", HydraConfig.get()
    if not (saved / "config.yaml").exists():  # helpers' compose_train may already save it
        saved.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, saved / "config.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), saved / "hydra.yaml")
        OmegaConf.save(hydra_cfg.overrides.task, saved / "overrides.yaml")
    return cfg


def job(folder: Path, *overrides: str) -> None:
    """One multirun job, in-process: a rejected config is logged as `error: ...` into the job's log, as in a sweep."""
    cfg = hydra_record(folder, *overrides)
    handler = logging.FileHandler(folder / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        report(train, cfg, in_multirun=True)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory) -> tuple[Path, Path]:
    """Sweep `size-lr` (2 sizes x 2 lrs, a failed and a running job) and sweep `seeds` (one recipe again, seed 1)."""
    root = tmp_path_factory.mktemp("multirun")
    grid, seeds = root / "size-lr", root / "seeds"
    for name, (_, overrides) in GRID.items():
        job(grid / name, *overrides)
    running = hydra_record(grid / "5", *SMALL, "optim.optimizer.lr=1e-2")  # started, not finished
    choices = {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}
    (grid / "5" / "metrics.json").write_text(json.dumps({"status": "running", "recipe": choices, "seed": running.seed}))
    job(seeds / "0", "optim.optimizer.lr=1e-3", "seed=1")
    return grid, seeds


@pytest.fixture(scope="module")
def made(sweeps, tmp_path_factory) -> tuple[Path, str]:
    """The report of both sweeps, made by the command as users run it."""
    grid, seeds = sweeps
    out = cli("compare", f"sweep=[{grid},{seeds}]", cwd=tmp_path_factory.mktemp("cwd"))
    assert out.returncode == 0, out.stderr[-3000:]
    return grid / "report", out.stdout


def metrics(folder: Path) -> dict:
    path = folder / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_leaderboard_lists_every_run_grouped_by_size_best_first(sweeps, made):
    grid, seeds = sweeps
    folder, stdout = made
    board = rows(folder / "leaderboard.csv")
    assert sorted(r["path"] for r in board) == sorted(str(p.resolve()) for p in [*grid.glob("[0-9]"), seeds / "0"])
    sizes = [r["size"] for r in board]
    assert sizes == ["tiny"] * 3 + ["small"] * 4  # grouped, fewest parameters first
    by_path = {r["path"]: r for r in board}
    size_of = {grid / n: size for n, (size, _) in GRID.items()} | {grid / "5": "small", seeds / "0": "tiny"}
    for size in ("tiny", "small"):
        finished = [p for p, s in size_of.items() if s == size and metrics(p).get("status") == "finished"]
        best = min(finished, key=lambda p: metrics(p)["eval"]["fid"])
        assert by_path[str(best.resolve())]["rank"] == "1"
        ranked = [r for r in board if r["size"] == size and r["rank"]]
        assert [float(r["fid"]) for r in ranked] == sorted(float(r["fid"]) for r in ranked)
        assert [int(r["rank"]) for r in ranked] == list(range(1, len(ranked) + 1))
        for r in ranked:
            m = metrics(Path(r["path"]))
            assert float(r["fid"]) == pytest.approx(m["eval"]["fid"])
            assert float(r["best fid"]) == pytest.approx(min(h["fid"] for h in m["eval_history"]))
            assert int(r["images_seen"]) == m["images_seen"] and int(r["parameters"]) == m["parameters"]
            assert (r["feature_net"], r["n_fake"], r["n_real"]) == ("digits", "65", "200")
    failed = by_path[str((grid / "4").resolve())]
    assert failed["status"] == "failed" and not failed["rank"]
    assert "optim.optimizer.lr=-1: the learning rate must be > 0" in failed["reason"]
    running = by_path[str((grid / "5").resolve())]
    assert running["status"] == "running" and not running["rank"] and not running["reason"]
    assert board[-1]["status"] == "failed" and board[-2]["status"] == "running"  # after the ranked small runs
    assert "optim.optimizer.lr=3e-3" in " ".join(r["overrides"] for r in board)
    md = (folder / "leaderboard.md").read_text()
    assert "## tiny (3 runs" in md and "## small (4 runs" in md and "lower is better" in md
    assert f"leaderboard: {folder / 'leaderboard.md'}" in stdout


def test_seeds_are_averaged_into_one_recipe_and_decide_the_best(sweeps, made):
    grid, seeds = sweeps
    folder, stdout = made
    recipes = rows(folder / "recipes.csv")
    (twice,) = [r for r in recipes if r["seeds"] == "2"]
    fids = [metrics(grid / "0")["eval"]["fid"], metrics(seeds / "0")["eval"]["fid"]]
    assert twice["size"] == "tiny" and twice["recipe"] == "optim.optimizer.lr=1e-3"
    assert sorted(twice["seed_list"].split()) == ["0", "1"]
    assert float(twice["fid mean"]) == pytest.approx(statistics.fmean(fids))
    assert float(twice["fid std"]) == pytest.approx(statistics.stdev(fids))
    assert len(recipes) == 4  # tiny x 2 lrs, small x 2 lrs; the failed and running jobs are no recipe yet
    for size in ("tiny", "small"):
        mine = [r for r in recipes if r["size"] == size]
        assert mine == sorted(mine, key=lambda r: float(r["fid mean"]))
        # the reference: the best mean among recipes with two seeds (tiny's lr 1e-3), else the best mean (small)
        best = next((r for r in mine if r["seeds"] != "1"), mine[0])
        assert best["verdict"].startswith("best")
        assert f"best {size}: {best['recipe']}" in stdout
        assert f"- recipe: `{best['recipe']}`" in (folder / "best.md").read_text()


def test_report_links_everything_lists_failures_and_draws_valid_plots(made):
    folder, _ = made
    text = (folder / "report.md").read_text()
    for name in ("leaderboard.md", "leaderboard.csv", "recipes.md", "best.md", "pareto.png", "losses.png"):
        assert f"({name})" in text
    assert "(samples.png)" in text and "(conf/experiment/best_tiny.yaml)" in text
    assert "## Failed runs" in text and "the learning rate must be > 0" in text
    assert "size-lr/5" in text.split("## Still running")[1]
    for name in ("pareto.png", "losses.png", "samples.png"):
        with Image.open(folder / name) as image:
            image.verify()
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and min(image.size) > 200
    assert not list(folder.parent.glob(".report*.tmp"))


def test_best_recipe_experiment_composes_back_into_the_best_run(sweeps, made, tmp_path):
    folder, stdout = made
    assert f"train it: diffexp-train --config-dir {folder.resolve() / 'conf'} experiment=best_small" in stdout
    best = [r for r in rows(folder / "recipes.csv") if r["size"] == "small"][0]
    run_dir = Path({r["run"]: r["path"] for r in rows(folder / "leaderboard.csv")}[best["runs"].split()[0]])
    text = (folder / "conf" / "experiment" / "best_small.yaml").read_text()
    assert text.startswith("# @package _global_\n") and "- override /model: small" in text
    assert "# Best small recipe by mean fid" in text and "size-lr" in text
    # The report's conf/ is a config dir: nothing is copied into the package.
    out = cli("train", "--config-dir", str(folder / "conf"), "experiment=best_small", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    composed = OmegaConf.to_container(OmegaConf.create(out.stdout), resolve=False)
    saved = OmegaConf.to_container(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), resolve=False)
    assert composed["optim"]["optimizer"]["lr"] == saved["optim"]["optimizer"]["lr"] in (1e-3, 3e-3)
    assert composed["model"]["block_out_channels"] == [32, 64] and composed["trainer"]["max_steps"] == 2
    assert {k: v for k, v in composed.items() if k not in NOT_RECIPE} == {
        k: v for k, v in saved.items() if k not in NOT_RECIPE
    }


@pytest.mark.slow  # a sweep and a training in real processes: 26-35 s on 2 cores
def test_a_sweep_report_and_its_experiment_close_the_loop(tmp_path):
    """A real `-m sweeps=size_lr` sweep (one job), its report, then training the report's best recipe through
    `--config-dir`: the new run's saved config equals the sweep job's on every recipe key."""
    tiny = [o for o in TINY if not o.startswith("trainer.max_steps")]
    sweep = cli(
        "train", "-m", "sweeps=size_lr", *tiny, "logger=csv", "model=tiny", "optim.optimizer.lr=1e-3",
        "budget.images=48", "seed=3", cwd=tmp_path,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    job = tmp_path / "multirun" / "size_lr" / "0"
    assert metrics(job)["status"] == "finished"
    report = compare(compose_app("compare", [f"sweep={tmp_path / 'multirun' / 'size_lr'}"]))
    conf = tmp_path / "multirun" / "size_lr" / "report" / "conf"
    assert report == conf.parent
    experiment = OmegaConf.to_container(OmegaConf.load(conf / "experiment" / "best_tiny.yaml"))
    assert not {"sweep_name", "logger", "seed", "threads", "hydra"} & set(experiment)
    assert {"override /model": "tiny"} in experiment["defaults"] and experiment["budget"] == {"images": 48}
    assert not any("sweeps" in str(entry) for entry in experiment["defaults"])
    trained = cli("train", "--config-dir", str(conf), "experiment=best_tiny", "logger=csv", "threads=1", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    (new,) = (tmp_path / "outputs").glob("*/*")
    assert metrics(new)["status"] == "finished" and metrics(new)["steps"] == metrics(job)["steps"] == 3
    skip = {"seed", "threads", "resume", "logger", "sweep_name", "tag", "hydra"}
    a, b = (OmegaConf.to_container(OmegaConf.load(f / ".hydra" / "config.yaml")) for f in (job, new))
    assert a["seed"] == 3 and b["seed"] == 0
    assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def test_a_name_the_package_ships_is_refused_and_the_default_cannot_collide(sweeps, tmp_path):
    shipped = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert not any(s.startswith("best_") for s in shipped)  # the default name=best cannot meet a shipped one
    assert "digits_best_tiny" in shipped
    out = tmp_path / "r"
    shipped_name = r"^name=digits_best: diffexp already ships experiment digits_best_(tiny|small)"
    with pytest.raises(ConfigError, match=shipped_name):
        compare(compose_app("compare", [f"sweep={sweeps[0]}", f"out={out}", "name=digits_best"]))
    assert not out.exists() and not list(tmp_path.glob(".r.*"))


def test_a_recipe_is_better_only_where_the_welch_interval_excludes_zero(tmp_path):
    # a: 5.0 +- 0.1 over 3 seeds; b: a clear loser (8.0); c: 5.3 but noisy (4.0-6.6): a tie with a.
    fids = {"1e-3": [4.9, 5.0, 5.1], "2e-3": [7.9, 8.0, 8.1], "3e-3": [4.0, 5.3, 6.6], "4e-3": [5.6]}
    runs = [crafted(tmp_path / "s" / f"{lr}-{k}", float(lr), k, f) for lr, v in fids.items() for k, f in enumerate(v)]
    out = compare(compose_app("compare", [f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'r'}"]))
    table = {r["recipe"]: r for r in rows(out / "recipes.csv")}
    assert table["optim.optimizer.lr=0.001"]["verdict"] == "best (tied); 1 one-seed recipe untested"
    assert table["optim.optimizer.lr=0.002"]["verdict"] == "worse"
    assert table["optim.optimizer.lr=0.003"]["verdict"] == "tie"
    assert table["optim.optimizer.lr=0.004"]["verdict"] == "untested (1 seed)"
    # 8.0 - 5.0 = 3.0, se = sqrt(2 * 0.01 / 3), t(2) = 4.303: the interval is 3.0 +- 0.351
    assert table["optim.optimizer.lr=0.002"]["vs best"] == "+3 [+2.65, +3.35]"
    assert table["optim.optimizer.lr=0.001"]["fid 95% CI"] == "[4.752, 5.248]"  # 5.0 +- 4.303 * 0.1 / sqrt(3)
    assert table["optim.optimizer.lr=0.001"]["samples"] == "5×256"
    best = (out / "best.md").read_text()
    assert "verdict: best (tied); 1 one-seed recipe untested; worse: 1 of 3" in best
    assert "ties with: `optim.optimizer.lr=0.003`" in best
    assert "5×256 samples" in best and "t = 4.30 at 3 seeds" in best
    board = {r["run"]: r for r in rows(out / "leaderboard.csv")}
    assert board["s/1e-3-0"]["fid 95% CI"] == "[4.4, 5.4]" and board["s/1e-3-0"]["samples"] == "5×256"


def test_a_lucky_single_run_is_not_the_reference_the_recipes_with_seeds_are_judged_against(tmp_path):
    # lr 1e-4 ran once and scored lowest; the verdicts stay between the recipes that have an interval
    fids = {1e-3: [5.0, 5.1, 4.9], 2e-3: [7.9, 8.0, 8.1], 1e-4: [4.0]}
    runs = [crafted(tmp_path / f"{lr}-{k}", lr, k, f) for lr, v in fids.items() for k, f in enumerate(v)]
    out = compare(compose_app("compare", [f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'r'}"]))
    table = {r["recipe"]: r for r in rows(out / "recipes.csv")}
    assert list(table) == ["optim.optimizer.lr=0.0001", "optim.optimizer.lr=0.001", "optim.optimizer.lr=0.002"]
    assert table["optim.optimizer.lr=0.001"]["verdict"] == "best; 1 one-seed recipe untested"
    assert table["optim.optimizer.lr=0.002"]["verdict"] == "worse"
    assert table["optim.optimizer.lr=0.0001"]["verdict"] == "untested (1 seed)"
    assert table["optim.optimizer.lr=0.0001"]["vs best"].startswith("-1")  # lower, but one seed: train more
    assert "- recipe: `optim.optimizer.lr=0.001`" in (out / "best.md").read_text()
    exported = OmegaConf.load(out / "conf" / "experiment" / "best_tiny.yaml")
    assert exported.optim.optimizer.lr == 1e-3


def test_runs_that_differ_only_in_what_they_show_or_keep_pool_as_one_recipe(tmp_path):
    runs = [crafted(tmp_path / f"run-{k}", 1e-3, k, 5.0 + k / 10) for k in range(3)]
    shows = {"verbose": True, "checkpoint.keep_best": True, "preview.every_n_steps": 0}
    for (key, value), folder in zip(shows.items(), runs, strict=True):
        record = folder / ".hydra"
        saved = OmegaConf.load(record / "config.yaml")
        OmegaConf.update(saved, key, value)
        OmegaConf.save(saved, record / "config.yaml")
        OmegaConf.save([*OmegaConf.load(record / "overrides.yaml"), f"{key}={value}"], record / "overrides.yaml")
    out = compare(compose_app("compare", [f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'r'}"]))
    (recipe,) = rows(out / "recipes.csv")
    assert recipe["seeds"] == "3" and recipe["recipe"] == "(the shared settings)", recipe


def test_two_clear_seeds_each_make_a_best_without_ties(tmp_path):
    runs = [crafted(tmp_path / f"{lr}-{k}", lr, k, f) for lr, v in {1e-3: [5.0, 5.2], 2e-3: [9.0, 9.1]}.items()
            for k, f in enumerate(v)]  # fmt: skip
    out = compare(compose_app("compare", [f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'r'}"]))
    assert [r["verdict"] for r in rows(out / "recipes.csv")] == ["best", "worse"]


def test_a_recipe_run_twice_at_one_seed_counts_once_as_its_newest_finished_run(tmp_path, caplog):
    # Two recipes, each run twice at seed 0 (two search workers drew the same trial): one seed each, not two
    # seeds with a zero-width interval; the newer of a repeat is the one used, and one line names the repeats.
    lrs = {"a": 1e-3, "b": 2e-3}
    runs = [crafted(tmp_path / "s" / f"{name}{k}", lrs[name], 0, fid) for name, fid in (("a", 5.0), ("b", 9.0))
            for k in (0, 1)]  # fmt: skip
    (runs[1] / "metrics.json").write_text((runs[1] / "metrics.json").read_text().replace("5.0", "4.8"))
    for k, folder in enumerate(runs):  # the second run of each recipe is the newer
        os.utime(folder / "metrics.json", (1e9 + k, 1e9 + k))
    seed1 = crafted(tmp_path / "s" / "a-seed1", 1e-3, 1, 5.2)
    failed = crafted(tmp_path / "s" / "b-failed", 2e-3, 0, 0.0)  # a newer failed repeat: the finished one stays
    record = {"status": "failed", "reason": "killed", "recipe": {"model": "tiny"}}
    (failed / "metrics.json").write_text(json.dumps(record))
    folders = ",".join(map(str, [*runs, seed1, failed]))
    with caplog.at_level(logging.WARNING, logger="diffexp.report"):
        out = compare(compose_app("compare", [f"runs=[{folders}]", f"out={tmp_path / 'r'}"]))
    a, b = (r for r in rows(out / "recipes.csv"))
    assert (a["seeds"], a["seed_list"], a["runs"], float(a["fid mean"])) == ("2", "0 1", "s/a1 s/a-seed1", 5.0)
    assert (b["seeds"], b["runs"], b["fid 95% CI"]) == ("1", "s/b1", "")  # no interval from one seed counted twice
    assert [r["run"] for r in rows(out / "leaderboard.csv")] == ["s/a1", "s/a-seed1", "s/b1"]
    line = "3 runs repeated a recipe at a seed it already has and count once, as the newest finished run: "
    line += "`s/a0` (as `s/a1`), `s/b0` (as `s/b1`), `s/b-failed` (as `s/b1`)"
    assert [r.getMessage() for r in caplog.records if r.name == "diffexp.report"] == [line]
    assert line in (out / "report.md").read_text() and line in (out / "recipes.md").read_text()


def test_a_second_report_never_overwrites_the_first(sweeps, made):
    grid, _ = sweeps
    folder, _ = made
    before = (folder / "leaderboard.csv").read_bytes()
    second = compare(compose_app("compare", [f"sweep={grid}", "metric=precision", "compute=train_seconds"]))
    assert second == grid / "report-2" and (folder / "leaderboard.csv").read_bytes() == before
    board = rows(second / "leaderboard.csv")
    ranked = [r for r in board if r["size"] == "tiny" and r["rank"]]
    assert [float(r["precision"]) for r in ranked] == sorted((float(r["precision"]) for r in ranked), reverse=True)
    assert "higher is better" in (second / "report.md").read_text()


def copy_runs(grid: Path, folder: Path, edit) -> list[Path]:
    """Jobs 0 and 1 (tiny) copied as plain runs, their metrics.json changed by `edit(record, index)`."""
    copies = []
    for i, name in enumerate(("0", "1")):
        copy = folder / "outputs" / name
        shutil.copytree(grid / name, copy, ignore=shutil.ignore_patterns("pipeline", "checkpoints"))
        (copy / "metrics.json").write_text(json.dumps(edit(metrics(copy), i)))
        copies.append(copy)
    return copies


def test_runs_without_quality_metrics_are_ranked_by_final_loss(sweeps, tmp_path):
    grid, _ = sweeps
    copies = copy_runs(grid, tmp_path, lambda record, _: {k: v for k, v in record.items() if not k.startswith("eval")})
    out = compare(compose_app("compare", [f"runs=[{copies[0]},{copies[1]}]", f"out={tmp_path / 'r'}"]))
    assert out == tmp_path / "r"
    board = rows(out / "leaderboard.csv")
    assert [float(r["final_loss"]) for r in board] == sorted(metrics(c)["final_loss"] for c in copies)
    assert "ranked by their final training loss" in (out / "report.md").read_text()


def test_figures_from_different_sample_counts_are_ranked_apart(sweeps, tmp_path):
    def more_samples(record: dict, i: int) -> dict:
        for figures in [record["eval"], record["eval_best"], *record["eval_history"]]:
            figures["n_fake"] = 64 * (i + 1)
        return record

    copies = copy_runs(sweeps[0], tmp_path, more_samples)
    out = compare(compose_app("compare", [f"runs=[{copies[0]},{copies[1]}]"]))
    assert out == tmp_path / "outputs" / "report"  # beside the first run
    board = rows(out / "leaderboard.csv")
    assert [r["rank"] for r in board] == ["1", "1"] and {r["n_fake"] for r in board} == {"64", "128"}
    assert "Runs differ in feature net or sample count" in (out / "leaderboard.md").read_text()
    written = sorted(p.name for p in (out / "conf" / "experiment").glob("*.yaml"))
    assert written == ["best_tiny_1.yaml", "best_tiny_2.yaml"]


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["sweep=/no/such/folder"], r"^sweep=/no/such/folder: no such folder"),
        (["sweep={empty}"], r"^sweep=.* holds no run folders"),
        (["runs=[{empty}]"], r"^runs: .* is not a run folder"),
        ([], r"^neither sweep= nor runs= is set"),
        (["sweep={empty}", "metric=accuracy"], r"^metric=accuracy: use one of fid"),
        (["sweep={empty}", "compute=flops"], r"^compute=flops: use images_seen or train_seconds"),
    ],
)
def test_bad_input_names_the_setting(tmp_path, overrides, match):
    cfg = compose_app("compare", [o.format(empty=tmp_path) for o in overrides])
    with pytest.raises(ConfigError, match=match):
        compare(cfg)


def test_the_command_reports_bad_input_in_one_line(tmp_path):
    out = cli("compare", f"sweep={tmp_path / 'missing'}", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"error: sweep={tmp_path / 'missing'}: no such folder: point sweep= at a multirun folder " + (
        "(multirun/<sweep name>)"
    )


def test_pareto_front_and_ranking_follow_the_metric_direction():
    points = [(10, 5.0), (20, 3.0), (20, 4.0), (30, 3.5), (40, 1.0)]
    assert pareto_front(points, higher_is_better=False) == [0, 1, 4]
    assert pareto_front(points, higher_is_better=True) == [0]
    runs = [
        {"name": f"s/{i}", "size": "tiny", "parameters": 1, "basis": "b", "value": v, "status": "finished"}
        for i, v in enumerate([0.2, 0.9, 0.5])
    ]
    assert [r["value"] for r in rank(runs, higher_is_better=True)] == [0.9, 0.5, 0.2]
    assert [r["rank"] for r in rank(runs, higher_is_better=False)] == [1, 2, 3]


def test_post_hoc_runs_show_the_chosen_width_and_the_figure_at_the_fixed_width(tmp_path):
    posthoc = {1e-3: [(0.05, 6.0), (0.15, 6.4)], 2e-3: [(0.1, 7.0), (0.05, 7.5)]}  # (chosen width, FID at 0.10)
    runs = [
        crafted(tmp_path / f"{lr}-{k}", lr, k, 5.0 + k + 2 * (lr > 1e-3), {"ema_sigma_rel": w, "fid_fixed": fixed})
        for lr, seeds in posthoc.items()
        for k, (w, fixed) in enumerate(seeds)
    ]
    out = compare(compose_app("compare", [f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'r'}"]))
    table = {r["recipe"]: r for r in rows(out / "recipes.csv")}
    best = table["optim.optimizer.lr=0.001"]
    assert best["post-hoc EMA width"] == "0.05 0.15" and float(best["fid at fixed EMA"]) == 6.2
    assert float(best["fid mean"]) == 5.5
    board = {r["run"]: r for r in rows(out / "leaderboard.csv")}
    assert board[f"{tmp_path.name}/0.002-0"]["post-hoc EMA width"] == "0.1"
    assert float(board[f"{tmp_path.name}/0.002-0"]["fid at fixed EMA"]) == 7.0
    header = (out / "recipes.md").read_text().split("| size |")[1].split("\n")[0]
    assert "post-hoc EMA width | fid at fixed EMA" in header
    # Runs without post-hoc EMA get no such columns.
    plain = [crafted(tmp_path / "plain" / str(k), 1e-3, k, 5.0) for k in range(2)]
    out = compare(compose_app("compare", [f"runs=[{','.join(map(str, plain))}]", f"out={tmp_path / 'r2'}"]))
    assert "post-hoc" not in (out / "recipes.md").read_text() and "post-hoc" not in (out / "leaderboard.md").read_text()
