"""Config plumbing shared by every command: the resolvers the YAML uses, flattening for loggers."""

from __future__ import annotations

import netrc
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

_UID = secrets.token_hex(3)
# Run folders this process named through `hydra.run.dir`'s default -> the topmost of them and their parents that did
# not exist then (None: it existed). Only such a folder may be removed when its run is refused (`remove_new_folder`).
NEW_FOLDERS: dict[str, Path | None] = {}


def new_uid() -> None:
    """A new `${uid:}` for the next command this process runs (`diffexp.api`): two runs started within one second
    get two folders."""
    global _UID
    _UID = secrets.token_hex(3)


def _run_dir(resume: str | None, fresh: str) -> str:
    """`resume=DIR` trains on in DIR; otherwise a new folder. Notes whether the folder exists yet."""
    folder = str(Path(resume).expanduser()) if resume else fresh
    path = Path(os.path.abspath(folder))
    if str(path) not in NEW_FOLDERS:  # the first look, before Hydra creates it
        missing = [p for p in (path, *path.parents) if not p.exists()]
        NEW_FOLDERS[str(path)] = missing[-1] if missing else None
    return folder


def remove_new_folder(folder: Path) -> None:
    """Removes a run folder this process's Hydra created for a refused command, and the parents it created that are
    left empty, so a mistake leaves nothing to clean up. Kept: a folder that existed before (a user's
    `hydra.run.dir`, `resume=` of a real folder) and one holding more than Hydra's record and log."""
    top = NEW_FOLDERS.get(os.path.abspath(folder))
    if top is None or not folder.is_dir() or any(p.name != ".hydra" and p.suffix != ".log" for p in folder.iterdir()):
        return
    shutil.rmtree(folder)
    while folder != top and top in folder.parents:
        folder = folder.parent
        try:
            folder.rmdir()  # only while empty: a run started beside this one keeps its parents
        except OSError:
            return


def _record_subdir(output_dir: str, resume: str | None) -> str | None:
    """Where Hydra saves the job's config: nowhere when the folder already holds a run, so it is not overwritten."""
    if resume or (Path(output_dir) / ".hydra" / "config.yaml").exists():
        return None
    return ".hydra"


def group_dir(group: str) -> Path:
    """The folder of a shipped config group: `sweeps` is not under CONF_DIR in a clone."""
    return Path(SWEEPS_DIR) if group == "sweeps" else Path(CONF_DIR, group)


def groups() -> list[str]:
    """Every shipped config group, `sweeps` included."""
    return sorted({p.name for p in Path(CONF_DIR).iterdir() if p.is_dir()} | {"sweeps"})


def options(group: str) -> list[str]:
    """The options of a config group; `_base` (what a group's options share, not an option itself) is left out."""
    return sorted(p.stem for p in group_dir(group).glob("*.yaml") if not p.stem.startswith("_"))


def _groups_help(*names: str) -> str:
    """`--help`'s list of the config groups a command reads (none named: every group), each with its options;
    Hydra's own list holds every group, most of them the training recipe's, and each `_base`."""
    lines = [f"{g}: {', '.join(options(g))}" for g in names or groups()]
    return "== Configuration groups ==\nCompose your configuration from those groups (group=option)\n\n" + (
        "\n".join(lines) + "\n\n"
    )


def _sweep_dir(name: str, tag: str | None) -> str:
    return f"{name}-{tag}" if tag else str(name)


def wandb_offline() -> bool:
    """W&B runs offline unless the user has a key (env or ~/.netrc) or forces `WANDB_MODE=online`."""
    if os.environ.get("WANDB_MODE") in ("offline", "dryrun", "disabled"):
        return True
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE") == "online":
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (OSError, netrc.NetrcParseError):
        return True


def instantiate(node: Any, *args: Any, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but a ConfigError raised while building stays one line, not a Hydra traceback."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    from diffexp.errors import ConfigError

    try:
        return hydra_instantiate(node, *args, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


def register_resolvers() -> None:
    for name, fn in {
        "uid": lambda: _UID,
        "run_dir": _run_dir,
        "record_subdir": _record_subdir,
        "sweep_dir": _sweep_dir,
        "groups_help": _groups_help,
        "wandb_offline": wandb_offline,
        "div": lambda a, b: int(a) // int(b),  # e.g. evaluation points as a share of the budget
    }.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`: flat keys are what W&B tables and filters work best with."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


register_resolvers()


def _config_dirs() -> tuple[Path, Path]:
    """(the config folder, the sweeps folder), absolute so commands work from any folder. A wheel ships them inside
    the package (`diffexp/conf/`, `diffexp/conf/sweeps/`: pyproject.toml maps them in); a clone (an editable install,
    or the checkout on PYTHONPATH) keeps them at its top level, beside the package these modules are read from.
    Found from this file rather than through importlib, so a checkout on PYTHONPATH never reads another install's
    configs. Plain folders, not package resources: `--help` lists them and Hydra reads them as `file://` paths; the
    clone's sweeps reach Hydra through hydra_plugins/diffexp_sweeps_source."""
    package = Path(__file__).resolve().parent
    if (package / "conf").is_dir():
        return package / "conf", package / "conf" / "sweeps"
    return package.parent / "conf", package.parent / "sweeps"


CONF_DIR, SWEEPS_DIR = (str(p) for p in _config_dirs())
