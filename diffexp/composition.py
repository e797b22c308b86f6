"""A composed config, read as the user's mistake: Hydra's composition errors as one line, and the config a task
function gets. Shared by the commands' up-front check (`diffexp.cli`) and the sweeps' (`diffexp.search_check`)."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from diffexp.errors import nearest


def composition_error(error: Exception, compose: Callable[[list[str]], DictConfig], overrides: list[str]) -> str | None:
    """One line for a Hydra composition error (None: not one): a missing option with the group's real options, a
    misspelt key with the nearest real one (`compose` makes the config without it, to look), an unreadable override."""
    from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException

    if isinstance(error, MissingConfigException) and error.missing_cfg_file and "/" in error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        real = [o for o in error.options or [] if not o.startswith("_")]
        return f"{group}={option}: no such option of {group}; choose one of {', '.join(real)}"
    if isinstance(error, OverrideParseException):
        return f"{error.override}: not an override Hydra can read ({first_line(error)}); see `--help`"
    if not isinstance(error, ConfigCompositionException | OmegaConfBaseException):
        return None
    key = getattr(error.__cause__, "full_key", None)
    if key and "Could not override" in str(error):
        kept = [o for o in overrides if not f"{o.split('=', 1)[0].lstrip('+~')}.".startswith(f"{key}.")]
        try:
            hint = nearest(key, _keys(compose(kept)))
        except Exception:  # another mistake among the rest: the key alone is named
            hint = ""
        return f"{key}: no such setting{hint}; see `--cfg job` for the settings (a new key takes +{key}=...)"
    return first_line(error)


def first_line(error: BaseException) -> str:
    """The message's first line, with its OmegaConf cause's first line where Hydra keeps that apart."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    cause = error.__cause__
    if isinstance(cause, OmegaConfBaseException) and str(cause).strip():
        line += f" ({str(cause).strip().splitlines()[0]})"
    return line


def _keys(cfg: DictConfig) -> list[str]:
    from diffexp.config import flatten

    leaves = flatten(OmegaConf.to_container(task_config(cfg), resolve=False))
    return sorted({".".join(k.split(".")[:n]) for k in leaves for n in range(1, k.count(".") + 2)})


def task_config(cfg: DictConfig) -> DictConfig:
    """The config a task function gets: Hydra's own `hydra` node taken out, as Hydra's `run_job` does."""
    task = cfg.copy()
    with open_dict(task):
        task.pop("hydra", None)
    return task
