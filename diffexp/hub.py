"""Images from the Hugging Face Hub or a local copy of a dataset: whether the Hub answers, and rows decoded into
the uint8 tensors training uses (converted, resized, centre-cropped), cached on disk by `datasets`."""

from __future__ import annotations

import os
import socket
import threading

import numpy as np
import torch

from diffexp.errors import ConfigError


def preprocess(batch: dict, image_column: str, resolution: int, mode: str) -> dict:
    """PIL images -> uint8 CHW arrays: convert, resize the short side, centre-crop."""
    from PIL import Image

    out = []
    for img in batch[image_column]:
        img = img.convert(mode)
        w, h = img.size
        scale = resolution / min(w, h)
        img = img.resize((max(resolution, round(w * scale)), max(resolution, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        img = img.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(img, dtype=np.uint8)
        out.append(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))
    return {"pixels": out}


def cached_tensor(ds, image_column: str, resolution: int, channels: int, what: str) -> torch.Tensor:
    """Runs `preprocess` through `datasets.map`, so the result is cached on disk by its fingerprint."""
    import datasets

    if image_column not in ds.column_names:
        raise ConfigError(
            f"data.image_column={image_column!r} is not a column of {what} (columns: {ds.column_names}): "
            f"set data.image_column to the one holding the images"
        )
    features = datasets.Features({"pixels": datasets.Array3D((channels, resolution, resolution), "uint8")})
    try:
        ds = ds.map(
            preprocess,
            batched=True,
            batch_size=64,
            remove_columns=ds.column_names,
            features=features,
            fn_kwargs={"image_column": image_column, "resolution": resolution, "mode": "L" if channels == 1 else "RGB"},
            desc=f"Decoding {what} at {resolution}px (once; cached)",
        )
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"{what}: an image could not be decoded ({e}); remove or fix that file") from e
    # dtype: datasets' numpy formatter widens integer arrays to int64 unless told otherwise (8x the memory).
    return torch.from_numpy(ds.with_format("numpy", dtype=np.uint8)[:]["pixels"])


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers within `timeout` seconds, DNS lookup included (the socket timeout alone does
    not bound a hanging resolver, so the check runs in a daemon thread that is abandoned when late)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])
