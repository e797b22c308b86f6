"""Exact resume: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY
from test_cli import ENV, diffexp
from wandb_records import read_run

RECIPE = [
    *TINY,
    "trainer.max_steps=60",
    "checkpoint.every_n_steps=10",
    "preview.every_n_steps=30",
    "threads=1",
    "data.flip=true",
    "logger=wandb",
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
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    out = diffexp("train", *RECIPE, f"hydra.run.dir={straight}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]

    exe = Path(sys.executable).parent / "diffexp-train"
    proc = subprocess.Popen(
        [str(exe), *RECIPE, f"hydra.run.dir={killed}"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    # Kill it between checkpoints, mid-epoch (112 digits / 16 = 7 batches an epoch at 8 px... any step works).
    while not (killed / "checkpoints" / "last.ckpt").exists() or not (killed / "losses.csv").exists():
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.02)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert json.loads((killed / "metrics.json").read_text())["status"] == "running"
    killed_at = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < killed_at < 60

    out = diffexp("train", f"resume={killed}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    a, b = weights(straight), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (straight / "losses.csv").read_text() == (killed / "losses.csv").read_text()
    metrics = json.loads((killed / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 60 and metrics["images_seen"] == 60 * 16
    # The W&B run goes on under the same id (the killed process may not have flushed its own file).
    folders = sorted((killed / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and len({f.name.rsplit("-", 1)[1] for f in folders}) == 1
    resumed = read_run(folders[-1])
    assert resumed["run"]["id"] == metrics["wandb_id"] == folders[0].name.rsplit("-", 1)[1]
    assert max(h["trainer/global_step"] for h in resumed["history"] if "train/loss" in h) == 59
