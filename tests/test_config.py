"""Every option of every config group composes and builds its real object; the CLI prints and explains the config."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import pytorch_lightning as pl
import torch
import yaml
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DModel
from hydra.utils import instantiate

from diffexp.config import CONF_DIR, options
from diffexp.data import ImageDataModule
from diffexp.errors import ConfigError
from diffexp.flow_samplers import is_flow_sampler, set_grid
from diffexp.schema import check, validate
from helpers import REPO, compose_train, save_hub_copy, write_image_folder

# What DESIGN.md promises at least; the tests below also cover any option added later.
PROMISED = {
    "data": {"digits", "butterflies", "hub", "imagefolder"},
    "model": {"tiny", "small", "base", "large", "course"},
    "schedule": {"linear", "scaled_linear", "cosine", "sigmoid"},
    "optim": {"adamw"},
    "ema": {"power", "none"},
    "sampler": {"ddpm", "ddim", "dpm_solver", "dpm_solver_sde", "euler", "unipc"},
    "eval": {"none"},
    "logger": {"wandb", "csv", "tensorboard", "none"},
    "trainer": {"default", "gpu", "ddp", "debug"},
}
PREDICTIONS = ["epsilon", "v_prediction", "sample"]


def is_overlay(group: str) -> bool:
    """Groups like `experiment` and `sweep`: `# @package _global_` files that override other groups."""
    files = [Path(CONF_DIR, group, f"{o}.yaml") for o in options(group)]
    return group == "experiment" or bool(files) and all("@package _global_" in f.read_text() for f in files)


GROUPS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and not is_overlay(p.name))
OVERLAYS = sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and is_overlay(p.name))
ALL = [(g, o) for g in GROUPS for o in options(g)]


def test_every_promised_option_exists():
    assert set(GROUPS) >= set(PROMISED)
    for group, promised in PROMISED.items():
        assert set(options(group)) >= promised, group


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    """`load_dataset` (imagefolder) builds into this test's own cache instead of the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {"hub": save_hub_copy(root / "hub"), "folder": write_image_folder(root / "folder")}


def compose(tmp_path: Path, *overrides: str):
    return compose_train(["logger=csv", *overrides], tmp_path / "run")


def build_data(cfg, tmp_path):
    dm = instantiate(cfg.data, seed=0)
    assert isinstance(dm, ImageDataModule)
    x = dm.prepare()
    assert x.dtype == torch.uint8 and x.shape[1:] == (cfg.data.channels, cfg.data.resolution, cfg.data.resolution)


def build_model(cfg, tmp_path):
    unet = instantiate(cfg.model, _convert_="all")
    assert isinstance(unet, UNet2DModel) and unet.config.sample_size == cfg.data.resolution
    unet.to_json_string()  # lists reach diffusers as lists: save_pretrained can write the config
    with torch.no_grad():
        x = torch.zeros(1, cfg.data.channels, cfg.data.resolution, cfg.data.resolution)
        assert unet(x, 10).sample.shape == x.shape


def build_schedule(cfg, tmp_path):
    if cfg.schedule.prediction_type == "flow":  # schedule=flow: the FlowMatch scheduler of its shift
        s = instantiate(cfg.schedule)
        assert isinstance(s, FlowMatchEulerDiscreteScheduler) and s.config.shift == cfg.schedule.shift
        assert s.config.num_train_timesteps == cfg.schedule.num_train_timesteps
        return
    for prediction in PREDICTIONS:
        cfg.schedule.prediction_type = prediction
        s = instantiate(cfg.schedule)
        assert isinstance(s, DDPMScheduler) and s.config.prediction_type == prediction
        a = s.alphas_cumprod
        assert len(a) == cfg.schedule.num_train_timesteps and (a > 0).all() and (a[1:] < a[:-1]).all()


def build_optim(cfg, tmp_path):
    optimizer = instantiate(cfg.optim.optimizer)(torch.nn.Linear(2, 2).parameters())
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] == cfg.optim.optimizer.lr > 0


def build_ema(cfg, tmp_path):
    from diffexp.ema import PowerEMA

    if not cfg.ema:
        return  # ema=none: samples and export use the trained weights
    from diffexp.posthoc import PostHocEMA

    ema = instantiate(cfg.ema)(torch.nn.Linear(2, 2).parameters())
    assert isinstance(ema, PowerEMA | PostHocEMA) and ema.sigma_rel == cfg.ema.sigma_rel
    if isinstance(ema, PostHocEMA):  # two tracked power profiles at the group's widths
        assert [p.sigma_rel for p in ema.profiles] == list(cfg.ema.sigma_rels) and len(ema.profiles) == 2


def build_sampler(cfg, tmp_path):
    from diffexp.samplers import sampling_scheduler

    sampler = instantiate(cfg.sampler)
    assert sampler.name == cfg.sampler.name and sampler.steps == cfg.sampler.steps
    flow = is_flow_sampler(sampler.name)
    if flow:  # the flow family samples schedule=flow models only, on their shift
        train = instantiate(compose(tmp_path, "schedule=flow", "schedule.shift=3.0").schedule)
        scheduler = sampling_scheduler(sampler.name, train)
        assert scheduler.config.get("shift", scheduler.config.get("flow_shift")) == 3.0
        set_grid(scheduler, 4)
        assert len(scheduler.timesteps) >= 4 and float(scheduler.timesteps[0]) >= 999
        return
    for schedule in [s for s in options("schedule") if s != "flow"]:  # every DDPM sampler on every DDPM schedule
        train = instantiate(compose(tmp_path, f"schedule={schedule}").schedule)
        scheduler = sampling_scheduler(sampler.name, train)
        # the training noise levels exactly, not the sampler class's default betas
        assert torch.allclose(scheduler.alphas_cumprod.double(), train.alphas_cumprod.double(), atol=1e-6), schedule
        scheduler.set_timesteps(min(sampler.steps, 20))
        assert len(scheduler.timesteps) >= min(sampler.steps, 20)
        # "trailing" spacing: few-step sampling starts at the noisiest timestep; Euler, which cannot clip its x_0
        # estimate, starts one grid step lower (see diffexp/samplers.py)
        first = train.config.num_train_timesteps - 1
        if sampler.name == "euler":
            first = train.config.num_train_timesteps - train.config.num_train_timesteps // len(scheduler.timesteps) + 1
        assert int(scheduler.timesteps[0]) == first, (schedule, scheduler.timesteps)


def build_eval(cfg, tmp_path):
    if not cfg.eval.net:
        return
    from diffexp.features import load_feature_net

    try:
        net = load_feature_net(cfg.eval.net, cfg.data.channels, cfg.data.resolution, cfg.eval.get("model"))
    except ConfigError as e:
        if cfg.eval.net in ("inception", "dinov2"):  # test_dinov2 builds dinov2 from a small random model instead
            pytest.skip(f"eval={cfg.eval.net} composes; its feature net's weights are not here: {e}")
        raise
    assert net.num_features > 0


def build_logger(cfg, tmp_path):
    if not cfg.logger:
        return  # logger=none: no Lightning logger
    if cfg.logger._target_.endswith("TensorBoardLogger") and not any(
        importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")
    ):
        pytest.skip("logger=tensorboard composes; instantiating it needs `pip install tensorboard` (not installed)")
    logger = instantiate(cfg.logger)
    assert isinstance(logger, pl.loggers.Logger)
    assert Path(logger.save_dir) == tmp_path / "run"  # logs go into the run folder


def build_trainer(cfg, tmp_path):
    if cfg.trainer.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="trainer.accelerator"):
            check(cfg)
        return
    check(cfg)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], default_root_dir=tmp_path / "run")
    assert isinstance(trainer, pl.Trainer) and trainer.max_steps == cfg.trainer.max_steps


BUILD = {
    "data": build_data,
    "model": build_model,
    "schedule": build_schedule,
    "optim": build_optim,
    "ema": build_ema,
    "sampler": build_sampler,
    "eval": build_eval,
    "logger": build_logger,
    "trainer": build_trainer,
}


@pytest.mark.parametrize(("group", "option"), ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_option_composes_and_instantiates(group, option, local_data, tmp_path):
    extra = {
        ("data", "hub"): [f"data.name={local_data['hub']}", "data.batch_size=4"],
        ("data", "butterflies"): [f"data.name={local_data['hub']}", "data.batch_size=4"],
        ("data", "imagefolder"): [f"data.path={local_data['folder']}", "data.batch_size=4"],
    }.get((group, option), [])
    if group == "model":  # 8 px: every model here has at most 4 levels (down-sampling by 8)
        extra = ["data.resolution=8"]
    cfg = compose(tmp_path, f"{group}={option}", *extra)
    assert group in BUILD, f"config group {group!r} has no instantiation check in this test"
    BUILD[group](cfg, tmp_path)


def test_course_model_is_the_course_unet(tmp_path):
    cfg = compose(tmp_path, "model=course", "data.resolution=32", "data.channels=3")
    unet = instantiate(cfg.model, _convert_="all")
    assert sum(p.numel() for p in unet.parameters()) == 18_536_323
    assert list(unet.config.block_out_channels) == [64, 128, 128, 256]
    assert list(unet.config.down_block_types) == ["DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"]


def test_model_sizes_grow(tmp_path):
    sizes = []
    for name in ["tiny", "small", "base", "large"]:
        cfg = compose(tmp_path, f"model={name}", "data.resolution=32", "data.channels=3")
        with torch.device("meta"):  # counts parameters without allocating them
            sizes.append(sum(p.numel() for p in instantiate(cfg.model, _convert_="all").parameters()))
    assert sizes == sorted(sizes) and len(set(sizes)) == 4, sizes


OVERLAY_OPTIONS = [(g, o) for g in OVERLAYS for o in options(g)]


@pytest.mark.parametrize(("group", "option"), OVERLAY_OPTIONS, ids=[f"{g}={o}" for g, o in OVERLAY_OPTIONS])
def test_recipe_overlay_composes_and_passes_every_check(group, option, tmp_path):
    """Each shipped experiment and sweep file is a recipe `diffexp-train` accepts: every key typed as the schema
    says and every cross-field check passed (`schema.check` raises ConfigError on what cannot train)."""
    cfg = compose(tmp_path, f"{group}={option}")
    validate(cfg)
    check(cfg)
    assert cfg.model.in_channels == cfg.data.channels and cfg.model.sample_size == cfg.data.resolution


# The CLI: three real processes, started together (each spends seconds importing torch).
CLI = {
    "help": ["diffexp-train", "--help"],
    "cfg": ["diffexp-train", "--cfg", "job"],
    "module": [sys.executable, "-m", "diffexp.train", "--cfg", "job", "model=small"],
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")  # the commands work from any folder
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    bin_dir = Path(sys.executable).parent
    procs = {}
    for name, cmd in CLI.items():
        exe = cmd[0] if cmd[0] == sys.executable else str(bin_dir / cmd[0])
        procs[name] = subprocess.Popen(
            [exe, *cmd[1:]], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    out = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        out[name] = (p.returncode, stdout, stderr)
    out["leftovers"] = sorted(p.name for p in cwd.iterdir())
    return out


def test_help_lists_every_group_and_option(cli):
    rc, stdout, stderr = cli["help"]
    assert rc == 0, stderr
    for group in GROUPS:
        listed = [line for line in stdout.splitlines() if line.startswith(f"{group}: ")]
        assert listed, f"{group} missing from --help"
        assert set(listed[0].split(": ", 1)[1].split(", ")) == set(options(group))
    assert "== Config ==" in stdout and "block_out_channels" in stdout


def test_cfg_job_prints_the_default_recipe(cli):
    rc, stdout, stderr = cli["cfg"]
    assert rc == 0, stderr
    cfg = yaml.safe_load(stdout)
    assert {"data", "model", "schedule", "optim", "sampler", "trainer", "seed"} <= set(cfg) and "hydra" not in cfg
    tiny = yaml.safe_load((REPO / "conf/model/tiny.yaml").read_text())
    assert cfg["model"]["block_out_channels"] == tiny["block_out_channels"]  # the default model
    assert cli["leftovers"] == []  # printing the config starts no run


def test_module_entry_point_takes_overrides(cli):
    rc, stdout, stderr = cli["module"]
    assert rc == 0, stderr
    assert yaml.safe_load(stdout)["model"]["block_out_channels"] == [32, 64, 128]
