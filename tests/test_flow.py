"""Flow matching (`schedule=flow`): config, objective, refusals, training, reproduction, evaluation, export, search."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, UNet2DModel
from diffusers.training_utils import compute_density_for_timestep_sampling

from diffexp.denoise import denoise_error, flow_timestep
from diffexp.errors import ConfigError
from diffexp.flow import FlowObjective, flow_scheduler, search_space
from diffexp.flow_samplers import FLOW_SCHEDULERS, model_calls, set_grid
from diffexp.samplers import Sampler
from diffexp.train import run as train
from helpers import TINY, assert_only_hydra_record, compose_train

FLOW = [*TINY, "schedule=flow", "logger=csv"]
EVAL = ["eval=digits", "data.resolution=16", "eval.n_samples=65", "eval.every_n_steps=2", "eval.reference_size=100",
        "eval.sampler_steps=2", "eval.seeds=1"]  # fmt: skip


def test_schedule_flow_picks_what_flow_needs_and_an_explicit_sampler_wins(tmp_path):
    cfg = compose_train(["schedule=flow"], tmp_path / "a")
    assert cfg.schedule._target_ == "diffexp.flow.flow_scheduler" and cfg.schedule.prediction_type == "flow"
    assert (cfg.schedule.weighting_scheme, cfg.schedule.logit_mean, cfg.schedule.logit_std) == ("logit_normal", 0, 1)
    assert (cfg.schedule.mode_scale, cfg.schedule.shift) == (1.29, 1.0)
    assert cfg.sampler.name == "flow_euler" and cfg.loss.snr_gamma is None
    assert (cfg.eval.sampler, cfg.eval.sampler_steps) == ("flow_euler", 25)
    assert compose_train(["schedule=flow", "sampler=flow_heun"], tmp_path / "b").sampler.name == "flow_heun"
    assert compose_train([], tmp_path / "c").sampler.name == "dpm_solver_sde"  # DDPM runs keep their default


@pytest.mark.parametrize(
    "overrides, setting",
    [
        (["schedule=flow", "sampler=ddim"], "sampler=ddim"),
        (["schedule=flow", "eval.sampler=dpm_solver"], "eval.sampler=dpm_solver"),
        (["schedule=flow", "loss.snr_gamma=5"], "loss.snr_gamma=5"),
        (["schedule=flow", "schedule.shift=0"], "schedule.shift=0"),
        (["schedule=flow", "schedule.logit_std=0"], "schedule.logit_std=0"),
        (["schedule=flow", "schedule.weighting_scheme=lognormal"], "schedule.weighting_scheme=lognormal"),
        (["sampler=flow_euler"], "sampler=flow_euler"),  # a DDPM run with a flow sampler
    ],
)
def test_bad_flow_settings_stop_before_any_work(tiny_cfg, tmp_path, overrides, setting):
    with pytest.raises(ConfigError) as error:
        train(tiny_cfg(*overrides))
    message = str(error.value)
    assert message.startswith(setting) and "\n" not in message and ": " in message, message
    assert_only_hydra_record(tmp_path / "run")


def test_the_flow_loss_is_the_velocity_mse_on_the_straight_path():
    """x_t = (1 - t) x0 + t noise, target noise - x0, t from diffusers' SD3 density with the run's generator."""
    blocks = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2}
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 8), norm_num_groups=4,
                       layers_per_block=1, **blocks)  # fmt: skip
    x0 = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    for scheme, shift in (("logit_normal", 1.0), ("mode", 3.0), ("cosmap", 1.0)):
        objective = FlowObjective(shift=shift, weighting_scheme=scheme)
        loss = objective.loss(unet, x0, torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(7)
        noise = torch.randn(x0.shape, generator=g)
        u = compute_density_for_timestep_sampling(scheme, 3, logit_mean=0.0, logit_std=1.0, mode_scale=1.29,
                                                  generator=g)  # fmt: skip
        t = shift * u / (1 + (shift - 1) * u)
        xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * noise
        mse = (unet(xt, t * 1000).sample - (noise - x0)).square().mean(dim=(1, 2, 3))
        weight = 2 / (torch.pi * (1 - 2 * t + 2 * t**2)) if scheme == "cosmap" else torch.ones(3)
        torch.testing.assert_close(loss, (weight * mse).mean())


def test_flow_euler_spends_every_call_away_from_zero_and_heun_counts_2n_minus_1():
    train_scheduler = flow_scheduler(shift=1.0)
    euler = Sampler("flow_euler", 4)
    scheduler = FLOW_SCHEDULERS["flow_euler"][0].from_config({"num_train_timesteps": 1000, "shift": 1.0})
    set_grid(scheduler, 4)
    assert scheduler.timesteps.tolist() == [1000, 750, 500, 250]  # not diffusers' own 1000, 667, 334, 1
    assert model_calls("flow_heun", 4) == 7 and model_calls("flow_euler", 4) == 4 and euler.steps == 4
    with pytest.raises(ConfigError, match=r"^sampler.name=ddim samples DDPM models, but this is a flow model"):
        Sampler("ddim", 2)(None, train_scheduler, torch.zeros(1, 1, 8, 8))


def test_the_denoising_error_asks_a_flow_model_the_same_question():
    """A model that outputs the true velocity on flow's path has no x0 error at any of the five levels."""
    x0 = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seen = []

    def oracle(x_t, t):  # recovers the noise from x_t = (1 - s) x0 + s eps, then returns eps - x0
        s = (t / 1000).view(-1, 1, 1, 1)
        seen.append(float(t[0]))
        return (x_t - (1 - s) * x0) / s - x0

    out = denoise_error(oracle, None, "flow", x0)
    assert out["denoise"] < 1e-8 and len(out["denoise_levels"]) == 5
    assert seen == pytest.approx([flow_timestep(level) for level in (-6, -3, 0, 3, 6)])
    assert flow_timestep(0.0) == pytest.approx(500.0)  # SNR 1: t = 1/2


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("flow") / "run"
    train(compose_train([*FLOW, *EVAL, "checkpoint.keep_best=true"], folder))
    return folder


def test_a_flow_run_trains_records_and_exports_a_pipeline_diffusers_loads(flow_run):
    record = json.loads((flow_run / "metrics.json").read_text())
    assert record["status"] == "finished" and record["recipe"]["schedule"] == "flow"
    ev = record["eval"]
    assert ev["sampler"] == "flow_euler" and ev["fid"] > 0 and len(ev["denoise_levels"]) == 5
    pipe = DiffusionPipeline.from_pretrained(flow_run / "pipeline")
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 1.0
    images = pipe(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert images.images.shape == (2, 16, 16, 1) and (flow_run / "plots" / "schedule.png").exists()


def test_a_flow_run_reproduces_bit_for_bit(flow_run, tmp_path):
    from diffexp.reproduce import run as reproduce

    result = reproduce(compose_train([f"run={flow_run}"], tmp_path / "again", name="reproduce"))
    assert result["matched"] and result["max_loss_difference"] == 0.0, result


def test_flow_samplers_sample_and_evaluate_counts_model_calls_against_the_flow_reference(flow_run, tmp_path):
    from diffexp.evaluate import run as evaluate
    from diffexp.sample import run as sample

    grid = sample(compose_train([f"run={flow_run}", "n=4", "threads=1", "device=cpu"], tmp_path / "s", name="sample"))
    assert grid.name == "flow_euler-25steps-seed0-n4.png"  # no sampler named: the run's own family
    with pytest.raises(ConfigError, match=r"^sampler.name=ddim samples DDPM models"):
        sample(compose_train([f"run={flow_run}", "sampler=ddim", "n=4"], tmp_path / "s", name="sample"))

    args = [f"run={flow_run}", "samplers=[flow_euler,flow_heun]", "steps=[2]", "ddpm_steps=[3]", "n=65",
            "eval.seeds=2", "eval.reference_size=100", "threads=1", "device=cpu"]  # fmt: skip
    table = evaluate(compose_train(args, tmp_path / "e", name="evaluate"))
    rows = {(r["sampler"], r["steps"]): r for r in csv.DictReader(table.open())}
    assert rows[("flow_heun", "2")]["nfe"] == "3" and rows[("flow_euler", "2")]["nfe"] == "2"
    assert rows[("flow_euler", "3")]["inside_reference"] == "reference"
    assert rows[("flow_heun", "2")]["inside_reference"] in ("True", "False")
    assert table.with_suffix(".png").exists()
    frontier_table = frontier_tables_of(table, tmp_path / "bench")  # what benchmarks/flow.py publishes from it
    assert "flow_euler-3 FID" in frontier_table and "| flow_heun | " in frontier_table and " @3" in frontier_table
    with pytest.raises(ConfigError, match=r"^samplers=ddim samples DDPM models"):
        evaluate(compose_train([*args[:1], "samplers=[ddim]", "ddpm_steps=[]"], tmp_path / "e", name="evaluate"))


def frontier_tables_of(table: Path, out: Path) -> str:
    """benchmarks/flow.py's `tables` stage on one `diffexp-evaluate` table laid out as its flow run's."""
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from flow import FRONTIER_RUNS, tables

    (out / "multirun" / FRONTIER_RUNS[0] / "0" / "eval").mkdir(parents=True)
    shutil.copy(table, out / "multirun" / FRONTIER_RUNS[0] / "0" / "eval" / table.name)
    tables(out, steps_shown=[2])
    return (out / "frontier.md").read_text()


def test_the_search_space_draws_each_schedules_settings_only_where_they_apply(tmp_path):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = []
    for _ in range(12):
        trial = study.ask()
        search_space(None, trial)
        drawn.append(trial.params)
        study.tell(trial, 1.0)
    for params in drawn:
        flow = params["schedule"] == "flow"
        assert ("schedule.prediction_type" in params) != flow
        assert ("schedule.weighting_scheme" in params) == ("schedule.shift" in params) == flow
    assert {p["schedule"] for p in drawn} == {"cosine", "flow"}
    cfg = compose_train(["sweeps=optuna_flow"], tmp_path / "sweep")
    assert cfg.sweep_name == "optuna_flow"
