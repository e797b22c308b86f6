"""Exact resume: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import TINY, resume_run, train_straight_and_killed
from wandb_records import read_run

RECIPE = [
    *TINY,
    "trainer.max_steps=60",
    "checkpoint.every_n_steps=10",
    "preview.every_n_steps=30",
    "threads=1",
    "data.flip=true",
    "logger=wandb",
    "eval=digits",
    "data.resolution=16",
    "eval.every_n_steps=10",
    "eval.n_samples=65",
    "eval.reference_size=100",
    "eval.sampler_steps=2",
]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    state = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    ema = state["ema"]["shadow_params"]
    return {
        **{k: v for k, v in state["state_dict"].items() if k.startswith("unet.")},
        **{f"ema.{i}": v for i, v in enumerate(ema)},
    }


@pytest.mark.slow
def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path):
    # Killed once a checkpoint exists, mid-epoch (112 batches an epoch at batch 16) and between checkpoints.
    straight, killed = train_straight_and_killed(RECIPE, tmp_path, 60, "losses.csv")
    assert json.loads((killed / "metrics.json").read_text())["status"] == "running"
    resume_run(killed, tmp_path)
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "losses.csv").read_text() == (killed / "losses.csv").read_text()
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 60 and metrics["images_seen"] == 60 * 16
    # The evaluations made before the kill come back from the checkpoint: the same history, figure for figure.
    expected = json.loads((straight / "metrics.json").read_text())["eval_history"]
    assert [h["step"] for h in expected] == [10, 20, 30, 40, 50, 60]
    assert [(h["step"], h["fid"]) for h in metrics["eval_history"]] == [(h["step"], h["fid"]) for h in expected]
    # The W&B run goes on under the same id (the killed process may not have flushed its own file).
    folders = sorted((killed / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and len({f.name.rsplit("-", 1)[1] for f in folders}) == 1
    resumed = read_run(folders[-1])
    assert resumed["run"]["id"] == metrics["wandb_id"] == folders[0].name.rsplit("-", 1)[1]
    assert max(h["trainer/global_step"] for h in resumed["history"] if "train/loss" in h) == 59


@pytest.mark.slow
def test_a_flow_run_killed_and_resumed_equals_the_uninterrupted_one(tmp_path):
    # Flow draws t from the run's generator (logit-normal, SD3's default) as well as the noise: both must resume.
    recipe = [*TINY, "schedule=flow", "trainer.max_steps=40", "checkpoint.every_n_steps=5", "threads=1"]
    recipe += ["logger=csv", "preview.every_n_steps=0"]
    straight, killed = train_straight_and_killed(recipe, tmp_path, 40, "losses.csv")
    resume_run(killed, tmp_path)
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "losses.csv").read_text() == (killed / "losses.csv").read_text()
    record = json.loads((killed / "metrics.json").read_text())
    # the record keeps the run's group choices, not the resume command's defaults (schedule=cosine)
    assert record["status"] == "finished" and record["recipe"]["schedule"] == "flow" and record["steps"] == 40
