"""The held-out set's identity: which images are held out, decided per image, and a fingerprint of the set.

Hub and folder data decide membership per image from a stable key, the SHA-256 of the image file's bytes (so a
renamed or re-ordered file keeps its place, and two copies of one image fall on the same side): with `data.holdout`
a fraction f, an image is held out when its key's hash, read as a number in [0, 1), is below f; with a count k, the k
images of smallest hash. Adding or removing images then moves only those images (with a count, at most as many
others cross the cut). The digits keep their seed-0 split (the shipped digits net was trained on it); their keys are
the image indices.

The fingerprint (count and a hash of the sorted member keys) goes into `metrics.json` and W&B; `diffexp-evaluate`,
`resume=` and the denoising error compare it with the data they load now (`check_data`).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch

from diffexp.errors import ConfigError

NO_FINGERPRINT = "no fingerprint (a run made before held-out fingerprints were recorded)"


def unit_hash(key: str) -> float:
    """A key's position in [0, 1): the first 52 bits of its SHA-256 (fixed across machines and Python versions)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:13], 16) / 16**13


def hash_split(keys: list[str], holdout: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices of images with these keys: a fraction holds out every key hashed below it, a count
    the `holdout` smallest hashes (ties broken by the key), 0 none. The caller checks `holdout`'s form
    (`diffexp.data.holdout_count`)."""
    hashes = [unit_hash(k) for k in keys]
    if holdout == 0:
        held = []
    elif holdout < 1:
        held = [i for i, h in enumerate(hashes) if h < holdout]
    else:
        held = sorted(sorted(range(len(keys)), key=lambda i: (hashes[i], keys[i]))[: int(holdout)])
    inside = torch.zeros(len(keys), dtype=torch.bool)
    inside[held] = True
    return (~inside).nonzero().flatten(), inside.nonzero().flatten()


def fingerprint(keys: list[str], revision: str | None = None) -> dict:
    """The held-out set's fingerprint: its size and a hash of its sorted member keys (and the dataset revision it was
    loaded at, where known; recorded, not compared)."""
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    return {"count": len(keys), "hash": digest, "revision": revision}


def describe(fp: dict | None) -> str:
    """A fingerprint in a few words, for messages and tables."""
    if not fp:
        return "none"
    return f"{fp['count']} images #{fp['hash']}"


def same(a: dict, b: dict) -> bool:
    return a.get("count") == b.get("count") and a.get("hash") == b.get("hash")


def check_data(recorded: dict | None, current: dict, allow: bool, what: str) -> str:
    """Compares a run's recorded held-out fingerprint with the data loaded now; refuses a change in one line unless
    `allow` (`allow_changed_data=true`). Returns the mark every figure then carries: `same`, `NO_FINGERPRINT`, or
    `changed: ...`."""
    if not recorded:
        return NO_FINGERPRINT
    if same(recorded, current):
        return "same"
    line = f"the held-out set changed since the run (recorded {describe(recorded)}, now {describe(current)})"
    if not allow:
        raise ConfigError(
            f"{what}: {line}, so its figures would score other images: restore the run's data, or set "
            f"allow_changed_data=true to score anyway (every figure is then marked)"
        )
    return f"changed: {line}"


def resumed_fingerprint(recorded: dict | None, current: dict, allow: bool, run_dir: Path) -> dict:
    """What a resumed run records: the data's fingerprint now, refused where it changed (`check_data`); with
    `allow_changed_data=true` the change is kept in it (`changed_from`)."""
    mark = check_data(recorded, current, allow, f"resume={run_dir}")
    return current | ({"changed_from": describe(recorded)} if mark.startswith("changed") else {})


def image_keys(ds, column: str) -> list[str]:
    """The SHA-256 of each row's image file bytes (read from its path where the dataset holds none), in row order.
    Read undecoded in batches: hashing costs far less than decoding, so it is not cached."""
    import datasets

    raw = ds.select_columns([column]).cast_column(column, datasets.Image(decode=False))
    keys = []
    for batch in raw.iter(batch_size=256):
        for item in batch[column]:
            keys.append(hashlib.sha256(item.get("bytes") or Path(item["path"]).read_bytes()).hexdigest())
    return keys


def hub_revision(name: str, revision: str | None = None) -> str | None:
    """The commit of a Hub dataset as loaded: `revision` when it is a commit already, else the commit the
    Hugging Face cache's ref points at (`refs/<revision or main>`); None where the cache does not say (a local copy,
    or a cache without refs)."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub comes with datasets
        return None
    ref = Path(os.environ.get("HF_HUB_CACHE", HF_HUB_CACHE)) / f"datasets--{name.replace('/', '--')}" / "refs"
    ref = ref / (revision or "main")
    return ref.read_text().strip() if ref.is_file() else None


def run_data_mark(run: Path, datamodule, allow: bool, what: str) -> str:
    """`check_data` of a run folder (or a pipeline folder inside one) against its data as loaded now."""
    from diffexp.record import RunRecord

    folder = Path(run).expanduser()
    record = RunRecord.read(folder)
    if record is None and (folder / "model_index.json").exists():  # a run's pipeline/ folder
        record = RunRecord.read(folder.parent)
    return check_data(record.heldout if record else None, datamodule.fingerprint(), allow, what)
