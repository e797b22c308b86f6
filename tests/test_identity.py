"""The held-out set's identity (issue 27): membership per image, a fingerprint in metrics.json, and evaluate, resume
and the denoising error refusing a run whose data changed; runs made before the fingerprint still work."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict, read_write

from diffexp.data import DigitsDataModule, HubDataModule, ImageFolderDataModule, digits_split
from diffexp.errors import ConfigError
from diffexp.identity import NO_FINGERPRINT, fingerprint, hub_revision
from helpers import TINY, compose_train, pil_images, save_hub_copy


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def add_images(folder: Path, n: int, seed: int, start: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(pil_images(n, seed=seed)):
        img.save(folder / f"img{start + i:03d}.png")
    return folder


def members(dm) -> tuple[set[str], set[str]]:
    dm.prepare()
    return {dm.keys[i] for i in dm.heldout_index.tolist()}, {dm.keys[i] for i in dm.train_index.tolist()}


def folder_data(path: Path, holdout, **kw) -> ImageFolderDataModule:
    return ImageFolderDataModule(path=str(path), holdout=holdout, resolution=8, channels=3, batch_size=2, flip=False)


def test_adding_images_to_a_folder_leaves_the_earlier_heldout_members_held_out(tmp_path):
    folder = add_images(tmp_path / "images", 60, seed=1)
    held, train = members(folder_data(folder, 0.25))
    count_held, _ = members(folder_data(folder, 8))
    assert 5 <= len(held) <= 30 and len(count_held) == 8
    add_images(folder, 30, seed=2, start=60)
    held2, train2 = members(folder_data(folder, 0.25))
    assert held <= held2 and train <= train2  # a fraction: the earlier images stay where they were
    assert len(held2) + len(train2) == 90
    count_held2, _ = members(folder_data(folder, 8))
    moved = count_held - count_held2  # a count: the new images that entered push out as many, no more
    assert len(count_held2) == 8 and len(moved) == len(count_held2 - count_held) <= 30
    assert all(k not in count_held2 for k in moved) and count_held2 - count_held <= held2 - held
    # Renaming a file moves nothing: membership follows the image's content
    (folder / "img000.png").rename(folder / "renamed.png")
    assert members(folder_data(folder, 0.25))[0] == held2


def test_the_digits_keep_their_split_and_get_a_fingerprint():
    dm = DigitsDataModule(resolution=8, channels=1, batch_size=16, flip=False)
    dm.prepare()
    assert dm.heldout_index.tolist() == digits_split(1797)[1].tolist()  # the digits net's 360 never move
    fp = dm.fingerprint()
    assert fp["count"] == 360 and fp == fingerprint([f"digits:{i}" for i in digits_split(1797)[1].tolist()])
    assert DigitsDataModule(resolution=16, channels=1, batch_size=16, flip=False).fingerprint() == fp


def test_a_hub_copy_has_a_fingerprint_and_the_cache_names_the_revision(tmp_path, monkeypatch):

    local = save_hub_copy(tmp_path / "ds", n=40)
    dm = HubDataModule(name=str(local), resolution=8, channels=3, batch_size=2, flip=False, holdout=10)
    assert dm.fingerprint()["count"] == 10 and dm.fingerprint()["revision"] is None  # a local copy: unknown
    sha = "0123456789abcdef0123456789abcdef01234567"
    ref = tmp_path / "hub" / "datasets--user--set" / "refs"
    ref.mkdir(parents=True)
    (ref / "main").write_text(sha)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hub_revision("user/set") == sha and hub_revision("user/set", "v2") is None
    assert hub_revision("user/other", sha) == sha


def resume_cfg(run_dir: Path, scratch: Path, *extra: str):
    """`diffexp-train resume=RUN_DIR` as Hydra composes it: the job's output folder is the run's own."""
    cfg = compose_train([f"resume={run_dir}", *extra], scratch)
    with read_write(HydraConfig.get()), open_dict(HydraConfig.get()):
        HydraConfig.get().runtime.output_dir = str(run_dir)
    return cfg


def evaluate_args(run_dir: Path, *extra: str) -> list[str]:
    return [f"run={run_dir}", "samplers=[ddim]", "steps=[2]", "ddpm_steps=[]", "n=65", "eval.seeds=1", "threads=1"]


def test_evaluate_resume_and_denoise_refuse_changed_data_and_old_runs_still_work(tmp_path):
    from diffexp.denoise import denoise_run
    from diffexp.evaluate import run as evaluate
    from diffexp.train import run as train

    folder = add_images(tmp_path / "images", 48, seed=1)
    run_dir = tmp_path / "run"
    recipe = [*TINY, "logger=csv", "data=imagefolder", f"data.path={folder}", "data.resolution=16"]
    recipe += ["data.channels=1", "data.holdout=0.25", "data.batch_size=4"]
    train(compose_train(recipe, run_dir))
    record = json.loads((run_dir / "metrics.json").read_text())
    fp = record["heldout"]
    assert fp["count"] >= 4 and len(fp["hash"]) == 16 and record["process"]["pid"] > 0
    assert ".hydra" not in fp and "heldout" not in (run_dir / ".hydra" / "config.yaml").read_text()

    csv_path = evaluate(compose_train(evaluate_args(run_dir), tmp_path / "ev", name="evaluate"))
    assert {r["data_check"] for r in list(csv.DictReader(csv_path.open()))[1:]} == {"same"}

    add_images(folder, 40, seed=2, start=48)  # the data changed: new images, some of them held out
    before = (run_dir / "metrics.json").read_bytes()
    for attempt in (
        lambda: evaluate(compose_train(evaluate_args(run_dir), tmp_path / "ev", name="evaluate")),
        lambda: train(resume_cfg(run_dir, tmp_path / "scratch")),
        lambda: denoise_run(run_dir, 8),
    ):
        with pytest.raises(ConfigError, match="allow_changed_data=true") as e:
            attempt()
        line = str(e.value)
        assert "\n" not in line and f"#{fp['hash']}" in line and line.count("#") == 2  # both fingerprints
    assert (run_dir / "metrics.json").read_bytes() == before  # nothing recorded

    allowed = evaluate(compose_train([*evaluate_args(run_dir), "allow_changed_data=true"], tmp_path / "ev", "evaluate"))
    marks = {r["data_check"] for r in list(csv.DictReader(allowed.open()))[1:]}
    assert len(marks) == 1 and marks.pop().startswith("changed:")
    assert denoise_run(run_dir, 8, allow_changed_data=True)["data_check"].startswith("changed:")

    # A run recorded before fingerprints existed: loads, evaluates and scores its denoising error, marked
    old = json.loads(before)
    del old["heldout"], old["process"]
    old["version"] = 2
    (run_dir / "metrics.json").write_text(json.dumps(old))
    unmarked = evaluate(compose_train(evaluate_args(run_dir), tmp_path / "ev", name="evaluate"))
    assert {r["data_check"] for r in list(csv.DictReader(unmarked.open()))[1:]} == {NO_FINGERPRINT}
    assert denoise_run(run_dir, 8)["data_check"] == NO_FINGERPRINT
