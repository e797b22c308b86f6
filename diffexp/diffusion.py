"""The diffusion model as a LightningModule: the UNet, its noise schedule, the training step and EMA."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

from diffexp.schedule import snr


class EMA(EMAModel):
    """diffusers' EMA of the weights, updated in one in-place pass (`lerp`) instead of two with a temporary copy:
    half the time a step (0.6 vs 1.3 ms on the tiny model, 7 vs 15 ms on the course's 18.5M UNet, 2 CPU cores)."""

    @torch.no_grad()
    def step(self, parameters) -> None:
        self.optimization_step += 1
        self.cur_decay_value = self.get_decay(self.optimization_step)
        # shadow += (1 - decay) * (param - shadow): the same update as EMAModel.step
        torch._foreach_lerp_(self.shadow_params, [p.detach() for p in parameters], 1 - self.cur_decay_value)


class DiffusionModule(pl.LightningModule):
    """Trains `unet` to denoise under `scheduler`'s noise schedule.

    Args:
        unet: the denoising network.
        scheduler: the training noise schedule (betas, timesteps, prediction type).
        optimizer: a partial optimiser that takes the parameters (Hydra `_partial_`).
        warmup_steps: linear learning-rate warm-up.
        lr_decay: `cosine` (to zero at the last step) or `constant` after warm-up.
        ema_decay: decay of the exponential moving average of the weights; 0 turns EMA off.
        ema_warmup: ramp the EMA decay up from 0 (`1 - (1 + step) ** -ema_power`), so short runs average well.
        ema_power: how fast the EMA decay ramps up.
        snr_gamma: min-SNR-gamma loss weighting (Hang et al. 2023); None for plain MSE.
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
        warmup_steps: int = 0,
        lr_decay: str = "cosine",
        ema_decay: float = 0.999,
        ema_warmup: bool = True,
        ema_power: float = 2 / 3,
        snr_gamma: float | None = None,
        channels_last: bool = False,
        compile: bool = False,
        seed: int = 0,
        config: dict | None = None,
    ) -> None:
        super().__init__()
        self.unet, self.scheduler, self.optimizer_factory = unet, scheduler, optimizer
        self.warmup_steps, self.lr_decay, self.snr_gamma, self.seed = warmup_steps, lr_decay, snr_gamma, seed
        self.config, self.channels_last = config, channels_last
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        # Kept off the module's attributes, so checkpoints and exports hold the plain UNet's weights only.
        object.__setattr__(self, "forward_unet", torch.compile(unet) if compile else unet)
        self.ema = (
            EMA(unet.parameters(), decay=ema_decay, use_ema_warmup=ema_warmup, power=ema_power, foreach=True)
            if ema_decay > 0
            else None
        )

    def training_step(self, x0: torch.Tensor, batch_idx: int) -> torch.Tensor:
        # Noise and timesteps depend only on (seed, step, rank): a resumed run draws exactly the same ones.
        g = torch.Generator(x0.device).manual_seed((self.seed * 1_000_003 + self.global_step) * 1024 + self.global_rank)
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
        loss = loss.mean()
        if self.global_step % 10 == 0:  # the progress bar's figure; LossHistory records every step's loss and lr
            self.log("train/loss", loss, prog_bar=True, logger=False, on_step=True, on_epoch=False)
        return loss

    def on_fit_start(self) -> None:
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

        def lr_factor(step: int) -> float:
            if step < self.warmup_steps:
                return (step + 1) / self.warmup_steps
            if self.lr_decay == "constant":
                return 1.0
            progress = min(1.0, (step - self.warmup_steps) / max(1, total - self.warmup_steps))
            return 0.5 * (1 + math.cos(math.pi * progress))

        lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": lr_scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["diffexp_config"] = self.config
        if self.ema is not None:
            checkpoint["ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.ema is not None and "ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["ema"])
