"""The Optuna search as users run it: real worker processes on a real SQLite study, pruning, SIGKILL and restart."""

from __future__ import annotations

import json
import os
import signal
import time

import optuna
import pytest
import sqlalchemy.exc
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from diffexp.config import CONF_DIR
from helpers import OPTUNA, diffexp, finish, study, worker


def counts(s: optuna.Study) -> dict[TrialState, int]:
    states = [t.state for t in s.get_trials(deepcopy=False)]
    return {state: states.count(state) for state in TrialState}


def test_search_space_keeps_hydra_sweep_syntax():
    from hydra_plugins.diffexp_optuna_sweeper.sweeper import search_space

    fixed, space = search_space(
        ["model=tiny", "a=choice(32, 64)", "b=tag(log, interval(1e-4, 1e-2))", "c=interval(0, 1)", "d=range(1, 4)"]
    )
    assert fixed == ["model=tiny"]
    assert space["a"] == CategoricalDistribution([32, 64])
    assert space["b"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert space["c"] == FloatDistribution(0.0, 1.0)
    assert space["d"] == CategoricalDistribution([1, 2, 3])


def test_the_sweep_files_prune_only_the_worst_quarter():
    # The median rule stopped trials that tied the best (docs/recipes.md, "Does pruning pay?"): the sweep files use
    # the 75th percentile (set in optuna_search.yaml, which optuna_tiny/small/base build on). Optuna's own pruner,
    # fed the way the sweeper feeds it: images points as steps.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["sweeps=optuna_tiny"], return_hydra_config=True)
    pruner = instantiate(cfg.hydra.sweeper.pruner)
    assert isinstance(pruner, optuna.pruners.PercentilePruner)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=pruner)
    step = int(cfg.eval.every_n_images)
    for fid in (40.0, 45.0, 50.0):  # three finished trials, the start-up
        trial = study.ask()
        trial.report(fid, step)
        study.tell(trial, fid / 4)
    verdicts = []
    for fid in (47.0, 80.0):  # worse than the median (45) but not the worst quarter (47.5): kept; far worse: stopped
        trial = study.ask()
        trial.report(fid, step)
        verdicts.append(trial.should_prune())
        study.tell(trial, state=TrialState.PRUNED if verdicts[-1] else TrialState.FAIL)
    assert verdicts == [False, True]


PRUNE = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=0", "hydra.sweeper.n_trials=1"]


@pytest.mark.slow  # two search starts and a pruned training: ~40-50 s on 2 cores
def test_a_pruned_trial_ends_cleanly_and_a_rerun_counts_it_as_done(tmp_path):
    # FID is never below 0: the threshold pruner stops the trial at its first evaluation point.
    args = ["-m", "sweeps=optuna_tiny", *OPTUNA, "budget.images=512", "logger=wandb", *PRUNE]
    out = diffexp("train", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "multirun" / "optuna_tiny"
    (folder,) = sweep.glob("trial-*")
    assert folder.name == "trial-0000"
    record = json.loads((folder / "metrics.json").read_text())
    assert record["status"] == "pruned" and record["images_seen"] < 512, record
    assert [e["images"] for e in record["eval_history"]] == [128]  # the first of 4 points, at any batch size
    assert (folder / "checkpoints" / "last.ckpt").exists() and (folder / "losses.csv").exists()
    assert list((folder / "samples").glob("step_*.png"))
    from wandb_records import read_run

    run = read_run(next((folder / "wandb").glob("offline-run-*")))
    assert "pruned" in run["run"]["tags"] and run["exit"] == 0
    (trial,) = study(tmp_path).trials
    assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [128]

    again = diffexp("train", *args, cwd=tmp_path)  # the same sweep again: the pruned trial counts as done
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(study(tmp_path).trials) == 1 and len(list(sweep.glob("trial-*"))) == 1

    from diffexp.report.runs import run_row

    listed = run_row(folder)
    assert listed["status"] == "pruned" and "pruned" in listed["reason"]


@pytest.mark.slow
def test_while_one_trial_is_slow_the_other_worker_starts_two_and_each_job_runs_one_thread(tmp_path):
    sweep = tmp_path / "multirun" / "optuna_tiny"
    sweep.mkdir(parents=True)
    s = optuna.create_study(storage=f"sqlite:///{sweep / 'optuna.db'}", study_name="optuna_tiny")
    params = {"data.batch_size": 32, "optim.warmup": 0, "ema": "none", "schedule.prediction_type": "epsilon"}
    # trial 0 trains 128 steps (~30 s), the others 8 (~4 s each); each its own learning rate, as a repeat of a
    # COMPLETE trial's parameters takes that trial's result instead of training (test_search_workers.py)
    for images, lr in ((4096, 1e-3), (256, 1e-3), (256, 2e-3), (256, 3e-3)):
        s.enqueue_trial(params | {"budget.images": images, "optim.optimizer.lr": lr})
    args = ["budget.images=choice(256, 4096)", "hydra.sweeper.n_trials=4", "checkpoint.every_n_steps=100"]
    workers = [worker(tmp_path, *args) for _ in range(2)]
    finish(workers)
    trials = study(tmp_path).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    slow = trials[0]
    meanwhile = [t for t in trials[1:] if slow.datetime_start < t.datetime_start < slow.datetime_complete]
    assert len(meanwhile) >= 2, [(t.number, t.datetime_start) for t in trials]
    for t in trials:
        record = json.loads((sweep / f"trial-{t.number:04d}" / "metrics.json").read_text())
        assert record["environment"]["threads"] == 1 and record["objective"] == t.value


@pytest.mark.slow
def test_sigkill_every_worker_and_restart_continues_the_study_to_n_trials(tmp_path):
    sweep = tmp_path / "multirun" / "optuna_tiny"
    args = ["budget.images=2048", "checkpoint.every_n_steps=8", "hydra.sweeper.n_trials=4"]
    # grace 20 s: on a loaded machine a live worker's beat can lag several seconds (a SQLite write waits its turn)
    args += ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=20", "hydra/sweeper/pruner=none"]
    workers = [worker(tmp_path, *args) for _ in range(2)]

    def killable() -> bool:
        if not (sweep / "optuna.db").exists():  # loading would create it
            return False
        try:  # the file appears before the first worker has created the study in it
            s = study(tmp_path)
        except (KeyError, sqlalchemy.exc.SQLAlchemyError):  # or its tables are being created
            return False
        c = counts(s)
        running = [t for t in s.trials if t.state == TrialState.RUNNING]
        started = [t for t in running if (sweep / f"trial-{t.number:04d}" / "checkpoints" / "last.ckpt").exists()]
        return c[TrialState.COMPLETE] >= 1 and bool(started)

    deadline = time.time() + 600
    while not killable():
        assert time.time() < deadline and all(w.poll() is None for w in workers), "no trial ran before the kill"
        time.sleep(0.2)
    for w in workers:
        os.killpg(w.pid, signal.SIGKILL)
        w.wait()
    before = {t.number: t.state for t in study(tmp_path).trials}
    killed = [n for n, state in before.items() if state == TrialState.RUNNING]
    files = {p: p.stat().st_mtime_ns for p in sweep.glob("trial-*/**/*") if p.is_file() and p.suffix != ".log"}

    finish([worker(tmp_path, *args) for _ in range(2)])
    after = study(tmp_path).trials
    c = counts(study(tmp_path))
    assert c[TrialState.COMPLETE] + c[TrialState.PRUNED] == 4, c
    for n in killed:  # failed as stale and retried in a new trial, in a new folder
        assert after[n].state == TrialState.FAIL
        assert any(t.user_attrs.get("retry_of") == n and t.state == TrialState.COMPLETE for t in after)
    for n, state in before.items():  # finished trials never run again
        if state == TrialState.COMPLETE:
            assert after[n].state == TrialState.COMPLETE
    assert {p: p.stat().st_mtime_ns for p in files} == files  # no folder trained after the restart again
    for t in after:  # every finished trial's folder trained each step once, from step 0
        if t.state == TrialState.COMPLETE:
            folder = sweep / f"trial-{t.number:04d}"
            rows = (folder / "losses.csv").read_text().splitlines()[1:]
            steps = json.loads((folder / "metrics.json").read_text())["steps"]
            assert [int(r.split(",")[0]) for r in rows] == list(range(steps))
            assert steps == 2048 // t.params["data.batch_size"]
