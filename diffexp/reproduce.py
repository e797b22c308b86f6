"""diffexp-reproduce: re-runs a run from its saved, self-contained `.hydra/config.yaml`, then compares.

The recipe is read as saved (not re-composed from overrides against today's defaults), trained into a new
folder with the recorded thread count, and compared step by step: losses and final weights, bit for bit.
Differences in git commit or library versions are reported, since they can change the last bits.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from diffexp.cli import entry
from diffexp.config import CONF_DIR, remove_new_folder
from diffexp.errors import ConfigError, report
from diffexp.files import atomic_write_text
from diffexp.record import RunRecord
from diffexp.run_folder import check_current_keys, provenance, read_losses, saved_choices

log = logging.getLogger("diffexp.reproduce")


def losses(folder: Path) -> dict[int, float]:
    return {step: loss for step, (loss, _) in read_losses(Path(folder) / "losses.csv").items()}


def weights(folder: Path) -> dict[str, torch.Tensor]:
    state = torch.load(Path(folder) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {k: v for k, v in state["state_dict"].items() if k.startswith("unet.")}


def compare(original: Path, new: Path) -> dict:
    """How far the new run is from the original: losses per step and final weights."""
    a, b = losses(original), losses(new)
    common = sorted(set(a) & set(b))
    loss_diff = max((abs(a[s] - b[s]) for s in common), default=float("nan"))
    wa, wb = weights(original), weights(new)
    weight_diff = max((wa[k] - wb[k]).abs().max().item() for k in wa) if wa.keys() == wb.keys() else float("inf")
    same_steps = set(a) == set(b)
    identical = same_steps and all(a[s] == b[s] for s in common) and all(torch.equal(wa[k], wb[k]) for k in wa)
    return {
        "matched": identical,
        "steps_compared": len(common),
        "same_steps": same_steps,
        "max_loss_difference": loss_diff,
        "max_weight_difference": weight_diff,
    }


def record_recipe(original: Path, new: Path, recipe: DictConfig) -> None:
    """The new folder's `.hydra/` as a `diffexp-train` run's: the recipe it trains and the original's choices and
    overrides, so the reproduction can itself be resumed, reproduced and compared with its original."""
    (new / ".hydra").mkdir(parents=True, exist_ok=True)
    atomic_write_text(new / ".hydra" / "config.yaml", OmegaConf.to_yaml(recipe))
    if (original / ".hydra" / "overrides.yaml").exists():
        shutil.copyfile(original / ".hydra" / "overrides.yaml", new / ".hydra" / "overrides.yaml")
    if (original / ".hydra" / "hydra.yaml").exists():
        record = OmegaConf.load(original / ".hydra" / "hydra.yaml")
        record.hydra.runtime.output_dir = str(new)
        atomic_write_text(new / ".hydra" / "hydra.yaml", OmegaConf.to_yaml(record))


def run(cfg: DictConfig) -> dict:
    """Trains the saved recipe of `cfg.run` into a new folder and compares it with the original, bit for bit."""
    from diffexp.train import run as train

    original = Path(cfg.run).expanduser()
    saved = original / ".hydra" / "config.yaml"
    if not saved.exists():
        raise ConfigError(f"run={cfg.run} has no .hydra/config.yaml: point run= at a diffexp-train run folder")
    check_current_keys(OmegaConf.load(saved), f"run={cfg.run}")
    recorded = RunRecord.read(original) or RunRecord()
    stop = None
    if recorded.status == "pruned":  # the same steps, stopped where the study's pruner stopped it
        from diffexp.search import StopAt

        stop = StopAt(recorded.steps, recorded.images_seen)
        log.info("run=%s was pruned at %d images (step %d): reproducing those steps", cfg.run,
                 recorded.images_seen, recorded.steps)  # fmt: skip
    elif recorded.status != "finished":
        raise ConfigError(f"run={cfg.run} did not finish (status {recorded.status}): resume it first")
    recipe = OmegaConf.load(saved)
    env = recorded.environment
    recipe.threads = cfg.threads or env.get("threads") or recipe.threads
    recipe.resume = None
    if "optuna" in recipe:  # a search's trial is repeated, never reported to its study again
        recipe.optuna = {"storage": None, "study": None, "trial": None}
    choices = saved_choices(original)

    now = provenance() | {"threads": recipe.threads}
    warnings = [
        f"{k}: recorded {env.get(k)}, now {now.get(k)}"
        for k in ("git_commit", "torch", "diffusers", "pytorch_lightning", "python", "threads")
        if env.get(k) != now.get(k)
    ]
    for w in warnings:
        log.warning("differs from the original run: %s", w)

    new = Path(HydraConfig.get().runtime.output_dir)
    record_recipe(original, new, recipe)
    train(recipe, choices=choices, stop=stop)
    result = compare(original, new) | {"original": str(original), "reproduction": str(new), "differences": warnings}
    atomic_write_text(new / "reproduce.json", json.dumps(result, indent=2) + "\n")
    verdict = (
        "MATCHED bit for bit"
        if result["matched"]
        else (
            f"DIFFERS: max loss difference {result['max_loss_difference']:.3g}, "
            f"max weight difference {result['max_weight_difference']:.3g}"
        )
    )
    pruned = f"; pruned at {recorded.images_seen} images, as the original" if stop else ""
    print(f"{verdict} ({result['steps_compared']} steps compared{pruned}); new run: {new}")
    return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="reproduce")
def hydra_main(cfg: DictConfig) -> None:
    report(run_or_tidy, cfg)


def run_or_tidy(cfg: DictConfig) -> dict:
    """`run`, but a refused reproduction removes the folder Hydra created for it."""
    try:
        return run(cfg)
    except ConfigError:
        remove_new_folder(Path(HydraConfig.get().runtime.output_dir))
        raise


main = entry("reproduce", hydra_main)  # the console script: the command line checked first (diffexp.cli)


if __name__ == "__main__":
    main()
