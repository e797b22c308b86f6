"""Faults: a NaN loss stops the run cleanly, a crash mid-export leaves the previous export loadable."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import DDPMPipeline

from diffexp.errors import ConfigError
from diffexp.export import export_pipeline
from diffexp.loading import load_run
from diffexp.record import RunRecord
from diffexp.train import run
from wandb_records import read_run


def test_nan_loss_stops_within_a_few_steps_and_the_run_says_failed(tiny_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"loss is (nan|inf) at step \d+: lower optim.optimizer.lr") as err:
        run(
            tiny_cfg(
                "optim.optimizer.lr=1e6",
                "optim.grad_clip=null",
                "optim.warmup=0",
                "trainer.max_steps=200",
                "logger=wandb",
            )
        )
    assert "\n" not in str(err.value)
    folder = tmp_path / "run"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["reason"] == str(err.value)
    assert metrics["steps"] < 200
    assert not (folder / "pipeline").exists()  # a diverged model is not exported
    (wandb_dir,) = (folder / "wandb").glob("offline-run-*")
    assert read_run(wandb_dir)["exit"] == 1


def test_a_crash_during_export_keeps_the_previous_export(tiny_cfg, tmp_path):
    run(tiny_cfg())
    folder = tmp_path / "run"
    before = {p.relative_to(folder): p.read_bytes() for p in (folder / "pipeline").rglob("*") if p.is_file()}
    loaded = load_run(folder)
    for p in loaded.unet.parameters():
        p.data.add_(1.0)  # a different model, so a half-written export would show
    # A real failure after the weights are written: the sample grid to copy is a folder.
    with pytest.raises(IsADirectoryError):
        export_pipeline(
            loaded.unet, loaded.scheduler, folder / "pipeline", loaded.config, RunRecord(), grid=folder / "samples"
        )
    after = {p.relative_to(folder): p.read_bytes() for p in (folder / "pipeline").rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".pipeline")]  # no temporary folders left
    DDPMPipeline.from_pretrained(folder / "pipeline", use_safetensors=True)


def test_truncated_checkpoint_and_weightless_pipeline_give_one_line(tiny_cfg, tmp_path):
    run(tiny_cfg())
    folder = tmp_path / "run"
    shutil.rmtree(folder / "pipeline")
    ckpt = folder / "checkpoints" / "last.ckpt"
    assert isinstance(load_run(folder).unet, torch.nn.Module)  # the checkpoint alone is enough
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ConfigError, match="not a readable diffexp checkpoint"):
        load_run(folder)
    run(tiny_cfg(run_dir=tmp_path / "other"))
    (next((tmp_path / "other" / "pipeline" / "unet").glob("*.safetensors"))).unlink()
    with pytest.raises(ConfigError, match="has no safetensors weights"):
        load_run(tmp_path / "other")
