"""Training images as one uint8 tensor; batches indexed by step.

Every dataset is decoded, resized and cropped once into a uint8 tensor `[N, C, H, W]` (Hub and folder data
through `datasets.map`, whose fingerprint caches the result on disk). Scaling to [-1, 1] and flips happen on
tensors after the batch reaches the device, so no PIL work runs per epoch. The batch drawn at global step `s`
depends only on `(seed, s)`: a resumed run sees exactly the batches the interrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from diffexp.errors import ConfigError
from diffexp.hub import cached_tensor, hub_reachable
from diffexp.identity import fingerprint, hash_split, hub_revision, image_keys

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
DIGITS_SPLIT_SEED = 0
DIGITS_HELDOUT = 360  # of the 1797 digits: never trained on, by the UNet or the digits net; the eval reference
DEFAULT_HOLDOUT = 0.1  # share held out of Hub / folder data that has no test split of its own


def digits_images(resolution: int = 16) -> torch.Tensor:
    """scikit-learn's 1797 8x8 digits, bilinearly upscaled, as uint8 `[1797, 1, resolution, resolution]`."""
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().images).float().div(16.0).unsqueeze(1)
    if resolution != 8:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


def digits_labels() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.from_numpy(load_digits().target)


def digits_split(n: int = 1797) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed (train, held-out) index split of the digits: a seed-0 permutation, the last 360 held out.

    The shipped digits net was trained on the same split, so no held-out image was seen by the net or the UNet.
    """
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(DIGITS_SPLIT_SEED))
    return perm[: n - DIGITS_HELDOUT], perm[n - DIGITS_HELDOUT :]


def holdout_count(n: int, holdout: float) -> int:
    """How many of `n` images `data.holdout` keeps out: a count (>= 1, whole) or a fraction in (0, 1); 0 = none."""
    if holdout < 0 or (holdout >= 1 and holdout != int(holdout)):
        raise ConfigError(
            f"data.holdout={holdout}: give a count of images (a whole number), a fraction in (0, 1), or 0 for none"
        )
    k = int(holdout) if holdout >= 1 or holdout == 0 else max(1, round(holdout * n))
    if k >= n:
        raise ConfigError(
            f"data.holdout={holdout} holds out {k} of the {n} images, leaving none to train on: lower data.holdout"
        )
    return k


def mixed_seed(*parts: int) -> int:
    """One 63-bit seed from several integers, distinct for distinct tuples (unlike `seed + epoch`, where seed s's
    epoch e is seed s+1's epoch e-1)."""
    hi, lo = np.random.SeedSequence([int(p) for p in parts]).generate_state(2)
    return (int(hi) << 31) ^ int(lo)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255]."""
    return x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


class StepBatches:
    """An epoch of batches of `images`, where the batch of global step `s` depends only on `(seed, s)`.

    Iteration starts at the trainer's current global step, so resuming mid-epoch continues the same order.
    Under DDP each rank takes its own slice of the same permutation.
    """

    def __init__(
        self,
        images: torch.Tensor,
        batch_size: int,
        seed: int,
        step: Callable[[], int],
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.images, self.batch_size, self.seed, self.step = images, batch_size, seed, step
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = len(images) // (batch_size * world_size)
        self._perm: tuple[int, torch.Tensor | None] = (-1, None)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def batch_indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.batches_per_epoch)
        if self._perm[0] != epoch:  # one permutation an epoch, not one a step
            self._perm = (
                epoch,
                torch.randperm(len(self.images), generator=torch.Generator().manual_seed(mixed_seed(self.seed, epoch))),
            )
        perm = self._perm[1]
        start = (k * self.world_size + self.rank) * self.batch_size
        return perm[start : start + self.batch_size]

    def __iter__(self) -> Iterator[torch.Tensor]:
        step = self.step()
        for k in range(step % self.batches_per_epoch, self.batches_per_epoch):
            yield self.images[self.batch_indices(step + k - step % self.batches_per_epoch).to(self.images.device)]


class ImageDataModule(pl.LightningDataModule):
    """Holds the uint8 image tensor; subclasses say how to load it.

    Args:
        resolution: side of the square training images, in pixels.
        channels: 1 (greyscale) or 3 (RGB).
        batch_size: images per step and device.
        flip: random horizontal flips, applied on the device.
        seed: seeds the data order (with the step).
        on_device: keep the whole uint8 dataset on the training device (GPU) instead of copying each batch.
    """

    def __init__(
        self, resolution: int, channels: int, batch_size: int, flip: bool, seed: int = 0, on_device: bool = False
    ) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ConfigError(f"data.channels={channels}: use 1 (greyscale) or 3 (RGB)")
        if resolution < 4:
            raise ConfigError(f"data.resolution={resolution}: use at least 4 pixels")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: use a positive batch size")
        self.resolution, self.channels, self.batch_size, self.flip = resolution, channels, batch_size, flip
        self.seed, self.on_device = seed, on_device
        self.images: torch.Tensor | None = None  # the training images: all that training ever reads
        self.heldout: torch.Tensor | None = None  # the held-out images: the evaluation reference, never trained on
        self.keys: list[str] | None = None  # each image's stable key (`diffexp.identity`), set by `load_split`
        self.revision: str | None = None  # the dataset's commit where the loader knows it (Hub data)

    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every image of the dataset (uint8 `[N, C, H, W]`) and the indices of the held-out ones among them."""
        raise NotImplementedError

    def prepare(self) -> torch.Tensor:
        """Loads the images once, splits off the held-out ones and checks the rest against the batch size; returns
        the training images. Safe to call before training."""
        if self.images is None:
            images, held = self.load_split()
            keep = torch.ones(len(images), dtype=torch.bool)
            keep[held] = False
            train = images[keep]
            if len(train) < self.batch_size:
                raise ConfigError(
                    f"data.batch_size={self.batch_size} is larger than the training set ({len(train)} images, "
                    f"{len(held)} held out): use data.batch_size<={len(train)}"
                )
            self.images, self.heldout = train, images[held]
            self.train_index, self.heldout_index = keep.nonzero().flatten(), held
        return self.images

    def fingerprint(self) -> dict:
        """The held-out set's identity (`diffexp.identity.fingerprint`): count and a hash of its members' keys."""
        self.prepare()
        keys = self.keys or [str(i) for i in range(len(self.train_index) + len(self.heldout_index))]
        return fingerprint([keys[i] for i in self.heldout_index.tolist()], self.revision)

    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        if self.on_device and self.trainer is not None:  # a few MB of uint8: batches are then indexed on the GPU
            self.images = self.images.to(self.trainer.strategy.root_device)

    def train_dataloader(self) -> StepBatches:
        trainer = self.trainer
        images = self.prepare()
        world_size = trainer.world_size if trainer is not None else 1
        if len(images) < self.batch_size * world_size:  # else an epoch holds no batch at all
            raise ConfigError(
                f"data.batch_size={self.batch_size} on {world_size} devices takes {self.batch_size * world_size} "
                f"images a step, more than the dataset's {len(images)}: "
                f"use data.batch_size<={len(images) // world_size}"
            )
        return StepBatches(
            images,
            self.batch_size,
            self.seed,
            step=lambda: trainer.global_step if trainer is not None else 0,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=world_size,
        )

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        x = to_model_range(batch)
        if self.flip:
            step = self.trainer.global_step if self.trainer is not None else 0
            g = torch.Generator().manual_seed(mixed_seed(self.seed, step, 1))  # the 1 sets flips apart from order
            mask = (torch.rand(len(x), generator=g) < 0.5).to(x.device)
            x = torch.where(mask[:, None, None, None], x.flip(-1), x)
        return x


class DigitsDataModule(ImageDataModule):
    """scikit-learn's digits: 1797 images shipped with the package, no network."""

    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.channels != 1:
            raise ConfigError(f"data.channels={self.channels}: the digits are greyscale, use data.channels=1")
        images = digits_images(self.resolution)
        self.keys = [f"digits:{i}" for i in range(len(images))]  # the index: the split itself stays digits_split's
        return images, digits_split(len(images))[1]


class HubDataModule(ImageDataModule):
    """Any Hugging Face image dataset by Hub name, or a local copy of one.

    Args:
        name: a Hub dataset (e.g. `huggan/smithsonian_butterflies_subset`), or a local folder holding a
            copy: `Dataset.save_to_disk` output, or files `load_dataset` reads (parquet, an image folder).
        image_column: the column holding the images.
        split: which split to train on.
        holdout: images kept out of training to score against: a count, a fraction, or 0 for none; None = the
            dataset's `test` split where it has one (and trains on another), else `DEFAULT_HOLDOUT` of `split`.
            Membership is per image, by the hash of its bytes (`diffexp.identity`).
        revision: the Hub dataset's branch, tag or commit (None = main); the commit loaded is recorded with the
            held-out fingerprint where the Hugging Face cache says which it is.
    """

    def __init__(
        self,
        name: str,
        image_column: str = "image",
        split: str = "train",
        holdout: float | None = None,
        revision: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if holdout is not None:
            holdout_count(10**9, holdout)  # a malformed value fails here, before any loading
        self.name, self.image_column, self.split, self.holdout = name, image_column, split, holdout
        self.requested_revision = revision

    def _splits(self) -> tuple:
        """(the training split, the test split or None), as `datasets` objects."""
        import datasets

        local = Path(self.name).expanduser()
        if local.exists():
            if (local / "state.json").exists() or (local / "dataset_dict.json").exists():
                ds = datasets.load_from_disk(str(local))
            else:
                ds = datasets.load_dataset(str(local))
        else:
            if not hub_reachable():
                raise ConfigError(
                    f"data.name={self.name!r}: the Hugging Face Hub cannot be reached and this is no local "
                    f"folder: download the dataset where there is network (Dataset.save_to_disk) and set "
                    f"data.name to that folder, or use data=imagefolder"
                )
            ds = datasets.load_dataset(self.name, revision=self.requested_revision)
            self.revision = hub_revision(self.name, self.requested_revision)
        if not isinstance(ds, datasets.DatasetDict):
            return ds, None
        if self.split not in ds:
            raise ConfigError(
                f"data.split={self.split!r} is not a split of data.name={self.name!r} "
                f"(splits: {sorted(ds)}): set data.split to one of them"
            )
        return ds[self.split], ds["test"] if "test" in ds and self.split != "test" else None

    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        train, test = self._splits()
        what = f"data.name={self.name!r}"
        images, self.keys, held = _with_holdout(train, test, self.holdout, self.image_column, self, what)
        return images, held


def _with_holdout(train, test, holdout, column: str, dm: ImageDataModule, what: str):
    """(all images, their keys, held-out indices): the test split appended and held out where there is one and
    `holdout` is None; else `holdout` (default `DEFAULT_HOLDOUT`) of `train`, chosen per image by its key's hash
    (`diffexp.identity.hash_split`), so adding images never moves the earlier held-out ones."""
    images = cached_tensor(train, column, dm.resolution, dm.channels, what)
    keys = image_keys(train, column)
    if holdout is None and test is not None:
        held = cached_tensor(test, column, dm.resolution, dm.channels, f"{what} (test split)")
        index = torch.arange(len(images), len(images) + len(held))
        return torch.cat([images, held]), keys + image_keys(test, column), index
    holdout = DEFAULT_HOLDOUT if holdout is None else holdout
    holdout_count(len(images), holdout)
    return images, keys, hash_split(keys, holdout)[1]


def _visible(path: Path, root: Path) -> bool:
    """Whether `datasets`' imagefolder reads this file: it skips names starting with "." or "__" at any depth."""
    return not any(part.startswith((".", "__")) for part in path.relative_to(root).parts)


class ImageFolderDataModule(ImageDataModule):
    """A local folder of images (sub-folders included), through `datasets`' imagefolder builder.

    Args:
        path: the folder; `train/` and `test/` sub-folders are read as those splits (the test split held out).
        holdout: as `HubDataModule`'s.
    """

    def __init__(self, path: str, holdout: float | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if holdout is not None:
            holdout_count(10**9, holdout)
        self.path, self.holdout = path, holdout

    def load_split(self) -> tuple[torch.Tensor, torch.Tensor]:
        import datasets

        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"data.path={self.path!r} is not a folder: point data.path at a folder of images")
        images = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not any(_visible(p, folder) for p in images):
            raise ConfigError(
                f"data.path={self.path!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}; files and folders "
                f"named .* or __* are skipped): add images or point data.path elsewhere"
            )
        ds = datasets.load_dataset("imagefolder", data_dir=str(folder))
        what = f"data.path={self.path!r}"
        images, self.keys, held = _with_holdout(ds["train"], ds.get("test"), self.holdout, "image", self, what)
        return images, held
