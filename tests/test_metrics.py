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

from diffexp.data import DigitsDataModule, digits_images, digits_labels
from diffexp.errors import ConfigError
from diffexp.features import MANIFEST, WEIGHTS, heldout_split, load_digits_net, load_feature_net
from diffexp.heldout import Reference
from diffexp.metrics import (
    class_figures,
    fid,
    kid,
    precision_recall,
    reference_indices,
    score,
)
from diffexp.plots import plot_nearest
from diffexp.stats import mean_interval

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


def test_score_records_net_counts_and_intervals(feats):
    s = score(feats["a"], feats["b"][:300], feature_net="digits", kid_subset_size=200, kid_subsets=10)
    assert set(s) == {
        *("fid", "fid_std", "fid_ci", "kid", "kid_std", "kid_ci", "precision", "precision_ci", "recall", "recall_ci"),
        *("n_seeds", "n_real", "n_fake", "feature_net"),
    }
    assert (s["n_real"], s["n_fake"], s["n_seeds"], s["feature_net"]) == (len(feats["a"]), 300, 1, "digits")
    assert s["fid_std"] is None and s["fid_ci"] is None  # one sampling seed: no spread to take an interval from
    for name in ("kid", "precision", "recall"):
        lo, hi = s[f"{name}_ci"]
        assert lo <= s[name] <= hi and lo < hi, (name, s[name], s[f"{name}_ci"])
    json.dumps(s)  # plain numbers, ready for metrics.json

    seeds = [feats["b"][i * 150 : (i + 1) * 150] for i in range(5)]  # five "sampling seeds" of 150 real digits
    five = score(feats["a"], seeds, "digits", kid_subset_size=100, kid_subsets=10)
    fids = [fid(feats["a"], x) for x in seeds]
    assert five["n_seeds"] == 5 and five["n_fake"] == 150
    assert five["fid"] == pytest.approx(sum(fids) / 5) and five["fid_std"] == pytest.approx(
        float(torch.tensor(fids).std())
    )
    lo, hi = five["fid_ci"]
    assert lo < five["fid"] < hi and (hi - lo) / 2 == pytest.approx(2.776 * five["fid_std"] / 5**0.5, rel=1e-3)


def test_bootstrap_intervals_cover_the_spread_of_fresh_samples(feats):
    """The precision/recall/KID intervals of one sample set are about as wide as the figures' spread over fresh sets."""
    pool = torch.cat([feats["b"], feats["a"][600:]])
    sets = [pool[i * 200 : (i + 1) * 200] for i in range(len(pool) // 200)]
    real = feats["a"][:600]
    each = [score(real, x, "digits", kid_subset_size=100, kid_subsets=20) for x in sets]
    for name in ("precision", "recall", "kid"):
        values = torch.tensor([e[name] for e in each])
        widths = torch.tensor([e[f"{name}_ci"][1] - e[f"{name}_ci"][0] for e in each])
        print(
            f"{name}: spread over {len(sets)} sets {values.std():.4f}, mean 95% width / 3.92 {widths.mean() / 3.92:.4f}"
        )
        assert 0.4 < float(widths.mean() / 3.92 / values.std()) < 2.5, (values, widths)
    assert mean_interval([1.0]) is None  # one figure has no spread
    mean, lo, hi = mean_interval([4.9, 5.0, 5.1])
    assert mean == pytest.approx(5.0) and hi - mean == pytest.approx(4.303 * 0.1 / 3**0.5, rel=1e-3) and lo < mean


def test_class_figures_use_the_full_softmax_and_count_non_digits(net, halves):
    _, b = halves
    probs = net.probs(b)
    assert probs.shape == (len(b), 11) and torch.allclose(probs.sum(1), torch.ones(len(b)))
    real = class_figures(probs, classes=10)
    assert real["top_prob"] > 0.9 and 0.05 < real["class_min"] <= real["class_max"] < 0.15
    assert real["not_digit"] < 0.01
    noise = torch.randint(0, 256, b.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    junk = class_figures(net.probs(noise), classes=10)
    assert junk["not_digit"] > 0.9  # the net calls pixel noise "not a digit"
    # Renormalising over the digits alone (what the old figure did) is never below the full softmax.
    assert (probs[:, :10] / probs[:, :10].sum(1, keepdim=True)).max(1).values.mean() >= real["top_prob"]
    one = class_figures(net.probs(b[:1].expand_as(b).contiguous()), classes=10)  # one digit, many copies
    assert (one["class_min"], one["class_max"]) == (0.0, 1.0)
    s = score(
        net.features(b), net.features(b), "digits", kid_subset_size=100, kid_subsets=2, fake_probs=probs, classes=10
    )
    assert s["top_prob"] == pytest.approx(real["top_prob"]) and s["class_min"] == real["class_min"] and "not_digit" in s
    assert s["top_prob_ci"][0] <= s["top_prob"] <= s["top_prob_ci"][1]


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


def test_fid_needs_two_samples_a_side():
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


@pytest.fixture(scope="module")
def split():
    dm = DigitsDataModule(resolution=16, channels=1, batch_size=64, flip=False)
    return dm.prepare(), dm.heldout


def test_reference_is_the_heldout_images_cached_with_the_floor(net, split, tmp_path):
    train, held = split
    assert (len(train), len(held)) == (1437, 360)
    ref = Reference.build(train, held, net, "digits", tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    # all 360 held-out images (none the net or the UNet trained on), in the order of a seed-0 permutation
    assert torch.equal(ref.real, net.features(held[reference_indices(360, 360)]))
    part = Reference.build(train, held, net, "digits", tmp_path, reference_size=100)
    assert torch.equal(part.real, net.features(held[reference_indices(360, 100)]))
    save_file({"real": ref.real * 2, "train": ref.train_feats}, str(cached))  # the next build must read this file
    assert torch.equal(Reference.build(train, held, net, "digits", tmp_path).real, ref.real * 2)

    floor = ref.floor(256)
    assert set(floor) == {"fid", "kid", "precision", "recall", "n"} and floor["n"] == 256
    assert floor["fid"] == pytest.approx(fid(ref.real, net.features(train[reference_indices(1437, 256)])))
    (sidecar,) = tmp_path.glob("*.floor.json")
    saved = json.loads(sidecar.read_text())
    saved["256-kid100"]["fid"] = -1.0  # cached: a fresh Reference reads the floor instead of computing it
    sidecar.write_text(json.dumps(saved))
    fresh = Reference.build(train, held, net, "digits", tmp_path, reference_size=100)
    assert part.cache != ref.cache and fresh.floor(256)["fid"] != -1.0  # another reference set, another floor
    assert Reference.build(train, held, net, "digits", tmp_path).floor(256)["fid"] == -1.0
    # KID's subset size changes the floor's KID: another subset size is computed, not read from the cache
    other = Reference.build(train, held, net, "digits", tmp_path, kid_subset_size=50).floor(256)
    assert other["fid"] != -1.0 and set(json.loads(sidecar.read_text())) == {"256-kid100", "256-kid50"}
    print(f"floor at 256 samples vs 360 held-out digits: {floor}")


def noisy(images: torch.Tensor, sigma: float = 0.05) -> torch.Tensor:
    """Gaussian noise of `sigma` in [0, 1] pixel units."""
    g = torch.Generator().manual_seed(0)
    return (images.float() + sigma * 255 * torch.randn(images.shape, generator=g)).round().clamp(0, 255).byte()


def shifted(images: torch.Tensor) -> torch.Tensor:
    """One pixel to the right (zero-filled)."""
    out = torch.zeros_like(images)
    out[..., 1:] = images[..., :-1]
    return out


def test_memorisation_flags_copies_of_training_images_and_not_heldout_ones(net, split, tmp_path):
    train, held = split
    # Calibrate on half of the held-out images; the other half is what an honest model's fresh digits look like.
    ref = Reference.build(train, held[:180], net, "digits", tmp_path)
    copies = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[:300]]
    rates = {}
    for name, images in {"noise 0.05": noisy(copies), "1 px shift": shifted(copies), "heldout": held[180:]}.items():
        dist, _ = ref.memorised(images)
        rates[name] = float((dist < ref.threshold).double().mean())
    print(f"threshold {ref.threshold:.3f}; flagged: {rates}; calibration held-out {ref.memorised_heldout:.3f}")
    assert rates["noise 0.05"] > 0.95 and rates["1 px shift"] > 0.95
    assert rates["heldout"] < 0.02 and ref.memorised_heldout < 0.02
    figures, (samples, dist, index) = ref.score([shifted(copies[:128]), held[180:308]])
    assert 0.4 < figures["memorised"] < 0.6 and figures["memorised_heldout"] == ref.memorised_heldout
    assert figures["reference"] == "heldout" and figures["memorised_space"].startswith("pixels")
    picture = plot_nearest(samples, ref.train_images, dist, index, ref.threshold, tmp_path / "nearest.png")
    assert picture.stat().st_size > 0


def test_feature_net_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    load_feature_net("digits", channels=1, resolution=16)
    assert torch.equal(torch.rand(3), expected)
