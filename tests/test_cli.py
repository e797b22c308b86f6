"""The commands as users run them: real subprocesses, DDP with two CPU processes, a two-job multirun."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ENV, REPO, TINY, compose_train, diffexp
from wandb_records import read_run


@pytest.mark.slow  # two processes with Lightning's start-up each: ~31 s, which the default suite's 10 minutes lack
def test_ddp_trains_with_two_cpu_processes_and_rank_zero_writes(tmp_path):
    folder = tmp_path / "ddp"
    # verbose=true: Lightning's own banner says how many processes started
    args = [*TINY, "trainer=ddp", "logger=csv", "threads=1", "verbose=true", f"hydra.run.dir={folder}"]
    out = diffexp("train", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Starting with 2 processes" in out.stderr + out.stdout
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["images_seen"] == 4 * 16 * 2
    assert (folder / "train_ddp_process_1.log").exists()  # rank 1 ran in rank 0's folder
    assert (folder / "pipeline" / "model_index.json").exists() and (folder / "checkpoints" / "last.ckpt").exists()
    assert not list(folder.glob(".pl_hydra*"))
    assert sorted(p.name for p in (folder / "samples").iterdir()) == ["step_000002.png", "step_000004.png"]


@pytest.mark.slow  # a two-job sweep in a real process: 19-23 s on 2 cores
def test_two_job_multirun_gives_two_wandb_runs_grouped_by_sweep(tmp_path):
    sweep = tmp_path / "multirun" / "lr-sweep"
    out = diffexp(
        "train", "-m", *TINY, "optim.optimizer.lr=1e-3,3e-4", "logger=wandb", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = []
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "finished"
        (wandb_dir,) = (sweep / job / "wandb").glob("offline-run-*")
        runs.append(read_run(wandb_dir))
    assert {r["run"]["group"] for r in runs} == {"lr-sweep"}
    assert len({r["run"]["id"] for r in runs}) == 2
    assert sorted(r["config"]["optim.optimizer.lr"] for r in runs) == [3e-4, 1e-3]
    assert all(r["exit"] == 0 and any("train/loss" in h for h in r["history"]) for r in runs)


def test_commands_run_as_modules_and_from_any_folder(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "diffexp.train", "--cfg", "job", "model=small"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "block_out_channels:\n  - 32\n  - 64\n  - 128" in out.stdout
    assert REPO.joinpath("conf", "train.yaml").exists()


@pytest.mark.parametrize("command, groups", [("sample", ["sampler"]), ("evaluate", ["eval"]), ("export", [])])
def test_help_lists_only_the_groups_the_command_reads(command, groups, monkeypatch, capsys):
    """Through the console script's entry function (`diffexp.<command>:main`, what `diffexp-<command>` calls), in
    this process: a subprocess per command costs ~13 s of imports here and proves nothing more."""
    monkeypatch.setattr(sys, "argv", [f"diffexp-{command}", "--help"])
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(f"diffexp.{command}").main()
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "run" in out, command
    # only the groups the command reads: not the training recipe's data, model, optim, trainer, ...
    section = out.split("== Config ==")[0].split("== Configuration groups ==")[1:]
    listed = [line.split(": ")[0] for line in "".join(section).splitlines() if ": " in line]
    assert listed == groups, (command, listed)


def test_sample_command_writes_new_files_and_same_seed_same_images(tmp_path, tiny_cfg):
    """One real `diffexp-sample` process and one refused, side by side; the repeats run in-process (`sample.run`),
    which must draw what the command drew."""
    from PIL import Image

    from diffexp.sample import run as sample
    from diffexp.train import run

    run(tiny_cfg())
    folder = tmp_path / "run"
    # The default sampler is stochastic (fresh noise each step): the seed must fix that noise too.
    args = [f"run={folder}", "sampler=dpm_solver_sde", "sampler.steps=3", "n=6", "seed=3", "singles=true", "threads=2"]
    bad = subprocess.Popen(
        [str(Path(sys.executable).parent / "diffexp-sample"), f"run={tmp_path}"],
        cwd=tmp_path, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    first = diffexp("sample", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = sample(compose_train(args, tmp_path / "again", name="sample"))
    a, b = (folder / "samples" / f"dpm_solver_sde-3steps-seed3-n6{suffix}.png" for suffix in ("", "-2"))
    assert a.exists() and second == b  # a new file beside the first, never over it
    assert Image.open(a).tobytes() == Image.open(b).tobytes()
    assert len(list((folder / "samples" / "dpm_solver_sde-3steps-seed3-n6").glob("*.png"))) == 6
    other = sample(compose_train([*args[:-3], "seed=4", "threads=2"], tmp_path / "other", name="sample"))
    assert other == folder / "samples" / "dpm_solver_sde-3steps-seed4-n6.png"
    assert Image.open(other).tobytes() != Image.open(a).tobytes()
    _, stderr = bad.communicate(timeout=300)
    assert bad.returncode != 0 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: run=")
