"""Sample-quality metrics as pure functions of feature tensors `[N, D]` (k-diffusion style).

Feature nets live in `diffexp.features`; these functions never see images, so the same code scores the
digits net's 64-d features and Inception's 2048-d ones. Everything is computed in float64 on the CPU.

Every figure comes with its interval: FID from its spread over sampling seeds (a t interval of the mean), KID,
precision, recall and top_prob by bootstrap over the samples (and the reference images where a figure depends on
them). The memorisation figure compares each sample's nearest training image with how near held-out images come.
"""

from __future__ import annotations

import statistics

import torch
from torch import Tensor

from diffexp.errors import ConfigError
from diffexp.stats import mean_interval

REFERENCE_SEED = 0
# Each figure a run records (and the report ranks by): whether higher is better.
HIGHER_IS_BETTER = {
    "fid": False,
    "kid": False,
    "precision": True,
    "recall": True,
    "top_prob": True,  # the digits net's mean top-class probability of the samples
    "denoise": False,  # the held-out denoising error (diffexp/denoise.py): any data; compared within one target
    "final_loss": False,
}
BOOTSTRAP = 200  # resamples behind each bootstrap interval
MEMORISED_FACTOR = 0.5  # a sample is a copy when nearer a training image than this share of held-out images' median


def fd_refusal(n_real: int, n_fake: int, num_features: int, net: str) -> str | None:
    """Why the Frechet distance is refused, or None: it needs more images than feature dimensions on both sides
    (below that the covariance is singular and the figure is mostly bias); KID, unbiased at any count, ranks then."""
    if min(n_real, n_fake) > num_features:
        return None
    return (
        f"FD refused: {n_real} held-out and {n_fake} generated images, but eval={net}'s {num_features} features need "
        f"more on both sides; ranking by KID (raise data.holdout and eval.n_samples above {num_features} for FD)"
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

    Needs at least 2 samples per set; at or below the feature dimension it is singular or mostly bias (callers
    leave it out there: `fd_refusal`), so compare FIDs only at equal sample counts.

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


def class_figures(probs: Tensor, classes: int | None = None) -> dict:
    """What a classifier makes of the samples: the mean top-class probability of the full softmax (is each sample
    clearly one class?), the smallest and largest share of a class among the samples (are all classes there,
    evenly?) and, where the classifier has outputs past `classes` ("not a digit"), the share called that.

    Args:
        probs: class probabilities of the samples, `[N, outputs]`, rows summing to 1.
        classes: the real classes (the first columns); None = every column is one.
    """
    classes = classes or probs.shape[1]
    top, cls = probs.max(dim=1)
    share = torch.bincount(cls, minlength=probs.shape[1]).double() / len(probs)
    out = {"top_prob": top.mean().item(), "class_min": share[:classes].min().item()}
    out["class_max"] = share[:classes].max().item()
    if probs.shape[1] > classes:
        out["not_digit"] = share[classes:].sum().item()
    return out


def _percentile_ci(point: float, boots: Tensor, full: float, level: float = 0.95) -> list[float]:
    """The bootstrap interval of `point`: the resamples' quantiles, shifted by however far `point` lies from the
    statistic the resamples were drawn around (0 where they are the same statistic)."""
    q = torch.quantile(boots - full, torch.tensor([0.5 - level / 2, 0.5 + level / 2], dtype=boots.dtype))
    return [point + float(q[0]), point + float(q[1])]


def _counts(n: int, boots: int, g: torch.Generator) -> Tensor:
    """`boots` bootstrap resamples of n items, as how often each item was drawn `[boots, n]`."""
    idx = torch.randint(0, n, (boots, n), generator=g)
    return torch.zeros(boots, n, dtype=torch.float64).scatter_add_(1, idx, torch.ones(boots, n, dtype=torch.float64))


def _weighted_mean(values: Tensor, counts: Tensor) -> Tensor:
    """Mean of per-item `values` `[n]` in each resample `[boots, n]` -> `[boots]`."""
    return counts @ values.double() / values.shape[0]


def _kernel(x: Tensor, y: Tensor) -> Tensor:
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd_resampled(k_ff: Tensor, k_rr: Tensor, k_fr: Tensor, w_f: Tensor, w_r: Tensor) -> Tensor:
    """Unbiased MMD^2 of resampled sets, from kernel matrices and draw counts `[B, n]`, `[B, m]` (all ones: the
    plain full-set estimate). Pairs of two draws of the same item are left out, as the unbiased estimate leaves out
    an item paired with itself (with them, the large self-similarities would bias every resample upwards)."""

    def within(k: Tensor, w: Tensor) -> Tensor:
        pairs = w.sum(1) ** 2 - (w * w).sum(1)
        return (((w @ k) * w).sum(1) - (w * w) @ k.diagonal()) / pairs

    return within(k_ff, w_f) + within(k_rr, w_r) - 2 * ((w_f @ k_fr) * w_r).sum(1) / (w_f.sum(1) * w_r.sum(1))


def nearest(query: Tensor, ref: Tensor, chunk: int = 32) -> tuple[Tensor, Tensor]:
    """For each query `[N, S, D]` (S variants of one item, e.g. shifts), the distance to its nearest `ref` row
    `[M, D]` over all variants, and that row's index. `chunk` queries at a time bound memory at chunk x S x M."""
    query, ref = query.detach().to("cpu", torch.float64), ref.detach().to("cpu", torch.float64)
    dist, index = [], []
    for c in query.split(chunk):
        d = torch.cdist(c.flatten(0, 1), ref).view(len(c), -1, len(ref)).amin(1)
        best = d.min(1)
        dist.append(best.values)
        index.append(best.indices)
    return torch.cat(dist), torch.cat(index)


def memorisation_threshold(heldout_dist: Tensor, factor: float = MEMORISED_FACTOR) -> float:
    """The distance below which a sample is called a copy: `factor` times the median distance from a held-out image
    to its nearest training image. Held-out images (which no model can have copied) show how near fresh images come;
    the share of them under the threshold is the rule's false-positive rate, recorded with it. (A low quantile of
    those distances would fix that rate instead, but it rests on the few nearest held-out images and moves with them.)
    """
    return factor * float(heldout_dist.double().median())


def _seed_figures(real: Tensor, fake: Tensor, reference: tuple, k: int, g: torch.Generator, boots: int, fd: bool):
    """One sampling seed's FD, precision and recall, their bootstrap resamples (KID's too: the samples resampled
    with `g`, the reference's weights shared), and its KID on the full sets. `reference`: the held-out kernel, its
    k-NN radii and bootstrap weights."""
    k_rr, real_radii, w_r = reference
    n, m = len(fake), len(real)
    inside = torch.cat([(torch.cdist(c, real) <= real_radii).any(1) for c in fake.split(1024)]).double()
    covered = torch.cat([(torch.cdist(c, fake) <= _knn_radii(fake, k, 1024)).any(1) for c in real.split(1024)]).double()
    figures = {"precision": float(inside.mean()), "recall": float(covered.mean())}
    if fd:
        figures["fid"] = fid(real, fake)
    w_f = _counts(n, boots, g)
    k_ff, k_fr = _kernel(fake, fake), _kernel(fake, real)
    ones_f, ones_r = torch.ones(1, n, dtype=torch.float64), torch.ones(1, m, dtype=torch.float64)
    full_kid = float(_mmd_resampled(k_ff, k_rr, k_fr, ones_f, ones_r)[0])
    resampled = {
        "kid": _mmd_resampled(k_ff, k_rr, k_fr, w_f, w_r),
        "precision": _weighted_mean(inside, w_f),
        "recall": _weighted_mean(covered, w_r),
    }
    return figures, resampled, full_kid


def score(
    real_feats: Tensor,
    fake_feats: Tensor | list[Tensor],
    feature_net: str,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    k: int = 3,
    seed: int = 0,
    fake_probs: Tensor | list[Tensor] | None = None,
    classes: int | None = None,
    boots: int = BOOTSTRAP,
    fd: bool = True,
) -> dict:
    """All metrics of samples from one or more sampling seeds, each with its interval and counts.

    Point figures are means over the seeds (FID: `fid_std` and a t interval over seeds, None with one seed);
    `kid_ci`, `precision_ci`, `recall_ci` and `top_prob_ci` are 95% bootstrap intervals over the samples (and the
    reference images, for KID and recall).

    Args:
        real_feats: reference features (the held-out images).
        fake_feats: features of the generated samples, one tensor per sampling seed (or one tensor).
        feature_net: the net's name, recorded with the figures (`digits`, `inception`).
        kid_subset_size: KID subset size (`eval.kid_subset_size`), clipped to the sample counts.
        kid_subsets: number of KID subsets.
        k: neighbourhood size of precision/recall.
        seed: seeds the KID subsets and the bootstrap.
        fake_probs: the feature net's class probabilities of the samples (per seed), where it is a classifier
            (digits): adds `class_figures` and `top_prob_ci`.
        classes: real classes among the probability columns (`class_figures`).
        boots: bootstrap resamples.
        fd: compute the Frechet distance (`fd_refusal`); False records `fid` as None.
    """
    fakes = [fake_feats] if isinstance(fake_feats, Tensor) else list(fake_feats)
    real = _as64(real_feats, "real", k + 1)
    fakes = [_as64(f, "fake", k + 1) for f in fakes]
    g = torch.Generator().manual_seed(seed)
    m = len(real)
    w_r = _counts(m, boots, g)  # reference images resampled once, shared by every seed
    k_rr, real_radii = _kernel(real, real), _knn_radii(real, k, 1024)
    per_seed: dict[str, list[float]] = {"fid": [], "kid": [], "kid_std": [], "precision": [], "recall": []}
    boot = {"kid": [], "precision": [], "recall": []}
    full_kid = []
    for fake in fakes:
        figures, boots_of, full = _seed_figures(real, fake, (k_rr, real_radii, w_r), k, g, boots, fd)
        figures["kid"], figures["kid_std"] = kid(real, fake, kid_subset_size, kid_subsets, seed)
        for name, value in figures.items():
            per_seed[name].append(value)
        for name, value in boots_of.items():
            boot[name].append(value)
        full_kid.append(full)
    interval = mean_interval(per_seed["fid"]) if fd else None  # None with one seed: one figure has no spread
    out = {
        "fid": statistics.fmean(per_seed["fid"]) if fd else None,
        "fid_std": statistics.stdev(per_seed["fid"]) if interval else None,
        "fid_ci": list(interval[1:]) if interval else None,
    }
    mean = {name: sum(v) / len(v) for name, v in per_seed.items() if v}
    full = {"kid": sum(full_kid) / len(full_kid), "precision": mean["precision"], "recall": mean["recall"]}
    for name in ("kid", "precision", "recall"):
        out[name] = mean[name]
        out[f"{name}_ci"] = _percentile_ci(mean[name], torch.stack(boot[name]).mean(0), full[name])
    out["kid_std"] = mean["kid_std"]
    if fake_probs is not None:
        probs = [fake_probs] if isinstance(fake_probs, Tensor) else list(fake_probs)
        figures = [class_figures(p.double(), classes) for p in probs]
        out |= {name: sum(f[name] for f in figures) / len(figures) for name in figures[0]}
        top = [p.double().max(1).values for p in probs]
        boot_top = torch.stack([_weighted_mean(t, _counts(len(t), boots, g)) for t in top]).mean(0)
        out["top_prob_ci"] = _percentile_ci(out["top_prob"], boot_top, out["top_prob"])
    return out | {
        "n_seeds": len(fakes),
        "n_real": m,
        "n_fake": len(fakes[0]),
        "feature_net": feature_net,
    }
