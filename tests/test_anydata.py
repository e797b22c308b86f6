"""Quality on data other than the digits: the butterflies path end to end, and a report that only compares what is
comparable (issue 16).

The butterflies are a local dataset with the Hub dataset's real columns (`image` among metadata strings and a float,
images of mixed sizes and modes RGB, RGBA, P and L), written as the Hub stores it (`data/train-00000-of-00001.parquet`)
so `data=butterflies data.name=DIR` loads it through the same `load_dataset` call as the Hub name. eval=dinov2 uses
a small randomly initialised DINOv2 saved with `save_pretrained` into a temp folder (`helpers.tiny_dinov2`):
its figures exercise the paths, they mean nothing as quality.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from diffexp.compare import run as compare
from diffexp.denoise import denoise_run
from diffexp.evaluate import run as evaluate
from diffexp.train import run as train
from helpers import REPO, TINY, compose_app, compose_train, tiny_dinov2
from wandb_records import read_run

pytest.importorskip("transformers")

sys.path.insert(0, str(REPO / "benchmarks"))
from denoise_vs_fid import main as rank_correlation  # noqa: E402

STRINGS = ["image_url", "image_alt", "id", "name", "scientific_name", "gender", "taxonomy", "region", "locality",
           "date", "usnm_no", "guid", "edan_url", "source", "stage"]  # fmt: skip
MODES = ("RGB", "RGBA", "P", "L")
SIZES = [(40, 60), (37, 21), (24, 24), (50, 33)]


def butterflies(folder: Path, n: int = 40) -> Path:
    """A local copy of huggan/smithsonian_butterflies_subset's schema: its columns, in its parquet layout."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        images.append(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(MODES[i % len(MODES)]))
    columns = {k: [f"{k} {i}" if i % 3 else None for i in range(n)] for k in STRINGS}
    columns |= {"image": images, "image_hash": [f"{i:032x}" for i in range(n)], "sim_score": [0.3] * n}
    features = datasets.Features(
        {k: datasets.Value("string") for k in STRINGS}
        | {"image": datasets.Image(), "image_hash": datasets.Value("string"), "sim_score": datasets.Value("float32")}
    )
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_dict(columns, features=features).to_parquet(folder / "data" / "train-00000-of-00001.parquet")
    return folder


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` builds into this test's own cache instead of the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


@pytest.fixture
def own_wandb_service():
    """Stops the W&B service this test's in-process run started, so later tests start their own as they would
    without it (a second run on a shared service once lost its exit record on a loaded machine)."""
    yield
    import wandb

    wandb.teardown()


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_butterflies_train_with_dinov2_and_denoising_error_into_metrics_wandb_card_and_report(
    tmp_path, own_wandb_service
):
    data, model = butterflies(tmp_path / "butterflies"), tiny_dinov2(tmp_path / "dinov2")
    cache = tmp_path / "reference"
    common = [*TINY, "data=butterflies", f"data.name={data}", "data.resolution=8", "data.batch_size=4",
              "data.holdout=12", "trainer.max_steps=2", "model.block_out_channels=[32,32]", "eval=dinov2",
              f"eval.model={model}", "eval.n_samples=16", "eval.kid_subset_size=8", "eval.sampler_steps=2",
              f"eval.cache_dir={cache}", "preview.every_n_steps=0"]  # fmt: skip
    sweep = tmp_path / "multirun" / "targets"
    targets = ("epsilon", "v_prediction")  # two targets: a report across them
    for k, target in enumerate(targets):
        logger = "logger=wandb" if k == 0 else "logger=csv"  # W&B once: its offline run is checked below
        cfg = compose_train([*common, logger, f"schedule.prediction_type={target}"], sweep / str(k))
        assert cfg.data._target_.endswith("HubDataModule") and cfg.eval.net == "dinov2"
        train(cfg)
    records = [json.loads((sweep / str(k) / "metrics.json").read_text()) for k in range(len(targets))]
    for record in records:
        ev = record["eval"]
        assert record["status"] == "finished" and ev["feature_net"] == "dinov2" and ev["feature_model"] == str(model)
        assert ev["n_real"] == 12 and ev["n_fake"] == 16 and ev["kid"] is not None and ev["fid"] is None
        assert ev["fid_refused"].startswith("FD refused: 12 held-out and 16 generated")  # 32 features
        assert ev["denoise"] > 0 and list(ev["denoise_levels"]) == ["-6", "-3", "0", "3", "6"]
        assert ev["denoise_images"] == 8 and record["objective_name"] == "eval/kid"
    # the figure from the exported EMA weights, as benchmarks/denoise_vs_fid.py computes it for older runs
    assert denoise_run(sweep / "1", 8)["denoise"] == pytest.approx(records[1]["eval"]["denoise"], rel=1e-5)
    (reference,) = cache.glob("*.safetensors")  # one held-out reference, built by the first run, read by the second
    assert "dinov2" in reference.name and "held12" in reference.name
    # W&B (offline run files): the figures in the history and the summary
    (wandb_run,) = (sweep / "0" / "wandb").glob("offline-run-*")
    logged = read_run(wandb_run)
    history = {k: v for step in logged["history"] for k, v in step.items()}
    assert history["eval/kid"] == pytest.approx(records[0]["eval"]["kid"])
    assert history["eval/denoise"] == pytest.approx(records[0]["eval"]["denoise"])
    assert logged["summary"]["eval.denoise"] == pytest.approx(records[0]["eval"]["denoise"])
    card = (sweep / "0" / "pipeline" / "README.md").read_text()
    assert "denoise" in card and "FD refused" in card
    # the report ranks by KID (no run has an FD), within one basis naming the model
    out = compare(compose_app("compare", [f"sweep={sweep}", f"out={tmp_path / 'report'}"]))
    board = rows(out / "leaderboard.csv")
    assert [float(r["kid"]) for r in board] == sorted(r["eval"]["kid"] for r in records)
    assert {r["basis"].split(" | ")[1] for r in board} == {f"dinov2 {model}, 12 held-out real / 16 fake, 2 model calls"}
    assert len({r["basis"] for r in board}) == 1 and " 8px 3ch, held-out 12 images #" in board[0]["basis"]
    assert "ranked by KID" in (out / "report.md").read_text()
    assert {r["rank"] for r in board} == {"1", "2"}  # one comparison across the two targets
    # diffexp-evaluate scores as training did: below the 32 features FD is refused and KID still scores
    table = evaluate(compose_app("evaluate", [
        f"run={sweep / '1'}", "eval=dinov2", f"eval.model={model}", "n=16", "eval.kid_subset_size=8",
        f"eval.cache_dir={cache}", "samplers=[ddim]", "steps=[2]", "ddpm_steps=[]", "threads=1",
    ]))  # fmt: skip
    scored = rows(table)[1]
    assert scored["sampler"] == "ddim" and not scored["fid"] and math.isfinite(float(scored["kid_x1e3"]))


def crafted(folder: Path, target: str, schedule: str, loss: float, denoise: float | None = None, seed: int = 0) -> Path:
    """A finished run folder written by hand: its schedule, target, final loss, and (optionally) denoising error and
    a digits FID that orders the runs as the denoising error does, but for the last two. Runs of one recipe need
    distinct seeds: the report counts a recipe's seed once."""
    (folder / ".hydra").mkdir(parents=True)
    schedule_cfg = {"beta_schedule": schedule, "prediction_type": target}
    config = {"seed": seed, "schedule": schedule_cfg, "loss": {"snr_gamma": 5.0}}
    OmegaConf.save(config, folder / ".hydra" / "config.yaml")
    overrides = [f"schedule.prediction_type={target}", f"schedule.beta_schedule={schedule}"]
    OmegaConf.save(overrides, folder / ".hydra" / "overrides.yaml")
    ev = {} if denoise is None else {"denoise": denoise, "denoise_images": 256, "denoise_levels": {"0": 0.1}}
    if denoise is not None:
        ev["fid"] = {1: 10.0, 2: 20.0, 3: 40.0, 4: 30.0}[denoise]
    record = {"status": "finished", "recipe": {"model": "tiny"}, "eval": ev, "final_loss": loss, "parameters": 1}
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def test_training_losses_are_ranked_only_within_equal_schedule_target_and_weighting(tmp_path):
    grid = [("epsilon", "linear", 0.05), ("epsilon", "linear", 0.04), ("v_prediction", "linear", 0.5),
            ("epsilon", "squaredcos_cap_v2", 0.08)]  # fmt: skip
    runs = [crafted(tmp_path / "s" / str(k), *g, seed=k) for k, g in enumerate(grid)]
    out = compare(compose_app("compare", [f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'r'}"]))
    board = {r["run"]: r for r in rows(out / "leaderboard.csv")}
    assert board["s/1"]["rank"] == "1" and board["s/0"]["rank"] == "2"  # the one group of two
    assert board["s/2"]["rank"] == "1" and board["s/3"]["rank"] == "1"  # alone in their groups: never across
    loss_basis = "training loss, linear schedule, v_prediction target, min-SNR-5 weighting"
    assert board["s/2"]["basis"].split(" | ")[1] == loss_basis
    report = (out / "report.md").read_text()
    assert "no ranking across them" in report and "ranked by their final training loss" in report
    # with a held-out denoising error: one comparison across schedules and weightings, apart per target
    runs = [
        crafted(tmp_path / "d" / str(k), *g, denoise=d, seed=k)
        for k, (g, d) in enumerate(zip(grid, [3, 2, 1, 4], strict=True))
    ]
    args = [f"runs=[{','.join(map(str, runs))}]", "metric=denoise", f"out={tmp_path / 'r2'}"]
    out = compare(compose_app("compare", args))
    board = {r["run"]: r["rank"] for r in rows(out / "leaderboard.csv")}
    assert board == {"d/1": "1", "d/0": "2", "d/3": "3", "d/2": "1"}  # epsilon across two schedules; v alone
    report = (out / "report.md").read_text()
    assert "Ranked by `denoise`" in report and "Held-out denoising errors of different prediction targets" in report
    # the rank correlation with FID from the run folders: ranks 1 2 3 4 against 1 2 4 3, rho = 1 - 6 * 2 / 60
    result = rank_correlation([str(tmp_path / "d"), "--boots", "500", "--json", str(tmp_path / "rho.json")])
    assert result["n"] == 4 and result["rho"] == pytest.approx(0.8) and result["ci"][0] <= 0.8 <= result["ci"][1]
    assert json.loads((tmp_path / "rho.json").read_text())["rho"] == pytest.approx(0.8)


def test_runs_with_only_the_denoising_error_are_ranked_by_it_within_each_target(tmp_path):
    grid = [("epsilon", "linear", 0.05), ("v_prediction", "linear", 0.5), ("epsilon", "sigmoid", 0.2),
            ("v_prediction", "sigmoid", 0.3)]  # fmt: skip
    runs = [
        crafted(tmp_path / "d" / str(k), *g, denoise=d) for k, (g, d) in enumerate(zip(grid, [3, 1, 2, 4], strict=True))
    ]
    for run in runs:  # trained with eval=none: no FID
        record = json.loads((run / "metrics.json").read_text())
        del record["eval"]["fid"]
        (run / "metrics.json").write_text(json.dumps(record))
    out = compare(compose_app("compare", [f"runs=[{','.join(map(str, runs))}]", f"out={tmp_path / 'r'}"]))
    board = {r["run"]: r["rank"] for r in rows(out / "leaderboard.csv")}
    assert board == {"d/2": "1", "d/0": "2", "d/1": "1", "d/3": "2"}  # across schedules, never across targets
    report = (out / "report.md").read_text()
    assert "ranked by their held-out denoising error" in report and "only within one prediction target" in report
