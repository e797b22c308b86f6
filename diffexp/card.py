"""The model card of an exported pipeline, built with `huggingface_hub`'s `ModelCard`/`ModelCardData`.

The card holds the Hub metadata (license, library, tags, datasets, `model-index` results with their sample counts),
a title naming the recipe and dataset, a snippet that samples the way the card's figures were made (the scheduler
built exactly as `diffexp.samplers` builds it, so it reproduces `diffexp-sample`'s images for the stated seed), the
pipeline's plain DDPM use, the recipe, the figures with their intervals, and what the figures cannot tell.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from diffexp.card_figures import SAMPLER_NAMES, eval_results, figures_section, limitations, plural
from diffexp.flow_card import own_sampler
from diffexp.record import RunRecord

SNIPPET_N, SNIPPET_SEED = 16, 0  # the snippet's sample count and seed (the test reproduces them with diffexp-sample)
TAGS = ["pytorch", "diffusers", "unconditional-image-generation", "diffusion-models-class", "diffexp"]


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


def _step_parameters(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.step).parameters)


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
