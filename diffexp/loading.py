"""Reading a trained model back: from a run folder (its pipeline, else its last checkpoint) or a pipeline folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from diffexp.errors import ConfigError


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
            from diffexp.snapshots import checkpoint_average

            shadows = checkpoint_average(state["ema"], folder / "ema", [n for n, _ in unet.named_parameters()])
        for p, shadow in zip(unet.parameters(), shadows, strict=True):
            p.data.copy_(shadow)
    return LoadedRun(unet.eval(), instantiate(config["schedule"]), config, ckpt, state.get("global_step"))
