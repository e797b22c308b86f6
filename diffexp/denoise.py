"""The held-out denoising error: a quality figure for any data, comparable across schedules and prediction targets.

Training losses of different recipes are not comparable: an epsilon, v or x0 target, another noise schedule or a
min-SNR weighting each measure a different error. This figure asks every model the same question instead: held-out
images (never trained on) are noised to a fixed set of signal-to-noise levels with fixed noise, and the model's
estimate of the clean image is scored, whatever the model predicts.

- Levels: log-SNR `LEVELS` = -6, -3, 0, 3, 6 (SNR = alpha^2 / sigma^2 from about 0.0025 to 400; the range every
  shipped schedule covers at 1000 timesteps). Each is evaluated at the fractional timestep t of the run's own
  schedule whose log-SNR equals the level (linear interpolation of log-SNR between integer timesteps); the noised
  image is `alpha * x0 + sigma * noise` with alpha^2 = sigmoid(level), sigma^2 = sigmoid(-level).
- x0 from the output: epsilon `(x_t - sigma * eps) / alpha`, v `alpha * x_t - sigma * v`, sample: the output itself
  (no clipping).
- Flow models (`schedule=flow`) see the same images, noise and levels on their own path: x_t = (alpha x0 + sigma
  noise) / (alpha + sigma), which is (1 - t) x0 + t noise at t = sigma / (alpha + sigma) (SNR = ((1 - t) / t)^2),
  fed as t x 1000; their x0 estimate is x_t - t v. The x0 error is then the same question asked of both families.
- Error per level: the mean squared error of x0 in the model's [-1, 1] range, times the weight (1 + SNR), which is
  the error of the equivalent v prediction: each level then counts about equally (a model that only predicts the
  mean image scores about the data variance at low SNR, and the noise error at high SNR).
- `denoise`: the mean over the levels of the weighted errors (lower is better); `denoise_levels` holds each level's
  unweighted x0 error.
- Noise: `torch.Generator().manual_seed(NOISE_SEED + k)` for level k (never the global RNG), on the CPU, so two
  runs, resumed or not, see the same noise; images: the first `eval.denoise_images` (256) of the held-out
  set's seed-0 permutation (the figure compares runs at equal counts only).

Good for: comparing recipes on one dataset at one resolution, whatever their target, schedule or weighting, with no
feature net. Not a sample-quality metric: it scores one denoising step, not the sampler's chain, so it says nothing
about sampler steps or guidance, and it favours blurry averages where FID/KID do not.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

LEVELS = (-6.0, -3.0, 0.0, 3.0, 6.0)  # log-SNR levels, natural log
NOISE_SEED = 20240  # the fixed noise of level k comes from NOISE_SEED + k
IMAGES = 256  # held-out images scored by default (`eval.denoise_images`; the first of a seed-0 permutation)
WEIGHTING = "mean over log-SNR levels of (1 + SNR) * x0 MSE (the v-prediction error)"  # recorded with the figure


def log_snr(alphas_cumprod: Tensor) -> Tensor:
    """log(alpha_bar / (1 - alpha_bar)) per integer timestep (float64; -inf where alpha_bar is 0)."""
    a = alphas_cumprod.detach().to("cpu", torch.float64)
    return a.log() - (-a).log1p()


def timestep_at(alphas_cumprod: Tensor, level: float) -> float | None:
    """The fractional timestep whose log-SNR is `level`, interpolating log-SNR linearly between integer timesteps;
    None where the schedule never reaches the level."""
    lam = log_snr(alphas_cumprod)  # decreasing in t
    if not (lam[-1] <= level <= lam[0]):
        return None
    i = int(torch.searchsorted(-lam, torch.tensor(-level, dtype=torch.float64)))  # first t with lam[t] <= level
    if i == 0 or lam[i] == level:
        return float(i)
    hi, lo = lam[i - 1], lam[i]
    return float(i - 1 + (hi - level) / (hi - lo))


def flow_timestep(level: float, num_train_timesteps: int = 1000) -> float:
    """The flow model's timestep input (t x 1000) at log-SNR `level`: t = sigma / (alpha + sigma)."""
    alpha, sigma = (float(torch.sigmoid(torch.tensor(s * level, dtype=torch.float64)).sqrt()) for s in (1, -1))
    return num_train_timesteps * sigma / (alpha + sigma)


def x0_from_output(
    output: Tensor, x_t: Tensor, alpha: float | Tensor, sigma: float | Tensor, prediction_type: str
) -> Tensor:
    """The model's clean-image estimate from its output, for each prediction target (x_t = alpha x0 + sigma eps;
    v = alpha eps - sigma x0). Shared by the denoising error and the samplers' trajectory pictures."""
    if prediction_type == "epsilon":
        return (x_t - sigma * output) / alpha
    if prediction_type == "v_prediction":
        return alpha * x_t - sigma * output
    if prediction_type == "sample":
        return output
    if prediction_type == "flow":  # x_t = (alpha x0 + sigma eps) / (alpha + sigma) = (1 - t) x0 + t eps; v = eps - x0
        return x_t - sigma / (alpha + sigma) * output
    raise ValueError(f"prediction_type={prediction_type!r}: epsilon, v_prediction, sample or flow")


def reference_images(heldout: Tensor, n: int = IMAGES) -> Tensor:
    """The held-out images scored: the first `n` of a seed-0 permutation, in the model's [-1, 1] range."""
    perm = torch.randperm(len(heldout), generator=torch.Generator().manual_seed(0))[: min(n, len(heldout))]
    x = heldout[perm]
    return x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def denoise_error(
    model: Callable[[Tensor, Tensor], Tensor],
    alphas_cumprod: Tensor | None,
    prediction_type: str,
    images: Tensor,
    levels: tuple[float, ...] = LEVELS,
    batch_size: int = 256,
) -> dict:
    """The held-out denoising error of `model` (see the module docstring).

    Args:
        model: (x_t, fractional timesteps `[B]`) -> the model's output (what it predicts).
        alphas_cumprod: the run's training schedule, per integer timestep (None for a flow model).
        prediction_type: `epsilon`, `v_prediction`, `sample` or `flow` (the velocity of a flow model).
        images: clean held-out images in [-1, 1] (`reference_images`), on the model's device.
        levels: log-SNR levels.
        batch_size: images per model call.

    Returns `denoise` (None, with `denoise_note`, where the schedule misses a level), `denoise_levels`
    (level -> unweighted x0 MSE), `denoise_images` and `denoise_weighting`.
    """
    out: dict = {"denoise": None, "denoise_levels": {}, "denoise_images": len(images), "denoise_weighting": WEIGHTING}
    weighted = []
    flow = prediction_type == "flow"
    for k, level in enumerate(levels):
        t = flow_timestep(level) if flow else timestep_at(alphas_cumprod, level)
        if t is None:
            lam = log_snr(alphas_cumprod)
            out["denoise_note"] = (
                f"the schedule's log-SNR runs from {float(lam[-1]):.3g} to {float(lam[0]):.3g}, missing level {level:g}"
            )
            return out
        alpha = float(torch.sigmoid(torch.tensor(level, dtype=torch.float64)).sqrt())
        sigma = float(torch.sigmoid(torch.tensor(-level, dtype=torch.float64)).sqrt())
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(NOISE_SEED + k))
        noise = noise.to(images.device, images.dtype)
        total = 0.0
        for x0, eps in zip(images.split(batch_size), noise.split(batch_size), strict=True):
            x_t = (alpha * x0 + sigma * eps) / ((alpha + sigma) if flow else 1.0)
            timesteps = torch.full((len(x0),), t, device=x0.device, dtype=torch.float32)
            estimate = x0_from_output(model(x_t, timesteps).float(), x_t, alpha, sigma, prediction_type)
            total += float((estimate.double() - x0.double()).square().sum())
        mse = total / images.numel()
        out["denoise_levels"][f"{level:g}"] = mse
        weighted.append((1 + (alpha / sigma) ** 2) * mse)
    out["denoise"] = sum(weighted) / len(weighted)
    return out


def denoise_run(folder, count: int = IMAGES, allow_changed_data: bool = False) -> dict:
    """The held-out denoising error of a trained run folder's exported (EMA) weights: the same images, noise and
    levels as its in-training evaluation, for runs trained before the figure was recorded.

    Args:
        folder: a run folder (its `pipeline/`, else `checkpoints/last.ckpt`) or a pipeline folder diffexp exported.
        count: held-out images scored (the run's `eval.denoise_images`; 256 by default).
        allow_changed_data: score a run whose held-out set changed since it trained (refused otherwise); the
            record's `data_check` says how the data compares (`diffexp.identity.check_data`).
    """
    from diffexp.config import instantiate
    from diffexp.errors import ConfigError
    from diffexp.identity import run_data_mark
    from diffexp.loading import load_run

    loaded = load_run(folder)
    data = loaded.config.get("data")
    if not data:
        raise ConfigError(f"{folder}: carries no diffexp config, so its held-out images are unknown")
    datamodule = instantiate(data, seed=0)
    datamodule.prepare()
    mark = run_data_mark(folder, datamodule, allow_changed_data, f"the denoising error of {folder}")
    if datamodule.heldout is None or not len(datamodule.heldout):
        raise ConfigError(f"{folder}: its data holds no images out (data.holdout=0): nothing to score against")
    from diffexp.flow import prediction_of

    unet, scheduler = loaded.unet.eval(), loaded.scheduler
    images = reference_images(datamodule.heldout, count).to(unet.device)
    figures = denoise_error(
        lambda x, t: unet(x, t).sample, getattr(scheduler, "alphas_cumprod", None), prediction_of(scheduler), images
    )
    return figures | {"data_check": mark}
