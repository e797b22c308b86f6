"""diffexp from Python (a notebook, a script): each function composes the config its command would, runs the same
code through Hydra, and writes the same files (`.hydra/`, `train.log`, the run folder), so `diffexp-reproduce`
treats an API run like any other.

    from diffexp import api
    run = api.train(["model=tiny", "trainer.max_steps=300"])          # the run folder
    grid = api.sample(run, sampler="ddim", **{"sampler.steps": 50})   # RUN/samples/ddim-50steps-seed0-n64.png
    table = api.evaluate(run, samplers=["ddim"], steps=[25], ddpm_steps=[])
    report = api.compare(runs=[run])

Settings are Hydra overrides, as on the command line: a list of `key=value` strings, or keyword arguments
(`n=16`, `**{"sampler.steps": 50}`); lists become `[a,b]`. Bad settings raise `diffexp.errors.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from diffexp.config import new_uid


def _override(key: str, value: Any) -> str:
    if isinstance(value, list | tuple):
        value = "[" + ",".join(str(v) for v in value) + "]"
    elif value is None:
        value = "null"
    elif isinstance(value, bool):
        value = str(value).lower()
    return f"{key}={value}"


def _overrides(overrides: Iterable[str], settings: dict[str, Any]) -> list[str]:
    return [*overrides, *(_override(k, v) for k, v in settings.items())]


def _run_app(name: str, task: Callable, overrides: list[str], config_dir: str | Path | None = None) -> Any:
    """Runs `task` as the `diffexp-<name>` command would (Hydra's run mode: output folder, `.hydra/`, job log), with
    the Hydra that `@hydra.main` builds (`diffexp.cli.main_hydra`: Hydra 1.3 has no public API for a run)."""
    from hydra.core.global_hydra import GlobalHydra

    from diffexp.cli import check, main_hydra

    new_uid()  # each call its own run folder name, however quickly they follow each other
    check(name, overrides, config_dir)  # as the command's: a mistake is a ConfigError before any folder is made
    hydra = main_hydra(name, config_dir)
    try:
        return hydra.run(config_name=name, task_function=task, overrides=overrides).return_value  # re-raises
    finally:
        GlobalHydra.instance().clear()


def train(overrides: Iterable[str] = (), config_dir: str | Path | None = None, **settings: Any) -> Path:
    """Trains one recipe like `diffexp-train`; returns its run folder.

    Args:
        overrides: Hydra overrides, e.g. `["model=small", "optim.optimizer.lr=1e-3"]`.
        config_dir: an extra config folder, as `--config-dir` (e.g. a report's `conf/`).
        settings: more overrides as keyword arguments (`seed=1`).
    """
    from hydra.core.hydra_config import HydraConfig

    from diffexp.train import run_or_tidy

    def task(cfg) -> Path:
        folder = Path(HydraConfig.get().runtime.output_dir)
        run_or_tidy(cfg)  # a refused run leaves no folder, as from the command
        return folder

    return _run_app("train", task, _overrides(overrides, settings), config_dir)


def sample(run: str | Path, overrides: Iterable[str] = (), **settings: Any) -> Path:
    """Samples a grid like `diffexp-sample run=RUN`; returns the PNG's path.

    Args:
        run: a run folder or a pipeline folder.
        overrides, settings: as for `train` (`sampler=ddim`, `n=16`, `seed=1`).
    """
    from diffexp.sample import run as task

    return _run_app("sample", task, [f"run={run}", *_overrides(overrides, settings)])


def evaluate(run: str | Path, overrides: Iterable[str] = (), **settings: Any) -> Path:
    """Scores a run per sampler and steps like `diffexp-evaluate run=RUN`; returns the CSV table's path (the
    Markdown table beside it).

    Args:
        run: a run folder.
        overrides, settings: as for `train` (`samplers=["ddim"]`, `steps=[25]`, `ddpm_steps=[]`).
    """
    from diffexp.evaluate import run as task

    return _run_app("evaluate", task, [f"run={run}", *_overrides(overrides, settings)])


def compare(overrides: Iterable[str] = (), **settings: Any) -> Path:
    """The recipe report like `diffexp-compare`; returns the report folder.

    Args:
        overrides, settings: `sweep=DIR` or `runs=[RUN1,RUN2]`, and `metric=`, `out=`, `name=` as the command takes.
    """
    from diffexp.compare import run as task

    return _run_app("compare", task, _overrides(overrides, settings))
