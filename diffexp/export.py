"""Export: a run's weights as a diffusers `DDPMPipeline` folder with a model card, optionally pushed to the Hub.

`python -m diffexp.export run=DIR [out=FOLDER] [push_to_hub=true repo_id=user/name]`; `ema_sigma_rel=X` (runs trained
with `ema=posthoc`) exports the EMA of width X reconstructed from the run's snapshots, by default into
`DIR/pipeline-ema_sigma_rel-X`, with that width's own figures on the card (or a line saying it is unscored).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import hydra
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from omegaconf import DictConfig

from diffexp.config import CONF_DIR
from diffexp.errors import ConfigError, report
from diffexp.run_folder import atomic_folder, read_metrics

log = logging.getLogger("diffexp.export")

CARD = """---
library_name: diffusers
pipeline_tag: unconditional-image-generation
tags:
- pytorch
- diffusers
- unconditional-image-generation
- diffusion-models-class
- diffexp
---

# {title}

An unconditional image diffusion model ({params:.2f}M-parameter `UNet2DModel`, {resolution} px, {channels} channel(s))
trained with diffexp on `{dataset}`.
{grid}
## Usage

```python
from diffusers import DDPMPipeline

pipeline = DDPMPipeline.from_pretrained("{repo}")
images = pipeline(batch_size=16).images
```

## Recipe

{recipe}

## Figures

{quality}{figures}

The full Hydra config is in `diffexp_config.json`; `diffexp-reproduce` re-runs it.
"""


def _table(d: dict[str, Any]) -> str:
    rows = [f"| `{k}` | {v} |" for k, v in d.items() if not isinstance(v, dict)]
    return "| setting | value |\n| --- | --- |\n" + "\n".join(rows) if rows else "(none)"


def quality(ev: dict) -> str:
    """The final evaluation in words: each figure with its interval, against what, the floor, memorisation, and the
    held-out denoising error (recorded with eval=none too)."""
    if not isinstance(ev, dict):
        return ""
    denoise = ""
    if ev.get("denoise") is not None:
        denoise = (
            f"Held-out denoising error: {ev['denoise']:.4g} ({ev.get('denoise_images')} held-out images; "
            f"{ev.get('denoise_weighting')}; lower is better, comparable across targets and schedules).\n\n"
        )
    if "kid" not in ev or "floor" not in ev:
        return denoise
    from diffexp.tables import with_interval

    seeds = ev.get("n_seeds", 1)
    floor = ev["floor"]
    lines = [
        f"Scored against {ev['n_real']} held-out images the model never trained on ({ev['feature_net']} features, "
        f"{ev['n_fake']} samples from each of {seeds} sampling seed(s), {ev.get('sampler')}-{ev.get('sampler_steps')}; "
        f"95% intervals: FID over the seeds, the others by bootstrap):",
        "",
        "| figure | samples | real training images (the floor) |",
        "| --- | --- | --- |",
    ]
    for name in ("fid", "kid", "precision", "recall"):
        if ev.get(name) is None:  # eval=dinov2 refuses FD below its feature width
            continue
        figure, real = with_interval(ev[name], ev.get(f"{name}_ci")), with_interval(floor[name], None)
        lines.append(f"| {name} | {figure} | {real} |")
    if "top_prob" in ev:
        lines.append(f"| top_prob | {with_interval(ev['top_prob'], ev.get('top_prob_ci'))} | |")
        lines.append(f"| not a digit | {ev.get('not_digit', 0):.1%} | |")
    if ev.get("fid_refused"):
        lines += ["", f"{ev['fid_refused']}."]
    lines += [
        "",
        f"Memorised: {ev['memorised']:.1%} of samples lie nearer a training image than all but "
        f"{ev['memorised_heldout']:.1%} of held-out images do (in {ev.get('memorised_space')}).",
        "",
        "",
    ]
    return "\n".join(lines) + denoise


def posthoc_note(posthoc: dict, ev: dict) -> str:
    """What a post-hoc EMA export holds, and whether the figures below are that width's own."""
    if not posthoc:
        return ""
    line = (
        f"These weights are the EMA of relative width sigma_rel {posthoc['ema_sigma_rel']:g}, reconstructed after "
        f"training (EDM2's post-hoc EMA) from {posthoc['snapshots']} snapshots, at step {posthoc['step']}. "
    )
    if not ev:
        return line + "This width is unscored: `diffexp-evaluate run=RUN ema_sigma_rel=[...]` scores it.\n\n"
    return line + f"The figures below are this width's own ({posthoc['scored_by']}).\n\n"


def width_figures(run_dir: Path, record: dict, sigma_rel: float) -> tuple[dict, str | None]:
    """The figures scored for the post-hoc width `sigma_rel`: the newest `diffexp-evaluate ema_sigma_rel=` record
    holding it, else the final in-training evaluation where it chose that width; ({}, None) when unscored."""
    key = f"{float(sigma_rel):g}"
    for path in sorted((run_dir / "eval").glob("ema_sigma_rel-*.json"), key=lambda p: p.stat().st_mtime)[::-1]:
        found = json.loads(path.read_text()).get("ema_sigma_rel", {}).get(key)
        if found:
            return found, f"diffexp-evaluate, eval/{path.name}"
    ev = record.get("eval") or {}
    if ev.get("ema_sigma_rel") is not None and float(ev["ema_sigma_rel"]) == float(sigma_rel):
        return ev, "the final in-training evaluation, which chose this width"
    return {}, None


def model_card(config: dict, metrics: dict, repo: str, has_grid: bool) -> str:
    """The Hub's model card conventions: YAML header, usage, the recipe and its figures."""
    choices = config.get("choices", {})
    data = config.get("data", {})
    recipe = {f"{group}": choice for group, choice in choices.items()}
    recipe.update(
        {
            "lr": config.get("optim", {}).get("optimizer", {}).get("lr"),
            "batch_size": data.get("batch_size"),
            "steps": config.get("trainer", {}).get("max_steps"),
            "ema_sigma_rel": (config.get("ema") or {}).get("sigma_rel"),
            "prediction_type": config.get("schedule", {}).get("prediction_type"),
            "beta_schedule": config.get("schedule", {}).get("beta_schedule"),
            "seed": config.get("seed"),
        }
    )
    ev = metrics.get("eval") if isinstance(metrics.get("eval"), dict) else {}
    posthoc = metrics.get("posthoc") or {}
    if posthoc or ev.get("ema_sigma_rel") is not None:  # ema=posthoc: the width the weights hold
        recipe["ema_sigma_rel"] = posthoc.get("ema_sigma_rel", ev.get("ema_sigma_rel"))
    figures = {k: v for k, v in metrics.items() if k not in ("environment", "recipe") and not isinstance(v, dict)}
    figures.update({k: v for k, v in ev.items() if not isinstance(v, list | dict)})
    return CARD.format(
        title=repo.split("/")[-1],
        params=metrics.get("parameters", 0) / 1e6,
        resolution=data.get("resolution"),
        channels=data.get("channels"),
        dataset=data.get("name", choices.get("data", "?")),
        grid="\n![samples](samples.png)\n" if has_grid else "",
        repo=repo,
        recipe=_table(recipe),
        quality=posthoc_note(posthoc, ev) + quality(ev),
        figures=_table(figures),
    )


def export_pipeline(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    folder: Path,
    config: dict,
    metrics: dict,
    grid: Path | None = None,
) -> Path:
    """Writes the pipeline (safetensors) and its model card; an existing export is replaced only whole."""
    with atomic_folder(Path(folder)) as tmp:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        (tmp / "diffexp_config.json").write_text(json.dumps(config, indent=2, default=str))
        if grid is not None and grid.exists():
            shutil.copyfile(grid, tmp / "samples.png")
        repo = config.get("export", {}).get("repo_id") or Path(folder).parent.name
        (tmp / "README.md").write_text(model_card(config, metrics, repo, grid is not None and grid.exists()))
    return Path(folder)


def run(cfg: DictConfig) -> Path:
    from diffexp.run_folder import load_run

    run_dir = Path(cfg.run).expanduser()
    if cfg.push_to_hub and not cfg.repo_id:
        raise ConfigError("push_to_hub=true needs repo_id=<user>/<name>: add it")
    width = cfg.get("ema_sigma_rel")
    if width is not None:
        from diffexp.posthoc import check_sigma_rel_setting, load_width

        check_sigma_rel_setting(width, "ema_sigma_rel")
    loaded = load_run(run_dir)
    metrics = read_metrics(run_dir)
    default_out = run_dir / ("pipeline" if width is None else f"pipeline-ema_sigma_rel-{float(width):g}")
    out = Path(cfg.out).expanduser() if cfg.out else default_out
    if width is not None:
        held = load_width(loaded.unet, run_dir, float(width))
        figures, scored_by = width_figures(run_dir, metrics, float(width))
        metrics = metrics | {"eval": figures, "posthoc": held | {"scored_by": scored_by}}
    if out.exists() and not (out / "diffexp_config.json").exists() and out.resolve() != loaded.source.resolve():
        raise ConfigError(f"out={out} already holds something that is not a diffexp export: choose another out=")
    if out.resolve() != loaded.source.resolve():
        grids = sorted((run_dir / "samples").glob("step_*.png"))
        grid = grids[-1] if grids and width is None else None  # the previews show the run's own width
        export_pipeline(loaded.unet, loaded.scheduler, out, loaded.config, metrics, grid)
        log.info("exported %s", out)
    if cfg.push_to_hub:
        push(out, cfg.repo_id, cfg.private)
    return out


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Uploads the pipeline folder with `huggingface_hub`; offline it fails at once with one line."""
    from huggingface_hub import HfApi

    from diffexp.data import _hub_reachable

    if not _hub_reachable():
        raise ConfigError(
            f"push_to_hub=true: the Hugging Face Hub cannot be reached from here; the pipeline is at {folder}: "
            f"upload it later from a machine with network (huggingface-cli upload {repo_id} {folder})"
        )
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="diffexp export")
    log.info("uploaded %s to %s", folder, repo_id)
    return str(info)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    report(run, cfg)


if __name__ == "__main__":
    main()
