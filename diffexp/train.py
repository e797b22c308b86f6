"""diffexp-train: train one recipe into its run folder (`-m` sweeps many; `resume=DIR` continues one).

The pieces, in the order `run` builds them: data (`data.py`), UNet (`model.py`), noise schedule
(`schedule.py`), the LightningModule with the training step and EMA (`diffusion.py`), previews and loss record
(`callbacks.py`), then the Lightning Trainer; at the end the pipeline export (`export.py`) and `metrics.json`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import diffexp.config  # noqa: F401  (registers the resolvers the YAML uses)
from diffexp.callbacks import Evaluate, LossHistory, run_callbacks
from diffexp.cli import entry
from diffexp.config import CONF_DIR, flatten, instantiate, remove_new_folder
from diffexp.denoise import reference_images
from diffexp.diffusion import DiffusionModule
from diffexp.errors import ConfigError, ForeignFolderError, report
from diffexp.export import export_pipeline
from diffexp.files import atomic_write_text
from diffexp.flow import flow_objective
from diffexp.heldout import evaluation_reference
from diffexp.identity import resumed_fingerprint
from diffexp.loggers import finish_wandb, make_logger, new_id
from diffexp.metrics import HIGHER_IS_BETTER
from diffexp.plots import plot_loss_curve, plot_noising, plot_schedule
from diffexp.posthoc import Snapshots
from diffexp.record import RunRecord, process_identity
from diffexp.run_folder import check_own_folder, earlier_job, holds_run, provenance, saved_choices, saved_recipe
from diffexp.runtime import Speed, launcher_jobs, rank, set_threads
from diffexp.samplers import Sampler
from diffexp.schema import check_recipe
from diffexp.search import trial_keys
from diffexp.terminal import quiet

log = logging.getLogger("diffexp.train")


@dataclass
class Training:
    """What `build` makes for `fit` and `record`: the run's folder and recipe and its Lightning pieces."""

    cfg: DictConfig
    run_dir: Path
    config: dict  # the resolved recipe with the group choices (checkpoints, W&B, the model card)
    record: RunRecord
    datamodule: pl.LightningDataModule
    module: DiffusionModule
    trainer: pl.Trainer
    losses: LossHistory
    evaluate: Evaluate | None
    trial: pl.Callback | None
    logger: pl.loggers.Logger | None
    resuming: bool


def run(cfg: DictConfig, choices: dict | None = None, stop=None) -> float | None:
    """Trains the recipe `cfg` into Hydra's output folder: build, fit, record.

    `choices` (the option picked in each config group) defaults to this Hydra job's; `reproduce` passes the
    original run's, and for a pruned trial `stop` (a `diffexp.search.StopAt` where the pruner stopped it).

    Returns the figure a sweep optimises: the final `eval.monitor` metric where evaluation is on, else the
    final training loss.
    """
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    resuming = bool(cfg.resume)
    if resuming:
        cfg = saved_recipe(run_dir, cfg, list(hydra_cfg.overrides.task))
    elif hydra_cfg.mode == RunMode.MULTIRUN and holds_run(run_dir):
        # The same sweep command again: skip finished jobs, resume unfinished ones from their last checkpoint.
        done = earlier_job(run_dir, list(hydra_cfg.overrides.task))
        if done is not None:
            return done
        resuming = True
    check_own_folder(run_dir, resuming)
    check_recipe(cfg, [] if resuming else list(hydra_cfg.overrides.task))
    if choices is None:
        choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
        if resuming:  # the resume command composed the defaults: keep the run's own
            choices = saved_choices(run_dir) or choices
    training = build(cfg, run_dir, choices, resuming, stop)
    if not fit(training):
        return None  # DDP's other ranks: rank 0 records
    return record(training)


def build(cfg: DictConfig, run_dir: Path, choices: dict, resuming: bool, stop=None) -> Training:
    """Every piece of the run, in an order that keeps CPU runs bit for bit (the data, sampler and evaluation are
    built before the UNet draws its initial weights); bad data, samplers and eval settings fail here, before
    anything is written."""
    verbose = bool(cfg.get("verbose"))  # recipes saved before the key have none
    quiet(verbose)
    threads = set_threads(cfg.threads, launcher_jobs(HydraConfig.get()))
    pl.seed_everything(cfg.seed, workers=True, verbose=verbose)
    speed = Speed.of(cfg)
    if speed.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    datamodule = instantiate(cfg.data, seed=cfg.seed, on_device=speed.data_on_device)
    datamodule.prepare()  # bad data fails here, before anything is built or written
    heldout = datamodule.fingerprint()  # and a resumed run whose held-out set changed since
    if resuming:
        recorded = (RunRecord.read(run_dir) or RunRecord()).heldout
        heldout = resumed_fingerprint(recorded, heldout, bool(cfg.get("allow_changed_data")), run_dir)
    sampler = instantiate(cfg.sampler)  # so does a bad sampler
    evaluate = _evaluation(cfg, datamodule, sampler, run_dir)  # and a bad eval setting
    log.info("run folder: %s", run_dir)  # after the refusals above: a refused run never names a folder it removes
    config = OmegaConf.to_container(cfg, resolve=True) | {"choices": choices}
    module = _module(cfg, speed, config)
    parameters = sum(p.numel() for p in module.unet.parameters())
    recipe = ", ".join(f"{g}={choices[g]}" for g in ("data", "model", "schedule", "ema", "sampler") if g in choices)
    log.info("%s (%s parameters), seed %d, %d threads", recipe, f"{parameters:,}", cfg.seed, threads)
    record = (RunRecord.read(run_dir) if resuming else None) or RunRecord()
    if rank() == 0:
        record = RunRecord.update(
            run_dir,
            status="running",
            parameters=parameters,
            recipe=choices,
            environment=provenance(),
            wandb_id=record.wandb_id or new_id(),
            heldout=heldout,
            process=process_identity(),
        )
        plot_schedule(module.scheduler, run_dir / "plots" / "schedule.png")
        plot_noising(module.scheduler, datamodule.images[:4], run_dir / "plots" / "noising.png", seed=cfg.seed)
    losses = LossHistory(run_dir / "losses.csv")
    callbacks = run_callbacks(cfg, run_dir, losses, sampler, evaluate)
    if cfg.ema and "sigma_rels" in cfg.ema:  # ema=posthoc: its snapshots in RUN/ema/
        callbacks.append(Snapshots(run_dir / "ema", module.ema, cfg.data.batch_size))
    trial = stop or _trial_report(cfg, evaluate, HydraConfig.get())
    if trial is not None:
        callbacks.append(trial)
    logger = make_logger(cfg, run_dir, choices, record.wandb_id, HydraConfig.get())
    trainer = _trainer(cfg, run_dir, config, callbacks, logger)
    parts = (datamodule, module, trainer, losses, evaluate, trial, logger)
    return Training(cfg, run_dir, config, record, *parts, resuming)


def _module(cfg: DictConfig, speed: Speed, config: dict) -> DiffusionModule:
    """The UNet (its initial weights drawn here), the noise schedule and the optimisation, as one LightningModule."""
    return DiffusionModule(
        instantiate(cfg.model, _convert_="all"),
        instantiate(cfg.schedule),
        instantiate(cfg.optim.optimizer, **({"fused": True} if speed.fused_adamw else {})),
        warmup=cfg.optim.warmup,
        lr_decay=cfg.optim.decay,
        ema=instantiate(cfg.ema) if cfg.ema else None,
        snr_gamma=cfg.loss.snr_gamma,
        flow=flow_objective(OmegaConf.to_container(cfg.schedule)),
        channels_last=speed.channels_last,
        compile=cfg.speed.compile,
        seed=cfg.seed,
        config=config,
    )


def _trainer(cfg: DictConfig, run_dir: Path, config: dict, callbacks: list, logger) -> pl.Trainer:
    """The Lightning Trainer; a budget in images sets its steps (so recipes with other batch sizes get the same
    compute), recorded in the config the checkpoints and the card carry."""
    trainer = instantiate(
        cfg.trainer,
        logger=logger or False,
        callbacks=callbacks,
        default_root_dir=run_dir,
        gradient_clip_val=cfg.optim.grad_clip,  # the optim group owns the whole optimisation
    )
    if cfg.budget.images:
        steps = math.ceil(cfg.budget.images / (cfg.data.batch_size * trainer.world_size))
        trainer.fit_loop.epoch_loop.max_steps = steps
        _record_steps(run_dir, config, steps)
    if logger:
        logger.log_hyperparams(flatten(config))
    return trainer


def fit(t: Training) -> bool:
    """Trains (from the last checkpoint when resuming) and saves the final state; True on the rank that records."""
    ckpt = t.run_dir / "checkpoints" / "last.ckpt"
    resume_from = ckpt if t.resuming and ckpt.exists() else None
    if resume_from:
        log.info("resuming from %s", ckpt)
    start = time.perf_counter()
    t.trainer.fit(t.module, datamodule=t.datamodule, ckpt_path=resume_from)
    t.trainer.save_checkpoint(ckpt)  # the final state, even when the last step fell between checkpoints (all ranks)
    t.record.train_seconds = round(time.perf_counter() - start + (t.record.train_seconds or 0), 2)
    return t.trainer.is_global_zero


def record(t: Training) -> float:
    """The run's figures into `metrics.json`, the loss plot, the pipeline export and the W&B summary."""
    cfg, trainer, losses = t.cfg, t.trainer, t.losses
    losses.save()
    steps, values = losses.losses()
    pruned = t.trial is not None and t.trial.pruned_at is not None
    summary = {
        "status": "failed" if losses.failure else "pruned" if pruned else "finished",
        "reason": losses.failure or (f"pruned by the study's pruner at {t.trial.pruned_at} images" if pruned else None),
        "steps": trainer.global_step,
        "final_loss": sum(values[-50:]) / max(1, len(values[-50:])) if values else None,
        "images_seen": trainer.global_step * cfg.data.batch_size * trainer.world_size,
        "train_seconds": t.record.train_seconds,
        "heldout": t.record.heldout,  # the held-out set's fingerprint, into W&B's summary too
    }
    if t.evaluate is not None and t.evaluate.history:
        monitor, sign = cfg.eval.monitor, (-1 if HIGHER_IS_BETTER.get(cfg.eval.monitor) else 1)
        best = min(t.evaluate.history, key=lambda h: sign * h[monitor]) if monitor else None
        summary |= {"eval": t.evaluate.history[-1], "eval_best": best, "eval_history": t.evaluate.history}
    monitored = "eval" in summary and cfg.eval.monitor
    summary["objective"] = summary["eval"][cfg.eval.monitor] if monitored else summary["final_loss"]
    summary["objective_name"] = f"eval/{cfg.eval.monitor}" if monitored else "final_loss"
    plot_loss_curve(steps, values, t.run_dir / "plots" / "loss.png")
    saved = RunRecord.update(t.run_dir, **summary)
    if not losses.failure:
        grids = sorted((t.run_dir / "samples").glob("step_*.png"))
        with t.module.ema_weights() as ema_unet:
            grid = grids[-1] if grids else None
            pipeline = t.run_dir / "pipeline"
            export_pipeline(ema_unet, t.module.scheduler, pipeline, t.config, saved, grid, run_dir=t.run_dir)
    offline_wandb = finish_wandb(t.logger, summary, saved.parameters, pruned, failed=bool(losses.failure))
    if losses.failure:
        raise ConfigError(losses.failure)
    _log_summary(summary, cfg, t.run_dir, offline_wandb)
    return summary["objective"]


def _log_summary(summary: dict, cfg: DictConfig, run_dir: Path, offline_wandb: Path | None) -> None:
    """The run's last lines: what it reached, and where everything is."""
    figures = f"final loss {summary['final_loss']:.4f}" if summary["final_loss"] is not None else "no loss"
    ev = summary.get("eval") or {}
    name = cfg.eval.monitor or "fid"
    if ev.get(name) is not None:  # eval=none records the held-out denoising error alone
        ci = ev.get(f"{name}_ci")
        interval = f" (95% interval {ci[0]:.4g} to {ci[1]:.4g})" if ci else ""
        figures += f", {name} {ev[name]:.4g}{interval} ({ev.get('feature_net')} features)"
    if ev.get("denoise") is not None:
        figures += f", held-out denoising error {ev['denoise']:.4g}"
    minutes = summary["train_seconds"] / 60
    log.info("%s: %d steps in %.1f min, %s", summary["status"], summary["steps"], minutes, figures)
    if offline_wandb:
        log.info("W&B run (offline; this uploads it): wandb sync %s", offline_wandb)
    log.info("run folder: %s", run_dir)


def _evaluation(cfg: DictConfig, datamodule, sampler, run_dir: Path) -> Evaluate | None:
    """The in-training evaluation callback, scoring against this dataset's held-out images (features cached); with
    eval=none it records the held-out denoising error alone, at the last step (none where nothing is held out)."""
    count = cfg.eval.get("denoise_images", 256)
    if count < 0:
        raise ConfigError(f"eval.denoise_images={count}: score at least 0 held-out images (0 = no denoising error)")
    held = datamodule.heldout
    images = reference_images(held, count) if count and held is not None and len(held) else None
    if not cfg.eval.net:
        if images is None:
            return None
        return Evaluate(None, None, 0, cfg.eval.every_n_steps, batch_size=cfg.data.batch_size, denoise_images=images)
    reference = evaluation_reference(cfg.eval, cfg.data, datamodule, cfg.eval.n_samples, monitored=True)
    fast = Sampler(cfg.eval.sampler, cfg.eval.sampler_steps, batch_size=sampler.batch_size)
    return Evaluate(
        reference,
        fast,
        cfg.eval.n_samples,
        cfg.eval.every_n_steps,
        seed=cfg.seed + 1,
        seeds=cfg.eval.seeds,
        nearest=run_dir / "plots" / "nearest.png" if rank() == 0 else None,
        monitor=cfg.eval.monitor or "fid",
        higher_is_better=HIGHER_IS_BETTER.get(cfg.eval.monitor, False),
        every_n_images=cfg.eval.get("every_n_images"),
        batch_size=cfg.data.batch_size,
        denoise_images=images,
    )


def _trial_report(cfg: DictConfig, evaluate: Evaluate | None, hydra_cfg):
    """The job's link to its Optuna trial: only a sweep job started by the sweeper reports to it (a resumed or
    reproduced trial never does)."""
    keys = trial_keys(cfg)
    if keys is None or cfg.resume or hydra_cfg.mode != RunMode.MULTIRUN or evaluate is None:
        return None
    from diffexp.search import TrialReport

    return TrialReport(evaluate, keys.storage, keys.study, keys.trial, cfg.eval.monitor)


def _record_steps(run_dir: Path, config: dict, steps: int) -> None:
    """The steps a budget decided, in the config that checkpoints, W&B and the model card carry, and in the run's
    saved `.hydra/config.yaml` (reproduction reads it, with its budget, and gets the same steps)."""
    config["trainer"]["max_steps"] = steps
    saved = run_dir / ".hydra" / "config.yaml"
    if rank() != 0 or not saved.exists():
        return
    recipe = OmegaConf.load(saved)
    if "budget" in recipe and "trainer" in recipe and recipe.trainer.max_steps != steps:  # a train recipe
        recipe.trainer.max_steps = steps
        atomic_write_text(saved, OmegaConf.to_yaml(recipe))


def _record_failure(run_dir: Path, multirun: bool, reason: str) -> None:
    """A failed run says why in its metrics.json, and its W&B run is marked failed.

    A single run refused before any work is not recorded (`errors.report`); a sweep job always records.
    """
    if rank() == 0 and (multirun or (run_dir / "metrics.json").exists()):
        RunRecord.update(run_dir, status="failed", reason=reason)
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=1)


def run_or_tidy(cfg: DictConfig) -> float | None:
    """`run`, but a run refused before training removes the folder Hydra created for it (`remove_new_folder`); a
    sweep job's folder is kept: it records why."""
    try:
        return run(cfg)
    except ConfigError as e:
        if not isinstance(e, ForeignFolderError) and rank() == 0:
            remove_new_folder(Path(HydraConfig.get().runtime.output_dir))
        raise


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return report(run_or_tidy, cfg, multirun, partial(_record_failure, Path(hydra_cfg.runtime.output_dir), multirun))


main = entry("train", hydra_main)  # the console script: the command line checked first (diffexp.cli)


if __name__ == "__main__":
    # the importable module's main, not this __main__ copy: joblib then pickles the task function by reference
    from diffexp.train import main as importable_main

    importable_main()
