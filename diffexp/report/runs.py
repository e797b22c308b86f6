"""Reading run folders: each sweep job or run becomes one flat record the report ranks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from diffexp.errors import ConfigError
from diffexp.record import RunRecord, stopped_reason

# Settings that do not change what a run learns (the seed is averaged over instead), and group choices that are no
# part of a recipe themselves (a sweep file or experiment only sets other settings, which the config holds).
NOT_RECIPE = ("seed", "threads", "resume", "logger", "hydra", "sweep_name", "tag", "optuna", "allow_changed_data")
NOT_RECIPE_GROUPS = ("logger", "experiment", "sweeps")  # a sweep file sets recipe keys, which the config holds
# What a run shows and keeps rather than what it learns: runs that differ only here pool as one recipe (an exported
# experiment still carries them, so the run it retrains writes what the original wrote).
NOT_LEARNED = ("verbose", "preview", "checkpoint")


def recipe_setting(override: str) -> bool:
    """Whether a `key=value` override changes the recipe compared (`optuna.trial=3`, `verbose=true` do not)."""
    return override.lstrip("+~").split("=")[0].split(".")[0] not in NOT_RECIPE + NOT_LEARNED


def natural_key(text: str | Path) -> list:
    """Sorts `sweep/2` before `sweep/10`."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


def find_runs(sweeps: list[str], runs: list[str]) -> list[Path]:
    """The run folders to compare: each `runs=` entry and every run folder (job) under each `sweep=` folder."""
    if not sweeps and not runs:
        raise ConfigError("neither sweep= nor runs= is set: give sweep=DIR (a multirun folder) or runs=[RUN1,RUN2]")
    found: list[Path] = []
    for s in sweeps:
        folder = Path(s).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"sweep={s}: no such folder: point sweep= at a multirun folder (multirun/<sweep name>)")
        jobs = {p.parent.parent for p in folder.rglob(".hydra/config.yaml")} | set(
            p.parent for p in folder.rglob("metrics.json")
        )
        if not jobs:
            raise ConfigError(
                f"sweep={s} holds no run folders (none with .hydra/config.yaml or metrics.json): point sweep= at a "
                f"multirun folder, or list run folders with runs=[RUN1,RUN2]"
            )
        found += sorted(jobs, key=natural_key)
    for r in runs:
        folder = Path(r).expanduser()
        if not ((folder / ".hydra" / "config.yaml").exists() or (folder / "metrics.json").exists()):
            raise ConfigError(
                f"runs: {r} is not a run folder (no .hydra/config.yaml or metrics.json): list run folders"
            )
        found.append(folder)
    return list(dict.fromkeys(p.resolve() for p in found))


def _yaml(path: Path) -> Any:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) if path.exists() else None


def _logged_error(folder: Path) -> str | None:
    """The `error: ...` line a job logs when its config was rejected (diffexp.errors.report in a multirun)."""
    lines = [line for log_file in sorted(folder.glob("*.log")) for line in log_file.read_text().splitlines()]
    errors = [line.split("error:", 1)[1].strip() for line in lines if "error:" in line]
    return errors[-1] if errors else None


def run_row(folder: Path) -> dict[str, Any]:
    """One run folder as a flat record; a job without metrics.json (its config was rejected) is a failed run."""
    folder = Path(folder)
    config = _yaml(folder / ".hydra" / "config.yaml") or {}
    overrides = [o for o in _yaml(folder / ".hydra" / "overrides.yaml") or [] if not o.lstrip("+~").startswith("hydra")]
    record = RunRecord.read(folder)
    written = folder / "metrics.json"
    hydra_record = _yaml(folder / ".hydra" / "hydra.yaml") or {}
    choices = hydra_record.get("hydra", {}).get("runtime", {}).get("choices") or (record and record.recipe) or {}
    choices = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    record = record or RunRecord(status="failed")
    status, error = record.status, _logged_error(folder)
    if status == "running" and error:
        status = "failed"
    stopped = stopped_reason(record, folder) if status == "running" else None
    if stopped:  # killed: its record will never leave `running`
        status, error = "failed", stopped
    reason = None
    if status == "failed":
        reason = record.reason or error or "no metrics.json: the job stopped before training started"
    elif status == "pruned":  # a search's pruner stopped it early: listed as such, never ranked
        reason = record.reason
    recipe = {k: v for k, v in config.items() if k not in NOT_RECIPE + NOT_LEARNED}
    key_choices = {k: v for k, v in choices.items() if k not in NOT_RECIPE_GROUPS}
    grids = sorted((folder / "samples").glob("step_*.png"))
    return {
        "name": "/".join(folder.parts[-2:]),
        "path": str(folder),
        "size": str(choices.get("model", "?")),
        "choices": choices,
        "config": config,
        "overrides": overrides,
        "recipe_key": json.dumps([key_choices, recipe], sort_keys=True, default=str),
        "seed": config.get("seed"),
        "status": status,
        "updated": written.stat().st_mtime if written.exists() else 0.0,  # which of two repeats is the newer
        "reason": reason,
        "eval": record.eval or {},
        "eval_history": record.eval_history or [e for e in [record.eval_best] if e],
        "prediction": (config.get("schedule") or {}).get("prediction_type"),
        "heldout": record.heldout,  # the held-out fingerprint (None: a run made before it was recorded)
        **{k: getattr(record, k) for k in ("final_loss", "images_seen", "train_seconds", "parameters", "steps")},
        "losses": str(folder / "losses.csv") if (folder / "losses.csv").exists() else None,
        "grid": str(grids[-1]) if grids else None,
    }
