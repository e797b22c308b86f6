"""The noise schedule: how much signal and noise each training timestep mixes.

`x_t = sqrt(alpha_bar_t) * x_0 + sqrt(1 - alpha_bar_t) * noise`, with `alpha_bar_t` the cumulative product of
`1 - beta_t`. Everything here derives from the `DDPMScheduler`'s betas, so samplers can rebuild it exactly.
"""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from diffexp.errors import ConfigError

BETA_SCHEDULES = {"linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid"}
PREDICTION_TYPES = {"epsilon", "v_prediction", "sample"}


def ddpm_scheduler(
    beta_schedule: str,
    prediction_type: str = "epsilon",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    rescale_betas_zero_snr: bool = False,
) -> DDPMScheduler:
    """The training schedule.

    Args:
        beta_schedule: `linear`, `scaled_linear`, `squaredcos_cap_v2` (cosine) or `sigmoid`.
        prediction_type: what the network predicts: `epsilon` (the noise), `v_prediction` or `sample` (x_0).
        num_train_timesteps: number of noise levels.
        beta_start, beta_end: first and last beta (unused by the cosine schedule).
        rescale_betas_zero_snr: rescale so the last timestep is pure noise (Lin et al. 2023).
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"schedule.beta_schedule={beta_schedule!r}: use one of {sorted(BETA_SCHEDULES)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ConfigError(f"schedule.prediction_type={prediction_type!r}: use one of {sorted(PREDICTION_TYPES)}")
    if num_train_timesteps < 2:
        raise ConfigError(f"schedule.num_train_timesteps={num_train_timesteps}: use at least 2")
    if not 0 < beta_start < beta_end < 1:
        raise ConfigError(f"schedule.beta_start={beta_start}, beta_end={beta_end}: need 0 < beta_start < beta_end < 1")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=rescale_betas_zero_snr,
        clip_sample=True,
    )


def signal_noise_scales(scheduler: DDPMScheduler) -> tuple[torch.Tensor, torch.Tensor]:
    """sqrt(alpha_bar_t) and sqrt(1 - alpha_bar_t) for every timestep; a flow schedule's 1 - t and t (t = the
    shifted (k + 1) / N of timestep k)."""
    if not hasattr(scheduler, "alphas_cumprod"):  # schedule=flow: x_t = (1 - t) x_0 + t noise
        from diffexp.flow import shifted

        n = scheduler.config.num_train_timesteps
        t = shifted(torch.arange(1, n + 1, dtype=torch.float64) / n, float(scheduler.config.shift))
        return 1 - t, t
    a = scheduler.alphas_cumprod.double()
    return a.sqrt(), (1 - a).sqrt()


def snr(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at the given timesteps."""
    a = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    return a / (1 - a).clamp(min=1e-12)
