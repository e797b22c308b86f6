"""What a train config may hold: typed schemas and the cross-field checks, so a bad recipe fails in one line
before anything is built.

Hydra composes YAML without types; these dataclasses give every key its type (OmegaConf converts `"3"` to 3 and
rejects `"abc"` for an int), so a typo in an override is named with the fix instead of failing deep inside torch.
`check` then refuses what is well typed but cannot train (a warm-up past the run, zero-SNR with epsilon, ...).
"""

from __future__ import annotations

import importlib.util
import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, OmegaConfBaseException

from diffexp.config import flatten
from diffexp.diffusion import check_lr_schedule
from diffexp.ema import check_sigma_rel
from diffexp.errors import ConfigError, nearest
from diffexp.flow import check_family
from diffexp.posthoc import check_posthoc
from diffexp.recipe_rules import check_agreement, check_trainer
from diffexp.runtime import check_threads, on_gpu
from diffexp.search import trial_keys


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
    revision: Optional[str] = None


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
    prediction_type: str
    num_train_timesteps: int
    beta_schedule: Optional[str] = None  # the DDPM schedules' keys
    beta_start: Optional[float] = None
    beta_end: Optional[float] = None
    rescale_betas_zero_snr: Optional[bool] = None
    shift: Optional[float] = None  # schedule=flow's keys (diffexp/flow.py)
    weighting_scheme: Optional[str] = None
    logit_mean: Optional[float] = None
    logit_std: Optional[float] = None
    mode_scale: Optional[float] = None


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
    snapshots: Optional[int] = None  # ema=posthoc: snapshots a run (snapshot_every, where set, replaces it)
    max_profile_error: Optional[float] = None
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
class Trainer:
    """The trainer group's keys; any other Lightning Trainer argument may be added with `+trainer.KEY=...`."""

    _target_: str
    accelerator: str
    devices: Any  # a count, a list of device indices, or "auto"
    max_steps: int
    max_epochs: int
    precision: Any  # 32, "bf16-mixed", ... (checked in `check`)
    log_every_n_steps: int
    deterministic: bool
    benchmark: bool
    enable_model_summary: bool
    num_sanity_val_steps: int
    num_nodes: int = 1
    strategy: str = "auto"


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
    trainer: Trainer
    seed: int
    threads: Any  # auto or a whole number >= 1 (runtime.check_threads)
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
    allow_changed_data: bool = False  # resume= a run whose held-out set changed (diffexp.identity)
    optuna: Optuna = field(default_factory=Optuna)  # set by the Optuna sweeper; no part of the recipe


def validate(cfg: DictConfig) -> DictConfig:
    """Checks every key's type against the schema; raises ConfigError naming the key and what it takes (for a key
    that does not exist, the nearest one that does). Returns `cfg` typed by the schema."""
    if "gradient_clip_val" in (cfg.get("trainer") or {}):
        raise ConfigError("trainer.gradient_clip_val: gradient clipping is optim.grad_clip (the optim group's)")
    try:
        return OmegaConf.merge(OmegaConf.structured(Train), _typed_part(cfg))
    except OmegaConfBaseException as e:
        raise type_error(e, cfg) from e


def type_error(e: OmegaConfBaseException, cfg: DictConfig) -> ConfigError:
    """OmegaConf's complaint as one line: the key, and what it takes (or the nearest real key to a misspelt one)."""
    key = getattr(e, "full_key", None) or "?"
    reason = str(e).splitlines()[0]
    if "Key" in type(e).__name__ or isinstance(e, ConfigAttributeError) or "not in struct" in reason:
        return ConfigError(f"{key}: no such setting{nearest_key(key, cfg)}; see `diffexp-train --cfg job`")
    return ConfigError(f"{key}: {reason}; give a value of the right type")


def _typed_part(cfg: DictConfig) -> DictConfig:
    """`cfg` without the Lightning Trainer arguments the trainer schema leaves out (`+trainer.accumulate_grad_batches`
    is Lightning's to check)."""
    extra = [k for k in cfg.get("trainer") or {} if k not in Trainer.__dataclass_fields__ and k in _lightning_args()]
    if not extra:
        return cfg
    typed = cfg.copy()
    with open_dict(typed):
        for key in extra:
            del typed.trainer[key]
    return typed


def _lightning_args() -> set[str]:
    return set(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}


def nearest_key(key: str, cfg: DictConfig) -> str:
    """` (did you mean X?)`: the real key nearest a misspelt one, among the recipe's and the schema's keys."""
    keys = set(flatten(OmegaConf.to_container(cfg, resolve=False)))
    return nearest(key, keys | set(flatten(OmegaConf.to_container(OmegaConf.structured(Train)))))


def check_recipe(cfg: DictConfig, overrides: list[str] = (), typed: bool = False) -> None:
    """Every check a train recipe gets before any work: types (unless `typed`: checked already), settings the command
    line gave twice (`overrides`, the command's own: empty for a saved recipe), and the cross-field checks."""
    if not typed:
        validate(cfg)
    check_agreement(cfg, list(overrides))
    check(cfg)


MONITORS = {"fid", "kid", "precision", "recall", "top_prob"}  # top_prob: classifier feature nets (digits) only


# Settings with a least value (a None is their own "off" or "default"): key, least, the fix the refusal suggests.
RANGES = (
    ("budget.images", 1, "a positive number of images (e.g. 96000), or null to train trainer.max_steps"),
    ("checkpoint.every_n_steps", 1, "a positive number of steps (e.g. 250)"),
    ("preview.every_n_steps", 0, "a positive number of steps, or 0 for the final grid only"),
    ("eval.every_n_steps", 0, "a positive number of steps, or 0 to evaluate at the end only"),
    ("eval.every_n_images", 1, "a positive number of images (e.g. 24000), or null"),
    ("optim.optimizer.weight_decay", 0, "0 or a positive weight decay (e.g. 0.01)"),
)


def check(cfg: DictConfig) -> None:
    """Cross-field checks that need no building: each bad value gets one line before any work starts."""
    lr = cfg.optim.optimizer.lr
    if not lr > 0:
        raise ConfigError(f"optim.optimizer.lr={lr}: the learning rate must be > 0 (e.g. 1e-3)")
    if cfg.trainer.max_steps < 1:
        raise ConfigError(f"trainer.max_steps={cfg.trainer.max_steps}: train at least 1 step")
    check_threads(cfg.threads)
    for key, least, fix in RANGES:
        value = OmegaConf.select(cfg, key)
        if value is not None and value < least:
            raise ConfigError(f"{key}={value}: use {fix}")
    optimizer = cfg.optim.optimizer
    if "betas" in optimizer and not all(0 <= b < 1 for b in optimizer.betas):
        raise ConfigError(f"optim.optimizer.betas={list(optimizer.betas)}: each in [0, 1), e.g. [0.9, 0.999]")
    monitors = MONITORS if cfg.eval.net == "digits" else MONITORS - {"top_prob"}
    if not cfg.eval.net and cfg.eval.monitor is not None:
        raise ConfigError(
            f"eval.monitor={cfg.eval.monitor} with no eval net: nothing is scored; use eval=digits (or another eval "
            "net), or eval.monitor=null"
        )
    if cfg.eval.net and cfg.eval.monitor is not None and cfg.eval.monitor not in monitors:
        raise ConfigError(
            f"eval.monitor={cfg.eval.monitor}: the best checkpoint is chosen by one of {sorted(monitors)} (or null)"
        )
    check_lr_schedule(cfg.optim.warmup, cfg.optim.decay)
    keys = trial_keys(cfg)
    if keys and not (keys.storage and keys.study):
        raise ConfigError("optuna.trial is set without optuna.storage and optuna.study: the sweeper sets all three")
    if keys and not (cfg.eval.net and cfg.eval.monitor):
        raise ConfigError("optuna.trial: a trial reports eval.monitor; use an eval net (eval=digits) with a monitor")
    if cfg.optim.grad_clip is not None and not cfg.optim.grad_clip > 0:
        raise ConfigError(f"optim.grad_clip={cfg.optim.grad_clip}: clip at a norm > 0 (e.g. 1.0), or null")
    if cfg.ema and not cfg.ema.get("_target_"):  # e.g. ema=none +ema.sigma_rel=0.1
        raise ConfigError(f"ema={dict(cfg.ema)}: not an EMA; choose an option of the group, ema=power or ema=none")
    if cfg.ema and "sigma_rel" in cfg.ema:
        check_sigma_rel(cfg.ema.sigma_rel)
    if cfg.ema and "sigma_rels" in cfg.ema:  # ema=posthoc
        check_posthoc(cfg.ema)
    if cfg.loss.snr_gamma is not None and cfg.loss.snr_gamma <= 0:
        raise ConfigError(f"loss.snr_gamma={cfg.loss.snr_gamma}: use a positive gamma (e.g. 5) or null")
    check_family(cfg.schedule, cfg.loss, cfg.sampler.name, cfg.eval.get("sampler"))  # flow's checks, one line each
    if cfg.schedule.get("rescale_betas_zero_snr") and cfg.schedule.prediction_type == "epsilon":
        weighting = " and loss.snr_gamma's min(snr, gamma)/snr is 0/0 there" if cfg.loss.snr_gamma else ""
        raise ConfigError(
            "schedule.rescale_betas_zero_snr=true with schedule.prediction_type=epsilon: the last timestep has SNR "
            f"0, where an epsilon model cannot recover the image{weighting} (NaN): "
            "use schedule.prediction_type=v_prediction"
        )
    if cfg.model.in_channels != cfg.data.channels:
        raise ConfigError(
            f"model.in_channels={cfg.model.in_channels} but data.channels={cfg.data.channels}: make them equal "
            f"(model.in_channels follows data.channels unless overridden)"
        )
    if cfg.model.sample_size != cfg.data.resolution:
        raise ConfigError(
            f"model.sample_size={cfg.model.sample_size} but data.resolution={cfg.data.resolution}: make them equal"
        )
    if cfg.logger and "TensorBoard" in cfg.logger._target_ and importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("logger=tensorboard needs the tensorboard package: pip install tensorboard, or logger=csv")
    check_trainer(cfg.trainer)
    gpu_only = str(cfg.trainer.precision) in ("16-mixed", "16", "16-true")
    if gpu_only and not on_gpu(cfg):
        raise ConfigError(
            f"trainer.precision={cfg.trainer.precision} needs a GPU: on CPU use trainer.precision=bf16-mixed or 32"
        )
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator={cfg.trainer.accelerator} but no CUDA GPU is visible: use trainer=default"
        )
