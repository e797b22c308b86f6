"""The best recipes written back as Hydra experiment configs that `diffexp-train` composes."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from diffexp.config import CONF_DIR
from diffexp.errors import ConfigError
from diffexp.report.ranking import spread
from diffexp.report.runs import NOT_RECIPE, NOT_RECIPE_GROUPS

log = logging.getLogger("diffexp.compare")


def config_diff(run: dict, base: dict) -> dict:
    """The leaves of `run` that `base` lacks or holds otherwise, nested: what an experiment must set."""
    out = {}
    for k, v in run.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            sub = config_diff(v, base[k])
            if sub:
                out[k] = sub
        elif k not in base or base[k] != v:
            out[k] = v
    return out


def train_defaults() -> dict[str, str]:
    """The group choices of conf/train.yaml's defaults list: an experiment overrides only those it changes."""
    out = {}
    for entry in OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "train.yaml"))["defaults"]:
        if isinstance(entry, dict):
            out.update({k.removeprefix("optional ").strip(): v for k, v in entry.items()})
    return out


def compose_train(choices: dict[str, str]) -> dict:
    """conf/train.yaml with the given group choices: the base an experiment's settings are applied to."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [f"{g}={c}" for g, c in choices.items() if g not in NOT_RECIPE_GROUPS and c is not None]
    if GlobalHydra.instance().is_initialized():  # inside diffexp-compare's own Hydra app (same conf/)
        cfg = compose(config_name="train", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=False)


def experiment_yaml(run: dict, defaults: dict[str, str], base: dict, comment: list[str]) -> str:
    """A Hydra experiment config (`conf/experiment/<name>.yaml`) that recreates the recipe of `run`."""
    choices = {g: c for g, c in run["choices"].items() if g not in NOT_RECIPE_GROUPS and c is not None}
    entries = [
        {f"override /{g}": choices[g]} for g in defaults if g in choices and (g == "model" or choices[g] != defaults[g])
    ]
    entries += [{f"/{g}": c} for g, c in choices.items() if g not in defaults]
    strip = {k: v for k, v in run["config"].items() if k not in NOT_RECIPE}
    body = config_diff(strip, {k: v for k, v in base.items() if k not in NOT_RECIPE})
    lines = ["# @package _global_", *(f"# {c}" for c in comment)]
    return "\n".join(lines) + "\n" + OmegaConf.to_yaml(OmegaConf.create({"defaults": entries, **body}))


def shipped_experiments() -> set[str]:
    """The experiments in the package's conf/: Hydra searches them before any `--config-dir`."""
    return {p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")}


def name_experiments(best: list[dict], name: str) -> None:
    """Sets each best recipe's `experiment` to `<name>_<size>` (`_2`, ... where a size has several bases).

    A name the package already ships would make `diffexp-train --config-dir REPORT/conf experiment=NAME` silently
    train the shipped recipe, so it is refused before anything is written.
    """
    sizes = [b["size"] for b in best]
    for k, b in enumerate(best):
        suffix = f"_{sizes[:k].count(b['size']) + 1}" if sizes.count(b["size"]) > 1 else ""
        b["experiment"] = f"{name}_{b['size']}{suffix}"
    taken = sorted({b["experiment"] for b in best} & shipped_experiments())
    if taken:
        raise ConfigError(
            f"name={name}: diffexp already ships experiment {taken[0]} (conf/experiment/{taken[0]}.yaml), which "
            f"--config-dir cannot override; choose another name= (e.g. name=report_{name})"
        )


def write_experiments(best: list[dict], used: str, sources: list[str], folder: Path) -> None:
    """`<folder>/<experiment>.yaml` for each best recipe named by `name_experiments` (None where it cannot be
    composed any more); the report's `conf/` is then a config dir: `diffexp-train --config-dir REPORT/conf`."""
    folder.mkdir(parents=True)
    defaults = train_defaults()
    for b in best:
        comment = [
            f"Best {b['size']} recipe by mean {used} ({b['basis']}; of those with 2+ seeds, if any): {spread(b)};",
            f"verdict: {b['verdict']};",
            f"runs {b['runs']}, from {', '.join(sources)}; written by diffexp-compare {datetime.now():%Y-%m-%d %H:%M}.",
            f"Train it: diffexp-train --config-dir <this report>/conf experiment={b['experiment']}",
        ]
        try:
            base = compose_train(b["members"][0]["choices"])
        except Exception as e:  # a group option that no longer exists in conf/
            log.warning("no experiment config for %s: %s", b["experiment"], e)
            b["experiment"] = None
            continue
        (folder / f"{b['experiment']}.yaml").write_text(experiment_yaml(b["members"][0], defaults, base, comment))
