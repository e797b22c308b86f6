"""diffexp-sample: a PNG grid from a run or pipeline folder, into `RUN/samples/`, never over an existing file.

`diffexp-sample run=DIR sampler=dpm_solver sampler.steps=20 n=64 seed=0`
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from diffexp.cli import entry
from diffexp.config import CONF_DIR, instantiate
from diffexp.data import to_uint8
from diffexp.errors import ConfigError, report
from diffexp.files import free_path
from diffexp.flow import is_flow_scheduler
from diffexp.flow_samplers import follow_family
from diffexp.loading import load_run
from diffexp.plots import save_grid
from diffexp.record import RunRecord
from diffexp.runtime import pick_device, set_threads
from diffexp.samplers import check_steps, describe, seeded_noise

log = logging.getLogger("diffexp.sample")


def run(cfg: DictConfig) -> Path:
    """A grid of `n` samples of the run into RUN/samples/ (a new file each time); same seed, same images."""
    if cfg.n < 2:
        raise ConfigError(f"n={cfg.n}: a grid needs at least 2 images; use n=2 or more")
    instantiate(cfg.sampler)  # a bad sampler setting fails before the run is read
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    loaded = load_run(Path(cfg.run))
    sampler = instantiate(follow_family(cfg.sampler, is_flow_scheduler(loaded.scheduler), loaded.config))
    unet = loaded.unet.to(device)
    check_steps(sampler.steps, loaded.scheduler)
    noise, generator = seeded_noise(cfg.n, unet.config.in_channels, unet.config.sample_size, cfg.seed, device)
    trajectory = [] if cfg.trajectory else None
    images = to_uint8(sampler(unet, loaded.scheduler, noise, generator=generator, trajectory=trajectory))

    stem = f"{sampler.name}-{sampler.steps}steps-seed{cfg.seed}-n{cfg.n}"
    folder = Path(cfg.run) / "samples"
    step = loaded.step if loaded.step is not None else getattr(RunRecord.read(Path(cfg.run)), "steps", None)
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
def hydra_main(cfg: DictConfig) -> None:
    report(run, cfg)


main = entry("sample", hydra_main)  # the console script: the command line checked first (diffexp.cli)


if __name__ == "__main__":
    main()
