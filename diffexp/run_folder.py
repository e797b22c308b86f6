"""The run folder: what a run records besides its config, written atomically, and only into its own folder."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffexp.errors import ConfigError, ForeignFolderError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("diffexp.train")


def rank() -> int:
    """The process rank Lightning's DDP launcher gives; 0 outside DDP."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0") or 0))


def free_path(folder: Path, stem: str, suffix: str = ".png") -> Path:
    """`folder/stem.png`, or `stem-2.png`, `stem-3.png`... whichever does not exist yet: nothing written is
    overwritten (a suffix of "" names a folder)."""
    path, k = folder / f"{stem}{suffix}", 2
    while path.exists():
        path, k = folder / f"{stem}-{k}{suffix}", k + 1
    return path


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


def umask() -> int:
    """The process's umask, read without changing it (Linux's /proc; elsewhere set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: Path) -> Path:
    """Gives `path` (and everything under a folder) the modes a plain `open`/`mkdir` would: files written through
    mkstemp/mkdtemp or by safetensors get 600/700 whatever the umask, so colleagues could not read a run."""
    path, mask = Path(path), umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Writes `path` through a temporary file and a rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        follow_umask(Path(tmp))  # mkstemp makes 600; the mode is set before the rename
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """Yields a temporary folder beside `path`; on success it replaces `path` whole, else it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        follow_umask(tmp)  # mkdtemp makes 700 and safetensors writes 600: set the modes before the rename
        old = path.with_name(f".{path.name}.old")
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_metrics(folder: Path) -> dict[str, Any]:
    """A run's `metrics.json` (empty where the run has none yet: refused, or killed before it started)."""
    path = Path(folder) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}


def update_metrics(folder: Path, **fields: Any) -> dict[str, Any]:
    """Merges `fields` into `metrics.json` (atomically) and returns the whole record."""
    record = read_metrics(folder) | fields
    atomic_write_text(Path(folder) / "metrics.json", json.dumps(record, indent=2, default=str) + "\n")
    return record


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


class LoadedRun:
    """A trained model read back from a run folder or a pipeline folder."""

    def __init__(self, unet, scheduler, config: dict, source: Path, step: int | None = None) -> None:
        self.unet, self.scheduler, self.config, self.source = unet, scheduler, config, source
        self.step = step  # the training step of a checkpoint's weights (None for a pipeline folder)


def load_run(folder: Path) -> LoadedRun:
    """Reads the UNet (EMA weights where EMA was on) and training scheduler of a run or pipeline folder.

    A finished run's `pipeline/` is used; an unfinished one's `checkpoints/last.ckpt` (loaded with
    `weights_only=True`, so it executes no code).
    """
    folder = Path(folder).expanduser()
    pipeline = folder if (folder / "model_index.json").exists() else folder / "pipeline"
    if (pipeline / "model_index.json").exists():
        from diffusers import DDPMPipeline

        if not any((pipeline / "unet").glob("*.safetensors")):
            raise ConfigError(f"run={folder}: {pipeline / 'unet'} has no safetensors weights: export it again")
        from diffusers.utils import logging as diffusers_logging

        bar = diffusers_logging.is_progress_bar_enabled()
        diffusers_logging.disable_progress_bar()  # a bar for loading two small components is noise
        try:
            # low_cpu_mem_usage=False: what diffusers falls back to without accelerate, minus its warning each time
            pipe = DDPMPipeline.from_pretrained(pipeline, use_safetensors=True, low_cpu_mem_usage=False)
        except (OSError, ValueError) as e:
            raise ConfigError(f"run={folder}: the pipeline in {pipeline} does not load ({e}): export it again") from e
        finally:
            if bar:
                diffusers_logging.enable_progress_bar()
        config_file = pipeline / "diffexp_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        return LoadedRun(pipe.unet.eval(), pipe.scheduler, config, pipeline)
    ckpt = folder / "checkpoints" / "last.ckpt"
    if ckpt.exists():
        return load_checkpoint(ckpt, folder)
    raise ConfigError(
        f"run={folder} is neither a run folder (with pipeline/ or checkpoints/last.ckpt) nor a diffusers pipeline "
        f"folder (with model_index.json): point run= at one"
    )


def load_checkpoint(ckpt: Path, folder: Path) -> LoadedRun:
    """A checkpoint's averaged weights (EMA where the run used it; ema=posthoc: its width in use)."""
    from diffexp.config import instantiate

    try:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        config = state["diffexp_config"]
    except Exception as e:  # a truncated or foreign file: torch raises several kinds
        raise ConfigError(
            f"run={folder}: {ckpt} is not a readable diffexp checkpoint ({type(e).__name__}): resume or retrain the run"
        ) from e
    unet = instantiate(config["model"], _convert_="all")
    weights = {k.removeprefix("unet."): v for k, v in state["state_dict"].items() if k.startswith("unet.")}
    unet.load_state_dict(weights)
    if "ema" in state:
        shadows = state["ema"].get("shadow_params")
        if state["ema"].get("kind") == "posthoc":  # the width in use, reconstructed from the run's snapshots
            from diffexp.posthoc import checkpoint_average

            shadows = checkpoint_average(state["ema"], folder / "ema", [n for n, _ in unet.named_parameters()])
        for p, shadow in zip(unet.parameters(), shadows, strict=True):
            p.data.copy_(shadow)
    return LoadedRun(unet.eval(), instantiate(config["schedule"]), config, ckpt, state.get("global_step"))


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
    record = read_metrics(run_dir)
    if record.get("status") not in ("finished", "pruned"):
        log.info("resuming unfinished job %s", run_dir)
        return None
    log.info("skipping %s job %s", record["status"], run_dir)
    return record["objective"]


RESUME_SETTINGS = ("resume", "verbose")  # what `resume=DIR` may be given besides; the recipe is the saved one


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
    return old
