"""The training recipe of the digits feature net shipped in `diffexp/assets/` (`DigitsNet`, `diffexp.features`).

`python -m diffexp.digits_net` rebuilds its weights and manifest: deterministic, about a minute on 2 cores. It
trains on the digits' fixed training split only, so the held-out digits every figure is scored against stay unseen.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from diffexp.data import digits_images, digits_labels, to_model_range
from diffexp.features import HELDOUT, MANIFEST, SPLIT_SEED, WEIGHTS, DigitsNet, heldout_split
from diffexp.runtime import set_threads


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Small random shifts (±1.5 px), scales (±12%) and rotations (±10°), so the net does not key on the exact
    upscaled pixels of the training set; the background stays black."""
    n = len(x)
    scale = 1 + (torch.rand(n, generator=g) * 2 - 1) * 0.12
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(10)
    shift = (torch.rand(n, 2, generator=g) * 2 - 1) * (1.5 * 2 / x.shape[-1])
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, align_corners=False, padding_mode="zeros") - 1


def _junk(n: int, side: int, g: torch.Generator) -> torch.Tensor:
    """Non-digit images in [-1, 1] (pixel noise, smooth random blobs, flat grey), trained as an 11th class.

    A digits-only classifier maps such images next to some digit (noise lands on the 8s), which makes
    early, noisy samples look precise; with this class they get features of their own.
    """
    kind = torch.randint(0, 3, (n,), generator=g)
    pixel = torch.rand(n, 1, side, side, generator=g)
    coarse = torch.rand(n, 1, side // 4, side // 4, generator=g)
    blobs = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    flat = torch.rand(n, 1, 1, 1, generator=g).expand(n, 1, side, side)
    x = torch.where((kind == 0)[:, None, None, None], pixel, torch.where((kind == 1)[:, None, None, None], blobs, flat))
    return x * 2 - 1


def accuracy(net: DigitsNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    return (net.probs(images).argmax(-1) == labels).float().mean().item()


def train_digits_net(
    epochs: int = 40, batch_size: int = 64, lr: float = 3e-3, seed: int = 0, threads: int = 2, **settings
) -> tuple[DigitsNet, dict]:
    """Trains a DigitsNet on the fixed train split; returns it and a record of how (held-out accuracy included).

    Args:
        epochs: passes over the 1437 training digits.
        batch_size: images per step.
        lr: peak AdamW learning rate (cosine decay to 0).
        seed: seeds the init, the batch order and the augmentation.
        threads: torch CPU threads (the result depends on it in the last bits).
        settings: DigitsNet architecture arguments.
    """
    set_threads(threads)
    torch.manual_seed(seed)
    images, labels = digits_images(16), digits_labels()
    train_idx, held_idx = heldout_split(len(images))
    x, y = to_model_range(images[train_idx]), labels[train_idx]
    net = DigitsNet(**settings)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    start = time.time()
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for k in range(len(x) // batch_size):
            idx = perm[k * batch_size : (k + 1) * batch_size]
            junk = _junk(batch_size // 8, x.shape[-1], g)
            _, logits = net(torch.cat([_augment(x[idx], g), junk]))
            target = torch.cat([y[idx], torch.full((len(junk),), 10)])
            loss = F.cross_entropy(logits, target, label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    record = {
        "heldout_accuracy": round(accuracy(net, images[held_idx], labels[held_idx]), 4),
        "train_accuracy": round(accuracy(net, images[train_idx], labels[train_idx]), 4),
        "split": {
            "rule": f"torch.randperm(1797, generator=torch.Generator().manual_seed({SPLIT_SEED})): "
            f"first {len(train_idx)} train, last {HELDOUT} held out",
            "data": "sklearn load_digits via diffexp.data.digits_images(16)",
            "n_train": len(train_idx),
            "n_heldout": HELDOUT,
        },
        "architecture": net.settings(),
        "training": {
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "threads": threads,
            "augmentation": "shift ±1.5px, scale ±12%, rotation ±10°",
            "junk_class": "1 non-digit image (pixel noise, 4x4 blobs, flat grey) per 8 digits, as class 10",
            "seconds": round(time.time() - start, 1),
            "torch": torch.__version__,
        },
        "date": datetime.date.today().isoformat(),
    }
    return net, record


def save_digits_net(net: DigitsNet, record: dict, weights: Path = WEIGHTS, manifest: Path = MANIFEST) -> None:
    from safetensors.torch import save_file

    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(weights), metadata={"architecture": json.dumps(net.settings())})
    weights.chmod(0o644)  # safetensors writes 0600; the file ships in the package
    record = {"sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "weights": weights.name, **record}
    manifest.write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    net, record = train_digits_net()
    save_digits_net(net, record)
    print(
        f"held-out accuracy {record['heldout_accuracy']:.4f} (train {record['train_accuracy']:.4f}, "
        f"{record['training']['seconds']} s); wrote {WEIGHTS} and {MANIFEST}"
    )


if __name__ == "__main__":
    main()
