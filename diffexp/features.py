"""Feature nets that turn uint8 images `[N, C, H, W]` into vectors for FID, KID and precision/recall.

`digits` is a small classifier shipped with the package (so the digits get a meaningful, offline FID);
`dinov2` (`diffexp.dinov2`) scores any RGB data; `inception` is torchmetrics' InceptionV3, usable only where
torch-fidelity and its weights are installed.
The digits net's training recipe is `diffexp.digits_net` (`python -m diffexp.digits_net` rebuilds the weights).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffexp.data import DIGITS_HELDOUT, DIGITS_SPLIT_SEED, digits_split, to_model_range
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
