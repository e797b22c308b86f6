"""The diffusion model as a LightningModule: the UNet, its noise schedule, the training step and EMA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler

from diffexp.ema import PowerEMA
from diffexp.errors import ConfigError
from diffexp.flow import FlowObjective
from diffexp.schedule import snr

# optim.decay -> diffusers' LR schedule; each ramps linearly from 0 over the warm-up first.
LR_SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def check_lr_schedule(warmup: float, decay: str) -> None:
    """The warm-up share and decay: one line naming the setting where they cannot be trained."""
    if decay not in LR_SCHEDULES:
        raise ConfigError(f"optim.decay={decay}: use one of {sorted(LR_SCHEDULES)}")
    if not 0 <= warmup < 1:
        raise ConfigError(
            f"optim.warmup={warmup}: the warm-up is a share of the run's steps, so it must be in [0, 1) "
            f"(e.g. 0.05; 0 = none)"
        )


def warmup_steps(warmup: float, total: int) -> int:
    """The optimiser steps of a warm-up share of a `total`-step run."""
    return round(warmup * total)


class DiffusionModule(pl.LightningModule):
    """Trains `unet` to denoise under `scheduler`'s noise schedule.

    Args:
        unet: the denoising network.
        scheduler: the training noise schedule (betas, timesteps, prediction type).
        optimizer: a partial optimiser that takes the parameters (Hydra `_partial_`).
        warmup: linear learning-rate warm-up, as a share of the run's optimiser steps (0 = none).
        lr_decay: after warm-up, `cosine` or `linear` (to zero at the end) or `constant`.
        ema: a partial EMA (`diffexp.ema.PowerEMA`) that takes the parameters; None = no EMA.
        snr_gamma: min-SNR-gamma loss weighting (Hang et al. 2023); None for plain MSE.
        flow: the flow-matching objective of a `schedule=flow` run (`diffexp.flow`); None for the DDPM path.
        channels_last: train in NHWC memory format (faster convolutions on tensor-core GPUs).
        compile: run the training forward pass through `torch.compile`.
        seed: seeds the noise and timesteps, which are drawn per step from `(seed, step, rank)`.
        config: the run's resolved config, stored in every checkpoint.
    """

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler,
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup: float = 0.0,
        lr_decay: str = "cosine",
        ema: Callable[..., PowerEMA] | None = None,
        snr_gamma: float | None = None,
        flow: FlowObjective | None = None,
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        check_lr_schedule(warmup, lr_decay)
        self.unet, self.scheduler, self.optimizer_factory = unet, scheduler, optimizer
        self.warmup, self.lr_decay, self.snr_gamma, self.seed = warmup, lr_decay, snr_gamma, seed
        self.config, self.channels_last, self.flow = config, channels_last, flow
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        # Kept off the module's attributes, so checkpoints and exports hold the plain UNet's weights only.
        object.__setattr__(self, "forward_unet", torch.compile(unet) if compile else unet)
        self.ema = ema(unet.parameters()) if ema is not None else None

    def training_step(self, x0: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # Noise and timesteps depend only on (seed, step, rank): a resumed run draws exactly the same ones.
        g = torch.Generator(x0.device).manual_seed((self.seed * 1_000_003 + self.global_step) * 1024 + self.global_rank)
        if self.flow is not None:
            return self.flow.loss(self.forward_unet, x0, g, self.channels_last)
        noise = torch.randn(x0.shape, generator=g, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),), generator=g, device=x0.device)
        xt = self.scheduler.add_noise(x0, noise, t)
        if self.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)

        kind = self.scheduler.config.prediction_type
        target = {"epsilon": noise, "sample": x0}.get(kind)
        if target is None:  # v_prediction
            target = self.scheduler.get_velocity(x0, noise, t)
        pred = self.forward_unet(xt, t).sample

        loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.snr_gamma:
            s = snr(self.scheduler, t)
            weight = s.clamp(max=self.snr_gamma) / {"epsilon": s, "v_prediction": s + 1, "sample": 1}[kind]
            loss = loss * weight
        return loss.mean()  # LossHistory records every step's loss and lr; RunProgress shows it

    def on_fit_start(self) -> None:
        if hasattr(self.scheduler, "alphas_cumprod"):  # a flow run's scheduler has none
            self.scheduler.alphas_cumprod = self.scheduler.alphas_cumprod.to(self.device)
        if self.ema is not None:
            self.ema.to(self.device)

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Here rather than in on_train_batch_end: checkpoints written by callbacks at this step include it.
        if self.ema is not None:
            self.ema.step(self.unet.parameters())

    @contextlib.contextmanager
    def ema_weights(self) -> Iterator[UNet2DModel]:
        """The UNet with EMA weights swapped in (for samples and export); the training weights come back after."""
        if self.ema is None:
            yield self.unet
            return
        self.ema.store(self.unet.parameters())
        self.ema.copy_to(self.unet.parameters())
        try:
            yield self.unet
        finally:
            self.ema.restore(self.unet.parameters())

    @torch.no_grad()
    def sample_images(self, sampler: Callable, n: int, seed: int) -> torch.Tensor:
        """uint8 samples of the EMA model from the fixed noise of `seed` (previews and evaluation share it)."""
        from diffexp.data import to_uint8
        from diffexp.samplers import seeded_noise

        cfg = self.unet.config
        noise, generator = seeded_noise(n, cfg.in_channels, cfg.sample_size, seed, self.device)
        was_training = self.unet.training
        self.unet.eval()
        with self.ema_weights() as unet:
            images = to_uint8(sampler(unet, self.scheduler, noise, generator, progress=False))
        self.unet.train(was_training)
        return images

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.unet.parameters())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        lr_scheduler = get_scheduler(
            LR_SCHEDULES[self.lr_decay],
            optimizer,
            num_warmup_steps=warmup_steps(self.warmup, total),
            num_training_steps=total,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["diffexp_config"] = self.config
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
