"""Scoring against images no model trained on: the held-out reference, the real-data floor, memorisation.

`Reference.build` takes a dataset's training and held-out images (`ImageDataModule.prepare`), computes the feature
net's features of the held-out reference set and of the training images once (cached on disk, named by the
images' hash and the net's checksum), and calibrates the memorisation threshold on the held-out images. Its `score`
turns sample sets from several sampling seeds into one record (metrics.json `eval`, the evaluate tables).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from diffexp.errors import ConfigError
from diffexp.features import PIXEL_SPACE, load_feature_net, pixel_space
from diffexp.files import atomic_write_text, write_atomic
from diffexp.metrics import (
    MEMORISED_FACTOR,
    fd_refusal,
    fid,
    kid,
    memorisation_threshold,
    nearest,
    precision_recall,
    reference_indices,
    score,
)

log = logging.getLogger("diffexp.evaluate")
FLOOR_TRAIN_MAX = 10_000  # training images whose features are cached for the floor (the floor's largest count)


@dataclass
class Reference:
    """What evaluation scores samples against (see the module docstring)."""

    real: Tensor  # feature-net features of the held-out reference images `[n_real, D]`
    train_feats: Tensor  # feature-net features of training images (a fixed seed-0 subset), for the floor
    train_images: Tensor  # every training image, uint8 (memorisation: the nearest one, shown beside a sample)
    threshold: float  # memorisation: a sample nearer than this to a training image (pixel space) is flagged
    memorised_heldout: float  # the share of held-out images the same rule flags
    net: object
    cache: Path
    kid_subset_size: int = 100
    floors: dict = field(default_factory=dict)
    train_pixels: Tensor | None = None  # the training images in the memorisation space
    data_check: str | None = None  # how the data compares with the run's recorded held-out set (diffexp.identity)
    flips: bool = False  # the data trains with horizontal flips: a mirrored copy of a training image is a copy too

    @classmethod
    def build(
        cls,
        train: Tensor,
        heldout: Tensor,
        net,
        key: str,
        cache_dir: Path,
        reference_size: int | None = None,
        kid_subset_size: int = 100,
        flips: bool = False,
    ) -> Reference:
        """The reference of one dataset and feature net (features cached on disk).

        Args:
            train: the training images, uint8 `[N, C, H, W]`.
            heldout: the held-out images, uint8.
            net: a feature net from `diffexp.features.load_feature_net` (`features`, `name`, `checksum`).
            key: names the dataset in the cache file name, e.g. `digits` or a Hub name.
            cache_dir: where the cache files go.
            reference_size: held-out images in the reference set (the first of a seed-0 permutation); None = all.
            kid_subset_size: KID subset size, for the floor as for the samples.
            flips: the data trains with horizontal flips: memorisation compares against mirrored training images too.
        """
        if len(heldout) < 4:
            raise ConfigError(
                f"the data holds out {len(heldout)} images, too few to score against (at least 4): raise "
                f"data.holdout (e.g. 0.1), or use eval=none"
            )
        chosen = heldout[reference_indices(len(heldout), reference_size or len(heldout))].cpu().contiguous()
        floor_train = train[reference_indices(len(train), FLOOR_TRAIN_MAX)].cpu().contiguous()
        digest = hashlib.sha256(chosen.numpy().tobytes() + floor_train.numpy().tobytes()).hexdigest()[:12]
        safe_key = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "data"
        name = f"{safe_key}-{chosen.shape[-1]}px-held{len(chosen)}-train{len(floor_train)}-{net.name}-"
        path = Path(cache_dir).expanduser() / f"{name}{str(net.checksum)[:12]}-{digest}.safetensors"
        real, train_feats = _cached_features(path, net, {"real": chosen, "train": floor_train}, key)
        train_pixels = pixel_space(train.cpu(), shifts=False).squeeze(1)
        held_dist, _ = nearest(memorisation_query(heldout.cpu(), flips), train_pixels)
        threshold = memorisation_threshold(held_dist)
        return cls(
            real,
            train_feats,
            train.cpu(),
            threshold,
            float((held_dist < threshold).double().mean()),
            net,
            path,
            kid_subset_size,
            train_pixels=train_pixels,
            flips=flips,
        )

    @classmethod
    def of_data(cls, datamodule, data, net, eval_cfg) -> Reference:
        """The reference of a prepared datamodule built from the `data` config, with the `eval` config's cache folder,
        reference size and KID subset size; the dataset's name (or path, or class) keys the cache."""
        key = str(data.get("name") or data.get("path") or data["_target_"].rsplit(".", 1)[-1])
        return cls.build(
            datamodule.images,
            datamodule.heldout,
            net,
            key,
            Path(eval_cfg.cache_dir),
            eval_cfg.reference_size,
            eval_cfg.kid_subset_size,
            flips=bool(data.get("flip")),
        )

    def floor(self, n: int) -> dict:
        """FID, KID, precision and recall of `n` training images against the reference (what a model that draws
        real images would score at that sample count); computed once per count and cached beside the features."""
        n = min(n, len(self.train_feats))
        key = f"{n}-kid{self.kid_subset_size}"  # KID's figure depends on its subset size too
        if key in self.floors:
            return self.floors[key]
        sidecar = self.cache.with_suffix(".floor.json")
        saved = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        if key not in saved:
            train = self.train_feats[:n]
            p, r = precision_recall(self.real, train)
            fd = self.fd_refusal(n) is None
            figures = {"fid": fid(self.real, train) if fd else None}
            figures["kid"] = kid(self.real, train, self.kid_subset_size)[0]
            saved[key] = figures | {"precision": p, "recall": r, "n": n}
            atomic_write_text(sidecar, json.dumps(saved, indent=1))
        self.floors[key] = saved[key]
        return self.floors[key]

    def fd_refusal(self, n: int) -> str | None:
        """Why FD is refused at `n` samples: for every feature net, unless there are more reference images and more
        samples than its feature width (`diffexp.metrics.fd_refusal`)."""
        return fd_refusal(len(self.real), n, self.real.shape[1], self.net.name)

    def memorised(self, samples: Tensor) -> tuple[Tensor, Tensor]:
        """Each sample's distance to its nearest training image in the memorisation space, and that image's index."""
        if self.train_pixels is None:
            self.train_pixels = pixel_space(self.train_images, shifts=False).squeeze(1)
        return nearest(memorisation_query(samples.cpu(), self.flips), self.train_pixels)

    def score(self, image_sets: list[Tensor], seed: int = 0) -> tuple[dict, tuple[Tensor, Tensor, Tensor]]:
        """The record of samples from one or more sampling seeds (uint8 `[n, C, H, W]` each): metrics with their
        intervals (`diffexp.metrics.score`), the floor at the same count, and the memorisation figures.

        Returns the record and, for `plot_nearest`, the samples of the first seed with their nearest-image distances
        and indices.
        """
        feats, probs = zip(*(self.net.features_and_probs(images) for images in image_sets), strict=True)
        refused = self.fd_refusal(len(image_sets[0]))
        figures = score(
            self.real,
            list(feats),
            self.net.name,
            self.kid_subset_size,
            seed=seed,
            fake_probs=None if probs[0] is None else list(probs),
            classes=getattr(self.net, "classes", None),
            fd=refused is None,
        )
        if refused:
            figures["fid_refused"] = refused
        if getattr(self.net, "source", None):  # eval=dinov2: which model (a Hub id or a folder)
            figures["feature_model"] = self.net.source
        dist, index = self.memorised(torch.cat(list(image_sets)))
        if self.data_check is not None:
            figures["data_check"] = self.data_check
        figures |= {
            "reference": "heldout",
            "floor": self.floor(len(image_sets[0])),
            "memorised": float((dist < self.threshold).double().mean()),
            "memorised_heldout": self.memorised_heldout,
            "memorised_space": PIXEL_SPACE + (" and mirrored" if self.flips else ""),
            "memorised_threshold": self.threshold,
            "memorised_factor": MEMORISED_FACTOR,
        }
        first = len(image_sets[0])
        return figures, (image_sets[0], dist[:first], index[:first])


def memorisation_query(images: Tensor, flips: bool) -> Tensor:
    """Images in the memorisation space (`pixel_space`, with its shifts), and mirrored too where the data trains
    with flips: a sample nearest to a flipped training image is as much a copy as one nearest to the image."""
    query = pixel_space(images)
    return torch.cat([query, pixel_space(images.flip(-1))], 1) if flips else query


def evaluation_reference(
    eval_cfg, data_cfg, datamodule, n: int, *, setting: str = "eval.n_samples", monitored: bool = False, device=None
) -> Reference:
    """The one evaluation set-up, shared by training and both `diffexp-evaluate` paths: `eval_cfg`'s feature net
    (on `device`), the sample count `n` (given by `setting`) checked against its width before any sampling, and
    the held-out reference of the prepared `datamodule` (built from `data_cfg`).

    Every net (digits, dinov2, inception) refuses FD unless the reference images and the samples both outnumber its
    feature width, and KID ranks; training goes on, but with `monitored`, training's `eval.monitor=fid` is then
    refused (the best checkpoint would be chosen by a figure that is not computed).
    """
    if eval_cfg.seeds < 1:
        raise ConfigError(f"eval.seeds={eval_cfg.seeds}: sample at least 1 seed (5 give FID an interval)")
    net = load_feature_net(eval_cfg.net, data_cfg["channels"], data_cfg["resolution"], eval_cfg.get("model"))
    if device is not None:
        net = net.to(device)
    held = 0 if datamodule.heldout is None else len(datamodule.heldout)
    refused = fd_refusal(min(eval_cfg.reference_size or held, held), n, net.num_features, eval_cfg.net)
    if refused and monitored and eval_cfg.monitor == "fid":
        raise ConfigError(f"eval.monitor=fid: {refused}; set eval.monitor=kid")
    if refused:
        log.warning("%s: %s", setting, refused)
    return Reference.of_data(datamodule, data_cfg, net, eval_cfg)


def _cached_features(path: Path, net, images: dict[str, Tensor], key: str) -> tuple[Tensor, ...]:
    from safetensors.torch import load_file, save_file

    if path.exists():
        saved = load_file(str(path))
        return tuple(saved[k] for k in images)
    feats = {k: net.features(v).contiguous() for k, v in images.items()}
    meta = {"key": key, "feature_net": net.name, "reference": "heldout"}
    write_atomic(path, lambda tmp: save_file(feats, str(tmp), metadata=meta))  # parallel sweep jobs share the cache
    return tuple(feats.values())
