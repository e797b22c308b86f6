"""diffexp-compare shows a sweep's Optuna parameter importances: a real SQLite study beside hand-written runs."""

from __future__ import annotations

import csv

import optuna
from PIL import Image

from diffexp.compare import run as compare
from diffexp.report.importances import section
from helpers import compose_app, crafted


def sweep_with_study(tmp_path, n: int):
    """A sweep folder as the sweeper leaves it: trial folders and `optuna.db`, where FID follows the lr only."""
    sweep = tmp_path / "multirun" / "search"
    sweep.mkdir(parents=True)
    study = optuna.create_study(study_name="search", storage=f"sqlite:///{sweep}/optuna.db")
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    for k in range(n):
        trial = study.ask()
        lr = trial.suggest_float("optim.optimizer.lr", 1e-4, 1e-2, log=True)
        trial.suggest_categorical("seed", [0, 1, 2])
        fid = 5 + 1000 * lr
        study.tell(trial, fid)
        crafted(sweep / f"trial-{k:04d}", lr, 0, fid)
    return sweep


def test_the_report_shows_the_study_parameter_importances_as_a_table_and_a_bar_plot(tmp_path):
    sweep = sweep_with_study(tmp_path, 8)
    out = compare(compose_app("compare", [f"sweep={sweep}", f"out={tmp_path / 'r'}"]))
    rows = list(csv.DictReader((out / "importances.csv").open()))
    assert [r["parameter"] for r in rows] == ["optim.optimizer.lr", "seed"]  # the lr decides FID here
    assert float(rows[0]["importance"]) > 3 * float(rows[1]["importance"])
    with Image.open(out / "importances.png") as image:
        assert image.size[0] > 300 and image.getextrema() != ((255, 255), (255, 255), (255, 255), (255, 255))
    text = (out / "report.md").read_text()
    assert "## Parameter importances" in text and "Study `search` (8 finished trials" in text
    assert "![importances](importances.png)" in text


def test_too_few_trials_for_importances_is_said_in_one_line(tmp_path):
    text = section([str(sweep_with_study(tmp_path, 3))], tmp_path)
    assert "\nStudy `search`: 3 finished trials; importances need at least 8.\n" in text
    assert not list(tmp_path.glob("importances*"))
    assert section([str(tmp_path / "multirun")], tmp_path) == ""  # no study: no section


def test_a_study_after_one_too_small_is_written_without_a_suffix(tmp_path):
    small, big = sweep_with_study(tmp_path / "a", 3), sweep_with_study(tmp_path / "b", 8)
    text = section([str(small), str(big)], tmp_path)
    assert "3 finished trials; importances need at least 8" in text
    assert (tmp_path / "importances.csv").exists() and not list(tmp_path.glob("importances-*"))
    assert "![importances](importances.png)" in text
