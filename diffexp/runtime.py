"""Where and how a process computes: its rank, its torch threads, its device and the GPU speed switches.

Decided once when a command starts, from its config and the machine; nothing here changes what a recipe learns
(the thread count can change the last bits, so it is recorded with the run and reproduce uses it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from diffexp.errors import ConfigError


def rank() -> int:
    """This process's global rank: 0 outside DDP. Lightning's own (`rank_zero_only.rank`, read from the launcher's
    RANK/LOCAL_RANK/SLURM_PROCID when Lightning is imported, set again by the DDP strategy)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which SLURM and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def set_threads(threads: int | None) -> int:
    """Sets torch's intra-op threads: `threads`, or every usable core where it is None; returns the count."""
    torch.set_num_threads(threads or usable_cores())
    return torch.get_num_threads()


def pick_device(device: str) -> torch.device:
    """`auto`: the GPU where there is one; a named CUDA device that is missing is refused, not run on the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is visible: use device=cpu or device=auto")
    return torch.device(device)


def on_gpu(cfg: DictConfig) -> bool:
    """Whether this run trains on a GPU, which decides the `speed.*` switches set to `auto`."""
    return cfg.trainer.accelerator in ("gpu", "cuda") or (
        cfg.trainer.accelerator == "auto" and torch.cuda.is_available()
    )


@dataclass(frozen=True)
class Speed:
    """The `speed.*` switches of a run, resolved (`auto` means on when training on a GPU)."""

    channels_last: bool
    tf32: bool
    fused_adamw: bool
    data_on_device: bool

    @classmethod
    def of(cls, cfg: DictConfig) -> Speed:
        gpu = on_gpu(cfg)
        values = {}
        for name in ("channels_last", "tf32", "fused_adamw", "data_on_device"):
            value = cfg.speed.get(name)
            if value not in ("auto", True, False):
                raise ConfigError(f"speed.{name}={value}: use true, false or auto")
            values[name] = gpu if value == "auto" else bool(value)
        return cls(**values)
