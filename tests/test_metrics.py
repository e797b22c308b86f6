"""The shipped digits net and the metrics, on the real digits: do the numbers move the way quality does?"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import importlib.util
import json
import shutil
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffexp.data import digits_images, digits_labels
from diffexp.errors import ConfigError
from diffexp.features import MANIFEST, WEIGHTS, heldout_split, load_digits_net, load_feature_net
from diffexp.metrics import (
    check_sample_count,
    class_figures,
    fid,
    kid,
    precision_recall,
    reference_features,
    reference_indices,
    score,
)

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def net():
    return load_feature_net("digits", channels=1, resolution=16)


@pytest.fixture(scope="module")
def digits():
    return digits_images(16)


@pytest.fixture(scope="module")
def halves(digits):
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(1))
    return digits[perm[: len(digits) // 2]], digits[perm[len(digits) // 2 :]]


@pytest.fixture(scope="module")
def feats(net, halves):
    a, b = halves
    noise = torch.randint(0, 256, b.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    one = b[:1].expand_as(b).contiguous()  # mode collapse: one digit, many copies
    return {"a": net.features(a), "b": net.features(b), "noise": net.features(noise), "one": net.features(one)}


def gaussian_noise(images: torch.Tensor, sigma: float) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return (images.float() + sigma * torch.randn(images.shape, generator=g)).round().clamp(0, 255).to(torch.uint8)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    y = F.conv2d(F.pad(images.float(), (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return y.round().clamp(0, 255).to(torch.uint8)


def blank(images: torch.Tensor, fraction: float) -> torch.Tensor:
    mask = torch.rand(images.shape, generator=torch.Generator().manual_seed(0)) < fraction
    return images.masked_fill(mask, 0)


def test_shipped_net_heldout_accuracy(net, digits):
    _, held = heldout_split(len(digits))
    acc = (net.probs(digits[held]).argmax(-1) == digits_labels()[held]).float().mean().item()
    assert acc > 0.97, acc
    assert net.num_features == net.features(digits[:2]).shape[1]


def test_fid_half_vs_half_is_far_below_noise(feats):
    same, noise = fid(feats["a"], feats["b"]), fid(feats["a"], feats["noise"])
    print(f"FID half/half {same:.2f}, vs uniform noise {noise:.2f}")
    assert same < noise / 10
    assert fid(feats["a"], feats["a"]) == pytest.approx(0.0, abs=1e-6)


def test_fid_matches_torchmetrics_formula(feats):
    from torchmetrics.image.fid import _compute_fid

    a, b = feats["a"].double(), feats["b"].double()
    expected = _compute_fid(a.mean(0), torch.cov(a.T), b.mean(0), torch.cov(b.T)).item()
    assert fid(a, b) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "degrade, levels",
    [(gaussian_noise, [16, 32, 64, 128]), (blur, [0.75, 1.25, 2.0]), (blank, [0.1, 0.2, 0.4])],
    ids=["gaussian_noise", "blur", "blanked_pixels"],
)
def test_fid_grows_with_degradation(net, halves, feats, degrade, levels):
    a, b = halves
    fids = [fid(feats["a"], feats["b"])] + [fid(feats["a"], net.features(degrade(b, level))) for level in levels]
    print(f"{degrade.__name__} levels {[0, *levels]}: FID {[round(f, 2) for f in fids]}")
    assert all(lo < hi for lo, hi in zip(fids, fids[1:], strict=False)), fids


def test_precision_recall(feats):
    p, r = precision_recall(feats["a"], feats["b"])
    p_noise, _ = precision_recall(feats["a"], feats["noise"])
    p_one, r_one = precision_recall(feats["a"], feats["one"])
    print(f"precision/recall half/half {p:.3f}/{r:.3f}, noise {p_noise:.3f}, one digit {p_one:.3f}/{r_one:.3f}")
    assert p > 0.8 and r > 0.8
    assert p_noise < 0.1  # noise is not a digit
    assert p_one > 0.8 and r_one < 0.05  # one real digit repeated: precise, but covers nothing else


def test_kid_half_vs_half_near_zero(feats):
    same, same_std = kid(feats["a"], feats["b"], subset_size=400, subsets=50)
    noise, _ = kid(feats["a"], feats["noise"], subset_size=400, subsets=50)
    print(f"KID half/half {same:.3f} ± {same_std:.3f}, vs noise {noise:.1f}")
    assert abs(same) < noise / 100
    assert abs(same) < 3 * same_std + 1e-3 * noise
    assert kid(feats["a"], feats["b"], subset_size=400, subsets=5, seed=3) == kid(
        feats["a"], feats["b"], subset_size=400, subsets=5, seed=3
    )


def test_kid_matches_torchmetrics_and_clips_subset_size(feats):
    from torchmetrics.image.kid import poly_mmd

    a, b = feats["a"][:100].double(), feats["b"][:100].double()
    mean, std = kid(a, b, subset_size=5000, subsets=3)  # clipped to 100: every subset is the whole set
    assert mean == pytest.approx(poly_mmd(a, b).item(), rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_score_records_net_and_counts(feats):
    s = score(feats["a"], feats["b"][:300], feature_net="digits", kid_subset_size=200, kid_subsets=10)
    assert set(s) == {"fid", "kid", "kid_std", "precision", "recall", "n_real", "n_fake", "feature_net"}
    assert (s["n_real"], s["n_fake"], s["feature_net"]) == (len(feats["a"]), 300, "digits")
    json.dumps(s)  # plain numbers, ready for metrics.json


def test_class_figures_tell_clear_balanced_digits_from_noise_and_collapse(net, halves):
    _, b = halves
    real = class_figures(net.probs(b))
    assert real["top_prob"] > 0.9 and 0.05 < real["class_min"] <= real["class_max"] < 0.15
    noise = torch.randint(0, 256, b.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert class_figures(net.probs(noise))["top_prob"] < real["top_prob"] - 0.2
    one = class_figures(net.probs(b[:1].expand_as(b).contiguous()))  # one digit, many copies
    assert (one["class_min"], one["class_max"]) == (0.0, 1.0)
    s = score(net.features(b), net.features(b), "digits", kid_subset_size=100, kid_subsets=2, fake_probs=net.probs(b))
    assert s["top_prob"] == real["top_prob"] and s["class_min"] == real["class_min"]


def test_corrupted_weights_raise(tmp_path):
    weights, manifest = tmp_path / WEIGHTS.name, tmp_path / MANIFEST.name
    shutil.copy(WEIGHTS, weights)
    shutil.copy(MANIFEST, manifest)
    assert load_digits_net(weights, manifest).num_features > 0
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="sha256"):
        load_digits_net(weights, manifest)


def test_wrong_channels_or_resolution_raise(net):
    with pytest.raises(ConfigError, match="data.channels=3"):
        load_feature_net("digits", channels=3, resolution=16)
    with pytest.raises(ConfigError, match="data.resolution=32"):
        load_feature_net("digits", channels=1, resolution=32)
    with pytest.raises(ConfigError, match="eval=digits"):
        net.features(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))
    with pytest.raises(ConfigError, match="eval.net"):
        load_feature_net("clip", channels=1, resolution=16)


def test_check_sample_count():
    check_sample_count(256, 64)
    with pytest.raises(ConfigError, match=r"eval\.n_samples=100 .*eval\.n_samples>=2048") as e:
        check_sample_count(100, 2048, net="inception")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError):
        fid(torch.zeros(1, 4), torch.zeros(5, 4))


@pytest.mark.skipif(importlib.util.find_spec("torch_fidelity") is not None, reason="torch-fidelity is installed")
def test_inception_without_torch_fidelity_says_what_to_install():
    with pytest.raises(ConfigError) as e:
        load_feature_net("inception", channels=3, resolution=32)
    msg = str(e.value)
    assert "\n" not in msg and "pip install torch-fidelity" in msg
    assert "weights-inception-2015-12-05-6726825d.pth" in msg
    assert "torch_fidelity" not in sys.modules and "torchvision" not in sys.modules


def test_reference_features_are_cached(net, digits, tmp_path):
    first = reference_features(digits, net, "digits", tmp_path, n=1000)
    (cached,) = tmp_path.glob("*.safetensors")
    assert first.shape == (1000, net.num_features)
    assert torch.equal(first, net.features(digits[reference_indices(len(digits), 1000)]))
    assert torch.equal(reference_features(digits, net, "digits", tmp_path, n=1000), first)
    save_file({"features": first * 2}, str(cached))  # the next call must read this file, not recompute
    assert torch.equal(reference_features(digits, net, "digits", tmp_path, n=1000), first * 2)
    everything = reference_features(digits, net, "digits", tmp_path, n=10_000)  # fewer images: all of them
    assert len(everything) == len(digits) and len(list(tmp_path.glob("*.safetensors"))) == 2
