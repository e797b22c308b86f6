"""Feature nets that turn uint8 images `[N, C, H, W]` into vectors for FID, KID and precision/recall.

`digits` is a small classifier shipped with the package (so the digits get a meaningful, offline FID);
`dinov2` (`diffexp.dinov2`) scores any RGB data; `inception` is torchmetrics' InceptionV3, usable only where
torch-fidelity and its weights are installed.
Rebuild the digits weights with `python -m diffexp.features` (deterministic, about a minute on 2 cores).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.util
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffexp.data import DIGITS_HELDOUT, DIGITS_SPLIT_SEED, digits_images, digits_labels, digits_split, to_model_range
from diffexp.errors import ConfigError

ASSETS = Path(__file__).parent / "assets"
WEIGHTS = ASSETS / "digits_net.safetensors"
MANIFEST = ASSETS / "digits_net.json"

SPLIT_SEED = DIGITS_SPLIT_SEED
HELDOUT = DIGITS_HELDOUT  # of the 1797 digits, kept out of training (the net's and the UNet's): the eval reference
heldout_split = digits_split  # the (train, held-out) split the net was trained on
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # the file name torch-fidelity downloads


class DigitsNet(nn.Module):
    """CNN classifier of the 16 px greyscale digits; its penultimate layer is the FID feature space.

    Args:
        widths: channels of the two conv blocks (each two 3x3 convs, then 2x2 max-pool).
        num_features: width of the penultimate layer, the feature dimension.
        resolution: image side the net was trained at.
        channels: image channels the net was trained at.
    """

    def __init__(
        self, widths: tuple[int, int] = (24, 48), num_features: int = 64, resolution: int = 16, channels: int = 1
    ) -> None:
        super().__init__()
        self.widths, self.num_features = tuple(widths), num_features
        self.resolution, self.channels = resolution, channels
        self.name, self.checksum = "digits", "untrained"
        layers: list[nn.Module] = []
        c_in = channels
        for w in widths:
            for _ in range(2):
                layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
                c_in = w
            layers.append(nn.MaxPool2d(2))
        self.conv = nn.Sequential(*layers)
        side = resolution // 2 ** len(widths)
        self.hidden = nn.Linear(c_in * side * side, num_features)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(num_features, 11)  # the 10 digits + "not a digit" (see `_junk`)
        self.classes = 10  # digit classes; the last output (index 10) is "not a digit"

    def settings(self) -> dict:
        return {
            "widths": list(self.widths),
            "num_features": self.num_features,
            "resolution": self.resolution,
            "channels": self.channels,
        }

    def _check(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != self.channels or images.shape[-2:] != (self.resolution,) * 2:
            raise ConfigError(
                f"eval=digits scores {self.channels}-channel {self.resolution}px images, got shape "
                f"{tuple(images.shape)}: use data=digits data.resolution={self.resolution}, or eval=dinov2 / "
                f"eval=none for other data"
            )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float [-1, 1] images -> (pre-activation features, class logits)."""
        h = self.hidden(self.conv(x).flatten(1))
        return h, self.head(self.dropout(F.relu(h)))

    def _run(self, images: torch.Tensor, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        self._check(images)
        device = next(self.parameters()).device
        feats, logits = [], []
        with torch.inference_mode():
            for chunk in images.split(batch_size):
                h, out = self(to_model_range(chunk.to(device)))
                feats.append(h.float().cpu())
                logits.append(out.float().cpu())
        return torch.cat(feats), torch.cat(logits)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `[N, C, H, W]` -> float `[N, num_features]` (pre-ReLU penultimate layer, closer to Gaussian)."""
        return self._run(images)[0]

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `[N, C, H, W]` -> class probabilities `[N, 11]` from the full softmax: the 10 digits, then
        "not a digit" (dropping that logit and renormalising would make a non-digit look like a confident digit)."""
        return self.features_and_probs(images)[1]

    def features_and_probs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`features` and `probs` from one pass over the images."""
        feats, logits = self._run(images)
        return feats, logits.softmax(-1)


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
    torch.set_num_threads(threads)
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


def load_digits_net(weights: Path = WEIGHTS, manifest: Path = MANIFEST) -> DigitsNet:
    """Loads the shipped net after checking the weights' sha256 against the manifest (safetensors, no pickle)."""
    from safetensors.torch import load

    if not weights.exists() or not manifest.exists():
        raise ConfigError(
            f"eval=digits: {weights} or {manifest} is missing: reinstall diffexp or rebuild them with "
            f"`python -m diffexp.features`"
        )
    record = json.loads(manifest.read_text())
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != record["sha256"]:
        raise ConfigError(
            f"eval=digits: {weights} has sha256 {digest[:12]}…, its manifest says {record['sha256'][:12]}…: "
            f"the file is corrupt; reinstall diffexp or rebuild it with `python -m diffexp.features`"
        )
    with torch.random.fork_rng(devices=[]):  # the init it overwrites draws from the global RNG: leave training's alone
        net = DigitsNet(**record["architecture"])
    net.load_state_dict(load(data))
    net.checksum = digest
    return net.eval().requires_grad_(False)


class InceptionNet(nn.Module):
    """torchmetrics' InceptionV3 (2048-d pool features) behind the same `features()` interface."""

    def __init__(self, weights: Path) -> None:
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=["2048"], feature_extractor_weights_path=str(weights)
        )
        self.num_features, self.name, self.checksum = 2048, "inception", weights.name

    def features(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """uint8 `[N, 1 or 3, H, W]` -> `[N, 2048]`; greyscale is repeated to RGB, torch-fidelity resizes to 299."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(f"eval=inception takes 1- or 3-channel images, got shape {tuple(images.shape)}")
        device = next(self.net.parameters()).device
        out = []
        with torch.inference_mode():
            for chunk in images.split(batch_size):
                chunk = chunk.to(device=device, dtype=torch.uint8)
                if chunk.shape[1] == 1:
                    chunk = chunk.repeat(1, 3, 1, 1)
                out.append(self.net(chunk).double().cpu())
        return torch.cat(out)

    def features_and_probs(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        """`features`, and no class probabilities: this net is no classifier of the data."""
        return self.features(images), None


def pixel_space(images: torch.Tensor, shifts: bool = True) -> torch.Tensor:
    """The memorisation feature space: pixels in [0, 1] at half resolution (2x2 means), `[N, S, D]` with S = 9
    shifted copies (every shift of up to one pixel in x and y at full resolution, zero-filled) or S = 1.

    Copies of a training image stay close here under small noise (the means average it down) and one-pixel
    shifts (compared at the best shift), while the digits net's features move as far as a new writer's digit does.
    """
    x = images.float().div(255)
    if not shifts:
        return F.avg_pool2d(x, 2).flatten(1).unsqueeze(1)
    out = []
    h, w = x.shape[-2:]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            y = torch.zeros_like(x)
            y[..., max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = x[
                ..., max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
            ]
            out.append(F.avg_pool2d(y, 2).flatten(1))
    return torch.stack(out, 1)


PIXEL_SPACE = "pixels/2 (+-1 px shift)"  # the memorisation space's recorded name


def inception_weights_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS


def load_feature_net(name: str, channels: int, resolution: int, model: str | None = None) -> nn.Module:
    """The feature net named by `eval.net`, checked against the data's channels and resolution.

    Args:
        name: `digits`, `dinov2` or `inception`.
        channels: the data's image channels.
        resolution: the data's image side in pixels.
        model: eval=dinov2's `eval.model` (a Hub id or a local folder; None = ViT-L/14).
    """
    if name == "dinov2":
        from diffexp.dinov2 import load_dinov2

        return load_dinov2(model, channels)
    if name == "digits":
        net = load_digits_net()
        if channels != net.channels or resolution != net.resolution:
            raise ConfigError(
                f"eval=digits scores {net.channels}-channel {net.resolution}px digits, but the data has "
                f"data.channels={channels} data.resolution={resolution}: use data.resolution={net.resolution} "
                f"with the digits, or eval=dinov2 / eval=none for other data"
            )
        return net
    if name == "inception":
        if channels not in (1, 3):
            raise ConfigError(f"eval=inception scores 1- or 3-channel images, not data.channels={channels}")
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ConfigError(
                "eval=inception needs torch-fidelity: `pip install torch-fidelity` (`diffexp[inception]`) where torch "
                f"matches it, and its weights at {inception_weights_path()}; or use eval=digits / eval=none"
            )
        weights = inception_weights_path()
        if not weights.exists():
            raise ConfigError(
                f"eval=inception: the InceptionV3 weights are not on disk: put {INCEPTION_WEIGHTS} (from the "
                f"torch-fidelity v0.2.0 release) at {weights}, or use eval=digits / eval=none"
            )
        with torch.random.fork_rng(devices=[]):
            return InceptionNet(weights).eval()
    raise ConfigError(f"eval.net={name!r} is not a feature net: use digits, dinov2, inception, or eval=none")


def main() -> None:
    net, record = train_digits_net()
    save_digits_net(net, record)
    print(
        f"held-out accuracy {record['heldout_accuracy']:.4f} (train {record['train_accuracy']:.4f}, "
        f"{record['training']['seconds']} s); wrote {WEIGHTS} and {MANIFEST}"
    )


if __name__ == "__main__":
    main()
