"""Typed schemas of the train config: wrong types and unknown keys fail in one line before anything is built.

Hydra composes YAML without types; these dataclasses give every key its type (OmegaConf converts `"3"` to 3 and
rejects `"abc"` for an int), so a typo in an override is named with the fix instead of failing deep inside torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffexp.errors import ConfigError


@dataclass
class Data:
    _target_: str
    resolution: int
    channels: int
    batch_size: int
    flip: bool
    name: Optional[str] = None
    image_column: Optional[str] = None
    split: Optional[str] = None
    path: Optional[str] = None
    holdout: Optional[float] = None


@dataclass
class Model:
    _target_: str
    sample_size: int
    in_channels: int
    block_out_channels: list[int]
    attention_levels: list[bool]
    layers_per_block: int
    norm_num_groups: int
    dropout: float


@dataclass
class Schedule:
    _target_: str
    beta_schedule: str
    prediction_type: str
    num_train_timesteps: int
    beta_start: float
    beta_end: float
    rescale_betas_zero_snr: bool


@dataclass
class Optimizer:
    _target_: str
    _partial_: bool
    lr: float
    betas: list[float]
    weight_decay: float


@dataclass
class Optim:
    optimizer: Optimizer
    warmup: float
    decay: str
    grad_clip: Optional[float]


@dataclass
class Sampler:
    _target_: str
    name: str
    steps: int
    batch_size: int
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Eval:
    net: Optional[str]
    n_samples: int
    reference_size: Optional[int]
    seeds: int
    every_n_steps: int
    sampler: str
    sampler_steps: int
    monitor: Optional[str]
    kid_subset_size: int
    cache_dir: str
    every_n_images: Optional[int] = None
    denoise_images: int = 256
    model: Optional[str] = None  # eval=dinov2's feature model


@dataclass
class Ema:
    _target_: str
    _partial_: bool
    sigma_rel: float
    sigma_rels: Optional[list[float]] = None  # ema=posthoc's keys
    snapshot_every: Optional[int] = None
    eval_sigma_rel: Optional[list[float]] = None


@dataclass
class Loss:
    snr_gamma: Optional[float]


@dataclass
class Preview:
    every_n_steps: int
    n: int
    seed: int


@dataclass
class Checkpoint:
    every_n_steps: int
    keep_best: bool = False


@dataclass
class Budget:
    images: Optional[int]


@dataclass
class Speed:
    channels_last: Any
    tf32: Any
    fused_adamw: Any
    data_on_device: Any
    compile: bool


@dataclass
class Optuna:
    storage: Optional[str] = None
    study: Optional[str] = None
    trial: Optional[int] = None


@dataclass
class Train:
    data: Data
    model: Model
    schedule: Schedule
    optim: Optim
    sampler: Sampler
    eval: Eval
    logger: Any
    trainer: Any
    seed: int
    threads: Optional[int]
    resume: Optional[str]
    sweep_name: str
    tag: Optional[str]
    budget: Budget
    ema: Optional[Ema]  # None (or empty) with ema=none
    loss: Loss
    preview: Preview
    speed: Speed
    checkpoint: Checkpoint
    verbose: bool = False
    optuna: Optuna = field(default_factory=Optuna)  # set by the Optuna sweeper; no part of the recipe


def validate(cfg: DictConfig) -> None:
    """Checks every key's type against the schema; raises ConfigError naming the key and what it takes."""
    try:
        OmegaConf.merge(OmegaConf.structured(Train), cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0]
        if "Key" in type(e).__name__ or "not in struct" in reason:
            raise ConfigError(f"{key}: no such setting ({reason}); see `diffexp-train --cfg job` for the keys") from e
        raise ConfigError(f"{key}: {reason}; give a value of the right type") from e
