"""The model card of an exported pipeline, built with `huggingface_hub`'s `ModelCard`/`ModelCardData`.

The card holds the Hub metadata (license, library, tags, datasets, `model-index` results with their sample counts),
a title naming the recipe and dataset, a snippet that samples the way the card's figures were made (the scheduler
built exactly as `diffexp.samplers` builds it, so it reproduces `diffexp-sample`'s images for the stated seed), the
pipeline's plain DDPM use, the recipe, the figures with their intervals, and what the figures cannot tell.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from diffexp.flow_card import own_sampler
from diffexp.record import RunRecord
from diffexp.tables import FIGURE_NAMES, SCALE, figure_text, kid_note

SNIPPET_N, SNIPPET_SEED = 16, 0  # the snippet's sample count and seed (the test reproduces them with diffexp-sample)
TAGS = ["pytorch", "diffusers", "unconditional-image-generation", "diffusion-models-class", "diffexp"]
SAMPLER_NAMES = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "dpm_solver": "DPM-Solver++ (2nd order)",
    "dpm_solver_sde": "SDE DPM-Solver++ (2nd order, fresh noise each step)",
    "euler": "Euler",
    "unipc": "UniPC",
}
METRIC_NAMES = {  # what each figure is, per feature net (the digits net's FD is not Inception FID)
    "digits": "FD in diffexp's digits-classifier features (not Inception FID)",
    "inception": "FID (Inception-v3 features)",
    "dinov2": "FD in DINOv2 features (FD_DINOv2, not Inception FID)",
}


def dataset_label(data: dict, choices: dict) -> str:
    """The dataset as a reader knows it: a Hub id, a folder's name, or scikit-learn's digits."""
    kind = choices.get("data", "")
    if data.get("name"):
        return str(data["name"])
    if data.get("path"):
        return f"image folder {str(data['path']).rstrip('/').split('/')[-1]}"
    return "scikit-learn digits" if kind == "digits" or "Digits" in str(data.get("_target_")) else kind or "?"


def hub_dataset(data: dict) -> str | None:
    """The Hub dataset id the model trained on, when it is one (`user/name`, not a local path)."""
    name = str(data.get("name") or "")
    return name if name.count("/") == 1 and not name.startswith((".", "/", "~")) else None


def recipe_label(config: dict) -> str:
    """The recipe's name: its experiment, else model size, schedule and prediction target."""
    choices = config.get("choices", {})
    if choices.get("experiment"):
        return str(choices["experiment"])
    prediction = config.get("schedule", {}).get("prediction_type")
    return f"{choices.get('model', '?')} UNet, {choices.get('schedule', '?')} schedule, {prediction}"


def snippet_sampler(config: dict, ev: dict) -> tuple[str, int, dict]:
    """The sampler the figures used (the evaluation's), else the run's preview sampler: name, steps, options."""
    if ev.get("sampler"):
        return ev["sampler"], int(ev["sampler_steps"]), {}
    sampler = config.get("sampler") or {"name": "ddpm", "steps": 1000}
    return sampler["name"], int(sampler["steps"]), dict(sampler.get("options") or {})


def snippet(source: str, scheduler, name: str, steps: int, options: dict, channels: int, size: int) -> str:
    """Python that loads the pipeline and samples `SNIPPET_N` images with seed `SNIPPET_SEED` the way diffexp does."""
    from diffexp.samplers import SCHEDULERS, Sampler, scheduler_settings

    sampler = Sampler(name, steps, options=options)
    if name.startswith("flow_"):  # a flow model: built on the training shift (diffexp/flow_card.py)
        from diffexp.flow_card import flow_snippet

        shape = (channels, size)
        return flow_snippet(source, scheduler, name, steps, sampler.step_options, shape, SNIPPET_N, SNIPPET_SEED)
    cls = SCHEDULERS[name][0]
    settings = scheduler_settings(name, scheduler, **sampler.scheduler_options)
    del settings["trained_betas"]  # written as code below: the pipeline's own training betas
    del settings["beta_schedule"]  # trained_betas decide the schedule; its name is left out below too
    step_args = ", generator=generator" if "generator" in _step_parameters(cls) else ""
    step_args += "".join(f", {k}={v!r}" for k, v in sampler.step_options.items())
    return f"""import torch
from diffusers import DDPMPipeline, {cls.__name__}
from PIL import Image

pipeline = DDPMPipeline.from_pretrained({source!r})
unet, training = pipeline.unet.eval(), pipeline.scheduler
# {SAMPLER_NAMES[name]} at {steps} steps, built as diffexp builds it: on the training betas, trailing spacing
settings = {settings!r}
config = {{k: v for k, v in training.config.items() if k not in ("_use_default_values", "beta_schedule")}}
scheduler = {cls.__name__}.from_config(config | settings | {{"trained_betas": training.betas.tolist()}})
scheduler.set_timesteps({steps})

generator = torch.Generator().manual_seed({SNIPPET_SEED})  # draws the starting noise, then any step noise
x = torch.randn({SNIPPET_N}, {channels}, {size}, {size}, generator=generator) * scheduler.init_noise_sigma
with torch.no_grad():
    for t in scheduler.timesteps:
        model_output = unet(scheduler.scale_model_input(x, t), t).sample  # Euler scales; the others pass x as is
        x = scheduler.step(model_output, t, x{step_args}).prev_sample
samples = x.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)  # [{SNIPPET_N}, {channels}, {size}, {size}]
images = [Image.fromarray(s.permute(1, 2, 0).squeeze(-1).numpy()) for s in samples]
"""


def plural(count: int, word: str) -> str:
    """`1 channel`, `3 channels`: counts read as words, with no bracketed plural."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _step_parameters(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.step).parameters)


def eval_results(ev: dict, dataset: str, dataset_id: str | None) -> list[EvalResult]:
    """`model-index` entries: each figure with what it is and the sample counts behind it."""
    if not ev.get("feature_net") or all(ev.get(key) is None for key in FIGURE_NAMES):
        return []
    net = ev["feature_net"]
    args = {
        "samples_per_seed": ev.get("n_fake"),
        "sampling_seeds": ev.get("n_seeds", 1),
        "real_heldout_images": ev.get("n_real"),
        "feature_net": net,
        "sampler": ev.get("sampler"),
        "sampler_steps": ev.get("sampler_steps"),
    }
    results = []
    for key in FIGURE_NAMES:
        if ev.get(key) is None:
            continue
        scale = SCALE.get(key, 1.0)
        ci = ev.get(f"{key}_ci")
        name = {"fid": METRIC_NAMES.get(net, f"FD ({net} features)"), "kid": f"KID x10^3 ({net} features)"}.get(
            key, f"{key} ({net} features)"
        )
        results.append(
            EvalResult(
                task_type="unconditional-image-generation",
                dataset_type=dataset_id or dataset,
                dataset_name=f"{dataset} (held-out images)",
                dataset_split="held-out",
                metric_type=key,
                metric_name=name,
                metric_value=round(float(ev[key]) * scale, 4),
                metric_args=args | ({"ci95": [round(float(c) * scale, 4) for c in ci]} if ci else {}),
            )
        )
    return results


def figures_section(ev: dict, posthoc_line: str) -> str:
    """The figures the card's weights got, each with its interval and a plain mark where it is within noise, and the
    held-out denoising error (recorded with eval=none too)."""
    denoise = ""
    if ev and ev.get("denoise") is not None:
        denoise = (
            f"\nHeld-out denoising error (`denoise`): {ev['denoise']:.4g} ({ev.get('denoise_images')} held-out images; "
            f"{ev.get('denoise_weighting')}; lower is better, comparable across schedules within one prediction "
            f"target).\n"
        )
    if not ev or ev.get("n_real") is None or all(ev.get(key) is None for key in FIGURE_NAMES):
        return posthoc_line + "These weights have no quality figures (the run trained with `eval=none`, or this width "
        "is unscored).\n" + denoise
    seeds, floor = ev.get("n_seeds", 1), ev.get("floor") or {}
    lines = [
        posthoc_line
        + f"Scored at step {ev.get('step', '?')} against {ev['n_real']} held-out images the model never trained on "
        f"({ev['feature_net']} features, {ev['n_fake']} samples from each of {plural(seeds, 'sampling seed')}, "
        f"{SAMPLER_NAMES.get(ev.get('sampler'), ev.get('sampler'))} at {ev.get('sampler_steps')} steps; 95% intervals: "
        f"FID over the seeds, the others by bootstrap). {kid_note()}",
        "",
        "| figure | these weights | real training images (the floor) |",
        "| --- | --- | --- |",
    ]
    for key in FIGURE_NAMES:
        if ev.get(key) is None:
            continue
        label = "KID x10^3" if key == "kid" else key
        lines.append(
            f"| {label} | {figure_text(key, ev[key], ev.get(f'{key}_ci'), floor.get(key))} "
            f"| {figure_text(key, floor[key], None) if key in floor else ''} |"
        )
    if "top_prob" in ev:
        lines.append(f"| top_prob | {figure_text('top_prob', ev['top_prob'], ev.get('top_prob_ci'))} | |")
        lines.append(f"| not a digit | {ev.get('not_digit', 0):.1%} | |")
    if ev.get("fid_refused"):  # eval=dinov2 refuses FD below its feature width
        lines += ["", f"{ev['fid_refused']}."]
    if "memorised" in ev:
        lines += [
            "",
            f"Memorised: {ev['memorised']:.1%} of samples lie nearer a training image than all but "
            f"{ev['memorised_heldout']:.1%} of held-out images do (in {ev.get('memorised_space')}).",
        ]
    return "\n".join(lines) + "\n" + denoise


def limitations(ev: dict, resolution: Any, own: str = "DDPM at the training steps") -> str:
    net = ev.get("feature_net")
    lines = [
        f"- A small unconditional model at {resolution} px: it makes images like its training set and nothing else; "
        "it takes no prompt or class."
    ]
    if net == "digits":
        lines.append(
            "- `fid` here is the Fréchet distance in the features of diffexp's own small digits classifier "
            "(64 features), not Inception FID: it is not comparable with FIDs published for other models."
        )
    elif net:
        lines.append(f"- The figures use {net} features; compare them only with figures of the same features.")
    if ev.get("n_fake"):
        lines.append(
            f"- {ev['n_fake']} samples per seed against {ev.get('n_real')} real images: FD and KID are biased and "
            "noisy at these counts; compare figures only at equal counts, and mind the intervals."
        )
    lines.append(
        f"- The pipeline's own `DDPMPipeline.__call__` samples with {own}; the figures above "
        "used the sampler in the first snippet, and another sampler or step count gives other figures."
    )
    return "\n".join(lines)


CARD = """---
{{ card_data }}
---

# {{ title }}

An unconditional image diffusion model ({{ params }}M-parameter `UNet2DModel`, {{ resolution }} px,
{{ channels }}) trained with diffexp on {{ dataset }}, recipe `{{ recipe }}`.
{{ weights }}
{{ grid }}
## Usage

The sampler every figure below was made with:

```python
{{ snippet }}```

{{ reproduce }}

The pipeline's own sampler is {{ own_sampler }} (slower; the figures did not use it):

```python
import torch
from diffusers import DDPMPipeline

pipeline = DDPMPipeline.from_pretrained({{ source_repr }})
images = pipeline(batch_size=16, generator=torch.Generator().manual_seed(0)).images
```

## Evaluation

{{ figures }}
## Limitations

{{ limitations }}

## Recipe

{{ recipe_table }}

## Training

{{ training_table }}

The full Hydra config is in `diffexp_config.json`; `diffexp-reproduce run=RUN` re-runs it. License: {{ license }}.
"""


def _table(d: dict[str, Any]) -> str:
    from diffexp.tables import cell

    rows = [f"| `{k}` | {cell(v)} |" for k, v in d.items() if v is not None and not isinstance(v, dict | list)]
    return "| setting | value |\n| --- | --- |\n" + "\n".join(rows) if rows else "(none)"


def recipe_table(config: dict, width: float | None, error: float | None = None) -> str:
    """The recipe's settings; a post-hoc width with its profile error beside it (`diffexp.profiles`)."""
    choices = config.get("choices", {})
    data, schedule = config.get("data", {}), config.get("schedule", {})
    recipe: dict[str, Any] = {g: c for g, c in choices.items() if c is not None}
    recipe |= {
        "lr": config.get("optim", {}).get("optimizer", {}).get("lr"),
        "batch_size": data.get("batch_size"),
        "steps": config.get("trainer", {}).get("max_steps"),
        "ema_sigma_rel": width if width is not None else (config.get("ema") or {}).get("sigma_rel"),
        **({"ema_profile_error": f"{error:.1%}"} if error is not None else {}),
        "prediction_type": schedule.get("prediction_type"),
        "beta_schedule": schedule.get("beta_schedule"),
        "seed": config.get("seed"),
    }
    return _table(recipe)


def training_table(record: RunRecord) -> str:
    keys = ("status", "steps", "images_seen", "train_seconds", "final_loss", "parameters")
    return _table({k: getattr(record, k) for k in keys})


def model_card(
    config: dict,
    record: RunRecord,
    ev: dict,
    *,
    source: str,
    scheduler,
    weights: str,
    license: str,
    model_name: str | None = None,
    posthoc: dict | None = None,
    grid_caption: str | None = None,
    run_dir: str | None = None,
) -> ModelCard:
    """The card of weights whose figures are `ev` (`{}`: unscored), loading from `source` (a Hub id or a path).

    `weights` says in words which weights the pipeline holds; `grid_caption`, when given, describes `samples.png`.
    """
    choices, data = config.get("choices", {}), config.get("data", {})
    dataset, dataset_id, recipe = dataset_label(data, choices), hub_dataset(data), recipe_label(config)
    resolution, channels = data.get("resolution"), data.get("channels", 1)
    name = model_name or f"diffexp-{recipe}-{dataset}".replace(" ", "-").replace(",", "").replace("/", "-")
    results = eval_results(ev, dataset, dataset_id)
    card_data = ModelCardData(
        model_name=name,
        license=license,
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=TAGS,
        datasets=[dataset_id] if dataset_id else None,
        metrics=[r.metric_type for r in results] or None,
        eval_results=results or None,
    )
    sampler, steps, options = snippet_sampler(config, ev)
    size = config.get("model", {}).get("sample_size", resolution)
    posthoc_line = ""
    if posthoc:
        error = posthoc.get("profile_error")  # how well the snapshots build the width (diffexp.profiles)
        posthoc_line = (
            f"These weights are the EMA of relative width sigma_rel {posthoc['ema_sigma_rel']:g}, reconstructed after "
            f"training (EDM2's post-hoc EMA) from {posthoc['snapshots']} snapshots, at step {posthoc['step']}"
            + (f", profile error {error:.1%}. " if error is not None else ". ")
            + (f"The figures below are this width's own ({posthoc['scored_by']}).\n\n" if ev else "")
        )
        if not ev:
            posthoc_line += "This width is unscored: `diffexp-evaluate run=RUN ema_sigma_rel=[...]` scores it.\n\n"
    sample_cmd = (
        f"diffexp-sample run={run_dir or source} sampler={sampler} sampler.steps={steps} n={SNIPPET_N} "
        f"seed={SNIPPET_SEED}" + "".join(f" sampler.options.{k}={v}" for k, v in options.items())
    )
    card = ModelCard.from_template(
        card_data,
        template_str=CARD,
        title=f"{recipe} on {dataset} ({resolution} px)",
        params=f"{(record.parameters or 0) / 1e6:.2f}",
        resolution=resolution,
        channels=plural(channels, "channel"),
        dataset=dataset + (f" (`{dataset_id}`)" if dataset_id else ""),
        recipe=recipe,
        weights=weights,
        grid=f"\n![samples](samples.png)\n\n`samples.png`: {grid_caption}\n" if grid_caption else "",
        snippet=snippet(source, scheduler, sampler, steps, options, channels, size),
        reproduce=f"On a CPU, `{sample_cmd}` draws the same {SNIPPET_N} images (the same seed gives the same "
        "starting noise and step noise).",
        own_sampler=own_sampler(scheduler),
        source_repr=repr(source),
        figures=figures_section(ev, posthoc_line),
        limitations=limitations(ev, resolution, own_sampler(scheduler)),
        recipe_table=recipe_table(
            config,
            (posthoc or {}).get("ema_sigma_rel", ev.get("ema_sigma_rel")),
            (posthoc or {}).get("profile_error", ev.get("ema_profile_error")),
        ),
        training_table=training_table(record),
        license=license,
    )
    return card
