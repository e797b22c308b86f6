"""The commands' entry points: every mistake a command line holds is found before Hydra makes a folder or a job runs.

Hydra composes the config inside `@hydra.main`, where a missing option, a misspelt key or an override it cannot
parse becomes Hydra's own several-line message (exit status 1), and a sweep composes each job's config only when that
job starts, after the jobs before it trained and after `multirun/<sweep>/multirun.yaml` was written. So each console
script's `main` (`entry`) first composes what Hydra will compose, with Hydra's own config loader: the run's config,
or every job of a grid sweep (the same `load_sweep_config` call the basic, joblib and submitit launchers make), or an
Optuna search's values (`diffexp.search_check`); and it runs the command's checks (`diffexp.command_schema`) on each.
A mistake is one line `error: ...`, exit status 2, and Hydra never starts, so nothing is left behind. Only then does
Hydra run the command as usual; what shows only while training (a NaN loss, a full disk) stays per job.

This costs one extra composition (~0.3 s) for a run, and ~0.2 s a job for a grid sweep.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from diffexp.composition import composition_error, first_line, task_config
from diffexp.config import CONF_DIR
from diffexp.errors import ConfigError

Checks = Callable[[DictConfig, list[str]], None]


def entry(command: str, hydra_main: Callable[[], Any]) -> Callable[[], None]:
    """The console script's `main`: the whole command line checked (`preflight`), then Hydra's `hydra_main`."""

    def main() -> None:
        try:
            preflight(command, sys.argv[1:])
        except ConfigError as e:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        hydra_main()

    main.__doc__ = f"diffexp-{command}: the command line checked before Hydra runs it."
    return main


def preflight(command: str, argv: list[str]) -> None:
    """Composes the command line's config (a sweep: each job's) and checks it; raises ConfigError with one line."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.info or args.shell_completion or args.config_path:
        return  # nothing runs (or a config folder of the user's own: Hydra reads it)
    check(command, list(args.overrides), args.config_dir, args.config_name, args.multirun, only_compose=bool(args.cfg))


def check(
    command: str,
    overrides: list[str],
    config_dir: str | Path | None = None,
    config_name: str | None = None,
    multirun: bool = False,
    only_compose: bool = False,
) -> None:
    """Composes and checks `diffexp-COMMAND [-m] OVERRIDES` as Hydra would run it; `diffexp.api` calls it too."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from hydra.types import RunMode

    from diffexp.command_schema import checks

    loader = _loader(command, config_dir)
    name = config_name or command
    try:
        mode = RunMode.MULTIRUN if multirun else RunMode.RUN
        cfg = _compose(loader, name, overrides, mode)
        check_options(loader, overrides)
        if only_compose:
            return
        if multirun:
            from diffexp.search_check import check_sweep

            check_sweep(loader, cfg, checks(command))
        else:
            checks(command)(task_config(cfg), overrides)
    except HydraException as e:  # e.g. `hydra.sweeper.params` no sweeper can read
        raise ConfigError(first_line(e)) from e
    finally:
        GlobalHydra.instance().clear()


def _loader(command: str, config_dir: str | Path | None):
    """Hydra's config loader with the search path `@hydra.main` gives the command (`--config-dir` first)."""
    return main_hydra(command, config_dir).config_loader


def main_hydra(command: str, config_dir: str | Path | None = None):
    """Hydra as `@hydra.main` builds it for `diffexp-<command>`, `config_dir` searched first (as `--config-dir`).

    Hydra 1.3 has no public API for this (`hydra.compose` gives a config alone, not the loader or the run that
    `diffexp.api` needs), so it uses `hydra._internal.hydra.Hydra`, as Hydra's own `@hydra.main` does."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.core.global_hydra import GlobalHydra

    search_path = create_config_search_path(f"file://{CONF_DIR}")
    if config_dir is not None:
        folder = Path(config_dir).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(f"--config-dir {config_dir}: no such folder")
        search_path.prepend("command-line", f"file://{folder}", SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    return Hydra.create_main_hydra2(task_name=command, config_search_path=search_path)


def _compose(loader, name: str, overrides: list[str], mode) -> DictConfig:
    """`load_configuration`, with Hydra's composition errors as one line each (`composition_error`)."""
    try:
        return loader.load_configuration(name, overrides, run_mode=mode)
    except Exception as e:
        line = composition_error(e, lambda kept: loader.load_configuration(name, kept, run_mode=mode), overrides)
        if line is None:
            raise
        raise ConfigError(line) from e


def check_options(loader, overrides: list[str]) -> None:
    """A group option that does not exist, where Hydra says nothing: an `optional` group (`experiment=NAME` without
    the `--config-dir` that holds it) would train the default recipe without a word."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element().lstrip("+~")
        options = loader.get_group_options(key) if "." not in key and "@" not in key else []
        if not options or override.is_delete() or override.value() is None:
            continue
        wanted = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
        for option in wanted:
            if isinstance(option, str) and option not in options:
                real = ", ".join(o for o in options if not o.startswith("_"))
                raise ConfigError(f"{key}={option}: no such option of {key}; choose one of {real}")
