"""diffexp-evaluate: a trained run's quality against the number of network evaluations, per sampler.

`diffexp-evaluate run=DIR samplers=[ddim,dpm_solver] steps=[10,25,50] ddpm_steps=[] n=512` writes `DIR/eval/<name>.csv`,
`.md` and `.png`; a second evaluation never overwrites the first.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from diffexp.config import CONF_DIR, instantiate
from diffexp.data import to_uint8
from diffexp.errors import ConfigError, report
from diffexp.metrics import check_sample_count, reference_features, score
from diffexp.run_folder import LoadedRun, load_run
from diffexp.sample import free_path, pick_device
from diffexp.samplers import SCHEDULERS, Sampler, seeded_noise
from diffexp.tables import write_table

log = logging.getLogger("diffexp.evaluate")
COLUMNS = [
    "sampler",
    "steps",
    "nfe",
    "fid",
    "kid",
    "kid_std",
    "precision",
    "recall",
    "top_prob",
    "class_min",
    "class_max",
    "feature_net",
    "n_real",
    "n_fake",
    "seconds",
    "images_per_s",
]


def reference_for(loaded: LoadedRun, net, cfg: DictConfig) -> torch.Tensor:
    """The cached reference features of the run's own dataset (the same set training evaluation used)."""
    data = loaded.config.get("data")
    if not data:
        raise ConfigError(
            f"run={cfg.run} carries no diffexp config, so its dataset is unknown: evaluate a diffexp run folder "
            f"or a pipeline that diffexp exported"
        )
    datamodule = instantiate(data, seed=0)
    images = datamodule.prepare()
    key = str(data.get("name") or data.get("path") or data["_target_"].rsplit(".", 1)[-1])
    return reference_features(images, net, key, Path(cfg.eval.cache_dir).expanduser(), cfg.eval.reference_size)


def run(cfg: DictConfig) -> Path:
    from diffexp.features import load_feature_net

    if not cfg.eval.net:
        raise ConfigError("eval=none has no metric to evaluate: use eval=digits or eval=inception")
    n = cfg.n or cfg.eval.n_samples
    grid = {name: list(cfg.steps) for name in cfg.samplers}
    if cfg.ddpm_steps:
        grid["ddpm"] = list(cfg.ddpm_steps)
    for name, steps in grid.items():
        if name not in SCHEDULERS:
            raise ConfigError(f"samplers: {name!r} is not a sampler; use some of {sorted(SCHEDULERS)}")
        if not steps or min(steps) < 1:
            raise ConfigError(f"steps={steps} for {name}: give step counts of at least 1")
    device = pick_device(cfg.device)
    torch.set_num_threads(cfg.threads or len(os.sched_getaffinity(0)))
    loaded = load_run(Path(cfg.run))
    unet = loaded.unet.to(device)
    net = load_feature_net(cfg.eval.net, unet.config.in_channels, unet.config.sample_size).to(device)
    check_sample_count(n, net.num_features, cfg.eval.net)
    too_many = [(s, k) for s, ks in grid.items() for k in ks if k > loaded.scheduler.config.num_train_timesteps]
    if too_many:
        raise ConfigError(
            f"steps: {too_many} exceed the model's {loaded.scheduler.config.num_train_timesteps} "
            f"training timesteps: lower them"
        )
    real = reference_for(loaded, net, cfg)

    rows = []
    for name, steps_list in grid.items():
        for steps in steps_list:
            start = time.perf_counter()
            noise, generator = seeded_noise(n, unet.config.in_channels, unet.config.sample_size, cfg.seed, device)
            images = to_uint8(Sampler(name, steps)(unet, loaded.scheduler, noise, generator=generator))
            seconds = time.perf_counter() - start
            fake, probs = net.features_and_probs(images)
            figures = score(real, fake, net.name, cfg.eval.kid_subset_size, fake_probs=probs)
            rows.append(
                {
                    "sampler": name,
                    "steps": steps,
                    "nfe": steps,
                    **figures,
                    "seconds": round(seconds, 2),
                    "images_per_s": round(n / seconds, 2),
                }
            )
            log.info("%s-%d: fid %.3f", name, steps, figures["fid"])
    stem = f"{cfg.eval.net}-n{n}-seed{cfg.seed}"
    path = free_path(Path(cfg.run) / "eval", stem, ".csv")
    write_table(rows, COLUMNS, path)
    plot_quality(rows, path.with_suffix(".png"), f"{cfg.eval.net} FID, {n} samples")
    print(path.with_suffix(".md").read_text())
    return path


def plot_quality(rows: list[dict], path: Path, title: str) -> None:
    """FID against network evaluations, one line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r["nfe"], r["fid"]) for r in rows if r["sampler"] == name)
        ax.plot(*zip(*mine, strict=True), marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("network evaluations per image")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    report(run, cfg)


if __name__ == "__main__":
    main()
