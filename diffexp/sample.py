"""diffexp-sample: a PNG grid from a run or pipeline folder, into `RUN/samples/`, never over an existing file.

`diffexp-sample run=DIR sampler=dpm_solver sampler.steps=20 n=64 seed=0`
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from diffexp.config import CONF_DIR, instantiate
from diffexp.data import to_uint8
from diffexp.errors import ConfigError, report
from diffexp.run_folder import free_path, load_run, read_metrics
from diffexp.samplers import describe, save_grid, seeded_noise

log = logging.getLogger("diffexp.sample")


def pick_device(device: str) -> torch.device:
    """`auto`: the GPU where there is one; a named CUDA device that is missing is refused, not run on the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is visible: use device=cpu or device=auto")
    return torch.device(device)


def run(cfg: DictConfig) -> Path:
    """A grid of `n` samples of the run into RUN/samples/ (a new file each time); same seed, same images."""
    if cfg.n < 2:
        raise ConfigError(f"n={cfg.n}: a grid needs at least 2 images; use n=2 or more")
    sampler = instantiate(cfg.sampler)
    device = pick_device(cfg.device)
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))
    loaded = load_run(Path(cfg.run))
    unet = loaded.unet.to(device)
    if sampler.steps > loaded.scheduler.config.num_train_timesteps:
        raise ConfigError(
            f"sampler.steps={sampler.steps} exceeds the model's {loaded.scheduler.config.num_train_timesteps} "
            f"training timesteps: lower sampler.steps"
        )
    noise, generator = seeded_noise(cfg.n, unet.config.in_channels, unet.config.sample_size, cfg.seed, device)
    trajectory = [] if cfg.trajectory else None
    images = to_uint8(sampler(unet, loaded.scheduler, noise, generator=generator, trajectory=trajectory))

    stem = f"{sampler.name}-{sampler.steps}steps-seed{cfg.seed}-n{cfg.n}"
    folder = Path(cfg.run) / "samples"
    step = loaded.step if loaded.step is not None else read_metrics(Path(cfg.run)).get("steps")
    info = {"step": step, "sampler": sampler.name, "steps": sampler.steps, "seed": cfg.seed, "n": cfg.n}
    scale = max(1, 64 // unet.config.sample_size)
    path = save_grid(images, free_path(folder, stem), nrow=cfg.nrow, scale=scale, info=info)
    if trajectory is not None:
        from diffexp.plots import plot_trajectory

        picture = free_path(folder, f"{path.stem}-trajectory")
        title = f"denoising trajectory: {describe(info)}"
        plot_trajectory(trajectory, picture, title, info=info, final=images.cpu())
        log.info("wrote %s", picture)
    if cfg.singles:
        singles = path.with_suffix("")
        for i, img in enumerate(images):
            save_grid(img[None], singles / f"{i:04d}.png", pad=0)
    log.info("wrote %s", path)
    print(path)
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="sample")
def main(cfg: DictConfig) -> None:
    report(run, cfg)


if __name__ == "__main__":
    main()
