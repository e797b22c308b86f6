"""Sample-quality metrics as pure functions of feature tensors `[N, D]` (k-diffusion style).

Feature nets live in `diffexp.features`; these functions never see images, so the same code scores the
digits net's 64-d features and Inception's 2048-d ones. Everything is computed in float64 on the CPU.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from torch import Tensor

from diffexp.errors import ConfigError

REFERENCE_SEED = 0


def check_sample_count(n: int, num_features: int, net: str = "") -> None:
    """Fails fast, before any sampling, when `eval.n_samples` is too small for a meaningful FID.

    With fewer samples than feature dimensions the covariance is rank-deficient and FID is dominated by
    that bias, so figures from different sample counts could not be compared.

    Args:
        n: samples per evaluation (`eval.n_samples`).
        num_features: the feature net's dimension.
        net: the feature net's name, for the message.
    """
    if n < max(2, num_features):
        which = f"eval={net}" if net else "the feature net"
        raise ConfigError(
            f"eval.n_samples={n} is below {max(2, num_features)}, the feature dimension of {which}: "
            f"a FID over fewer samples is biased; set eval.n_samples>={max(2, num_features)}"
        )


def _as64(x: Tensor, what: str, minimum: int = 2) -> Tensor:
    if x.ndim != 2:
        raise ConfigError(f"{what} features must be [N, D], got shape {tuple(x.shape)}")
    if len(x) < minimum:
        raise ConfigError(
            f"{what} has {len(x)} samples, at least {minimum} are needed: raise eval.n_samples / eval.reference_size"
        )
    return x.detach().to("cpu", torch.float64)


def _gaussian(x: Tensor) -> tuple[Tensor, Tensor]:
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


def fid(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (the FID formula, as torchmetrics computes it).

    Needs at least 2 samples per set; below the feature dimension it is biased upwards (see
    `check_sample_count`), so compare FIDs only at equal sample counts.

    Args:
        real: reference features `[N, D]`.
        fake: generated features `[M, D]`.
    """
    real, fake = _as64(real, "real"), _as64(fake, "fake")
    if real.shape[1] != fake.shape[1]:
        raise ConfigError(f"feature widths differ ({real.shape[1]} vs {fake.shape[1]}): score with one feature net")
    mu1, s1 = _gaussian(real)
    mu2, s2 = _gaussian(fake)
    # Tr(sqrt(s1 s2)) as the sum of square roots of the eigenvalues of s1 s2 (real and >= 0 up to rounding).
    tr_sqrt = torch.linalg.eigvals(s1 @ s2).sqrt().real.sum()
    value = (mu1 - mu2).square().sum() + s1.trace() + s2.trace() - 2 * tr_sqrt
    return max(float(value), 0.0)


def _poly_mmd(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3, as KID and torchmetrics define it."""
    d, m = x.shape[1], len(x)
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    same = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return same - 2 * k_xy.sum() / m**2


def kid(real: Tensor, fake: Tensor, subset_size: int = 1000, subsets: int = 100, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of the MMD over random equal-size subsets; unbiased at any n.

    Args:
        real: reference features `[N, D]`.
        fake: generated features `[M, D]`.
        subset_size: samples per subset, clipped to min(N, M).
        subsets: number of random subsets.
        seed: seeds the subsets, so a score is reproducible.
    """
    real, fake = _as64(real, "real"), _as64(fake, "fake")
    m = min(subset_size, len(real), len(fake))
    g = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(subsets):
        i, j = torch.randperm(len(real), generator=g)[:m], torch.randperm(len(fake), generator=g)[:m]
        scores.append(_poly_mmd(real[i], fake[j]))
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))


def _knn_radii(x: Tensor, k: int, chunk: int) -> Tensor:
    """Distance from each point to its k-th nearest other point (the point itself is at distance 0)."""
    return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in x.split(chunk)])


def _covered(points: Tensor, centres: Tensor, radii: Tensor, chunk: int) -> float:
    """Fraction of `points` inside at least one ball (centre, radius)."""
    inside = [(torch.cdist(c, centres) <= radii).any(dim=1) for c in points.split(chunk)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3, chunk: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) over k-NN balls in feature space.

    Precision: the share of fakes inside some real sample's k-NN ball (fidelity). Recall: the share of reals
    inside some fake's k-NN ball (coverage; a collapsed generator has tiny balls and low recall).

    Args:
        real: reference features `[N, D]`.
        fake: generated features `[M, D]`.
        k: neighbourhood size; needs more than k samples in each set.
        chunk: rows per distance block, bounding memory at chunk x N.
    """
    real, fake = _as64(real, "real", k + 1), _as64(fake, "fake", k + 1)
    precision = _covered(fake, real, _knn_radii(real, k, chunk), chunk)
    recall = _covered(real, fake, _knn_radii(fake, k, chunk), chunk)
    return precision, recall


def reference_indices(n_images: int, n: int) -> Tensor:
    """The fixed reference subset: the first n of a seed-0 permutation (all images when there are fewer)."""
    perm = torch.randperm(n_images, generator=torch.Generator().manual_seed(REFERENCE_SEED))
    return perm[: min(n, n_images)]


def reference_features(images_uint8: Tensor, net, key: str, cache_dir: Path, n: int) -> Tensor:
    """Features of a dataset's fixed reference set, computed once and cached on disk.

    Every run of a dataset is then scored against the same real images and the same numbers. The cache file
    is named by the dataset key, resolution, count, feature net checksum and a hash of the chosen images, so
    a changed dataset or net never reads stale features.

    Args:
        images_uint8: the whole dataset, uint8 `[N, C, H, W]`.
        net: a feature net from `diffexp.features.load_feature_net` (has `features`, `name`, `checksum`).
        key: names the dataset, e.g. `digits` or a Hub name.
        cache_dir: where the cache files go.
        n: reference size (`eval.reference_size`).
    """
    from safetensors.torch import load_file, save_file

    chosen = images_uint8[reference_indices(len(images_uint8), n)].cpu().contiguous()
    content = hashlib.sha256(chosen.numpy().tobytes()).hexdigest()[:12]
    safe_key = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_") or "data"
    name = f"{safe_key}-{chosen.shape[-1]}px-n{len(chosen)}-{net.name}-{str(net.checksum)[:12]}-{content}"
    path = Path(cache_dir) / f"{name}.safetensors"
    if path.exists():
        return load_file(str(path))["features"]
    feats = net.features(chosen).contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{id(feats)}")
    save_file({"features": feats}, str(tmp), metadata={"key": key, "feature_net": net.name, "n": str(len(chosen))})
    tmp.replace(path)  # atomic: parallel sweep jobs never read a half-written file
    return feats


def class_figures(probs: Tensor) -> dict:
    """What a classifier makes of the samples: the mean top-class probability (is each sample clearly one class?)
    and the smallest and largest share of a class among the samples (are all classes there, evenly?).

    Args:
        probs: class probabilities of the samples, `[N, classes]`.
    """
    top, cls = probs.max(dim=1)
    share = torch.bincount(cls, minlength=probs.shape[1]).double() / len(probs)
    return {"top_prob": top.mean().item(), "class_min": share.min().item(), "class_max": share.max().item()}


def score(
    real_feats: Tensor,
    fake_feats: Tensor,
    feature_net: str,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    k: int = 3,
    seed: int = 0,
    fake_probs: Tensor | None = None,
) -> dict:
    """All metrics of one sample set, with the feature net and counts that make the figures comparable.

    Args:
        real_feats: reference features (from `reference_features`).
        fake_feats: features of the generated samples.
        feature_net: the net's name, recorded with the figures (`digits`, `inception`).
        kid_subset_size: KID subset size (`eval.kid_subset_size`), clipped to the sample counts.
        kid_subsets: number of KID subsets.
        k: neighbourhood size of precision/recall.
        seed: seeds the KID subsets.
        fake_probs: the feature net's class probabilities of the samples, where it is a classifier (digits):
            adds `class_figures`.
    """
    kid_mean, kid_std = kid(real_feats, fake_feats, kid_subset_size, kid_subsets, seed)
    precision, recall = precision_recall(real_feats, fake_feats, k)
    return {
        "fid": fid(real_feats, fake_feats),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "n_real": len(real_feats),
        "n_fake": len(fake_feats),
        "feature_net": feature_net,
    } | (class_figures(fake_probs) if fake_probs is not None else {})
