"""Sweeps on a real single-node SLURM cluster (tests/slurm.py) through Hydra's submitit_slurm launcher."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from helpers import ENV, OPTUNA, QUICK, finish, jobs, study, trained_once_each
from slurm import cluster, job_state

STEPS = 400  # the requeue comes at the first checkpoint (step 10), well before the end even on an idle machine


@pytest.mark.slow
def test_a_slurm_sweep_finishes_each_job_in_its_folder_and_a_requeued_job_resumes(tmp_path):
    sweep = tmp_path / "multirun" / "slurm"
    args = [str(Path(sys.executable).parent / "diffexp-train"), "-m", *QUICK, "optim.optimizer.lr=1e-3,2e-3"]
    args += [f"trainer.max_steps={STEPS}", "checkpoint.every_n_steps=10", "sweep_name=slurm"]
    # one CPU a job: both run at once on the 2-CPU node; timeout_min >= 5 (submitit signals 90 s before it)
    args += ["hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10", "hydra.launcher.cpus_per_task=1"]
    with cluster() as env:
        root = Path(env["SLURM_CONF"]).parent
        sweeper = subprocess.Popen(
            args, cwd=tmp_path, env=ENV | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            deadline = time.time() + 300
            while not (sweep / "0" / "checkpoints" / "last.ckpt").exists():
                assert sweeper.poll() is None and time.time() < deadline, "job 0 never wrote a checkpoint"
                time.sleep(0.2)
            out = subprocess.run(["squeue", "-h", "-o", "%i"], env=env, capture_output=True, text=True)
            job0 = next(j for j in out.stdout.split() if j.endswith("_0"))
            assert job_state(env, job0) == "RUNNING"
            assert json.loads((sweep / "0" / "metrics.json").read_text())["status"] == "running"
            requeue = subprocess.run(["scontrol", "requeue", job0], env=env, capture_output=True, text=True)
            assert requeue.returncode == 0, requeue.stderr
            log, _ = sweeper.communicate(timeout=600)
        finally:
            sweeper.kill()
        assert sweeper.returncode == 0, log[-3000:]
        daemons = [int(p.read_text().split()[0]) for p in root.glob("*.pid")]
    assert not root.exists() and len(daemons) == 3
    for pid in daemons:  # munged, slurmctld and slurmd stopped with the cluster
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()

    found = jobs(sweep)
    assert sorted(found) == ["0", "1"] and all(j["status"] == "finished" for j in found.values()), found
    for name, record in found.items():  # every step trained once, the full budget, in the job's own folder
        steps = [int(r.split(",")[0]) for r in (sweep / name / "losses.csv").read_text().splitlines()[1:]]
        assert steps == list(range(STEPS)) and record["steps"] == STEPS, (name, steps[:3], record["steps"])
    assert "resuming unfinished job" in (sweep / "0" / "train.log").read_text()  # the requeued one, in its folder
    assert "resuming unfinished job" not in (sweep / "1" / "train.log").read_text()
    (stderr,) = sweep.glob(".submitit/*_0/*_0_log.err")  # both of job 0's runs append to its SLURM log
    text = stderr.read_text()
    assert "DUE TO JOB REQUEUE" in text
    assert re.search(rf"restored step [1-9]\d* of {STEPS} from the checkpoint", (sweep / "0" / "train.log").read_text())


@pytest.mark.slow
def test_two_search_workers_submitting_to_slurm_train_distinct_trials_and_no_repeat(tmp_path):
    # `diffexp-train -m sweeps=optuna_tiny` started twice on one study, each trial a SLURM job (one CPU each)
    args = [str(Path(sys.executable).parent / "diffexp-train"), "-m", "sweeps=optuna_tiny", *OPTUNA]
    args += ["hydra.sweeper.n_trials=4", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=10"]
    args += ["hydra.launcher.cpus_per_task=1", "hydra/sweeper/pruner=none"]  # 4 trials, all COMPLETE
    with cluster() as env:
        workers = [
            subprocess.Popen(
                args, cwd=tmp_path, env=ENV | env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        try:
            finish(workers)
        finally:
            for w in workers:
                w.kill()
    sweep = tmp_path / "multirun" / "optuna_tiny"
    trials = study(tmp_path).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state) for t in trials]
    assert trained_once_each(sweep, trials) == complete  # distinct parameters; none trained as a repeat
    assert len({t.user_attrs["worker"] for t in complete}) == 2  # both workers ran trials
    for t in complete:  # each ran as a SLURM job, in its trial's folder, and its figure is the trial's
        assert json.loads((sweep / f"trial-{t.number:04d}" / "metrics.json").read_text())["objective"] == t.value
    assert len(list(sweep.glob(".submitit/*/*_log.err"))) == 4
