"""Plain constants and functions that more than one test module uses.

Where shared test code lives (one rule): a fixture, which pytest injects by name, goes in conftest.py, and nothing
imports conftest; everything else a second test module needs (constants, functions, test data writers) lives here
and is imported by name, `from helpers import TINY`. No `test_*.py` imports another (tests/test_structure.py checks
both), so a test module can be run, moved or deleted on its own. postgres.py, slurm.py and wandb_records.py stay
helper modules of their own: a database server, a Slurm cluster and the W&B record reader.

conftest.py sets the process environment (offline Hub and W&B) before it imports this module, so ENV below copies it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict
from PIL import Image

from diffexp.config import CONF_DIR

# Tiny training runs.
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


# Subprocesses: the installed commands as users run them.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def diffexp(command: str, *args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / f"diffexp-{command}"
    return subprocess.run([str(exe), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def kill_train_once(args: list[str], cwd: Path, ready, timeout: float = 300) -> None:
    """Starts `diffexp-train args`, waits until `ready()` holds, then SIGKILLs its whole process group."""
    import os
    import signal
    import time

    exe = Path(sys.executable).parent / "diffexp-train"
    proc = subprocess.Popen(
        [str(exe), *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while not ready():
        assert time.time() < deadline and proc.poll() is None, "the run ended or stalled before it was killed"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def train_straight_and_killed(recipe: list[str], cwd: Path, steps: int, *wait_for: str) -> tuple[Path, Path]:
    """Trains `recipe` (`steps` steps) into `cwd/straight`, then again into `cwd/killed`, SIGKILLed once its last
    checkpoint and the `wait_for` files exist there, between step 0 and `steps`; returns both folders."""
    import torch

    straight, killed = cwd / "straight", cwd / "killed"
    out = diffexp("train", *recipe, f"hydra.run.dir={straight}", cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]
    wanted = ["checkpoints/last.ckpt", *wait_for]
    kill_train_once([*recipe, f"hydra.run.dir={killed}"], cwd, ready=lambda: all((killed / f).exists() for f in wanted))
    killed_at = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 0 < killed_at < steps
    return straight, killed


def resume_run(folder: Path, cwd: Path) -> None:
    """`diffexp-train resume=folder`, which must succeed."""
    out = diffexp("train", f"resume={folder}", cwd=cwd)
    assert out.returncode == 0, out.stderr[-2000:]


# Sweeps.
QUICK = [*TINY, "logger=none", "preview.every_n_steps=0", "threads=1"]
BUDGETED = [o for o in QUICK if not o.startswith("trainer.max_steps")]  # a budget decides the steps: not both


def jobs(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))}


OPTUNA = [
    *BUDGETED,
    "eval=digits",
    "data.resolution=16",
    "budget.images=64",
    "eval.n_samples=65",
    "eval.reference_size=100",
    "eval.sampler_steps=2",
]
EXE = Path(sys.executable).parent / "diffexp-train"


def worker(tmp_path: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(EXE), "-m", "sweeps=optuna_tiny", *OPTUNA, *args],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(workers: list[subprocess.Popen], timeout: float = 600) -> None:
    errors = [w.communicate(timeout=timeout)[1] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(e[-2000:] for e in errors)


# Training data.
SIZES = [(20, 30), (40, 16), (12, 12), (33, 17), (64, 48)]  # (height, width): portrait, landscape, square


def pil_images(n: int, seed: int = 0, modes: tuple[str, ...] = ("RGB",)) -> list[Image.Image]:
    """Random images of varied sizes; `modes` cycles through PIL modes (the Hub has RGBA and greyscale too)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        out.append(img.convert(modes[i % len(modes)]))
    return out


def save_hub_copy(folder: Path, n: int = 24, column: str = "image", seed: int = 0, **kwargs) -> Path:
    """A local copy of a Hub image dataset: an image column plus a string column training must ignore."""
    import datasets  # imported here: only the data tests pay for it

    features = datasets.Features({column: datasets.Image(), "name": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {column: pil_images(n, seed, **kwargs), "name": [f"specimen {i}" for i in range(n)]}, features=features
    )
    ds.save_to_disk(str(folder))
    return folder


def write_image_folder(folder: Path, n: int = 20) -> Path:
    """PNG and JPEG files in two sub-folders (and one file that is not an image)."""
    for i, img in enumerate(pil_images(n, seed=1)):
        sub = folder / (Path("a") if i % 2 else Path("b", "deeper"))
        sub.mkdir(parents=True, exist_ok=True)
        img.save(sub / f"img{i}.{'png' if i % 3 else 'jpg'}")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


# Apps' configs and hand-written run folders.
def compose_app(name: str, overrides: list[str]) -> DictConfig:
    """An app's root config as its command would get it (Hydra's runtime set, the `hydra` node removed)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def crafted(folder: Path, lr: float, seed: int, fid: float, posthoc: dict | None = None) -> Path:
    """A finished run folder written by hand: its recipe (the lr), seed and FID, as diffexp-train records them
    (`posthoc`: an ema=posthoc run's extra figures)."""
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "optim": {"optimizer": {"lr": lr}}, "schedule": {"prediction_type": "epsilon"}}
    OmegaConf.save(config, folder / ".hydra" / "config.yaml")
    OmegaConf.save([f"optim.optimizer.lr={lr}", f"seed={seed}"], folder / ".hydra" / "overrides.yaml")
    figures = {"fid": fid, "fid_ci": [fid - 0.5, fid + 0.5], "n_seeds": 5, "n_fake": 256, "n_real": 360,
               "feature_net": "digits", "reference": "heldout", **(posthoc or {})}  # fmt: skip
    record = {"status": "finished", "recipe": {"model": "tiny"}, "eval": figures, "final_loss": 0.1, "parameters": 1}
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


# Feature nets.
def tiny_dinov2(folder: Path, seed: int = 0) -> Path:
    """A random 2-layer DINOv2 (32-d features) saved as a local model folder."""
    import torch
    import transformers  # callers skip first with pytest.importorskip("transformers")

    torch.manual_seed(seed)
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=224, patch_size=14
    )
    transformers.Dinov2Model(config).save_pretrained(str(folder))
    return folder


# Search studies


def study(tmp_path: Path, name: str = "optuna_tiny"):
    """The Optuna study of a search run in `tmp_path` (its sweep folder's SQLite file)."""
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'multirun' / name / 'optuna.db'}")


def distinct(draws: list[dict]) -> bool:
    return len({json.dumps(d, sort_keys=True) for d in draws}) == len(draws)


def trained_once_each(sweep: Path, trials: list) -> list:
    """Asserts that the trials that trained (those with a folder) drew pairwise distinct parameters and that none
    repeats another: no compute went to a repeat. Returns them."""
    trained = [t for t in trials if (sweep / f"trial-{t.number:04d}").exists()]
    assert distinct([t.params for t in trained]), [(t.number, t.params) for t in trained]
    assert not any("repeat_of" in t.user_attrs for t in trials), [t.user_attrs for t in trials]
    assert len(list(sweep.glob("trial-*"))) == len(trained)
    return trained


# Refusals


HYDRA_RECORD = {".hydra", "train.log"}  # what Hydra writes before the task runs; a refused run adds nothing


def assert_only_hydra_record(folder: Path) -> None:
    left = {p.name for p in folder.iterdir()}
    assert left <= HYDRA_RECORD, f"a refused run wrote {sorted(left - HYDRA_RECORD)} into {folder}"
