"""Sweeps as users launch them: every job runs, failures don't stop the others, a rerun resumes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from diffexp.reproduce import run as reproduce
from helpers import BUDGETED, ENV, OPTUNA, QUICK, TINY, compose_train, diffexp, jobs, kill_train_once


@pytest.mark.slow
def test_size_lr_sweep_launches_every_job_of_its_grid(tmp_path):
    out = diffexp(
        "train", "-m", "sweeps=size_lr", *BUDGETED, "budget.images=16", "data.resolution=16", cwd=tmp_path, timeout=900
    )
    assert out.returncode == 0, out.stderr[-3000:]
    found = jobs(tmp_path / "multirun" / "size_lr")
    assert len(found) == 3 * 4 and all(j["status"] == "finished" and j["steps"] == 1 for j in found.values())
    recipes = {(j["recipe"]["model"], json.loads(json.dumps(j))["parameters"]) for j in found.values()}
    assert {m for m, _ in recipes} == {"tiny", "small", "base"}


@pytest.mark.slow  # a three-job sweep in a real process: 20-22 s on 2 cores
def test_failing_jobs_are_recorded_and_the_sweep_goes_on(tmp_path):
    sweep = tmp_path / "multirun" / "faults"
    out = diffexp(
        "train",
        "-m",
        *QUICK,
        "optim.optimizer.lr=1e6,1e-3",
        "optim.grad_clip=null",
        "trainer.max_steps=12",
        "sweep_name=faults",
        cwd=tmp_path,
    )
    found = jobs(sweep)  # a failure only training shows (here a NaN loss) stays the job's; a bad setting stops the
    # whole sweep before its first job (test_bad_input.py)
    assert found["0"]["status"] == "failed" and "loss is" in found["0"]["reason"], found["0"]
    assert found["1"]["status"] == "finished"
    assert out.returncode == 0, out.stderr[-2000:]
    assert "error: loss is" in (sweep / "0" / "train.log").read_text()


@pytest.mark.slow
def test_rerunning_an_interrupted_sweep_skips_finished_jobs_and_resumes_the_rest(tmp_path):
    args = [
        "-m",
        *QUICK,
        "optim.optimizer.lr=1e-3,2e-3",
        "trainer.max_steps=300",
        "checkpoint.every_n_steps=20",
        "sweep_name=resumable",
    ]
    sweep = tmp_path / "multirun" / "resumable"
    # Killed once job 0 has finished and job 1 has written a checkpoint.
    kill_train_once(args, tmp_path, ready=lambda: (sweep / "1" / "checkpoints" / "last.ckpt").exists())
    first = jobs(sweep)
    assert first["0"]["status"] == "finished" and first["1"]["status"] == "running"
    finished_files = {p: p.stat().st_mtime_ns for p in (sweep / "0").rglob("*") if p.is_file() and p.suffix != ".log"}

    out = diffexp("train", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    second = jobs(sweep)
    assert second["1"]["status"] == "finished" and second["1"]["steps"] == 300
    assert {p: p.stat().st_mtime_ns for p in finished_files} == finished_files
    assert "skipping finished job" in (sweep / "0" / "train.log").read_text()
    log = (sweep / "1" / "train.log").read_text()
    assert "resuming unfinished job" in log and re.search(r"restored step [1-9]\d* of 300 from the checkpoint", log)
    steps = [int(line.split(",")[0]) for line in (sweep / "1" / "losses.csv").read_text().splitlines()[1:]]
    assert steps == list(range(300))


@pytest.mark.slow  # a two-trial search and a reproduce: 29-32 s on 2 cores
def test_optuna_sweep_runs_trials_and_gets_their_metric_and_reproducing_one_never_reports(tmp_path):
    out = diffexp("train", "-m", "sweeps=optuna_tiny", "hydra.sweeper.n_trials=2", *OPTUNA, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "multirun" / "optuna_tiny"
    found = jobs(sweep)
    assert sorted(found) == ["trial-0000", "trial-0001"] and all(j["status"] == "finished" for j in found.values())
    assert all(j["objective_name"] == "eval/fid" and j["objective"] == j["eval"]["fid"] for j in found.values())
    import optuna
    from omegaconf import OmegaConf

    storage = f"sqlite:///{sweep / 'optuna.db'}"  # the default: SQLite in the sweep folder
    trials = optuna.load_study(study_name="optuna_tiny", storage=storage).trials
    assert [t.value for t in trials] == [found[f"trial-{t.number:04d}"]["objective"] for t in trials]
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_value == min(j["objective"] for j in found.values())
    budget_steps = {j["steps"] * (j["images_seen"] // j["steps"]) for j in found.values()}
    assert budget_steps <= {64, 96, 128}  # the same images-seen budget, whatever the batch size
    # The EMA search is conditional: a width only where EMA is on (diffexp.ema.search_space).
    for job in found:
        overrides = dict(o.split("=", 1) for o in OmegaConf.load(sweep / job / ".hydra" / "overrides.yaml"))
        assert overrides["ema"] in ("none", "power") and "optim.warmup" in overrides
        assert ("ema.sigma_rel" in overrides) == (overrides["ema"] == "power"), overrides
        assert overrides["optuna.trial"] == str(int(job.split("-")[1]))

    reproduce(compose_train([f"run={sweep / 'trial-0000'}"], tmp_path / "again", name="reproduce"))  # as the command
    again = optuna.load_study(study_name="optuna_tiny", storage=storage).trials
    assert [(t.state, t.intermediate_values) for t in again] == [(t.state, t.intermediate_values) for t in trials]


@pytest.mark.slow
def test_two_workers_fill_one_journal_file_study(tmp_path):
    import optuna

    journal = tmp_path / "shared" / "study.log"  # Optuna's journal file storage: a path instead of a URL
    journal.parent.mkdir()  # the shared folder exists; the storage check refuses a missing one before any work
    exe = Path(sys.executable).parent / "diffexp-train"
    args = [str(exe), "-m", "sweeps=optuna_tiny", "hydra.sweeper.n_trials=3", f"hydra.sweeper.storage={journal}"]
    args += OPTUNA
    workers = [
        subprocess.Popen(args, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [w.communicate(timeout=600)[1] for w in workers]
    assert all(w.returncode == 0 for w in workers), errors[0][-2000:] + errors[1][-2000:]
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
    trials = optuna.load_study(study_name="optuna_tiny", storage=storage).trials
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3 and len({t.number for t in complete}) == 3, [(t.number, t.state) for t in trials]


@pytest.mark.slow
def test_two_by_two_grid_in_parallel_gives_four_wandb_runs_and_a_report(tmp_path):
    args = [
        "-m",
        *TINY,
        "logger=wandb",
        "preview.every_n_steps=0",
        "eval=digits",
        "data.resolution=16",
        "eval.n_samples=65",
        "eval.reference_size=100",
        "eval.sampler_steps=2",
        "model=tiny,small",
        "optim.optimizer.lr=1e-3,3e-3",
        "sweep_name=grid",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    # as `python -m diffexp.train` (README: every command runs so): joblib pickles the task function of `__main__`
    out = subprocess.run([sys.executable, "-m", "diffexp.train", *args], cwd=tmp_path, env=ENV, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "multirun" / "grid"
    found = jobs(sweep)
    assert len(found) == 4 and all(j["status"] == "finished" for j in found.values())
    ids = {next((sweep / n / "wandb").glob("offline-run-*")).name.rsplit("-", 1)[1] for n in found}
    assert len(ids) == 4

    out = diffexp("compare", f"sweep={sweep}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    report = sweep / "report"
    for name in ("leaderboard.csv", "leaderboard.md", "pareto.png", "losses.png", "samples.png", "report.md"):
        assert (report / name).exists(), name
    import csv

    rows = list(csv.DictReader((report / "leaderboard.csv").open()))
    assert len(rows) == 4
    for size in ("tiny", "small"):
        mine = [j for j in found.values() if j["recipe"]["model"] == size]
        best = min(j["objective"] for j in mine)
        first = next(r for r in rows if r["size"] == size)
        assert abs(float(first["fid"]) - best) < 1e-6
        assert (report / "conf" / "experiment" / f"best_{size}.yaml").exists()


def test_a_sweep_job_folder_is_skipped_resumed_or_refused_by_what_it_holds(tmp_path):
    # The check a sweep job makes before any work (diffexp.run_folder.earlier_job), without training.
    from omegaconf import OmegaConf

    from diffexp.errors import ForeignFolderError
    from diffexp.record import RunRecord
    from diffexp.run_folder import earlier_job

    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(["model=tiny", "optim.optimizer.lr=1e-3"], job / ".hydra" / "overrides.yaml")
    with pytest.raises(ForeignFolderError, match=r"holds another recipe \(model=tiny, optim.optimizer.lr=1e-3\)"):
        earlier_job(job, ["model=tiny", "optim.optimizer.lr=2e-3"])
    assert earlier_job(job, ["model=tiny", "optim.optimizer.lr=1e-3"]) is None  # nothing finished: resume
    RunRecord.update(job, status="finished", objective=7.5)
    assert earlier_job(job, ["model=tiny", "optim.optimizer.lr=1e-3"]) == 7.5  # finished: skipped, its figure
