"""diffexp.api: each function runs its command's code through Hydra and writes the same files; an API run
reproduces bit for bit with diffexp-reproduce."""

from __future__ import annotations

import json
import logging

import pytest
from omegaconf import OmegaConf

from diffexp import api
from diffexp.errors import ConfigError
from diffexp.reproduce import run as reproduce
from helpers import TINY, compose_train


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    logging.getLogger().handlers.clear()  # Hydra configured this process's logging for the API run


def test_train_sample_evaluate_compare_write_what_the_commands_write(in_tmp):
    run = api.train([*TINY, "logger=csv", "data.resolution=16"], seed=3)
    assert run.parent.parent == in_tmp / "outputs"  # the command's folder layout
    config = OmegaConf.load(run / ".hydra" / "config.yaml")
    assert config.seed == 3 and OmegaConf.load(run / ".hydra" / "overrides.yaml")[-1] == "seed=3"
    assert "run folder:" in (run / "train.log").read_text()
    assert json.loads((run / "metrics.json").read_text())["status"] == "finished"

    grid = api.sample(run, n=4, **{"sampler.steps": 3})
    assert grid == run / "samples" / "dpm_solver_sde-3steps-seed0-n4.png" and grid.stat().st_size > 0
    table = api.evaluate(run, samplers=["ddim"], steps=[2], ddpm_steps=[], n=64, threads=1)
    assert table.parent == run / "eval" and "ddim" in table.read_text()
    report = api.compare(runs=[str(run)], out=str(in_tmp / "report"))
    assert (report / "leaderboard.md").exists() and (report / "conf" / "experiment" / "best_tiny.yaml").exists()

    again = reproduce(compose_train([f"run={run}"], in_tmp / "again", name="reproduce"))
    assert again["matched"] and again["steps_compared"] == 4, again


def test_two_runs_started_within_a_second_get_two_folders(in_tmp):
    # The folder name without its time stamp (which may tick between two runs): only ${uid:} tells them apart.
    tiny = [*TINY, "logger=none", "trainer.max_steps=1", "preview.every_n_steps=0", "eval.denoise_images=0"]
    first, second = (api.train([*tiny, "hydra.run.dir=outputs/run-${uid:}"]) for _ in range(2))
    assert first != second and (first / "metrics.json").exists() and (second / "metrics.json").exists()


def test_bad_settings_raise_config_error(in_tmp):
    with pytest.raises(ConfigError, match=r"^optim.optimizer.lr=-1: the learning rate must be > 0"):
        api.train([*TINY, "logger=csv"], **{"optim.optimizer.lr": -1})
