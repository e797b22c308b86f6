"""DINOv2 features for FD, KID and precision/recall on any RGB data (`eval=dinov2`).

Stein et al. 2023 ("Exposing flaws of generative model evaluation metrics") found the Frechet distance on DINOv2
ViT-L/14 features closer to human judgement than Inception's FID; EDM2 reports it as FD_DINOv2. The model is
`transformers`' `Dinov2Model` (no torchvision), from the Hub cache or a local folder (`eval.model`).

Preprocessing, as in the dgm-eval reference code: uint8 images to [0, 1], greyscale repeated to RGB, a bicubic resize
to 224 x 224, ImageNet normalisation (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225); the feature is the
normalised CLS token (the final layer norm's output at the CLS position: `pooler_output`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from diffexp.errors import ConfigError

DEFAULT_MODEL = "facebook/dinov2-large"  # ViT-L/14, 1024-d features
SIZE = 224
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class Dinov2Net(nn.Module):
    """A `Dinov2Model` behind the feature-net interface (`features`, `features_and_probs`, `name`, `checksum`)."""

    def __init__(self, model: nn.Module, source: str) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.num_features, self.name, self.source = model.config.hidden_size, "dinov2", source
        digest = hashlib.sha256(model.config.to_json_string().encode())
        for p in model.state_dict().values():  # the weights themselves: another model never shares a cache file
            digest.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        self.checksum = digest.hexdigest()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `[N, 1 or 3, H, W]` -> the normalised 224 x 224 RGB input (see the module docstring)."""
        x = images.float() / 255
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False).clamp(0, 1)
        return (x - self.mean) / self.std

    def features(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """uint8 `[N, 1 or 3, H, W]` -> the normalised CLS tokens `[N, hidden_size]` (float64, CPU)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(f"eval=dinov2 takes 1- or 3-channel images, got shape {tuple(images.shape)}")
        device = self.mean.device
        out = []
        with torch.inference_mode():
            for chunk in images.split(batch_size):
                x = self.preprocess(chunk.to(device))
                out.append(self.model(pixel_values=x).pooler_output.double().cpu())
        return torch.cat(out)

    def features_and_probs(self, images: torch.Tensor) -> tuple[torch.Tensor, None]:
        """`features`, and no class probabilities: DINOv2 is no classifier."""
        return self.features(images), None


def load_dinov2(model: str | None, channels: int) -> Dinov2Net:
    """The DINOv2 feature net of `eval.model` (a Hub id, or a local folder from `save_pretrained`).

    Offline with no copy in the Hub cache, it fails at once saying what to download and where.
    """
    if channels not in (1, 3):
        raise ConfigError(f"eval=dinov2 scores 1- or 3-channel images, not data.channels={channels}")
    if importlib.util.find_spec("transformers") is None:
        raise ConfigError('eval=dinov2 needs transformers: pip install "diffexp[dinov2]" (or eval=none)')
    from transformers import Dinov2Model

    source = model or DEFAULT_MODEL
    local = Path(source).expanduser()
    with torch.random.fork_rng(devices=[]):  # building the model draws from the global RNG: leave training's alone
        if local.is_dir():
            if not (local / "config.json").exists():
                raise ConfigError(f"eval.model={source}: the folder holds no config.json (a save_pretrained folder)")
            return Dinov2Net(Dinov2Model.from_pretrained(str(local)), str(local))
        try:
            return Dinov2Net(Dinov2Model.from_pretrained(source, local_files_only=True), source)
        except OSError:
            pass
        from diffexp.hub import hub_reachable

        if not hub_reachable():
            from huggingface_hub.constants import HF_HUB_CACHE

            raise ConfigError(
                f"eval.model={source}: not in the Hub cache ({HF_HUB_CACHE}) and the Hub cannot be reached: download "
                f"it where there is network (`hf download {source}`, into that cache) or set eval.model to a local "
                f"folder holding the model"
            ) from None
        try:
            return Dinov2Net(Dinov2Model.from_pretrained(source), source)
        except OSError as e:
            raise ConfigError(f"eval.model={source}: {str(e).splitlines()[0]}: give a DINOv2 Hub id or folder") from e
