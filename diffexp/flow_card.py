"""The model card's snippet for a flow model: the flow sampler built as `diffexp.flow_samplers` builds it, so it
draws `diffexp-sample`'s images for the stated seed on a CPU."""

from __future__ import annotations

import inspect

from diffexp.flow_samplers import EULER_GRID, FLOW_SCHEDULERS, flow_settings

FLOW_SAMPLER_NAMES = {
    "flow_euler": "Flow Euler",
    "flow_heun": "Flow Heun (2nd order, 2 model calls a step but the last)",
    "flow_dpm_solver": "DPM-Solver++ (2nd order) in flow mode",
    "flow_dpm_solver_sde": "SDE DPM-Solver++ (2nd order) in flow mode, fresh noise each step",
    "flow_unipc": "UniPC in flow mode",
    "flow_deis": "DEIS in flow mode",
}


def own_sampler(scheduler) -> str:
    """What `DDPMPipeline.__call__` runs with the pipeline's scheduler: DDPM, or flow Euler for a flow model."""
    if not hasattr(scheduler, "alphas_cumprod"):
        return "flow Euler (`FlowMatchEulerDiscreteScheduler`, diffusers' own step grid) at 1000 steps"
    return f"DDPM over all {scheduler.config.num_train_timesteps} training steps"


def flow_snippet(source: str, scheduler, name: str, steps: int, step_options: dict, shape: tuple, n: int, seed: int):
    """Python that loads the pipeline and samples `n` images with `seed` as diffexp's flow sampler `name` does."""
    cls = FLOW_SCHEDULERS[name][0]
    settings = flow_settings(name, scheduler)
    shift_key = "flow_shift" if "flow_shift" in settings else "shift"
    del settings[shift_key]  # written as code below: the pipeline's own training shift
    takes_generator = "generator" in inspect.signature(cls.step).parameters  # UniPC's step takes none
    step_args = (", generator=generator" if takes_generator else "") + "".join(
        f", {k}={v!r}" for k, v in step_options.items()
    )
    uniform = name == "flow_euler" and EULER_GRID == "uniform"
    grid = (
        f"scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, {steps} + 1)[:-1].tolist())  # sigma 1, ..., 1/{steps}"
        if uniform
        else f"scheduler.set_timesteps({steps})"
    )
    channels, size = shape
    return f"""import numpy as np
import torch
from diffusers import DDPMPipeline, {cls.__name__}
from PIL import Image

pipeline = DDPMPipeline.from_pretrained({source!r})
unet, training = pipeline.unet.eval(), pipeline.scheduler  # a flow model: training is its FlowMatch scheduler
# {FLOW_SAMPLER_NAMES[name]} at {steps} steps, built as diffexp builds it: on the training shift
settings = {settings!r}
scheduler = {cls.__name__}.from_config(settings | {{{shift_key!r}: training.config.shift}})
{grid}

generator = torch.Generator().manual_seed({seed})  # draws the starting noise, then any step noise
x = torch.randn({n}, {channels}, {size}, {size}, generator=generator)  # flow starts from the noise itself (t = 1)
with torch.no_grad():
    for t in scheduler.timesteps:
        model_output = unet(x, t).sample  # the velocity noise - x_0 at t x 1000
        x = scheduler.step(model_output, t, x{step_args}).prev_sample
samples = x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)  # [{n}, {channels}, {size}, {size}]
images = [Image.fromarray(s.permute(1, 2, 0).squeeze(-1).numpy()) for s in samples]
"""
