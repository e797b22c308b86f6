"""End to end training: real Trainer, real diffusers UNet and scheduler, real W&B offline files."""

from __future__ import annotations

import json
import math

import pytest
import pytorch_lightning as pl
import torch
from diffusers import DDPMPipeline
from hydra.utils import instantiate
from omegaconf import OmegaConf

from diffexp.data import digits_images, to_model_range
from diffexp.diffusion import DiffusionModule
from diffexp.train import run
from wandb_records import read_run


def test_loss_falls_on_one_repeated_batch(tiny_cfg):
    cfg = tiny_cfg()
    torch.manual_seed(0)
    unet = instantiate(cfg.model, _convert_="all")
    module = DiffusionModule(
        unet,
        instantiate(cfg.schedule),
        instantiate(cfg.optim.optimizer),
        warmup=0,
        lr_decay="constant",
    )
    batch = to_model_range(digits_images(8)[:16])

    class OneBatch(pl.LightningDataModule):
        def train_dataloader(self):
            return Repeat()

    class Repeat:
        def __iter__(self):
            return iter([batch] * 60)

        def __len__(self):
            return 60

    # The noise and timesteps change each step, so compare the mean of the first and last ten losses.
    losses = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, b, i):
            losses.append(float(outputs["loss"]))

    trainer = pl.Trainer(
        max_steps=60,
        logger=False,
        enable_checkpointing=False,
        callbacks=[Record()],
        enable_progress_bar=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=OneBatch())
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.6 * first, (first, last)


def test_run_folder_is_complete_and_pipeline_samples(tiny_cfg, tmp_path):
    cfg = tiny_cfg()
    final_loss = run(cfg)
    folder = tmp_path / "run"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["status"] == "finished" and metrics["steps"] == 4
    assert metrics["images_seen"] == 4 * 16
    assert metrics["final_loss"] == final_loss
    assert metrics["parameters"] == sum(p.numel() for p in instantiate(cfg.model, _convert_="all").parameters())
    env = metrics["environment"]
    assert env["threads"] == 1 and env["torch"] == torch.__version__ and "git_commit" in env and "git_dirty" in env
    for path in [
        "checkpoints/last.ckpt",
        "plots/loss.png",
        "plots/schedule.png",
        "losses.csv",
        "samples/step_000002.png",
        "samples/step_000004.png",
        "pipeline/README.md",
        "pipeline/unet/diffusion_pytorch_model.safetensors",
    ]:
        assert (folder / path).exists(), path
    assert len((folder / "losses.csv").read_text().splitlines()) == 1 + 4
    card = (folder / "pipeline/README.md").read_text()
    assert "library_name: diffusers" in card and "final_loss" in card

    pipe = DDPMPipeline.from_pretrained(folder / "pipeline", use_safetensors=True)
    out = pipe(batch_size=2, num_inference_steps=3, output_type="np").images
    assert out.shape == (2, 8, 8, 1)

    ckpt = torch.load(folder / "checkpoints/last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["diffexp_config"]["model"]["block_out_channels"] == [32, 32]
    assert "ema" in ckpt


def test_exported_weights_are_the_ema_weights(tiny_cfg, tmp_path):
    run(tiny_cfg("ema.sigma_rel=0.25"))
    folder = tmp_path / "run"
    ckpt = torch.load(folder / "checkpoints/last.ckpt", weights_only=True)
    pipe = DDPMPipeline.from_pretrained(folder / "pipeline", use_safetensors=True)
    exported = list(pipe.unet.parameters())
    assert all(torch.equal(a, b) for a, b in zip(exported, ckpt["ema"]["shadow_params"], strict=True))
    trained = [v for k, v in ckpt["state_dict"].items() if k.startswith("unet.")]
    assert not all(torch.equal(a, b) for a, b in zip(exported, trained, strict=True))


def test_wandb_offline_run_holds_config_losses_and_images(tiny_cfg, tmp_path):
    run(tiny_cfg("logger=wandb"))
    (wandb_dir,) = (tmp_path / "run" / "wandb").glob("offline-run-*")
    rec = read_run(wandb_dir)
    assert rec["config"]["optim.optimizer.lr"] == 2e-3 and rec["config"]["model.block_out_channels"] == [32, 32]
    steps = {h["trainer/global_step"]: h["train/loss"] for h in rec["history"] if "train/loss" in h}
    assert sorted(steps) == [0, 1, 2, 3]
    losses = (tmp_path / "run" / "losses.csv").read_text().splitlines()[1:]
    assert [float(line.split(",")[1]) for line in losses] == [steps[s] for s in range(4)]
    lrs = (tmp_path / "run" / "losses.csv").read_text().splitlines()[1:]
    assert [float(line.split(",")[2]) for line in lrs] == [h["train/lr"] for h in rec["history"] if "train/lr" in h]
    images = [f for f in rec["files"] if f.startswith("media/images/samples")]
    assert len(images) >= 2 and all((wandb_dir / "files" / f).exists() for f in images)
    captions = [h["samples/captions"] for h in rec["history"] if "samples/captions" in h]
    assert captions[0] == ["step 2, dpm_solver_sde, 3 steps, seed 0"]  # what made the grid, as its PNG text says
    assert rec["summary"]["images_seen"] == 64 and rec["summary"]["parameters"] > 0
    assert "train_seconds" in rec["summary"] and rec["exit"] == 0
    assert "model=tiny" in rec["run"]["tags"]


def test_evaluation_during_training_logs_metrics_and_keeps_the_best_checkpoint(tiny_cfg, tmp_path):
    final = run(
        tiny_cfg(
            "eval=digits",
            "data.resolution=16",
            "eval.n_samples=65",
            "eval.every_n_steps=2",
            "eval.reference_size=200",
            "eval.sampler_steps=2",
            "eval.seeds=3",
            "checkpoint.keep_best=true",
        )
    )
    folder = tmp_path / "run"
    metrics = json.loads((folder / "metrics.json").read_text())
    history = metrics["eval_history"]
    assert [h["step"] for h in history] == [2, 4]
    assert all(h["feature_net"] == "digits" and h["n_fake"] == 65 and h["n_real"] == 200 for h in history)
    assert all(h["sampler"] == "dpm_solver_sde" and h["sampler_steps"] == 2 for h in history)
    assert all(h["reference"] == "heldout" for h in history)
    assert metrics["eval"] == history[-1] and final == history[-1]["fid"]
    assert metrics["eval_best"]["fid"] == min(h["fid"] for h in history)
    # In training one sampling seed; the final evaluation eval.seeds of them, FID's interval from their spread.
    assert history[0]["n_seeds"] == 1 and history[0]["fid_std"] is None and history[0]["fid_ci"] is None
    last = metrics["eval"]
    assert last["n_seeds"] == 3 and last["fid_std"] > 0 and last["fid_ci"][0] < last["fid"] < last["fid_ci"][1]
    for name in ("kid", "precision", "recall", "top_prob"):
        assert last[f"{name}_ci"][0] <= last[name] <= last[f"{name}_ci"][1], name
    assert set(last["floor"]) >= {"fid", "kid", "precision", "recall"} and last["floor"]["n"] == 65
    assert 0 <= last["memorised"] <= 1 and 0 <= last["memorised_heldout"] < 0.05 and 0 <= last["not_digit"] <= 1
    assert (folder / "plots" / "nearest.png").stat().st_size > 0
    assert (folder / "checkpoints" / "best.ckpt").exists()
    best = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] == metrics["eval_best"]["step"]
    logged = (folder / "csv" / "metrics.csv").read_text().splitlines()
    assert "eval/fid" in logged[0] and "eval/top_prob" in logged[0] and "train/loss" in logged[0]
    assert "eval/memorised" in logged[0] and "eval/not_digit" in logged[0] and "eval/floor_fid" in logged[0]
    assert all(0 < h["top_prob"] <= 1 and 0 <= h["class_min"] <= h["class_max"] <= 1 for h in history)
    card = (folder / "pipeline" / "README.md").read_text()
    assert "held-out images the model never trained on" in card and "Memorised:" in card and "the floor" in card


def test_evaluation_leaves_the_training_rng_alone(tiny_cfg, tmp_path):
    """eval=none and eval=digits train the same model: same initial weights, same losses at every step."""
    run(tiny_cfg("data.resolution=16", run_dir=tmp_path / "none"))
    run(
        tiny_cfg(
            "data.resolution=16",
            "eval=digits",
            "eval.n_samples=65",
            "eval.every_n_steps=2",
            "eval.sampler_steps=2",
            "eval.seeds=1",
            run_dir=tmp_path / "digits",
        )
    )
    assert _losses(tmp_path / "digits") == _losses(tmp_path / "none")
    # one full checkpoint unless checkpoint.keep_best asks for the best evaluation's too
    assert sorted(p.name for p in (tmp_path / "digits" / "checkpoints").iterdir()) == ["last.ckpt"]
    first = [torch.load(tmp_path / r / "checkpoints/last.ckpt", weights_only=True) for r in ("none", "digits")]
    for a, b in zip(first[0]["state_dict"].values(), first[1]["state_dict"].values(), strict=True):
        assert torch.equal(a, b)


def _losses(folder) -> list[float]:
    return [float(line.split(",")[1]) for line in (folder / "losses.csv").read_text().splitlines()[1:]]


def test_speed_switches_train_the_same_recipe(tiny_cfg, tmp_path):
    """channels_last and data on the device (GPU speed-ups) also run on a CPU, and change speed, not the maths."""
    run(tiny_cfg("speed.fused_adamw=false", run_dir=tmp_path / "plain"))
    run(tiny_cfg("speed.channels_last=true", "speed.data_on_device=true", run_dir=tmp_path / "fast"))
    plain, fast = _losses(tmp_path / "plain"), _losses(tmp_path / "fast")
    assert len(plain) == len(fast) == 4
    torch.testing.assert_close(fast, plain, rtol=1e-3, atol=1e-5)
    meta = json.loads((tmp_path / "fast" / "metrics.json").read_text())
    assert meta["status"] == "finished"


@pytest.mark.slow
def test_compiled_training_forward_gives_the_same_losses(tiny_cfg, tmp_path):
    run(tiny_cfg(run_dir=tmp_path / "eager"))
    run(tiny_cfg("speed.compile=true", run_dir=tmp_path / "compiled"))
    torch.testing.assert_close(_losses(tmp_path / "compiled"), _losses(tmp_path / "eager"), rtol=1e-3, atol=1e-5)


def test_recorded_lr_is_the_one_each_step_used(tiny_cfg, tmp_path):
    """losses.csv holds the lr of the step itself: 0 at step 0 and the peak at the end of warm-up (20 steps, 25%)."""
    run(tiny_cfg("trainer.max_steps=20", "optim.warmup=0.25", "optim.decay=cosine"))
    rows = [line.split(",") for line in (tmp_path / "run" / "losses.csv").read_text().splitlines()[1:]]
    lrs = {int(step): float(lr) for step, _, lr in rows}
    peak, warmup, total = 2e-3, 5, 20

    def formula(t: int) -> float:  # linear warm-up from 0, then cosine to 0 at the end
        if t < warmup:
            return peak * t / warmup
        return peak * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))

    assert lrs[0] == 0.0 and lrs[warmup] == peak
    assert sorted(lrs) == list(range(total))
    assert all(math.isclose(lrs[t], formula(t), rel_tol=1e-9, abs_tol=1e-15) for t in lrs), lrs


def test_a_budget_writes_its_steps_into_the_saved_config_and_the_card(tiny_cfg, tmp_path):
    run(tiny_cfg("budget.images=48"))  # 3 steps of 16 images, where trainer=debug says 6
    folder = tmp_path / "run"
    saved = OmegaConf.load(folder / ".hydra" / "config.yaml")
    assert saved.trainer.max_steps == 3 and saved.budget.images == 48
    assert json.loads((folder / "metrics.json").read_text())["steps"] == 3
    assert "| `steps` | 3 |" in (folder / "pipeline" / "README.md").read_text()
    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["diffexp_config"]["trainer"]["max_steps"] == 3


@pytest.mark.parametrize("prediction", ["v_prediction", "sample"])
def test_zero_snr_trains_and_every_sampler_samples_finite_images(prediction, tiny_cfg, tmp_path):
    from diffexp.config import options
    from diffexp.flow_samplers import FLOW_SCHEDULERS
    from diffexp.loading import load_run
    from diffexp.samplers import seeded_noise

    # min-SNR weighting on (loss.snr_gamma=5): with v and x0 targets its weight is 0, not 0/0, at SNR 0.
    run(tiny_cfg("schedule.rescale_betas_zero_snr=true", f"schedule.prediction_type={prediction}"))
    loaded = load_run(tmp_path / "run")
    assert loaded.scheduler.alphas_cumprod[-1] == 0  # the last timestep is pure noise
    for name in [o for o in options("sampler") if o not in FLOW_SCHEDULERS]:  # a flow sampler refuses a DDPM model
        composed = tiny_cfg(f"sampler={name}", run_dir=tmp_path / "composed").sampler
        sampler = instantiate(composed, steps=10)  # 10 steps start at t=999 (SNR 0) as 1000 do
        noise, generator = seeded_noise(4, 1, 8, 0)
        images = sampler(loaded.unet, loaded.scheduler, noise, generator, progress=False)
        assert torch.isfinite(images).all(), sampler.name
