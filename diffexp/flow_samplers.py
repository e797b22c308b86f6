"""The flow family of samplers: diffusers schedulers that integrate a flow model's velocity from t = 1 to 0.

FlowMatch Euler and Heun, and DPM-Solver++ (ODE and SDE), UniPC and DEIS in their flow mode (`use_flow_sigmas`,
`flow_prediction`, `flow_shift` = the training shift). They are built from the training scheduler's shift, not
from betas, and have no `init_noise_sigma` or `scale_model_input`: the starting noise is x_1 itself. A sampler
of one family cannot sample a model of the other, so each is refused where the families differ.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from diffexp.errors import ConfigError

FLOW_MODE = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
FLOW_SCHEDULERS = {
    "flow_euler": (FlowMatchEulerDiscreteScheduler, {}),
    "flow_heun": (FlowMatchHeunDiscreteScheduler, {}),
    "flow_dpm_solver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, **FLOW_MODE}),
    "flow_dpm_solver_sde": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **FLOW_MODE},
    ),
    "flow_unipc": (UniPCMultistepScheduler, FLOW_MODE),
    "flow_deis": (DEISMultistepScheduler, FLOW_MODE),
}
FLOW_REFERENCE = "flow_euler"  # the flow family's reference (at 1000 steps), as DDPM-1000 is the DDPM family's
# Flow Euler's grid: "uniform" spends every call on sigma = 1, (N-1)/N, ..., 1/N; diffusers' own set_timesteps(N)
# spends the last at sigma 0.001 (timesteps 1000, 667, 334, 1 at N=4), a call that barely moves x. Measured on a
# briefly trained tiny flow model (docs/evaluation.md): uniform has the lower FID at 4-10 calls.
EULER_GRID = "uniform"


def is_flow_sampler(name: str) -> bool:
    return name in FLOW_SCHEDULERS


def check_sampler_family(name: str, flow_model: bool, setting: str = "sampler") -> None:
    """One line where the sampler's family is not the model's."""
    if is_flow_sampler(name) == flow_model:
        return
    if flow_model:
        raise ConfigError(
            f"{setting}={name} samples DDPM models, but this is a flow model (schedule=flow): use a flow sampler, "
            f"one of {sorted(FLOW_SCHEDULERS)}"
        )
    raise ConfigError(
        f"{setting}={name} samples flow models (schedule=flow), but this is a DDPM model: use a DDPM sampler "
        f"(ddpm, ddim, dpm_solver, dpm_solver_sde, euler, unipc)"
    )


def flow_settings(name: str, train_scheduler) -> dict:
    """The flow sampler's config: the training shift and timesteps, and the sampler's own settings."""
    cls, own = FLOW_SCHEDULERS[name]
    shift = float(train_scheduler.config.get("shift", 1.0))
    base = {"num_train_timesteps": int(train_scheduler.config.num_train_timesteps)}
    base |= {"shift": shift} if cls in (FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler) else {}
    base |= {"flow_shift": shift} if own.get("use_flow_sigmas") else {}
    return base | own


def euler_sigmas(steps: int) -> list[float]:
    """The uniform grid sigma = 1, (N-1)/N, ..., 1/N (the scheduler applies the shift and appends 0)."""
    return np.linspace(1.0, 0.0, steps + 1)[:-1].tolist()


def set_grid(scheduler, steps: int, device: torch.device | str | None = None) -> None:
    """`scheduler.set_timesteps`, on the uniform grid for flow Euler (EULER_GRID), diffusers' own otherwise."""
    if isinstance(scheduler, FlowMatchEulerDiscreteScheduler) and EULER_GRID == "uniform":
        scheduler.set_timesteps(sigmas=euler_sigmas(steps), device=device)
    else:
        scheduler.set_timesteps(steps, device=device)


def model_calls(name: str, steps: int) -> int:
    """NFE: the UNet calls a sampler makes in `steps` steps (Heun: 2 per step but the last, 2N - 1)."""
    return 2 * steps - 1 if name == "flow_heun" else steps


def flow_x0(model_output: torch.Tensor, t, x_t: torch.Tensor, num_train_timesteps: int = 1000) -> torch.Tensor:
    """x_0 = x_t - t v, the flow model's estimate of the clean image at timestep t (t x 1000 in the UNet's units)."""
    return x_t - (float(t) / num_train_timesteps) * model_output


def family_samplers(flow_model: bool, ddpm_names: list[str]) -> list[str]:
    """Every few-step sampler of the model's family (DDPM, the DDPM family's reference, left out)."""
    return list(FLOW_SCHEDULERS) if flow_model else [n for n in ddpm_names if n != "ddpm"]


def sampler_named() -> bool:
    """Whether the command line named a sampler (`sampler=...` or `sampler.name=...`); True outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return True
    keys = {o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task}
    return bool(keys & {"sampler", "sampler.name"})


def follow_family(sampler_cfg, flow_model: bool, run_config: dict):
    """diffexp-sample's rule: where no sampler is named, a flow run samples with its own preview sampler (flow
    Euler for a pipeline without a diffexp config), at the steps asked; a named sampler must be of its family."""
    if not flow_model or is_flow_sampler(sampler_cfg.name) or sampler_named():
        return sampler_cfg
    own = (run_config.get("sampler") or {}).get("name")
    name = own if own and is_flow_sampler(own) else FLOW_REFERENCE
    from omegaconf import OmegaConf

    return OmegaConf.merge(sampler_cfg, {"name": name, "options": {}})  # a DDPM sampler's options mean nothing here
