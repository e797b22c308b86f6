"""Flow matching (rectified flow, as SD3 trains it): the path, the training objective and its checks.

The same UNet learns x_t = (1 - t) x_0 + t noise with the velocity target noise - x_0; t is continuous in [0, 1]
and reaches the UNet as t x 1000, the way diffusers' flow pipelines feed it. How t is drawn (and the loss weighted)
follows diffusers' SD3 training utilities, seeded by the run's generator so CPU runs repeat bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from diffexp.errors import ConfigError

FLOW_TARGET = "diffexp.flow.flow_scheduler"
DENSITIES = ("logit_normal", "mode", "uniform")  # how t is drawn
LOSS_WEIGHTINGS = ("sigma_sqrt", "cosmap")  # uniform t, weighted loss (diffusers' names)
WEIGHTING_SCHEMES = DENSITIES + LOSS_WEIGHTINGS
MIN_SIGMA = 1e-3  # sigma_sqrt weights 1 / t^2: floored at the training scheduler's smallest sigma (1 / 1000)


def check_flow_settings(shift: float, weighting_scheme: str, logit_std: float, prediction_type: str = "flow") -> None:
    """Each flow setting that cannot train gets one line naming it and the fix."""
    if prediction_type != "flow":
        raise ConfigError(
            f"schedule.prediction_type={prediction_type} with schedule=flow: a flow model predicts the velocity; "
            "drop the override (or use a DDPM schedule, e.g. schedule=cosine)"
        )
    if not shift > 0:
        raise ConfigError(f"schedule.shift={shift}: the timestep shift must be > 0 (1.0 = none; SD3 uses 3.0)")
    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ConfigError(f"schedule.weighting_scheme={weighting_scheme}: use one of {list(WEIGHTING_SCHEMES)}")
    if not logit_std > 0:
        raise ConfigError(f"schedule.logit_std={logit_std}: the logit-normal's spread must be > 0 (e.g. 1.0)")


def flow_scheduler(
    shift: float = 1.0,
    num_train_timesteps: int = 1000,
    weighting_scheme: str = "logit_normal",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    mode_scale: float = 1.29,
    prediction_type: str = "flow",
) -> FlowMatchEulerDiscreteScheduler:
    """The flow run's scheduler (what the pipeline ships; samplers read its shift); the training settings are
    checked here and taken by `FlowObjective`."""
    check_flow_settings(shift, weighting_scheme, logit_std, prediction_type)
    if num_train_timesteps < 2:
        raise ConfigError(f"schedule.num_train_timesteps={num_train_timesteps}: use at least 2")
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=num_train_timesteps, shift=shift)


def is_flow_config(schedule: dict | None) -> bool:
    """Whether a run's `schedule` config is the flow path."""
    return bool(schedule) and (schedule.get("_target_") == FLOW_TARGET or schedule.get("prediction_type") == "flow")


def is_flow_scheduler(scheduler) -> bool:
    """Whether a scheduler runs the flow path: a FlowMatch class, or a multistep solver in flow mode."""
    flow_classes = (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler)
    return isinstance(scheduler, flow_classes) or bool(scheduler.config.get("use_flow_sigmas", False))


def prediction_of(scheduler) -> str:
    """The training scheduler's prediction target; `flow` (the velocity) for a flow run."""
    return "flow" if is_flow_scheduler(scheduler) else scheduler.config.prediction_type


def shifted(t: torch.Tensor, shift: float) -> torch.Tensor:
    """FlowMatchEulerDiscreteScheduler's shift: t -> shift t / (1 + (shift - 1) t)."""
    return shift * t / (1 + (shift - 1) * t)


@dataclass
class FlowObjective:
    """The flow-matching loss with SD3's timestep density and loss weighting (diffusers' names and defaults)."""

    shift: float = 1.0
    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    num_train_timesteps: int = 1000

    def loss(
        self,
        unet: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        generator: torch.Generator,
        channels_last: bool = False,
    ) -> torch.Tensor:
        """The batch's weighted velocity MSE; noise first, then t, both from `generator`."""
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        u = compute_density_for_timestep_sampling(
            self.weighting_scheme,
            len(x0),
            logit_mean=self.logit_mean,
            logit_std=self.logit_std,
            mode_scale=self.mode_scale,
            device=x0.device,
            generator=generator,
        )
        t = shifted(u.float(), self.shift)
        tb = t.to(x0.dtype).view(-1, 1, 1, 1)
        xt = (1 - tb) * x0 + tb * noise
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        pred = unet(xt, t * self.num_train_timesteps).sample
        per_image = F.mse_loss(pred.float(), (noise - x0).float(), reduction="none").mean(dim=(1, 2, 3))
        weight = compute_loss_weighting_for_sd3(self.weighting_scheme, sigmas=t.clamp(min=MIN_SIGMA))
        return (weight.float() * per_image).mean()


def flow_objective(schedule: dict) -> FlowObjective | None:
    """The training objective of a flow run's `schedule` config; None for a DDPM schedule."""
    if not is_flow_config(schedule):
        return None
    keys = FlowObjective.__dataclass_fields__
    return FlowObjective(**{k: schedule[k] for k in keys if k in schedule})


def check_family(schedule: dict, loss: dict, sampler: str, eval_sampler: str | None) -> None:
    """A train config's flow checks: min-SNR is a DDPM weighting, and samplers must be of the run's family."""
    from diffexp.flow_samplers import check_sampler_family

    flow = is_flow_config(schedule)
    if flow:
        check_flow_settings(
            schedule.get("shift", 1.0), schedule.get("weighting_scheme", "logit_normal"),
            schedule.get("logit_std", 1.0), schedule.get("prediction_type", "flow"),
        )  # fmt: skip
        if loss.get("snr_gamma") is not None:
            raise ConfigError(
                f"loss.snr_gamma={loss['snr_gamma']} with schedule=flow: min-SNR weights the DDPM path; drop it "
                "(flow's weighting is schedule.weighting_scheme)"
            )
    check_sampler_family(sampler, flow, "sampler")
    if eval_sampler:
        check_sampler_family(eval_sampler, flow, "eval.sampler")


def search_space(cfg, trial) -> None:
    """Optuna's conditional search of the EMA and the schedule (the sweeper's `custom_search_space`): the EMA as
    `diffexp.ema.search_space` draws it, then `schedule` cosine (with its prediction target) or flow (with its
    timestep density and shift), so no trial draws a setting its schedule ignores."""
    from diffexp.ema import search_space as ema_space

    ema_space(cfg, trial)
    if trial.suggest_categorical("schedule", ["cosine", "flow"]) == "cosine":
        trial.suggest_categorical("schedule.prediction_type", ["epsilon", "v_prediction"])
    else:
        trial.suggest_categorical("schedule.weighting_scheme", ["logit_normal", "uniform", "mode", "cosmap"])
        trial.suggest_categorical("schedule.shift", [1.0, 2.0, 3.0])
