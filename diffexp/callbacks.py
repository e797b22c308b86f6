"""What a run records while it trains: the per-step loss, sample grids from fixed noise, the evaluations, and the
checkpoints (`run_callbacks`: the whole list a run trains with)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig

from diffexp.denoise import denoise_error
from diffexp.files import atomic_write_text
from diffexp.metrics import HIGHER_IS_BETTER
from diffexp.plots import save_grid
from diffexp.run_folder import read_losses
from diffexp.samplers import Sampler, describe
from diffexp.terminal import RunProgress

log = logging.getLogger("diffexp.train")


class LossHistory(pl.Callback):
    """Keeps `(step, loss, lr)` for every step in `losses.csv` and the loggers, and stops a run whose loss is not
    finite.

    One logger call a step for both figures: Lightning's `self.log` and a LearningRateMonitor cost about 2.7 ms a
    step more on 2 CPU cores (benchmarks/RESULTS.md), 2% of a tiny-model step.

    The file is rewritten at each checkpoint and at the end; after a resume, steps trained again replace
    their earlier rows, so the record stays one row per step.
    """

    def __init__(self, path: Path, patience: int = 3) -> None:
        self.path, self.patience = Path(path), patience
        self.rows: dict[int, tuple[float, float]] = {}
        self.bad_steps = 0
        self.failure: str | None = None
        self.lr = float("nan")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After a resume the checkpoint's step is known here: keep the rows before it, retrain the rest.
        self.rows.update({s: row for s, row in read_losses(self.path).items() if s < trainer.global_step})
        if trainer.global_step and trainer.is_global_zero:  # Lightning's own line is silenced unless verbose=true
            log.info("restored step %d of %d from the checkpoint", trainer.global_step, trainer.max_steps)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Read before the step: Lightning steps the LR scheduler before on_train_batch_end, whose lr is the next one.
        self.lr = trainer.optimizers[0].param_groups[0]["lr"]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        step = trainer.global_step - 1  # the optimiser step just taken
        lr = self.lr  # the learning rate that step used
        self.rows[step] = (loss, lr)
        for logger in trainer.loggers:
            logger.log_metrics({"train/loss": loss, "train/lr": lr}, step=step)
        self.bad_steps = 0 if math.isfinite(loss) else self.bad_steps + 1
        if self.bad_steps >= self.patience:
            self.failure = (
                f"loss is {loss} at step {step}: lower optim.optimizer.lr, keep optim.grad_clip on, "
                f"or use trainer.precision=bf16-mixed instead of 16-mixed"
            )
            trainer.should_stop = True

    def save(self) -> None:
        lines = ["step,loss,lr"] + [f"{s},{loss!r},{lr!r}" for s, (loss, lr) in sorted(self.rows.items())]
        atomic_write_text(self.path, "\n".join(lines) + "\n")

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if trainer.is_global_zero:
            self.save()

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.save()

    def losses(self) -> tuple[list[int], list[float]]:
        steps = sorted(self.rows)
        return steps, [self.rows[s][0] for s in steps]


class SampleGrid(pl.Callback):
    """Every `every_n_steps`, samples a grid from the same fixed noise with the EMA weights.

    Writes `samples/step_NNNNNN.png` and logs the grid to the logger (W&B or TensorBoard).
    """

    def __init__(self, folder: Path, sampler: Sampler, every_n_steps: int, n: int = 64, seed: int = 0) -> None:
        self.folder, self.sampler, self.every_n_steps, self.n, self.seed = Path(folder), sampler, every_n_steps, n, seed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step % self.every_n_steps == 0 and trainer.is_global_zero:
            self.make(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and not (self.folder / f"step_{trainer.global_step:06d}.png").exists():
            self.make(trainer, pl_module)

    def make(self, trainer: pl.Trainer, pl_module) -> Path:
        images = pl_module.sample_images(self.sampler, self.n, self.seed)
        step = trainer.global_step
        scale = max(1, 64 // images.shape[-1])
        info = {"step": step, "sampler": self.sampler.name, "steps": self.sampler.steps, "seed": self.seed}
        path = save_grid(images, self.folder / f"step_{step:06d}.png", scale=scale, info=info)
        log_image(trainer, "samples", path, step, caption=describe(info))
        return path


def log_image(trainer: pl.Trainer, key: str, path: Path, step: int, caption: str | None = None) -> None:
    """Sends a PNG to whichever image-capable loggers the trainer has (W&B with its caption)."""
    from PIL import Image

    for logger in trainer.loggers:
        if isinstance(logger, pl.loggers.WandbLogger):
            logger.log_image(key=key, images=[str(path)], step=step, **({"caption": [caption]} if caption else {}))
        elif isinstance(logger, pl.loggers.TensorBoardLogger):
            import numpy as np

            img = np.asarray(Image.open(path).convert("RGB"))
            logger.experiment.add_image(key, torch.from_numpy(img).permute(2, 0, 1), step)


class Evaluate(pl.Callback):
    """Scores the EMA model every `every_n_steps`, each time the images seen pass a multiple of `every_n_images`
    (the same points whatever the batch size: a search's pruner compares trials there), and at the last step,
    against the held-out images.

    Rank 0 samples `n_samples` images from fixed noise with a fast sampler and scores their features against
    `reference` (`diffexp.heldout.Reference`): one sampling seed in between, `seeds` of them at the last step (the
    final evaluation, whose FID interval comes from their spread), which also draws `nearest` (samples beside their
    nearest training images). Every evaluation also records the held-out denoising error (`diffexp.denoise`), which
    needs no feature net: with `reference` None (eval=none) it is the only figure, at the last step. The figures go
    to the logger as `eval/<metric>` (all ranks receive them, so a `ModelCheckpoint(monitor="eval/fid")` keeps the
    best checkpoint under DDP too) and into `history`.
    """

    LOGGED = ("fid", "fid_std", "kid", "precision", "recall", "top_prob", "class_min", "class_max", "not_digit")
    LOGGED += ("memorised", "memorised_heldout", "denoise")

    def __init__(
        self,
        reference,
        sampler: Sampler,
        n_samples: int,
        every_n_steps: int,
        seed: int = 1,
        seeds: int = 1,
        nearest: Path | None = None,
        monitor: str = "fid",
        higher_is_better: bool = False,
        every_n_images: int | None = None,
        batch_size: int = 1,
        denoise_images: torch.Tensor | None = None,
    ) -> None:
        self.reference, self.sampler, self.n_samples, self.every_n_steps = reference, sampler, n_samples, every_n_steps
        self.seed, self.seeds, self.nearest = seed, seeds, nearest
        self.monitor, self.higher_is_better = monitor, higher_is_better  # ema=posthoc chooses its width by these
        self.every_n_images, self.batch_size = every_n_images, batch_size  # the images points trials report at
        self.history: list[dict] = []
        self.denoise_images = denoise_images  # held-out images in [-1, 1] (`diffexp.denoise.reference_images`)

    def crossed(self, trainer: pl.Trainer) -> bool:
        """Whether this step's images passed a multiple of `every_n_images`."""
        if not self.every_n_images:
            return False
        step, per_step = trainer.global_step, self.batch_size * trainer.world_size
        return step * per_step // self.every_n_images > (step - 1) * per_step // self.every_n_images

    def point(self, trainer: pl.Trainer) -> int:
        """The images point of this step: the multiple of `every_n_images` just passed, else the images seen."""
        seen = trainer.global_step * self.batch_size * trainer.world_size
        return seen // self.every_n_images * self.every_n_images if self.crossed(trainer) else seen

    def due(self, trainer: pl.Trainer) -> bool:
        step = trainer.global_step
        periodic = self.every_n_steps > 0 and step % self.every_n_steps == 0
        return step == trainer.max_steps or periodic or self.crossed(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.due(trainer):
            return
        start = time.perf_counter()
        final = trainer.global_step == trainer.max_steps
        figures = None
        if trainer.is_global_zero:
            seeds = self.seeds if final else 1
            if self.reference is None:  # eval=none: the denoising error alone
                figures = {}
            elif getattr(pl_module.ema, "eval_sigma_rel", None):  # ema=posthoc: choose the width, report it apart
                from diffexp.posthoc import choose_and_score

                figures = choose_and_score(self, pl_module, seeds, final, self.monitor, self.higher_is_better)
            else:
                figures = self.score(pl_module, seeds, final)
            figures |= self.denoise(pl_module)
        figures = trainer.strategy.broadcast(figures, src=0)
        for name in self.LOGGED:
            if figures.get(name) is not None:  # class figures come with classifier feature nets (digits) only
                pl_module.log(f"eval/{name}", float(figures[name]), on_step=True, on_epoch=False)
        if (figures.get("floor") or {}).get("fid") is not None:
            pl_module.log("eval/floor_fid", float(figures["floor"]["fid"]), on_step=True, on_epoch=False)
        seconds = round(time.perf_counter() - start, 2)  # what evaluation costs the run, for the benchmark
        point = {"step": trainer.global_step, "images": self.point(trainer)}
        if trainer.is_global_zero:
            names = {"fid": "fid", self.monitor: self.monitor, "denoise": "held-out denoising error"}
            shown = [f"{names[k]} {figures[k]:.4g}" for k in names if isinstance(figures.get(k), float)]
            if shown:  # fid, the monitor where it differs, the denoising error; eval=none without held-out: nothing
                log.info("evaluation at step %d: %s (%.0f s)", trainer.global_step, ", ".join(shown), seconds)
        self.history.append(point | figures | {"seconds": seconds})

    def state_dict(self) -> dict:
        # In every checkpoint, so a resumed run's metrics.json still holds the evaluations made before the resume.
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))

    def denoise(self, pl_module) -> dict:
        """The held-out denoising error of the EMA model (`diffexp.denoise`); {} where nothing is held out."""
        from diffexp.flow import prediction_of

        if self.denoise_images is None:
            return {}
        scheduler = pl_module.scheduler
        was_training = pl_module.unet.training
        pl_module.unet.eval()
        with pl_module.ema_weights() as unet:
            figures = denoise_error(
                lambda x, t: unet(x, t).sample,
                getattr(scheduler, "alphas_cumprod", None),  # a flow model has none: prediction_of says flow
                prediction_of(scheduler),
                self.denoise_images.to(pl_module.device),
            )
        pl_module.unet.train(was_training)
        return figures

    def score(self, pl_module, seeds: int = 1, picture: bool = False, first: int | None = None) -> dict:
        """The record of `seeds` sampling seeds (`first`, default `self.seed`, then `+ 1`, ...); `picture` writes
        `nearest`."""
        from diffexp.plots import plot_nearest

        first = self.seed if first is None else first
        self.reference.net.to(pl_module.device)
        images = [pl_module.sample_images(self.sampler, self.n_samples, first + i) for i in range(seeds)]
        figures, (samples, dist, index) = self.reference.score([x.cpu() for x in images], seed=first)
        if picture and self.nearest is not None:
            ref = self.reference
            plot_nearest(samples, ref.train_images, dist, index, ref.threshold, self.nearest)
        return figures | {"sampler": self.sampler.name, "sampler_steps": self.sampler.steps}


def run_callbacks(
    cfg: DictConfig, run_dir: Path, losses: LossHistory, sampler: Sampler, evaluate: Evaluate | None
) -> list:
    """Checkpoints (last; best by `eval.monitor` when `checkpoint.keep_best`), preview grids, the loss record, the
    evaluation."""
    checkpoints = run_dir / "checkpoints"
    callbacks = [
        RunProgress(cfg.data.batch_size),
        pl.callbacks.ModelCheckpoint(
            dirpath=checkpoints,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=cfg.checkpoint.every_n_steps,
            save_on_train_epoch_end=False,
        ),
        SampleGrid(run_dir / "samples", sampler, cfg.preview.every_n_steps, cfg.preview.n, cfg.preview.seed),
        losses,
    ]
    if evaluate is not None:
        callbacks.append(evaluate)
        if cfg.eval.monitor and cfg.checkpoint.get("keep_best"):
            callbacks.append(
                pl.callbacks.ModelCheckpoint(
                    dirpath=checkpoints,
                    filename="best",
                    monitor=f"eval/{cfg.eval.monitor}",
                    mode="max" if HIGHER_IS_BETTER.get(cfg.eval.monitor) else "min",
                    save_top_k=1,
                    auto_insert_metric_name=False,
                    enable_version_counter=False,
                    every_n_train_steps=1,  # compares only; it writes when a new evaluation beats the best
                    save_on_train_epoch_end=False,
                )
            )
    return callbacks
