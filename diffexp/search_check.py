"""A sweep checked whole before its first job: every job's recipe passes the command's checks, or nothing runs.

Why here and not in a sweeper or a launcher: a grid's jobs are composed by the launcher (basic, joblib, submitit)
one by one as each starts, and a Hydra callback sees only the sweep's main config. `diffexp.cli` runs before Hydra
starts, so it composes each job exactly as the launchers will (`load_sweep_config` on the sweep's main config with
the job's overrides, from `BasicSweeper.split_arguments`) and checks it; one bad job stops the sweep with one line
naming its overrides, before any job trains and before Hydra writes `multirun.yaml`.

An Optuna search (`hydra/sweeper=diffexp_optuna`) has no list of jobs: each searched value is checked on its own
(each choice, each interval's ends), then every combination of the categorical choices (the custom search space's
included) where there are at most `MAX_COMBINATIONS` (a count, not a time: the same search is checked the same way
on a fast or a loaded machine); combinations are composed and wholly checked once per choice of config groups,
and their values set on a copy and type-checked alone, since a composition costs ~0.2 s, a whole recipe's type check
~30 ms and a value's ~1 ms. In a larger space each trial's job checks its own recipe before it trains (a bad one
fails as that trial, and the search goes on).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

from diffexp.errors import ConfigError

MAX_COMBINATIONS = 512  # an Optuna search's combinations checked up front, at most (~0.1 s each on 2 CPU cores)
TRIAL_KEYS = ["optuna.storage='sqlite:///check.db'", "optuna.study=check", "optuna.trial=0"]  # the sweeper sets them


def check_sweep(loader, master: DictConfig, checks: Callable[[DictConfig, list[str]], None]) -> None:
    """Checks every job of the sweep `master` (the config Hydra composed for `-m`) as its sweeper will run it."""
    target = str(master.hydra.sweeper.get("_target_", ""))
    if target.endswith("BasicSweeper"):
        check_grid(loader, master, checks)
    elif "diffexp_optuna_sweeper" in target:
        SearchCheck(loader, master, checks).up_front()


def check_grid(loader, master: DictConfig, checks: Callable[[DictConfig, list[str]], None]) -> None:
    """Each job of a grid, in the order the launcher runs them; the first bad one raises naming its overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (master.hydra.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *master.hydra.overrides.task])
    jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
    for number, job in enumerate(jobs):
        shown = [o for o in job if o.split("=", 1)[0] in swept]  # what tells this job from the others
        check_job(loader, master, checks, list(job), f"sweep job {number}", shown)


def check_job(loader, master: DictConfig, checks, overrides: list[str], name: str, shown: list | None = None) -> None:
    """One job composed as its launcher will, then checked; a mistake names the job and its (`shown`) overrides."""
    from diffexp.composition import composition_error, task_config

    shown = " ".join(o for o in (overrides if shown is None else shown) if not o.startswith("optuna."))
    try:
        cfg = loader.load_sweep_config(master, overrides)
    except Exception as e:
        line = composition_error(e, lambda kept: loader.load_sweep_config(master, kept), overrides)
        if line is None:
            raise
        raise ConfigError(f"{name} ({shown}): {line}") from e
    try:
        checks(task_config(cfg), overrides)
    except ConfigError as e:
        raise ConfigError(f"{name} ({shown}): {e}") from e


def as_override(value: Any) -> str:
    """A searched value as the sweeper writes it into a job's overrides."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


class SearchCheck:
    """An Optuna search's values, checked on their own and (up to MAX_COMBINATIONS) in every combination.

    The space is a list of dimensions, each a list of alternatives (a dict of parameters): one per choice or
    interval end of a searched key, one per path through the custom search space (`ema=none` alone, `ema=power`
    with each width), so no combination holds what no trial could draw."""

    def __init__(self, loader, master: DictConfig, checks: Callable[[DictConfig, list[str]], None]) -> None:
        self.loader, self.master, self.checks = loader, master, checks
        sweeper = master.hydra.sweeper
        params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
        self.fixed, self.dimensions, self.intervals = search_values([*master.hydra.overrides.task, *params])
        if sweeper.get("custom_search_space"):
            from hydra.utils import get_method

            self.dimensions.append(custom_paths(get_method(sweeper.custom_search_space), sweeper))
        keys = {k for dimension in self.dimensions for alternative in dimension for k in alternative}
        self.groups = {k for k in keys if "." not in k and loader.get_group_options(k)}
        self.composed: dict[tuple, DictConfig] = {}
        self.checked: set[tuple] = set()

    def up_front(self) -> None:
        """Each value alone, then every combination where there are at most MAX_COMBINATIONS; raises on the first
        bad one."""
        check_sweeper(self.master.hydra.sweeper)
        for dimension in self.dimensions:
            for alternative in dimension:
                self._check(alternative)
        combinations = list(itertools.product(*self.dimensions))
        if len(combinations) > MAX_COMBINATIONS:
            return  # too many to check here: each trial's job checks its recipe before it trains
        for combination in combinations:
            params = {k: v for alternative in combination for k, v in alternative.items()}
            self._check(params)
            self.checked.add(self._kind(params))

    def _kind(self, params: dict[str, Any]) -> tuple:
        return tuple(sorted((k, repr(v)) for k, v in params.items() if k not in self.intervals))

    def _check(self, params: dict[str, Any]) -> None:
        """Composes the groups `params` choose (once per choice), sets its values on a copy, and checks it."""
        from diffexp.command_schema import check_train
        from diffexp.composition import task_config
        from diffexp.schema import validate

        groups = tuple(sorted((k, str(v)) for k, v in params.items() if k in self.groups))
        overrides = [*self.fixed, *(f"{k}={as_override(v)}" for k, v in params.items())]
        if groups not in self.composed:  # the whole recipe checked once per choice of groups, and typed
            chosen = [*self.fixed, *(f"{k}={v}" for k, v in groups)]
            check_job(self.loader, self.master, self.checks, [*chosen, *TRIAL_KEYS], "search trial")
            base = task_config(self.loader.load_sweep_config(self.master, chosen))
            self.composed[groups] = base, None if base.get("resume") else validate(base)  # resume: as check_train
        base, typed = self.composed[groups]
        cfg = base.copy()
        OmegaConf.set_struct(cfg, False)
        trial = {"optuna.storage": "sqlite:///check.db", "optuna.study": "check", "optuna.trial": 0}
        values = {k: v for k, v in params.items() if k not in self.groups} | trial
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=True)
        try:
            if typed is not None:
                validate_values(typed, values)  # the values' types only: the rest is the checked base's
            check_train(cfg, overrides, typed=True)
        except ConfigError as e:
            raise ConfigError(f"search trial ({' '.join(overrides)}): {e}") from e


def validate_values(typed: DictConfig, values: dict[str, Any]) -> None:
    """Checks `values` (dotted keys) as `schema.validate` would a recipe it typed (`typed`, what it returned) with them
    set: each is set on a copy and checked against its key's type, at a fifth of a whole validation's cost."""
    from omegaconf.errors import OmegaConfBaseException

    from diffexp.schema import type_error

    cfg = typed.copy()
    try:
        for key, value in values.items():
            OmegaConf.update(cfg, key, value, merge=True)
    except OmegaConfBaseException as e:
        raise type_error(e, cfg) from e


def search_values(lines: list[str]) -> tuple[list[str], list[list[dict[str, Any]]], set[str]]:
    """Fixed overrides, the searched keys' dimensions (each choice; each interval's two ends), the interval keys."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    fixed, dimensions, intervals = [], [], set()
    for override in OverridesParser.create().parse_overrides(lines):
        key = override.get_key_element()
        if not override.is_sweep_override():
            fixed.append(override.input_line)
        elif override.is_interval_sweep():
            value = override.value()
            dimensions.append([{key: value.start}, {key: value.end}])
            intervals.add(key)
        else:
            dimensions.append([{key: v} for v in override.sweep_iterator()])
    return fixed, dimensions, intervals


class _Paths:
    """An Optuna trial stand-in that walks a custom search space: each `suggest_categorical` answers the next choice
    of the path being walked, so calling the space once per path lists every path (the space draws choices only)."""

    def __init__(self, path: list[int]) -> None:
        self.path, self.depth, self.params, self.widths = path, 0, {}, []

    def suggest_categorical(self, name: str, choices: list) -> Any:
        index = self.path[self.depth] if self.depth < len(self.path) else 0
        self.widths.append(len(choices))
        self.depth += 1
        self.params[name] = choices[index]
        return choices[index]


def custom_paths(space: Callable, sweeper: DictConfig) -> list[dict[str, Any]]:
    """Every path through a custom search space (`ema.search_space`: ema=none; ema=power with each width)."""
    paths, todo = [], [[]]
    while todo:
        walk = _Paths(todo.pop())
        space(sweeper, walk)
        paths.append(walk.params)
        todo += [walk.path[:d] + [i] for d in range(len(walk.path), walk.depth) for i in range(1, walk.widths[d])]
    return paths


def check_sweeper(sweeper: DictConfig) -> None:
    """The Optuna sweeper's own settings that would fail only once the study opens: its pruner and sampler (built
    here, so Optuna's own checks run), its trial count, and where its study lives."""
    from hydra.utils import instantiate

    if sweeper.n_trials < 1:
        raise ConfigError(f"hydra.sweeper.n_trials={sweeper.n_trials}: run at least 1 trial")
    for part in ("pruner", "sampler"):
        if sweeper.get(part):
            try:
                instantiate(OmegaConf.to_container(sweeper[part], resolve=True))
            except Exception as e:
                cause = e.__cause__ or e
                raise ConfigError(f"hydra.sweeper.{part}: {str(cause).splitlines()[0]}") from e
    check_storage(sweeper.storage)


def check_storage(spec: str | None) -> None:
    """An Optuna storage URL whose database driver is installed, or a journal file in an existing folder."""
    from pathlib import Path

    if not spec:
        return
    if "://" not in spec:
        if not Path(spec).expanduser().parent.is_dir():
            raise ConfigError(f"hydra.sweeper.storage={spec}: a journal file's folder must exist; create it first")
        return
    from sqlalchemy.engine.url import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        url = make_url(spec)
        url.get_dialect().import_dbapi()
    except (ArgumentError, NoSuchModuleError, ValueError) as e:
        raise ConfigError(f"hydra.sweeper.storage={spec}: not a database URL Optuna can open ({e})") from e
    except ImportError as e:
        extra = ' (pip install -e ".[postgres]")' if url.get_backend_name() == "postgresql" else ""
        raise ConfigError(f"hydra.sweeper.storage={spec}: its driver is not installed: {e.name}{extra}") from e
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).expanduser().parent.is_dir():
        raise ConfigError(f"hydra.sweeper.storage={spec}: the database's folder does not exist; create it first")
