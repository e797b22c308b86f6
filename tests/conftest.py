"""The process environment (offline Hub and W&B) and the fixtures; plain shared helpers live in helpers.py.

Nothing imports this module: pytest loads it before any test module, so the environment is set first."""

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
from omegaconf import DictConfig  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from helpers import TINY, compose_train  # noqa: E402


@pytest.fixture
def tiny_cfg(tmp_path):
    """A function: extra overrides -> a composed tiny train config with its own run folder. With a budget in images
    TINY's `trainer.max_steps` is left out: the budget decides the steps, and both given are refused."""

    def make(*overrides: str, run_dir: Path | None = None) -> DictConfig:
        budget = any(o.startswith("budget.images=") for o in overrides)
        tiny = [o for o in TINY if not (budget and o.startswith("trainer.max_steps"))]
        return compose_train([*tiny, "logger=csv", *overrides], run_dir or tmp_path / "run")

    return make
