"""Sampling: the reverse-diffusion loop, and the diffusers schedulers that can drive it.

Every sampler is built from the *training* betas (`trained_betas`), so each works with every training
schedule, sigmoid included, and with `timestep_spacing="trailing"`, so few-step sampling starts at the noisiest
timestep. All share one signature: `Sampler(unet, train_scheduler, noise, generator) -> images in [-1, 1]`.
"""

from __future__ import annotations

import inspect

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UNet2DModel,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

from diffexp.denoise import x0_from_output
from diffexp.errors import ConfigError
from diffexp.flow import is_flow_scheduler
from diffexp.flow_samplers import FLOW_SCHEDULERS, check_sampler_family, flow_settings, flow_x0, set_grid
from diffexp.terminal import bars_wanted

# Pixel-space images live in [-1, 1]: DDPM and DDIM clip their x_0 estimate to it (clip_sample), DPM-Solver++ and
# UniPC threshold it. Without that, the first steps of a cosine schedule (t=999: sigma ~ 2e4) blow up in float32.
# Euler can do neither, so it starts from the leading grid (t=960 at 25 steps) instead of t=999.
THRESHOLD = {"thresholding": True, "sample_max_value": 1.0}
SCHEDULERS = {
    "ddpm": (DDPMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpm_solver": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2, **THRESHOLD}),
    # The SDE form adds fresh noise each step, which corrects the errors of a briefly trained model: on the default
    # recipe it beats DDPM-1000's FID at 25 steps where the ODE samplers trail it by ~2x (docs/recipes.md).
    "dpm_solver_sde": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, **THRESHOLD},
    ),
    "euler": (EulerDiscreteScheduler, {"timestep_spacing": "leading", "steps_offset": 1}),
    "unipc": (UniPCMultistepScheduler, THRESHOLD),
    **FLOW_SCHEDULERS,  # flow_*: the flow family (diffexp/flow_samplers.py), for schedule=flow models only
}


def scheduler_settings(name: str, train_scheduler: DDPMScheduler, **options) -> dict:
    """What `sampling_scheduler` sets on top of the training scheduler's config (the model card's snippet writes
    these out, so it builds the very scheduler diffexp samples with); `trained_betas` is the training betas."""
    if name not in SCHEDULERS:
        raise ConfigError(f"sampler.name={name!r}: use one of {sorted(SCHEDULERS)}")
    if name in FLOW_SCHEDULERS:  # built from the training shift: a flow model has no betas
        return flow_settings(name, train_scheduler) | options
    return {
        "trained_betas": train_scheduler.betas.tolist(),
        "beta_schedule": "linear",  # ignored given trained_betas; "sigmoid" would make non-DDPM classes raise
        # The training betas are already rescaled where asked; the flag also makes DPM-Solver++, UniPC and Euler
        # set the last alphas_cumprod to 2**-24 instead of 0, whose log-SNR (-inf) makes their steps NaN. Rescaling
        # rescaled betas again changes them by float rounding only (terminal sqrt(alpha_bar) is already 0).
        "rescale_betas_zero_snr": bool(train_scheduler.config.get("rescale_betas_zero_snr", False)),
        "timestep_spacing": "trailing",
        "steps_offset": 0,
        **SCHEDULERS[name][1],
        **options,
    }


def sampling_scheduler(name: str, train_scheduler: DDPMScheduler, **options) -> SchedulerMixin:
    """A diffusers scheduler of kind `name` on the training schedule's exact betas."""
    check_sampler_family(name, is_flow_scheduler(train_scheduler), "sampler.name")
    settings = scheduler_settings(name, train_scheduler, **options)
    if name in FLOW_SCHEDULERS:
        return SCHEDULERS[name][0].from_config(settings)
    # diffusers' from_config drops keys listed in `_use_default_values`: without this, trained_betas would be lost.
    config = {k: v for k, v in train_scheduler.config.items() if k != "_use_default_values"}
    return SCHEDULERS[name][0].from_config(config | settings)


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    scheduler: SchedulerMixin,
    noise: torch.Tensor,
    steps: int,
    generator: torch.Generator | None = None,
    progress: bool = True,
    trajectory: list | None = None,
    **step_options,
) -> torch.Tensor:
    """The reverse process: start from `noise`, then for each t: predict with the UNet, `scheduler.step`.

    `step_options` go to every `scheduler.step` (e.g. `eta` for DDIM). Returns images in [-1, 1]. A `trajectory`
    list receives `(t, x_t, predicted x0)` at every step (on the CPU); recording changes no sample.
    """
    set_grid(scheduler, steps, noise.device)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = ({"generator": generator} if takes_generator else {}) | step_options
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)  # FlowMatch schedulers have none: x_1 is the noise
    scale = getattr(scheduler, "scale_model_input", None)
    for t in tqdm(
        scheduler.timesteps,
        desc=f"sampling ({type(scheduler).__name__})",
        disable=not (progress and bars_wanted()),  # a pipe or a log file gets no bar (as training)
        leave=False,
    ):
        model_input = scale(x, t) if scale else x  # Euler: x / sqrt(sigma^2 + 1), the x_t of the DDPM maths
        model_output = unet(model_input, t).sample
        out = scheduler.step(model_output, t, x, **extra)
        if trajectory is not None:
            x0 = getattr(out, "pred_original_sample", None)
            x0 = predicted_x0(scheduler, model_output, t, model_input) if x0 is None else x0
            trajectory.append((int(t), model_input.cpu(), x0.cpu()))
        x = out.prev_sample
    return x.clamp(-1, 1)


def predicted_x0(scheduler: SchedulerMixin, model_output: torch.Tensor, t, x_t: torch.Tensor) -> torch.Tensor:
    """x0 from the model output and the schedule's alphas, for schedulers whose step returns none (DPM-Solver++,
    UniPC): epsilon: (x_t - sqrt(1 - a) eps) / sqrt(a); v: sqrt(a) x_t - sqrt(1 - a) v; sample: the output;
    flow: x_t - t v."""
    if is_flow_scheduler(scheduler):
        return flow_x0(model_output, t, x_t, scheduler.config.num_train_timesteps)
    a = scheduler.alphas_cumprod.to(x_t.device)[int(t)].to(x_t.dtype)
    return x0_from_output(model_output, x_t, a.sqrt(), (1 - a).sqrt(), scheduler.config.prediction_type)


def check_steps(steps: int, train_scheduler: DDPMScheduler, setting: str = "sampler.steps") -> None:
    """A sampler cannot take more steps than the model has training timesteps."""
    total = train_scheduler.config.num_train_timesteps
    if steps > total:
        raise ConfigError(f"{setting}={steps} exceeds the model's {total} training timesteps: use {setting}<={total}")


class Sampler:
    """A named sampler with its number of steps.

    Args:
        name: `ddpm`, `ddim`, `dpm_solver`, `dpm_solver_sde`, `euler` or `unipc`; for flow models `flow_euler`,
            `flow_heun`, `flow_dpm_solver`, `flow_dpm_solver_sde`, `flow_unipc` or `flow_deis`.
        steps: steps per image: network evaluations, but flow_heun's 2N - 1 (DDPM at fewer than the training
            steps skips timesteps).
        batch_size: images denoised at once.
        options: extra settings of the diffusers scheduler: its config keys (e.g. `solver_order`) or arguments of
            its `step` (e.g. `eta` for DDIM).
    """

    def __init__(self, name: str, steps: int, batch_size: int = 256, options: dict | None = None) -> None:
        if name not in SCHEDULERS:
            raise ConfigError(f"sampler.name={name!r}: use one of {sorted(SCHEDULERS)}")
        if steps < 1:
            raise ConfigError(f"sampler.steps={steps}: use at least 1 step")
        if batch_size < 1:
            raise ConfigError(f"sampler.batch_size={batch_size}: use a positive batch size")
        self.name, self.steps, self.batch_size, self.options = name, steps, batch_size, dict(options or {})
        cls = SCHEDULERS[name][0]
        step_args = set(inspect.signature(cls.step).parameters) - {"self", "model_output", "timestep", "sample"}
        step_args -= {"generator", "return_dict"}
        config_args = set(inspect.signature(cls.__init__).parameters) - {"self"}
        for key in self.options:
            if key not in step_args | config_args:
                known = sorted(step_args | config_args)
                raise ConfigError(f"sampler.options.{key}: not a setting of {cls.__name__}; use one of {known}")
        self.step_options = {k: v for k, v in self.options.items() if k in step_args}
        self.scheduler_options = {k: v for k, v in self.options.items() if k not in step_args}

    def __call__(
        self,
        unet: UNet2DModel,
        train_scheduler: DDPMScheduler,
        noise: torch.Tensor,
        generator: torch.Generator | None = None,
        progress: bool = True,
        trajectory: list | None = None,
    ) -> torch.Tensor:
        """Samples from `noise`; `trajectory` (a list) records the first batch's steps (see `sample`)."""
        check_steps(self.steps, train_scheduler)
        scheduler = sampling_scheduler(self.name, train_scheduler, **self.scheduler_options)
        chunks = [
            sample(unet, scheduler, chunk, self.steps, generator, progress, trajectory if i == 0 else None,
                   **self.step_options)
            for i, chunk in enumerate(noise.split(self.batch_size))
        ]  # fmt: skip
        return torch.cat(chunks)


def seeded_noise(
    n: int, channels: int, resolution: int, seed: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Generator]:
    """The starting noise of `seed` (the same on any device), and the generator that goes on to draw the step
    noise of stochastic samplers (DDPM, SDE DPM-Solver++): same seed, same images; the step noise is never a copy
    of the starting noise, as it would be from a second generator with the same seed."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, resolution, resolution, generator=g).to(device), g


def describe(info: dict) -> str:
    """`step 250, dpm_solver_sde, 25 steps, seed 0`: a grid's caption from its PNG text."""
    parts = [f"step {info['step']}" if info.get("step") is not None else None, info.get("sampler")]
    parts += [f"{info['steps']} steps" if "steps" in info else None, f"seed {info['seed']}" if "seed" in info else None]
    return ", ".join(p for p in parts if p)
