"""Training data: Hub-schema datasets and image folders train; decoding is cached; batches depend on (seed, step).

Everything runs on real `datasets` objects saved locally in the schema of the Hub sets (no network).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from diffusers import DDPMPipeline
from hydra.utils import instantiate
from PIL import Image

from diffexp.data import (
    DigitsDataModule,
    HubDataModule,
    ImageFolderDataModule,
    StepBatches,
    digits_images,
    digits_split,
    to_model_range,
)
from diffexp.errors import ConfigError
from diffexp.identity import unit_hash
from diffexp.train import run
from helpers import pil_images, save_hub_copy, write_image_folder


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` (imagefolder) builds into this test's own cache instead of the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


def train_and_check(cfg, run_dir: Path, channels: int) -> None:
    run(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == cfg.trainer.max_steps
    assert metrics["images_seen"] == cfg.trainer.max_steps * cfg.data.batch_size
    pipe = DDPMPipeline.from_pretrained(run_dir / "pipeline", use_safetensors=True)
    assert pipe.unet.config.sample_size == 8 and pipe.unet.config.in_channels == channels
    assert (run_dir / "checkpoints" / "last.ckpt").exists()


SMALL = ["data.resolution=8", "data.batch_size=4", "trainer.max_steps=2", "model.block_out_channels=[32,32]"]


def test_butterflies_schema_trains(tiny_cfg, tmp_path):
    local = save_hub_copy(tmp_path / "butterflies", modes=("RGB", "RGB", "RGBA", "L"))
    cfg = tiny_cfg("data=butterflies", f"data.name={local}", *SMALL)
    assert cfg.data.channels == 3 and cfg.model.in_channels == 3 and cfg.data._target_.endswith("HubDataModule")
    train_and_check(cfg, tmp_path / "run", channels=3)
    # the decoded images are cached beside the data, not in the run folder
    assert list(local.glob("cache-*.arrow")) and not list((tmp_path / "run").rglob("*.arrow"))


def test_hub_with_named_image_column_trains_greyscale(tiny_cfg, tmp_path):
    local = save_hub_copy(tmp_path / "ds", column="img")
    cfg = tiny_cfg("data=hub", f"data.name={local}", "data.image_column=img", "data.channels=1", *SMALL)
    assert cfg.model.in_channels == 1
    dm = instantiate(cfg.data)
    x = dm.prepare()
    # no test split: each image whose hash falls below 10% is held out (here by chance none of the 24)
    held = sum(unit_hash(k) < 0.1 for k in dm.keys)
    assert x.shape == (24 - held, 1, 8, 8) and x.dtype == torch.uint8 and len(dm.heldout) == held
    train_and_check(cfg, tmp_path / "run", channels=1)


def test_saved_dataset_dict_uses_the_named_split(tmp_path):
    features = datasets.Features({"image": datasets.Image()})
    images = datasets.Dataset.from_dict({"image": pil_images(6)}, features=features)
    datasets.DatasetDict({"train": images, "test": images.select(range(2))}).save_to_disk(str(tmp_path / "dd"))
    args = {"name": str(tmp_path / "dd"), "resolution": 8, "channels": 3, "batch_size": 2, "flip": False}
    dm = HubDataModule(**args)
    assert dm.prepare().shape == (6, 3, 8, 8) and dm.heldout.shape == (2, 3, 8, 8)  # the test split is held out
    assert HubDataModule(**args, split="test", holdout=0).prepare().shape == (2, 3, 8, 8)
    counted = HubDataModule(**args, holdout=2)  # an explicit holdout comes out of the training split instead
    assert counted.prepare().shape == (4, 3, 8, 8) and counted.heldout.shape == (2, 3, 8, 8)
    with pytest.raises(ConfigError, match=r"data.split='validation' .*\['test', 'train'\]"):
        HubDataModule(**args, split="validation").prepare()


def test_image_folder_trains(tiny_cfg, tmp_path):
    folder = write_image_folder(tmp_path / "pictures")
    cfg = tiny_cfg("data=imagefolder", f"data.path={folder}", *SMALL)
    dm = instantiate(cfg.data)
    x = dm.prepare()
    assert len(x) + len(dm.heldout) == 20  # every PNG and JPEG, in every sub-folder
    assert len(dm.heldout) == sum(unit_hash(k) < 0.1 for k in dm.keys)  # those whose hash is below 10%
    assert x.shape[1:] == (3, 8, 8) and x.dtype == torch.uint8
    train_and_check(cfg, tmp_path / "run", channels=3)


def test_decoded_once_then_read_from_the_datasets_cache(tmp_path):
    local = save_hub_copy(tmp_path / "ds", n=12)
    args = {"name": str(local), "resolution": 8, "channels": 3, "batch_size": 4, "flip": False}
    args["holdout"] = 0  # all 12 images train: this test is about the decoding cache
    first = HubDataModule(**args).prepare()
    assert first.dtype == torch.uint8 and first.shape == (12, 3, 8, 8)
    (cache,) = local.glob("cache-*.arrow")

    # Replace the cached result with different pixels: a datamodule that decoded again would not see them.
    features = datasets.Features({"pixels": datasets.Array3D((3, 8, 8), "uint8")})
    datasets.Dataset.from_dict({"pixels": (255 - first).numpy()}, features=features).save_to_disk(str(tmp_path / "x"))
    (arrow,) = (tmp_path / "x").glob("data-*.arrow")
    os.replace(arrow, cache)
    second = HubDataModule(**args).prepare()
    assert torch.equal(second, 255 - first)
    assert list(local.glob("cache-*.arrow")) == [cache]

    # Another resolution or channel count is another cache entry, decoded from the images.
    assert HubDataModule(**(args | {"resolution": 4})).prepare().shape == (12, 3, 4, 4)
    grey = HubDataModule(**(args | {"channels": 1})).prepare()
    assert grey.shape == (12, 1, 8, 8) and grey.dtype == torch.uint8
    assert len(list(local.glob("cache-*.arrow"))) == 3


def test_image_folder_is_cached_too(tmp_path):
    folder = write_image_folder(tmp_path / "pictures", n=6)
    dm = ImageFolderDataModule(path=str(folder), resolution=8, channels=3, batch_size=2, flip=False)
    first = dm.prepare()
    assert len(first) + len(dm.heldout) == 6
    caches = sorted(p.name for p in (tmp_path / "hf-datasets").rglob("cache-*.arrow"))
    assert len(caches) == 1
    again = ImageFolderDataModule(path=str(folder), resolution=8, channels=3, batch_size=2, flip=False).prepare()
    assert torch.equal(first, again)
    assert sorted(p.name for p in (tmp_path / "hf-datasets").rglob("cache-*.arrow")) == caches


def test_decoding_resizes_short_side_and_centre_crops(tmp_path):
    # A 2:1 image whose left, middle and right thirds differ: the crop keeps the middle.
    img = np.zeros((16, 32, 3), dtype=np.uint8)
    img[:, :8], img[:, 8:24], img[:, 24:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    features = datasets.Features({"image": datasets.Image()})
    datasets.Dataset.from_dict({"image": [Image.fromarray(img)]}, features=features).save_to_disk(str(tmp_path / "d"))
    x = HubDataModule(name=str(tmp_path / "d"), resolution=8, channels=3, batch_size=1, flip=False, holdout=0).prepare()
    assert x.shape == (1, 3, 8, 8)
    inner = x[0, :, :, 1:-1]  # bicubic resampling blends the outermost columns a little
    assert (inner[1] == 255).all() and (inner[0] == 0).all() and (inner[2] == 0).all()
    assert (x[0, 1] > 200).all() and (x[0, 0] < 50).all() and (x[0, 2] < 50).all()


def batches_from(images: torch.Tensor, start: int, seed: int = 3) -> list[torch.Tensor]:
    """The batches a StepBatches of 8 images a step yields when training (re)starts at global step `start`."""
    return list(StepBatches(images, 8, seed, step=lambda: start))


def same(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    return len(xs) == len(ys) and all(torch.equal(a, b) for a, b in zip(xs, ys, strict=True))


def test_batch_of_a_step_depends_only_on_seed_and_step():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    full = batches_from(images, 0)
    assert len(full) == 5 and all(b.dtype == torch.uint8 and b.shape == (8, 1, 1, 1) for b in full)
    assert sorted(torch.cat(full).flatten().tolist()) == list(range(40))  # an epoch sees every image once
    assert same(batches_from(images, 0), full)
    for k in range(1, 5):  # resuming at step k gives exactly the batches k.. of the full epoch
        assert same(batches_from(images, k), full[k:])
    # A later epoch: a new order, the same from any start within that epoch.
    epoch2 = batches_from(images, 10)
    assert len(epoch2) == 5 and not same(epoch2, full)
    assert same(batches_from(images, 12), epoch2[2:])
    assert not same(batches_from(images, 0, seed=4), full)


def test_two_ranks_get_disjoint_batches():
    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    ranks = [StepBatches(images, 4, seed=1, step=lambda: 0, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 5
    seen = []
    for step in range(5):
        a, b = (set(r.batch_indices(step).tolist()) for r in ranks)
        assert len(a) == len(b) == 4 and not a & b
        seen += [*a, *b]
    assert sorted(seen) == list(range(40))  # together the ranks cover the epoch once
    for r in ranks:
        assert [set(x.flatten().tolist()) for x in r] == [set(r.batch_indices(s).tolist()) for s in range(5)]


def test_too_few_images_for_every_rank_is_a_config_error():
    dm = HubDataModule(name="unused", resolution=4, channels=1, batch_size=4, flip=False)
    dm.images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)  # enough for one device, not for two
    dm.trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", logger=False)
    assert dm.trainer.world_size == 2
    with pytest.raises(ConfigError, match=r"data.batch_size=4 .*data.batch_size<=3"):
        dm.train_dataloader()


def asymmetric(n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8)


def test_batch_becomes_float_in_range_only_after_transfer():
    batch = asymmetric(64)
    batch[0] = 0
    batch[1] = 255
    dm = HubDataModule(name="unused", resolution=4, channels=3, batch_size=64, flip=False)
    x = dm.on_after_batch_transfer(batch, 0)
    assert batch.dtype == torch.uint8  # the loader's batch is untouched
    assert x.dtype == torch.float32 and x.min() == -1 and x.max() == 1
    assert (x[0] == -1).all() and (x[1] == 1).all()
    assert torch.equal(x, to_model_range(batch))  # no flips with flip=false


def test_flip_mirrors_some_images_horizontally_only():
    batch = asymmetric(64)
    dm = HubDataModule(name="unused", resolution=4, channels=3, batch_size=64, flip=True)
    x = dm.on_after_batch_transfer(batch, 0)
    plain = to_model_range(batch)
    flipped = [bool(torch.equal(a, b.flip(-1))) for a, b in zip(x, plain, strict=True)]
    kept = [bool(torch.equal(a, b)) for a, b in zip(x, plain, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))  # each image is itself or its mirror image
    assert 10 < sum(flipped) < 54  # about half, never all or none
    assert torch.equal(dm.on_after_batch_transfer(batch, 0), x)  # the same flips for the same (seed, step)


def test_hub_check_is_bounded_even_when_the_resolver_hangs(monkeypatch):
    """A hanging DNS lookup is not bounded by the socket timeout: the check must give up on its own."""
    import socket
    import time

    from diffexp import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: time.sleep(30))  # a resolver that hangs
    start = time.perf_counter()
    assert hub.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 5


def test_no_two_seed_epoch_pairs_share_a_data_order():
    images = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1)
    orders = {}
    for seed in range(8):
        batches = StepBatches(images, 8, seed, step=lambda: 0)
        for epoch in range(8):
            orders[(seed, epoch)] = tuple(torch.cat([batches.batch_indices(epoch * 8 + k) for k in range(8)]).tolist())
    assert len(set(orders.values())) == len(orders) == 64  # seed s's epoch e is never seed s+1's epoch e-1


def tagged(n: int) -> torch.Tensor:
    """n distinct 2x2 images whose pixels spell their index, so a batch says which images it holds."""
    i = torch.arange(n)
    return torch.stack([i // 256, i % 256, i // 256, i % 256], 1).to(torch.uint8).view(n, 1, 2, 2)


def indices_of(batch: torch.Tensor) -> list[int]:
    flat = batch.view(len(batch), -1).long()
    return (flat[:, 0] * 256 + flat[:, 1]).tolist()


class TaggedDigits(DigitsDataModule):
    """The digits' own split, over images that name their index."""

    def load_split(self):
        images, held = super().load_split()
        return tagged(len(images)), held


def test_training_batches_never_hold_a_heldout_image():
    _, held = digits_split(1797)
    for seed in (0, 1, 2):
        dm = TaggedDigits(resolution=16, channels=1, batch_size=64, flip=False, seed=seed)
        dm.prepare()
        assert sorted(indices_of(dm.heldout)) == sorted(held.tolist()) and len(dm.images) == 1797 - 360
        loader = dm.train_dataloader()  # what the trainer iterates, here from step 0 of each of six epochs
        seen, per_epoch = set(), len(loader)
        for epoch in range(6):
            loader.step = lambda e=epoch, n=per_epoch: e * n
            for batch in loader:
                seen.update(indices_of(batch))
        assert not seen & set(held.tolist()) and len(seen) > 1400  # training images only, nearly all of them
    # and the real digits: the training images are exactly the split's train part
    real = DigitsDataModule(resolution=16, channels=1, batch_size=64, flip=False)
    assert torch.equal(real.prepare(), digits_images(16)[real.train_index])
    assert torch.equal(real.heldout, digits_images(16)[held])


@pytest.mark.parametrize("holdout, expected", [(0.1, 50), (0.2, 100), (30, 30), (0, 0)])
def test_holdout_count_or_fraction_of_hub_data(holdout, expected):
    from diffexp.identity import hash_split

    keys = [f"image {i}" for i in range(500)]
    train, held = hash_split(keys, holdout)
    assert not set(train.tolist()) & set(held.tolist()) and len(train) + len(held) == 500
    if holdout >= 1 or holdout == 0:
        assert len(held) == expected  # a count is exact
    else:
        assert abs(len(held) - expected) < 4 * expected**0.5  # a fraction: each image by its hash, about that share
    assert torch.equal(hash_split(keys, holdout)[1], held)  # fixed by the data alone


@pytest.mark.parametrize("bad", [-1, 2.5, 24])
def test_bad_holdout_is_one_line(tmp_path, bad):
    local = save_hub_copy(tmp_path / "ds", n=24)
    with pytest.raises(ConfigError, match=r"data\.holdout=") as e:
        HubDataModule(name=str(local), resolution=8, channels=3, batch_size=2, flip=False, holdout=bad).prepare()
    assert "\n" not in str(e.value)
