"""What each command's config may hold, and the checks `diffexp.cli` runs on it before Hydra starts the command.

The train recipe has its own schema (`diffexp.schema`); the other commands read a handful of top-level keys each,
typed here so `diffexp-sample n=abc` or `diffexp-export push_to_hub=maybe` is one line naming the key, not a
traceback from deep inside, and a misspelt `+key` names the nearest real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffexp.config import flatten
from diffexp.errors import ConfigError, nearest
from diffexp.recipe_rules import given
from diffexp.runtime import check_threads
from diffexp.schema import Eval, Sampler


@dataclass
class Sample:
    run: str
    sampler: Sampler
    n: int = 64
    seed: int = 0
    nrow: Optional[int] = None
    singles: bool = False
    trajectory: bool = False
    device: str = "auto"
    threads: Any = "auto"  # auto or a whole number >= 1 (diffexp.runtime.check_threads)


@dataclass
class Evaluate:
    run: str
    eval: Eval
    samplers: Optional[list[str]] = None  # null: every sampler of the run's family (diffexp.frontier)
    steps: list[int] = field(default_factory=list)
    ddpm_steps: list[int] = field(default_factory=list)
    n: Optional[int] = None
    seed: int = 0
    device: str = "auto"
    threads: Any = "auto"  # auto or a whole number >= 1 (diffexp.runtime.check_threads)
    ema_sigma_rel: list[float] = field(default_factory=list)
    allow_changed_data: bool = False  # score a run whose held-out set changed (every figure marked)


@dataclass
class Compare:
    sweep: Any = None  # a folder or a list of folders
    runs: Optional[list[str]] = None
    out: Optional[str] = None
    metric: str = "fid"
    compute: str = "images_seen"
    name: str = "best"


@dataclass
class Reproduce:
    run: str
    threads: Any = "auto"  # auto or a whole number >= 1 (diffexp.runtime.check_threads)


@dataclass
class Export:
    run: str
    out: Optional[str] = None
    weights: str = "final"
    license: str = "other"
    push_to_hub: bool = False
    repo_id: Optional[str] = None
    private: bool = False
    ema_sigma_rel: Optional[float] = None


SCHEMAS = {"sample": Sample, "evaluate": Evaluate, "compare": Compare, "reproduce": Reproduce, "export": Export}


def validate_command(command: str, cfg: DictConfig) -> None:
    """Every key's type against the command's schema; one line naming the key and what it takes."""
    try:
        OmegaConf.merge(OmegaConf.structured(SCHEMAS[command]), cfg)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        reason = str(e).splitlines()[0]
        if "Key" in type(e).__name__ or "not in struct" in reason:
            keys = flatten(OmegaConf.to_container(cfg, resolve=False))
            raise ConfigError(f"{key}: no such setting{nearest(key, keys)}; see `diffexp-{command} --help`") from e
        raise ConfigError(f"{key}: {reason}; give a value of the right type") from e


def check_command(command: str, cfg: DictConfig, overrides: list[str]) -> None:
    """The checks of a command other than train: types, and settings the command line gave twice."""
    validate_command(command, cfg)
    if "threads" in cfg:  # auto, a count, or (reproduce) null for the recorded count
        check_threads(cfg.threads)
    typed = given(overrides)
    if command == "evaluate" and "n" in typed and "eval.n_samples" in typed and cfg.n != cfg.eval.n_samples:
        raise ConfigError(f"n={cfg.n} but eval.n_samples={cfg.eval.n_samples}: drop eval.n_samples (n decides)")


def check_train(cfg: DictConfig, overrides: list[str], typed: bool = False) -> None:
    """A train recipe's checks (`typed`: its types are checked already); `resume=DIR` trains the saved recipe, which
    `train.run` checks once it has read it."""
    from diffexp.schema import check_recipe

    if not cfg.get("resume"):
        check_recipe(cfg, overrides, typed)


def checks(command: str):
    """The function that checks `command`'s composed config (without Hydra's node) and its overrides."""
    if command == "train":
        return check_train
    return lambda cfg, overrides: check_command(command, cfg, overrides)
