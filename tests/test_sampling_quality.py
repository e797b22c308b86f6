"""Every sampler turns a trained model into digits: a real model, real samples, the shipped feature net."""

from __future__ import annotations

import pytest
import torch

from diffexp.data import digits_images, to_uint8
from diffexp.features import load_feature_net
from diffexp.flow_samplers import is_flow_sampler
from diffexp.loading import load_run
from diffexp.metrics import fid
from diffexp.samplers import SCHEDULERS, Sampler, seeded_noise
from diffexp.train import run


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["cosine", "sigmoid"])
def test_every_sampler_gives_digits_on_every_schedule(tiny_cfg, tmp_path, schedule):
    run(
        tiny_cfg(
            f"schedule={schedule}",
            "model=tiny",
            "data.resolution=16",
            "data.batch_size=64",
            "trainer.max_steps=400",
            "preview.every_n_steps=0",
            "optim.optimizer.lr=3e-3",
            "threads=2",
        )
    )
    loaded = load_run(tmp_path / "run")
    net = load_feature_net("digits", 1, 16)
    real = net.features(digits_images(16))
    scores = {}
    for name in [n for n in SCHEDULERS if not is_flow_sampler(n)]:  # the DDPM family
        steps = 100 if name == "ddpm" else 25
        noise, generator = seeded_noise(200, 1, 16, seed=1)
        images = to_uint8(Sampler(name, steps)(loaded.unet, loaded.scheduler, noise, generator, progress=False))
        scores[name] = fid(real, net.features(images))
    pure_noise = fid(real, net.features(to_uint8(noise.clamp(-1, 1))))
    # Far from noise, and no sampler far behind the best: a sampler that ignores the schedule fails both.
    assert all(s < pure_noise / 5 for s in scores.values()), (scores, pure_noise)
    assert max(scores.values()) < 3 * min(scores.values()), scores


def test_sampler_options_reach_the_scheduler_config_or_its_step():
    """`options` holds config keys (solver_order) or step arguments (DDIM's eta); both must change the images."""
    from diffexp.model import unet
    from diffexp.schedule import ddpm_scheduler

    torch.manual_seed(0)
    model = unet(8, 1, [8, 16], [False, False], 1, norm_num_groups=4).eval()
    scheduler = ddpm_scheduler("squaredcos_cap_v2")

    def images(name: str, **options) -> torch.Tensor:
        return Sampler(name, 4, options=options)(model, scheduler, *seeded_noise(4, 1, 8, seed=0), progress=False)

    assert not torch.equal(images("ddim"), images("ddim", eta=1.0))
    assert torch.equal(images("ddim", eta=1.0), images("ddim", eta=1.0))  # the seed fixes eta's noise
    assert not torch.equal(images("dpm_solver"), images("dpm_solver", solver_order=1))


@pytest.mark.slow
def test_a_briefly_trained_flow_model_gives_digits_with_every_flow_sampler(tiny_cfg, tmp_path):
    """400 steps of schedule=flow on tiny: every flow sampler at 25 steps under FID 30 against all 1797 digits (200
    samples, seed 1). Measured 2026-12-02 on 2 busy CPU cores: 16.7 (flow_unipc) to 19.9 (flow_deis), flow_euler
    17.2; pure noise 588."""
    run(tiny_cfg("schedule=flow", "model=tiny", "data.resolution=16", "data.batch_size=64", "trainer.max_steps=400",
                 "preview.every_n_steps=0", "optim.optimizer.lr=3e-3", "threads=2"))  # fmt: skip
    loaded = load_run(tmp_path / "run")
    net = load_feature_net("digits", 1, 16)
    real = net.features(digits_images(16))
    scores = {}
    for name in [n for n in SCHEDULERS if is_flow_sampler(n)]:
        noise, generator = seeded_noise(200, 1, 16, seed=1)
        images = to_uint8(Sampler(name, 25)(loaded.unet, loaded.scheduler, noise, generator, progress=False))
        scores[name] = fid(real, net.features(images))
    assert len(scores) == 6 and max(scores.values()) < 30, scores
