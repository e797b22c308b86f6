"""Export: a run's weights as a diffusers `DDPMPipeline` folder with its model card, optionally pushed to the Hub.

`python -m diffexp.export run=DIR [weights=final|best] [license=mit] [out=FOLDER] [push_to_hub=true repo_id=user/name]`
always rebuilds the folder from the run, atomically: the final EMA weights (`checkpoints/last.ckpt`), or the best
evaluation's (`weights=best`, from `checkpoints/best.ckpt`, into `DIR/pipeline-best`), with the card of those weights
(`diffexp.card`). `ema_sigma_rel=X` (runs trained with `ema=posthoc`) exports the EMA of width X reconstructed from the
run's snapshots, by default into `DIR/pipeline-ema_sigma_rel-X`, with that width's own figures on the card (or a line
saying it is unscored).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import hydra
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from omegaconf import DictConfig

from diffexp.cli import entry
from diffexp.config import CONF_DIR
from diffexp.errors import ConfigError, report
from diffexp.files import AtomicFolder
from diffexp.record import RunRecord

log = logging.getLogger("diffexp.export")

DEFAULT_LICENSE = "other"  # the export command's `license` default (conf/export.yaml); training's card uses it too
WEIGHTS = ("final", "best")


def width_figures(run_dir: Path, record: RunRecord, sigma_rel: float) -> tuple[dict, str | None]:
    """The figures scored for the post-hoc width `sigma_rel`: the newest `diffexp-evaluate ema_sigma_rel=` record
    holding it, else the final in-training evaluation where it chose that width; ({}, None) when unscored."""
    key = f"{float(sigma_rel):g}"
    for path in sorted((run_dir / "eval").glob("ema_sigma_rel-*.json"), key=lambda p: p.stat().st_mtime)[::-1]:
        found = json.loads(path.read_text()).get("ema_sigma_rel", {}).get(key)
        if found:
            return found, f"diffexp-evaluate, eval/{path.name}"
    ev = record.eval or {}
    if ev.get("ema_sigma_rel") is not None and float(ev["ema_sigma_rel"]) == float(sigma_rel):
        return ev, "the final in-training evaluation, which chose this width"
    return {}, None


def weights_text(config: dict, record: RunRecord, ev: dict, weights: str, step: int | None) -> str:
    """Which weights the pipeline holds, in words."""
    ema = "EMA weights" if config.get("ema") else "trained weights (the run used no EMA)"
    if weights == "best":
        monitor = (config.get("eval") or {}).get("monitor") or "fid"
        return (
            f"The pipeline holds the {ema} of the best evaluation during training (step {ev.get('step', step)}, by "
            f"{monitor}), kept in `checkpoints/best.ckpt`; the run's final weights are in its `pipeline/`."
        )
    return f"The pipeline holds the {ema} at the final step ({step if step is not None else record.steps})."


def grid_for(run_dir: Path, step: int | None, config: dict) -> tuple[Path | None, str | None]:
    """The preview grid made at `step` (those weights' own), with its caption; (None, None) when there is none."""
    if step is None:
        return None, None
    grid = run_dir / "samples" / f"step_{int(step):06d}.png"
    if not grid.exists():
        return None, None
    preview, sampler = config.get("preview") or {}, config.get("sampler") or {}
    caption = (
        f"the preview grid at step {int(step)}: {preview.get('n', '?')} images from the fixed preview seed "
        f"{preview.get('seed', 0)}, {sampler.get('name')} at {sampler.get('steps')} steps."
    )
    return grid, caption


def export_pipeline(
    unet: UNet2DModel,
    scheduler: DDPMScheduler,
    folder: Path,
    config: dict,
    record: RunRecord,
    grid: Path | None = None,
    *,
    posthoc: dict | None = None,
    weights: str = "final",
    license: str = DEFAULT_LICENSE,
    repo_id: str | None = None,
    run_dir: Path | None = None,
    step: int | None = None,
    grid_caption: str | None = None,
) -> Path:
    """Writes the pipeline (safetensors) and its model card; an existing export is replaced only whole.

    The card's figures are those of the weights written: `record.eval` for the final weights (when it was made at
    the final step), `record.eval_best` for `weights="best"`; a post-hoc width's are in `record.eval`, with what
    the width holds in `posthoc`.
    """
    from diffexp.card import model_card

    folder = Path(folder)
    posthoc = posthoc or {}
    step = step if step is not None else record.steps
    ev = (record.eval_best if weights == "best" else record.eval) or {}
    if not isinstance(ev, dict) or (not posthoc and weights == "final" and step is not None and ev.get("step") != step):
        ev = {}  # an evaluation of other weights (an earlier step) says nothing about these
    if grid is not None and not grid_caption:
        grid_caption = f"the preview grid {grid.name}, {(config.get('sampler') or {}).get('name')} samples."
    with AtomicFolder(folder) as tmp:
        DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
        (tmp / "diffexp_config.json").write_text(json.dumps(config, indent=2, default=str))
        if grid is not None:
            shutil.copyfile(grid, tmp / "samples.png")
        card = model_card(
            config,
            record,
            ev,
            source=repo_id or str(folder.resolve()),
            scheduler=scheduler,
            weights=weights_text(config, record, ev, weights, step),
            license=license,
            model_name=repo_id.split("/")[-1] if repo_id else None,
            posthoc=posthoc,
            grid_caption=grid_caption if grid is not None else None,
            run_dir=str(run_dir) if run_dir is not None else None,
        )
        card.save(tmp / "README.md")
    return folder


def run(cfg: DictConfig) -> Path:
    """Rebuilds the export from the run: weights from its checkpoint (`final`: last.ckpt's EMA, `best`: best.ckpt's),
    the card from its metrics; writes `RUN/pipeline` (or `pipeline-best`, `pipeline-ema_sigma_rel-X`, `out=`)."""
    from diffexp.loading import load_checkpoint, load_run

    folder = Path(cfg.run).expanduser()
    if cfg.push_to_hub and not cfg.repo_id:
        raise ConfigError("push_to_hub=true needs repo_id=<user>/<name>: add it")
    weights = cfg.get("weights", "final")
    if weights not in WEIGHTS:
        raise ConfigError(f"weights={weights}: use weights=final (the final EMA weights) or weights=best")
    if not cfg.license or not isinstance(cfg.license, str):
        raise ConfigError(f"license={cfg.license}: give a Hub license id (e.g. mit, apache-2.0, cc-by-4.0, other)")
    width = cfg.get("ema_sigma_rel")
    if width is not None:
        from diffexp.ema import check_sigma_rel

        check_sigma_rel(width, "ema_sigma_rel")
        if weights == "best":
            raise ConfigError("weights=best with ema_sigma_rel: a reconstructed width is of the final step; drop one")
    standalone = (folder / "model_index.json").exists()  # run= names a pipeline folder (RUN/pipeline, or any)
    run_dir = folder.parent if standalone and (folder.parent / "metrics.json").exists() else folder
    record = RunRecord.read(run_dir) or RunRecord()  # a pipeline folder alone has none
    checkpoints = run_dir / "checkpoints"
    if weights == "best" and not (checkpoints / "best.ckpt").exists():
        raise ConfigError(
            f"weights=best: {checkpoints / 'best.ckpt'} does not exist (the run kept no best evaluation's weights): "
            f"train with checkpoint.keep_best=true, or export weights=final"
        )
    if standalone and run_dir == folder:
        default_out = folder
    else:
        name = {"best": "pipeline-best"}.get(weights, "pipeline")
        default_out = run_dir / (name if width is None else f"pipeline-ema_sigma_rel-{float(width):g}")
    out = Path(cfg.out).expanduser() if cfg.out else default_out
    if out.exists() and not (out / "diffexp_config.json").exists() and out.resolve() != folder.resolve():
        raise ConfigError(f"out={out} already holds something that is not a diffexp export: choose another out=")
    if cfg.push_to_hub:
        check_hub(out, cfg.repo_id)
    if weights == "best":
        loaded = load_checkpoint(checkpoints / "best.ckpt", run_dir)
    elif (checkpoints / "last.ckpt").exists():
        loaded = load_checkpoint(checkpoints / "last.ckpt", run_dir)
    else:  # a pipeline folder alone: its own (final) weights, read into memory before it is rebuilt
        loaded = load_run(folder)
    step = loaded.step if loaded.step is not None else record.steps
    posthoc = None
    if width is not None:
        from diffexp.snapshots import load_width

        held = load_width(loaded.unet, run_dir, float(width))
        figures, scored_by = width_figures(run_dir, record, float(width))
        record, posthoc = dataclasses.replace(record, eval=figures), held | {"scored_by": scored_by}
    grid, caption = grid_for(run_dir, step, loaded.config) if width is None else (None, None)
    export_pipeline(
        loaded.unet,
        loaded.scheduler,
        out,
        loaded.config,
        record,
        grid,
        posthoc=posthoc,
        weights=weights,
        license=cfg.license,
        repo_id=cfg.repo_id if cfg.push_to_hub else None,
        run_dir=run_dir,
        step=step,
        grid_caption=caption,
    )
    log.info("exported %s (%s weights, step %s)", out, weights, step)
    print(out)
    if cfg.push_to_hub:
        push(out, cfg.repo_id, cfg.private)
    return out


def check_hub(folder: Path, repo_id: str) -> None:
    """Offline, `push_to_hub=true` fails at once with one line, before anything is written."""
    from diffexp.hub import hub_reachable

    if not hub_reachable():
        raise ConfigError(
            f"push_to_hub=true: the Hugging Face Hub cannot be reached from here: export without it and upload "
            f"{folder} later from a machine with network (huggingface-cli upload {repo_id} {folder})"
        )


def push(folder: Path, repo_id: str, private: bool = False) -> str:
    """Uploads the pipeline folder with `huggingface_hub`."""
    from huggingface_hub import HfApi

    check_hub(folder, repo_id)
    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="diffexp export")
    log.info("uploaded %s to %s", folder, repo_id)
    return str(info)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def hydra_main(cfg: DictConfig) -> None:
    report(run, cfg)


main = entry("export", hydra_main)  # the console script: the command line checked first (diffexp.cli)


if __name__ == "__main__":
    main()
