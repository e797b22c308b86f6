"""The run folder's rules: a run writes only into its own folder; what resuming, a repeated sweep and provenance read
from it (the figures are `diffexp.record`'s, loading a model `diffexp.loading`'s)."""

from __future__ import annotations

import logging
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffexp.errors import ConfigError, ForeignFolderError
from diffexp.record import RunRecord
from diffexp.runtime import rank

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("diffexp.train")


def holds_run(folder: Path) -> bool:
    """Whether a run already wrote here (beyond Hydra's own record of the new job)."""
    return any((folder / name).exists() for name in ("checkpoints", "metrics.json", "pipeline"))


def check_own_folder(folder: Path, resuming: bool) -> None:
    """A new run must not write into another run's folder; a resumed run and DDP's other ranks may."""
    if holds_run(folder) and not resuming and rank() == 0:
        raise ForeignFolderError(
            f"hydra.run.dir={folder} already holds a run: continue it with resume={folder}, "
            f"or leave hydra.run.dir at its default so the run gets a new folder"
        )


# Keys of runs saved before the EMA became `ema=power|none` (sigma_rel) and the warm-up a share of the run.
OLD_KEYS = ("ema.decay", "ema.warmup", "ema.power", "optim.warmup_steps")


def check_current_keys(recipe: Any, setting: str) -> None:
    """Refuses a saved recipe with the old EMA/warm-up keys: today's code cannot continue or repeat it exactly."""
    absent = object()
    old = [k for k in OLD_KEYS if OmegaConf.select(recipe, k, default=absent) is not absent]
    if old:
        raise ConfigError(
            f"{setting}: saved by an older diffexp whose EMA/warm-up keys changed ({', '.join(old)}; now ema=power "
            f"with ema.sigma_rel, or ema=none, and optim.warmup as a share of the run): train it anew"
        )


def read_losses(path: Path) -> dict[int, tuple[float, float]]:
    """`losses.csv` (written by the LossHistory callback) as `{step: (loss, lr)}`; empty when there is none."""
    import csv

    path = Path(path)
    if not path.exists():
        return {}
    with path.open(newline="") as f:
        return {int(r["step"]): (float(r["loss"]), float(r["lr"])) for r in csv.DictReader(f)}


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=PACKAGE_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """What besides the config decides a run's numbers: code version, library versions, threads."""
    import diffusers
    import pytorch_lightning

    # Only a clone's commit describes this code: an installed wheel lives in site-packages, which may lie inside some
    # other repository (a project's .venv/) whose commit would be recorded wrongly. Nothing is recorded then.
    tracked = _git("ls-files", "--error-unmatch", str(Path(__file__).resolve())) is not None
    status = _git("status", "--porcelain", "--untracked-files=no") if tracked else None
    return {
        "git_commit": _git("rev-parse", "HEAD") if tracked else None,
        "git_dirty": bool(status) if status is not None else None,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def earlier_job(run_dir: Path, overrides: list[str]) -> float | None:
    """For a sweep job whose folder exists: its recorded figure if it finished, None if it must resume."""
    saved = run_dir / ".hydra" / "overrides.yaml"
    theirs = list(OmegaConf.load(saved)) if saved.exists() else overrides
    if theirs != overrides:
        raise ForeignFolderError(
            f"{run_dir} holds another recipe ({', '.join(theirs)}): this sweep's folder is from a "
            f"different sweep; give it a new name with tag=<new tag>"
        )
    config = run_dir / ".hydra" / "config.yaml"
    if config.exists():
        check_current_keys(OmegaConf.load(config), f"the sweep job {run_dir} (give the sweep a new tag=)")
    record = RunRecord.read(run_dir)
    if record is None or record.status not in ("finished", "pruned"):
        log.info("resuming unfinished job %s", run_dir)
        return None
    log.info("skipping %s job %s", record.status, run_dir)
    return record.objective


# What `resume=DIR` may be given besides; the recipe is the saved one.
RESUME_SETTINGS = ("resume", "verbose", "allow_changed_data")


def saved_choices(run_dir: Path) -> dict[str, str]:
    """The option each config group of the run took: Hydra's record of its composition (`.hydra/hydra.yaml`), else
    the run's `metrics.json`; Hydra's own groups left out. A resume or a repeat of the run keeps these, not the
    defaults its own command line composed."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.exists():
        choices = dict(OmegaConf.load(hydra_yaml).hydra.runtime.choices)
    else:
        choices = (RunRecord.read(run_dir) or RunRecord()).recipe
    return {k: v for k, v in choices.items() if not k.startswith("hydra")}


def saved_recipe(run_dir: Path, cfg: DictConfig, overrides: list[str] = ()) -> DictConfig:
    """The recipe of the run being resumed, from its own `.hydra/config.yaml`; `overrides` (the command's) may only
    be `RESUME_SETTINGS` or Hydra's own: any other would be silently dropped, so it is refused."""
    saved = run_dir / ".hydra" / "config.yaml"
    if not holds_run(run_dir) or not saved.exists():
        raise ConfigError(f"resume={cfg.resume} is not a diffexp run folder (no .hydra/config.yaml or checkpoints/)")
    old = OmegaConf.load(saved)
    check_current_keys(old, f"resume={cfg.resume}")
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    other = [k for k in keys if k not in RESUME_SETTINGS and not k.startswith("hydra")]
    if other:
        raise ConfigError(
            f"resume={cfg.resume} with {', '.join(other)}: a resumed run trains its saved recipe to its end; drop "
            "them, or start a new run with them"
        )
    old.resume = cfg.resume
    old.verbose = cfg.get("verbose", False)
    old.allow_changed_data = cfg.get("allow_changed_data", False)
    return old
