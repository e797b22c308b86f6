"""The export and its model card: rebuilt from the run, the card's metadata read back with `huggingface_hub`, its
snippet run to reproduce `diffexp-sample`'s images; the process pictures (forward noising, denoising trajectory)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler
from huggingface_hub import ModelCard
from omegaconf import OmegaConf
from PIL import Image

from diffexp.config import CONF_DIR
from diffexp.errors import ConfigError
from diffexp.plots import image_grid
from diffexp.samplers import predicted_x0, sampling_scheduler
from helpers import TINY, compose_train

# One tiny run scored against the held-out digits at steps 2 and 4 (so it has a best evaluation) on 2 seeds.
EVAL = ["eval=digits", "data.resolution=16", "eval.n_samples=65", "eval.every_n_steps=2", "eval.reference_size=100",
        "eval.sampler_steps=2", "eval.seeds=2", "eval.sampler=dpm_solver"]  # fmt: skip
# A best checkpoint is opt-in where checkpoint.keep_best exists (the default keeps last.ckpt only).
KEEP_BEST = ["checkpoint.keep_best=true"] if "keep_best" in OmegaConf.load(Path(CONF_DIR) / "train.yaml").get(
    "checkpoint", {}
) else []  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from diffexp.train import run

    folder = tmp_path_factory.mktemp("card") / "run"
    run(compose_train([*TINY, "logger=csv", *EVAL, *KEEP_BEST], folder))
    return folder


def export(*overrides: str, tmp: Path) -> Path:
    from diffexp.export import run

    return run(compose_train(list(overrides), tmp / "export", name="export"))


def ema_weights(ckpt: Path) -> list[torch.Tensor]:
    return torch.load(ckpt, weights_only=True)["ema"]["shadow_params"]


def test_card_metadata_and_its_snippet_reproduce_diffexp_sample(trained, tmp_path):
    from diffexp.sample import run as sample

    out = export(f"run={trained}", "license=mit", tmp=tmp_path)
    assert out == trained / "pipeline"
    card = ModelCard.load(out / "README.md")
    data = card.data
    assert data.license == "mit" and data.library_name == "diffusers"
    assert data.pipeline_tag == "unconditional-image-generation" and "diffexp" in data.tags
    results = {r.metric_type: r for r in data.eval_results}
    assert set(results) == {"fid", "kid", "precision", "recall"}
    kinds = {(r.dataset_split, r.task_type) for r in results.values()}
    assert kinds == {("held-out", "unconditional-image-generation")}
    assert "not Inception FID" in results["fid"].metric_name and "x10^3" in results["kid"].metric_name
    ev = json.loads((trained / "metrics.json").read_text())["eval"]
    assert results["fid"].metric_value == round(ev["fid"], 4)
    assert results["kid"].metric_value == round(ev["kid"] * 1e3, 4)
    args = results["fid"].metric_args
    assert (args["samples_per_seed"], args["sampling_seeds"], args["real_heldout_images"]) == (65, 2, 100)
    assert (args["sampler"], args["sampler_steps"]) == ("dpm_solver", 2) and len(args["ci95"]) == 2
    assert data.model_name == card.data.to_dict()["model-index"][0]["name"]
    title = card.text.split("\n# ", 1)[1].splitlines()[0]
    assert title == "tiny UNet, cosine schedule, v_prediction on scikit-learn digits (16 px)"
    assert "KID x10^3" in card.text and "Limitations" in card.text and "not Inception FID" in card.text
    assert f"EMA weights at the final step ({ev['step']})" in card.text

    # The snippet samples as the figures did (DPM-Solver++ at 2 steps); diffexp-sample draws the same images.
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert f"from_pretrained({str(out.resolve())!r})" in snippet and "DPMSolverMultistepScheduler" in snippet
    assert "'beta_schedule': 'linear'" not in snippet  # a cosine run: its trained betas decide
    assert "(s)" not in card.text and "16 px,\n1 channel)" in card.text and "from each of 2 sampling seeds" in card.text
    torch.set_num_threads(1)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the card's own code, as a reader would run it
    command = re.search(r"`diffexp-sample ([^`]*)`", card.text).group(1).split()
    grid = sample(compose_train([*command, "threads=1", "device=cpu"], tmp_path / "sample", name="sample"))
    mine = image_grid(scope["samples"])
    mine = mine.resize((mine.width * 4, mine.height * 4), Image.NEAREST)
    assert np.array_equal(np.asarray(mine), np.asarray(Image.open(grid)))
    assert len(scope["images"]) == 16 and scope["images"][0].size == (16, 16)
    assert Image.open(grid).text == {"step": "4", "sampler": "dpm_solver", "steps": "2", "seed": "0", "n": "16"}


def test_export_rebuilds_the_pipeline_from_the_run_and_best_is_opt_in(trained, tmp_path):
    pipeline = trained / "pipeline"
    (pipeline / "README.md").write_text("stale")
    broken = DDPMPipeline.from_pretrained(pipeline)
    for p in broken.unet.parameters():
        p.data.add_(1.0)
    broken.save_pretrained(pipeline)  # weights that are not the run's
    export(f"run={trained}", tmp=tmp_path)
    unet = DDPMPipeline.from_pretrained(pipeline).unet
    final = ema_weights(trained / "checkpoints" / "last.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), final, strict=True))
    assert ModelCard.load(pipeline / "README.md").data.eval_results
    assert not [p for p in trained.iterdir() if p.name.startswith(".pipeline")]  # no temporary folders left

    best_ckpt = trained / "checkpoints" / "best.ckpt"
    out = export(f"run={trained}", "weights=best", tmp=tmp_path)
    assert out == trained / "pipeline-best"
    best = DDPMPipeline.from_pretrained(out).unet
    assert all(torch.equal(a, b) for a, b in zip(best.parameters(), ema_weights(best_ckpt), strict=True))
    record = json.loads((trained / "metrics.json").read_text())["eval_best"]
    card = ModelCard.load(out / "README.md")
    assert f"best evaluation during training (step {record['step']}" in card.text
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["fid"] == round(record["fid"], 4)

    shutil.move(best_ckpt, tmp_path / "best.ckpt")
    try:
        with pytest.raises(ConfigError, match=r"weights=best: .*best\.ckpt does not exist.*checkpoint\.keep_best=true"):
            export(f"run={trained}", "weights=best", tmp=tmp_path)
    finally:
        shutil.move(tmp_path / "best.ckpt", best_ckpt)


def test_process_pictures_noising_and_trajectory(trained, tmp_path):
    from diffexp.sample import run as sample

    noising = Image.open(trained / "plots" / "noising.png")
    assert noising.width > 400 and noising.height > 300
    grid = sample(compose_train([f"run={trained}", "sampler=unipc", "sampler.steps=3", "n=4", "trajectory=true",
                                 "threads=1", "device=cpu"], tmp_path / "sample", name="sample"))  # fmt: skip
    assert grid.name == "unipc-3steps-seed0-n4.png"
    picture = grid.with_name("unipc-3steps-seed0-n4-trajectory.png")
    shown = Image.open(picture)
    assert shown.height > shown.width > 200 and shown.text["sampler"] == "unipc" and shown.text["steps"] == "3"
    assert shown.text["step"] == "4" and Image.open(grid).text["sampler"] == "unipc"


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_predicted_x0_inverts_the_forward_process(prediction):
    """x0 from the model output and the alphas (UniPC and DPM-Solver++ return none), given the true output."""
    train = DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type=prediction)
    scheduler = sampling_scheduler("dpm_solver", train)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1, torch.randn(3, 1, 8, 8, generator=g)
    for t in (10, 500, 900):
        ts = torch.full((3,), t)
        x_t = train.add_noise(x0, eps, ts)
        output = {"epsilon": eps, "v_prediction": train.get_velocity(x0, eps, ts), "sample": x0}[prediction]
        torch.testing.assert_close(predicted_x0(scheduler, output, t, x_t), x0, atol=2e-3, rtol=0)


def test_figures_read_kid_x1e3_with_intervals_and_a_noise_mark():
    """The card's, evaluate's and the report's cells: KID x10^3, its interval, `(within noise)` when the interval
    holds what real images score (KID: 0; the others: the floor's figure)."""
    from diffexp.report.pages import readable
    from diffexp.tables import figure_text

    assert figure_text("kid", 0.0021, [-0.0057, 0.0101], 0.005) == "2.1 [-5.7, 10.1] (within noise)"
    assert figure_text("kid", 0.0021, [0.001, 0.003], 0.0021) == "2.1 [1, 3]"  # holds the floor, not 0
    assert figure_text("fid", 6.0, [3.9, 8.2], 8.07) == "6 [3.9, 8.2] (within noise)"
    assert figure_text("fid", 6.0, [3.9, 8.2], 8.07, mark=False) == figure_text("fid", 6.0, None) + " [3.9, 8.2]"
    run = {"kid": 0.0021, "best kid": 0.0015, "kid 95% CI": "[-0.0057, 0.0101]", "interval": (-0.0057, 0.0101)}
    rows, columns = readable([run | {"eval": {"floor": {"kid": 0.005}}}], ["run", "kid", "kid 95% CI", "best kid"])
    assert columns == ["run", "kid x10^3", "kid x10^3 95% CI", "best kid x10^3"]
    assert rows[0]["kid x10^3"] == pytest.approx(2.1) and rows[0]["best kid x10^3"] == pytest.approx(1.5)
    assert rows[0]["kid x10^3 95% CI"] == "[-5.7, 10.1] (within noise)"
    fid = {"fid": 9.0, "fid 95% CI": "[8.5, 9.5]", "interval": (8.5, 9.5), "eval": {"floor": {"fid": 8.07}}}
    assert readable([fid], ["fid", "fid 95% CI"])[0][0]["fid 95% CI"] == "[8.5, 9.5]"  # clear of the floor


@pytest.mark.parametrize("sampler", ["flow_euler", "flow_unipc"])  # the uniform grid; a step that takes no generator
def test_a_flow_cards_snippet_draws_diffexp_samples_images(tmp_path, sampler):
    from diffexp.sample import run as sample
    from diffexp.train import run

    folder = tmp_path / "flow"
    run(compose_train([*TINY, "logger=csv", "schedule=flow", *EVAL[:6], f"eval.sampler={sampler}"], folder))
    card = ModelCard.load(folder / "pipeline" / "README.md")
    snippet = re.search(r"```python\n(.*?)```", card.text, re.S).group(1)
    assert "FlowMatchEulerDiscreteScheduler" in card.text and "flow Euler" in card.text  # the pipeline's own
    torch.set_num_threads(1)
    scope: dict = {}
    exec(snippet, scope)  # noqa: S102 - the card's own code, as a reader would run it
    command = re.search(r"`diffexp-sample ([^`]*)`", card.text).group(1).split()
    assert f"sampler={sampler}" in command
    grid = sample(compose_train([*command, "threads=1", "device=cpu"], tmp_path / "sample", name="sample"))
    mine = image_grid(scope["samples"])
    mine = mine.resize((mine.width * 4, mine.height * 4), Image.NEAREST)
    assert np.array_equal(np.asarray(mine), np.asarray(Image.open(grid)))
