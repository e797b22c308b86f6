"""eval=dinov2's feature net, reference cache and FD refusal, on a small randomly initialised DINOv2.

No test downloads weights: `tiny_dinov2` builds a 2-layer, 32-wide `Dinov2Config` model with random weights and
saves it with `save_pretrained` into a temporary folder, which `eval.model` then points at (features of a random
model are meaningless as quality figures; here they only exercise the code paths, shapes and caches).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffexp.errors import ConfigError
from diffexp.features import load_feature_net
from helpers import tiny_dinov2

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_dinov2(tmp_path_factory.mktemp("dinov2"))


def rgb(n: int, seed: int, side: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_features_are_the_normalised_cls_token_of_the_documented_preprocessing(model_dir):
    net = load_feature_net("dinov2", channels=3, resolution=8, model=str(model_dir))
    images = rgb(3, 0)
    feats = net.features(images)
    assert feats.shape == (3, 32) and net.num_features == 32 and net.name == "dinov2"
    # by hand: bicubic to 224, ImageNet normalisation, the final layer norm's CLS output
    x = torch.nn.functional.interpolate(images.float() / 255, size=(224, 224), mode="bicubic").clamp(0, 1)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        hidden = net.model(pixel_values=x).last_hidden_state[:, 0]
    assert torch.allclose(feats.float(), hidden, atol=1e-5)
    grey = images[:, :1]
    assert torch.allclose(net.features(grey), net.features(grey.repeat(1, 3, 1, 1)))  # greyscale repeated to RGB


def test_offline_without_weights_fails_at_once_saying_what_to_download_and_where(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_feature_net("dinov2", channels=3, resolution=32, model="facebook/dinov2-no-such-model")
    msg = str(e.value)
    assert "\n" not in msg and "hf download facebook/dinov2-no-such-model" in msg and "Hub cache" in msg
    with pytest.raises(ConfigError, match="no config.json"):
        load_feature_net("dinov2", channels=3, resolution=32, model=str(tmp_path))
