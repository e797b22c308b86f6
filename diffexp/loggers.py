"""The run's Lightning logger (W&B by default: offline without a key, one run per sweep job, an id kept across
resumes) and what W&B is told at the end."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from hydra.types import RunMode
from omegaconf import DictConfig

from diffexp.config import flatten, instantiate


def new_id() -> str:
    """A W&B run id, kept in metrics.json so a resumed run logs into the same W&B run."""
    import secrets

    return secrets.token_hex(4)


def make_logger(cfg: DictConfig, run_dir: Path, choices: dict, wandb_id: str | None, hydra_cfg):
    """The configured Lightning logger; W&B runs get an id kept across resumes, a sweep group and recipe tags."""
    if not cfg.logger:
        return None
    if cfg.logger._target_.endswith("WandbLogger"):
        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        tags = [f"{g}={choices[g]}" for g in ("model", "schedule", "data") if g in choices]
        tags.append(f"prediction={cfg.schedule.prediction_type}")
        logger = instantiate(
            cfg.logger,
            id=wandb_id,
            resume="allow",
            group=Path(hydra_cfg.sweep.dir).name if multirun else None,
            name=f"{Path(hydra_cfg.sweep.dir).name}/{hydra_cfg.job.num}" if multirun else run_dir.name,
            tags=tags,
            **wandb_settings(bool(cfg.get("verbose"))),
        )
        drop_anonymous(logger)
        return logger
    return instantiate(cfg.logger)


def finish_wandb(logger, summary: dict, parameters: int | None, pruned: bool, failed: bool) -> Path | None:
    """The W&B run's summary and tags, then `wandb.finish` (else the next sweep job logs into the same run);
    returns the offline run's folder, for the line that says how to upload it."""
    if not isinstance(logger, pl.loggers.WandbLogger):
        return None
    offline = Path(logger.experiment.dir).parent if logger.experiment.offline else None
    flat = flatten({k: v for k, v in summary.items() if k != "eval_history" and v is not None})
    logger.experiment.summary.update(flat | {"parameters": parameters})
    if pruned:
        logger.experiment.tags = (*logger.experiment.tags, "pruned")
    import wandb

    wandb.finish(exit_code=1 if failed else 0)
    return offline


def wandb_settings(verbose: bool) -> dict:
    """WandbLogger arguments: W&B's start and end banners (a 20-line summary) only when verbose; diffexp prints
    where the W&B run is at the end."""
    if verbose:
        return {}
    import wandb

    return {"settings": wandb.Settings(quiet=True, silent=True)}


def drop_anonymous(logger) -> None:
    """Lightning's WandbLogger always passes `anonymous=None`, which W&B 0.31 warns about on every run; W&B ignores
    the setting anyway."""
    init = getattr(logger, "_wandb_init", None)
    if isinstance(init, dict) and init.get("anonymous") is None:
        init.pop("anonymous", None)
