"""Composes the train config once per test with tiny sizes, so tests run the real pieces quickly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("DIFFEXP_CACHE", str(Path(__file__).resolve().parent.parent / ".pytest-cache"))

import pytest  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.core.global_hydra import GlobalHydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig, OmegaConf, open_dict  # noqa: E402

from diffexp.config import CONF_DIR  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parent.parent

# A 2-level 32-channel UNet on 8 px digits, few steps, small previews: seconds per training run.
TINY = [
    "trainer=debug",
    "trainer.max_steps=4",
    "model.block_out_channels=[32,32]",
    "model.attention_levels=[false,true]",
    "model.layers_per_block=1",
    "data.resolution=8",
    "data.batch_size=16",
    "sampler.steps=3",
    "preview.n=4",
    "preview.every_n_steps=2",
    "checkpoint.every_n_steps=2",
    "threads=1",
    "eval=none",
    "eval.denoise_images=8",  # the held-out denoising error on 8 images (256 by default): about 0.1 s a run
]


def compose_train(overrides: list[str], output_dir: Path, name: str = "train") -> DictConfig:
    """The train config as `diffexp-train` would get it, with Hydra's runtime pointed at `output_dir`."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    output_dir.mkdir(parents=True, exist_ok=True)
    hydra_cfg = cfg.hydra
    with open_dict(cfg):
        del cfg["hydra"]
    if name == "train":  # what Hydra's run_job saves before the task runs
        record = output_dir / ".hydra"
        record.mkdir(exist_ok=True)
        OmegaConf.save(cfg, record / "config.yaml")
        OmegaConf.save({"hydra": hydra_cfg}, record / "hydra.yaml")
        OmegaConf.save(list(overrides), record / "overrides.yaml")
    return cfg


@pytest.fixture
def tiny_cfg(tmp_path):
    """A function: extra overrides -> a composed tiny train config with its own run folder. With a budget in images
    TINY's `trainer.max_steps` is left out: the budget decides the steps, and both given are refused."""

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        budget = any(o.startswith("budget.images=") for o in overrides)
        tiny = [o for o in TINY if not (budget and o.startswith("trainer.max_steps"))]
        return compose_train([*tiny, "logger=csv", *overrides], run_dir or tmp_path / "run")

    return make
