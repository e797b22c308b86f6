"""Recipe rules beyond the types (`schema.validate`): the trainer's values, and two settings given on the command
line that decide the same thing with values that disagree. Either would otherwise surface late (Lightning refuses a
precision only once the run is built) or not at all (a budget in images silently replaces `trainer.max_steps`).
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, ListConfig

from diffexp.errors import ConfigError

PRECISIONS = ("32", "64", "16", "bf16", "32-true", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")


def check_trainer(trainer: DictConfig) -> None:
    """The trainer settings Lightning would refuse only once the run is built (or, for devices, misread)."""
    if str(trainer.precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={trainer.precision}: use one of {', '.join(PRECISIONS)}")
    if trainer.accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={trainer.accelerator}: use one of {', '.join(ACCELERATORS)}")
    devices = trainer.devices
    counts = isinstance(devices, int) and (devices > 0 or devices == -1)
    listed = isinstance(devices, ListConfig) and all(isinstance(d, int) and d >= 0 for d in devices) and len(devices)
    if not (counts or listed or devices == "auto"):
        raise ConfigError(f"trainer.devices={devices}: a number of devices (e.g. 1), a list of indices, or auto")
    if trainer.get("num_nodes", 1) < 1:
        raise ConfigError(f"trainer.num_nodes={trainer.num_nodes}: train on at least 1 machine")


def given(overrides: list[str]) -> dict[str, str]:
    """The settings a command line gave (`key=value`, `+key=value`, `++key=value`) -> their text."""
    out = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not key.startswith("~"):
            out[key.lstrip("+")] = value
    return out


def budget_steps(cfg: DictConfig) -> int | None:
    """The steps `budget.images` decides, as `train._trainer` sets them; None without a budget, or where the device
    count is only known once Lightning looks (`auto`, -1)."""
    devices = cfg.trainer.devices
    if not cfg.budget.images or not isinstance(devices, int) or devices < 1:
        return None
    world = devices * cfg.trainer.get("num_nodes", 1)
    return math.ceil(cfg.budget.images / (cfg.data.batch_size * world))


def check_agreement(cfg: DictConfig, overrides: list[str]) -> None:
    """Refuses a setting given on the command line that another one would silently overrule. Only what the user
    typed counts: a saved recipe (a budget run records its decided `max_steps`), `trainer=debug`'s own steps, a
    resumed or reproduced run carry both by design."""
    typed = given(overrides)
    steps = budget_steps(cfg)
    if "trainer.max_steps" in typed and steps is not None and steps != cfg.trainer.max_steps:
        raise ConfigError(
            f"trainer.max_steps={cfg.trainer.max_steps} but budget.images={cfg.budget.images} decides {steps} steps "
            f"(at data.batch_size={cfg.data.batch_size}): drop trainer.max_steps, or give budget.images=null to train "
            "by steps"
        )
    for follower, leader in (("model.in_channels", "data.channels"), ("model.sample_size", "data.resolution")):
        if follower in typed and leader in typed and str(typed[follower]) != str(typed[leader]):
            raise ConfigError(
                f"{follower}={typed[follower]} but {leader}={typed[leader]}: drop {follower} ({follower} follows "
                f"{leader})"
            )
