"""Where and how a process computes: its rank, its torch threads, its device and the GPU speed switches.

Decided once when a command starts, from its config and the machine; nothing here changes what a recipe learns
(the thread count can change the last bits, so it is recorded with the run and reproduce uses it).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import torch
from omegaconf import DictConfig

from diffexp.errors import ConfigError

log = logging.getLogger("diffexp.runtime")
_REGISTERED: dict[Path, IO] = {}  # this process's registration files (a forked child registers anew)


def rank() -> int:
    """This process's global rank: 0 outside DDP. Lightning's own (`rank_zero_only.rank`, read from the launcher's
    RANK/LOCAL_RANK/SLURM_PROCID when Lightning is imported, set again by the DDP strategy)."""
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0))


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which SLURM and taskset narrow)."""
    return len(os.sched_getaffinity(0))


def registry() -> Path:
    """Where the live trainings of this host register: one file each, locked for as long as its process lives
    (`DIFFEXP_RUNTIME_DIR`, else a per-user folder in the runtime or temporary folder)."""
    root = os.environ.get("DIFFEXP_RUNTIME_DIR")
    if not root:
        base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
        root = os.path.join(base, f"diffexp-{os.getuid()}")
    return Path(root) / "trainings"


def register() -> None:
    """Marks this process as a live training (a sweep worker registers once for its whole life; its jobs run in
    it). The lock goes with the process however it ends, so a killed one is never counted."""
    path = registry() / str(os.getpid())
    if path in _REGISTERED:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("w")
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _REGISTERED[path] = handle


def live_trainings() -> int:
    """How many registered processes of this host are alive (this one included, where registered); files left
    by dead ones are removed."""
    folder, count = registry(), 0
    for path in folder.glob("[0-9]*") if folder.is_dir() else ():
        if path in _REGISTERED:
            count += 1
            continue
        try:
            with path.open() as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # taken: its process has ended
            path.unlink(missing_ok=True)
        except BlockingIOError:
            count += 1
        except FileNotFoundError:
            pass
    return count


def launcher_jobs(hydra_cfg) -> int:
    """Jobs the sweep's launcher runs at once on this host: the joblib launcher's `n_jobs` (-1: one per core,
    -2: all but one, ...), else 1."""
    launcher = (hydra_cfg.get("launcher") if hydra_cfg is not None else None) or {}
    if not str(launcher.get("_target_", "")).endswith("JoblibLauncher"):
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return n if n > 0 else max(1, usable_cores() + 1 + n)


def check_threads(threads: object) -> None:
    """`threads` takes `auto` (None too, as saved by older runs) or a whole number of at least 1."""
    if threads in (None, "auto"):
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads={threads}: use auto (this process's share of the cores) or a whole number >= 1")


def thread_share(threads: int | str | None, jobs: int = 1) -> int:
    """Torch threads for this process: an explicit count wins; `auto` (or None) takes its share of the usable
    cores among the live trainings of this host and the launcher's parallel jobs, decided once, at least 1."""
    check_threads(threads)
    register()  # counted by the others whether its own count is explicit or not
    if threads not in (None, "auto"):
        return int(threads)
    cores, sharing = usable_cores(), max(live_trainings(), jobs)
    share = max(1, cores // sharing)
    if sharing > 1:
        log.info("threads=auto: %d of %d cores (%d trainings share this host)", share, cores, sharing)
    return share


def set_threads(threads: int | str | None, jobs: int = 1) -> int:
    """Sets torch's intra-op threads to `thread_share(threads, jobs)`; returns the count."""
    torch.set_num_threads(thread_share(threads, jobs))
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
