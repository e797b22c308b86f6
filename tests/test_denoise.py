"""The held-out denoising error: the same denoiser scores the same whatever it predicts and whatever its schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffexp.denoise import LEVELS, denoise_error, log_snr, timestep_at
from diffexp.schedule import ddpm_scheduler

MEAN, STD = 0.2, 0.5  # the Gaussian data: every pixel independent N(MEAN, STD^2)


def gaussian_denoiser(alphas_cumprod: torch.Tensor, prediction_type: str):
    """The exact posterior mean E[x0 | x_t] of Gaussian data, wrapped as a model predicting `prediction_type`.

    It finds alpha and sigma at a fractional timestep by its own interpolation of the schedule's log-SNR (numpy),
    independent of the code under test."""
    lam = log_snr(alphas_cumprod).numpy()

    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        level = float(np.interp(float(t[0]), np.arange(len(lam)), lam))
        alpha, sigma = math.sqrt(1 / (1 + math.exp(-level))), math.sqrt(1 / (1 + math.exp(level)))
        gain = alpha * STD**2 / (alpha**2 * STD**2 + sigma**2)
        x0 = MEAN + gain * (x_t - alpha * MEAN)
        eps = (x_t - alpha * x0) / sigma
        return {"sample": x0, "epsilon": eps, "v_prediction": alpha * eps - sigma * x0}[prediction_type]

    return model


def test_a_closed_form_denoiser_scores_the_same_as_epsilon_v_and_x0_predictor_under_two_schedules():
    images = MEAN + STD * torch.randn(64, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    results = {}
    for schedule in ("linear", "squaredcos_cap_v2"):
        alphas = ddpm_scheduler(schedule).alphas_cumprod
        for kind in ("epsilon", "v_prediction", "sample"):
            results[schedule, kind] = denoise_error(gaussian_denoiser(alphas, kind), alphas, kind, images)
    values = [r["denoise"] for r in results.values()]
    assert max(values) - min(values) < 1e-6 * max(values), results
    # and it is the closed form: the posterior variance STD^2 sigma^2 / (alpha^2 STD^2 + sigma^2) per level, times
    # (1 + SNR), averaged; the noise is a finite sample (1024 values per level), so within a few per cent
    expected = []
    for level in LEVELS:
        snr = math.exp(level)
        alpha2, sigma2 = snr / (1 + snr), 1 / (1 + snr)
        expected.append((1 + snr) * STD**2 * sigma2 / (alpha2 * STD**2 + sigma2))
    assert values[0] == pytest.approx(sum(expected) / len(expected), rel=0.1)
    assert list(results["linear", "epsilon"]["denoise_levels"]) == [f"{level:g}" for level in LEVELS]


def test_the_fractional_timestep_has_the_level_and_a_schedule_that_misses_one_is_named():
    alphas = ddpm_scheduler("scaled_linear").alphas_cumprod
    lam = log_snr(alphas).numpy()
    for level in LEVELS:
        t = timestep_at(alphas, level)
        assert float(np.interp(t, np.arange(len(lam)), lam)) == pytest.approx(level, abs=1e-9)
    short = ddpm_scheduler("linear", num_train_timesteps=10).alphas_cumprod  # log-SNR from 9.2 to about 1.5
    out = denoise_error(lambda x, t: x, short, "sample", torch.zeros(4, 1, 2, 2))
    assert out["denoise"] is None and "missing level -6" in out["denoise_note"]
