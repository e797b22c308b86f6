"""diffexp-evaluate: a trained run's quality against the number of network evaluations, per sampler.

`diffexp-evaluate run=DIR samplers=[ddim,dpm_solver] steps=[10,25,50] ddpm_steps=[] n=512` writes `DIR/eval/<name>.csv`,
`.md`, `.png` and `<name>-nearest.png`; a second evaluation never overwrites the first. Every setting is scored
against the dataset's held-out images over `eval.seeds` sampling seeds (`seed`, `seed + 1`, ...), each figure with
its 95% interval; the table's first row is the real-data floor (training images against the same held-out images).

`ema_sigma_rel=[0.03,0.05,0.1,0.2]` (runs trained with `ema=posthoc`) instead reconstructs the EMA of each width at
the final step and scores each with the run's own evaluation sampler: `DIR/eval/ema_sigma_rel-...` table, plot of
FID against the width, and a `.json` of each width's record (which `diffexp-export ema_sigma_rel=X` puts on its card).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from diffexp.cli import entry
from diffexp.config import CONF_DIR, instantiate
from diffexp.data import to_uint8
from diffexp.errors import ConfigError, report
from diffexp.files import free_path
from diffexp.flow import is_flow_scheduler
from diffexp.frontier import evaluation_grid, mark_inside, nfe
from diffexp.heldout import Reference, evaluation_reference
from diffexp.identity import run_data_mark
from diffexp.loading import LoadedRun, load_run
from diffexp.plots import plot_nearest, plot_quality, plot_widths
from diffexp.runtime import pick_device, set_threads
from diffexp.samplers import SCHEDULERS, Sampler, check_steps, seeded_noise
from diffexp.tables import FIGURE_NAMES, figure_text, kid_note, within_noise, write_table

log = logging.getLogger("diffexp.evaluate")
COLUMNS = [
    "sampler",
    "steps",
    "nfe",
    "fid",
    "fid_lo",
    "fid_hi",
    "fid_std",
    "kid_x1e3",
    "kid_x1e3_lo",
    "kid_x1e3_hi",
    "kid_x1e3_std",
    "precision",
    "precision_lo",
    "precision_hi",
    "recall",
    "recall_lo",
    "recall_hi",
    "top_prob",
    "top_prob_lo",
    "top_prob_hi",
    "class_min",
    "class_max",
    "not_digit",
    "within_noise",
    "inside_reference",
    "memorised",
    "memorised_heldout",
    "data_check",
    "feature_net",
    "reference",
    "n_real",
    "n_fake",
    "n_seeds",
    "seconds",
    "images_per_s",
]
MD_COLUMNS = ["sampler", "steps", "FID (95% CI)", "KID x10^3 (95% CI)", "precision (95% CI)", "recall (95% CI)"]
MD_COLUMNS += ["top_prob", "not_digit", "memorised", "n_fake x seeds", "n_real", "data_check"]
FLOOR = "floor: real training images"


def reference_for(loaded: LoadedRun, cfg: DictConfig, n: int, device) -> Reference:
    """The held-out reference of the run's own dataset (the same set training evaluation used; features cached),
    scored with this command's `eval` net."""
    data = loaded.config.get("data")
    if not data:
        raise ConfigError(
            f"run={cfg.run} carries no diffexp config, so its dataset is unknown: evaluate a diffexp run folder "
            f"or a pipeline that diffexp exported"
        )
    datamodule = instantiate(data, seed=0)
    datamodule.prepare()
    mark = run_data_mark(Path(cfg.run), datamodule, bool(cfg.get("allow_changed_data")), f"run={cfg.run}")
    setting = "n" if cfg.n else "eval.n_samples"
    reference = evaluation_reference(cfg.eval, data, datamodule, n, setting=setting, device=device)
    reference.data_check = mark  # every figure carries it
    return reference


def flat_row(figures: dict, floor: dict | None = None) -> dict:
    """A record with `[lo, hi]` intervals as `<name>_lo`/`_hi` columns (CSV) and `value [lo, hi]` cells (Markdown),
    KID x10^3 in both, and `within_noise`: the figures whose interval holds the `floor`'s (KID: 0)."""
    row = dict(figures)
    for name in ("fid", "kid", "precision", "recall", "top_prob"):
        ci = figures.get(f"{name}_ci")
        if ci is not None:
            row[f"{name}_lo"], row[f"{name}_hi"] = ci
        if name != "top_prob" and figures.get(name) is not None:
            label = {"fid": "FID", "kid": "KID x10^3"}.get(name, name)
            reference = (floor or {}).get(name)  # the floor row itself (floor None) gets no mark
            row[f"{label} (95% CI)"] = figure_text(name, figures[name], ci, reference, mark=floor is not None)
    for key in ("", "_lo", "_hi", "_std"):
        if row.get(f"kid{key}") is not None:
            row[f"kid_x1e3{key}"] = float(row[f"kid{key}"]) * 1e3
    if floor is not None:
        row["within_noise"] = " ".join(n for n in FIGURE_NAMES if within_noise(n, figures.get(f"{n}_ci"), floor.get(n)))
    if "n_seeds" in figures:
        row["n_fake x seeds"] = f"{figures['n_fake']} x {figures['n_seeds']}"
    return row


def fid_text(figures: dict) -> str:
    """The FID and its 95% interval for a log line; `refused` where FD was (fewer images than feature dimensions)."""
    if figures.get("fid") is None:
        return "refused"
    ci = figures.get("fid_ci")
    return f"{figures['fid']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def sample_seeds(unet, scheduler, name: str, steps: int, n: int, cfg: DictConfig, device) -> list[torch.Tensor]:
    """`n` uint8 samples from each of `eval.seeds` seeds (`seed`, `seed + 1`, ...)."""
    images = []
    for k in range(cfg.eval.seeds):
        noise, generator = seeded_noise(n, unet.config.in_channels, unet.config.sample_size, cfg.seed + k, device)
        images.append(to_uint8(Sampler(name, steps)(unet, scheduler, noise, generator=generator)).cpu())
    return images


def run(cfg: DictConfig) -> Path:
    """Scores the run with each sampler and step count (or each EMA width) against the held-out reference, beside
    the real-data floor; writes RUN/eval/*.csv, .md and pictures (new names each time) and returns the CSV's path."""
    if not cfg.eval.net:
        raise ConfigError("eval=none has no metric to evaluate: use eval=digits, eval=dinov2 or eval=inception")
    widths = cfg.get("ema_sigma_rel")
    if widths is not None and (isinstance(widths, int | float | str) or len(widths)):
        return evaluate_widths(cfg)
    n = cfg.n or cfg.eval.n_samples
    for name in cfg.samplers or []:
        if name not in SCHEDULERS:
            raise ConfigError(f"samplers: {name!r} is not a sampler; use some of {sorted(SCHEDULERS)}")
    for key in ("steps", "ddpm_steps"):
        if cfg[key] and min(cfg[key]) < 1:
            raise ConfigError(f"{key}={list(cfg[key])}: give step counts of at least 1")
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    loaded = load_run(Path(cfg.run))
    flow = is_flow_scheduler(loaded.scheduler)  # the run's family: its samplers and its reference
    grid = evaluation_grid(cfg, flow)
    unet = loaded.unet.to(device)
    check_steps(max(steps for _, steps, _ in grid), loaded.scheduler, "steps")
    reference = reference_for(loaded, cfg, n, device)
    floor = reference.floor(n)
    rows = [{"sampler": FLOOR, "n_fake": floor["n"], "n_real": len(reference.real), **flat_row(floor)}]
    pictures = []
    for name, steps, is_reference in grid:
        start = time.perf_counter()
        images = sample_seeds(unet, loaded.scheduler, name, steps, n, cfg, device)
        seconds = time.perf_counter() - start
        figures, nearest = reference.score(images, seed=cfg.seed)
        pictures.append((figures["memorised"], f"{name}-{steps}", nearest))
        row = {"sampler": name, "steps": steps, "nfe": nfe(name, steps), **flat_row(figures, floor)}
        row |= {"reference_sampler": is_reference}
        rows.append(row | {"seconds": round(seconds, 2), "images_per_s": round(n * cfg.eval.seeds / seconds, 2)})
        log.info("%s-%d (%d model calls): fid %s", name, steps, row["nfe"], fid_text(figures))
    mark_inside(rows[1:])
    stem = f"{cfg.eval.net}-n{n}-seed{cfg.seed}" + (f"-x{cfg.eval.seeds}" if cfg.eval.seeds > 1 else "")
    path = free_path(Path(cfg.run) / "eval", stem, ".csv")
    write_table(rows, COLUMNS, path, MD_COLUMNS)
    family = "flow" if flow else "DDPM"
    title = f"{cfg.eval.net} FID, {family} samplers, {n} samples x {cfg.eval.seeds} seeds"
    plot_quality(rows[1:], path.with_suffix(".png"), title)
    # The setting with the largest memorised share (the first of equals), its first seed's samples.
    _, setting, (samples, dist, index) = max(pictures, key=lambda p: p[0])
    plot_nearest(
        samples, reference.train_images, dist, index, reference.threshold, path.with_name(f"{path.stem}-nearest.png")
    )
    note = (
        f"\nAgainst {len(reference.real)} held-out images ({cfg.eval.net} features); intervals 95% (FID: t over "
        f"{cfg.eval.seeds} sampling seeds; KID, precision, recall: bootstrap). memorised: share of samples nearer a "
        f"training image than all but {reference.memorised_heldout:.1%} of held-out images are "
        f"({figures['memorised_space']}); {path.stem}-nearest.png shows {setting}. {kid_note()} "
        f"Held-out set against the run's: {reference.data_check}.\n"
    )
    with path.with_suffix(".md").open("a") as f:
        f.write(note)
    print(path.with_suffix(".md").read_text())
    return path


def evaluate_widths(cfg: DictConfig) -> Path:
    """Each of `ema_sigma_rel`, reconstructed from a post-hoc run's snapshots at its final step, scored with the
    run's evaluation sampler against the held-out images; a table, a plot against the width, a JSON record."""
    from diffexp.ema import check_sigma_rel
    from diffexp.snapshots import list_snapshots, load_width

    widths = [cfg.ema_sigma_rel] if isinstance(cfg.ema_sigma_rel, int | float | str) else list(cfg.ema_sigma_rel)
    for w in widths:
        check_sigma_rel(w, "ema_sigma_rel")
    run_dir = Path(cfg.run).expanduser()
    if not list_snapshots(run_dir / "ema"):
        raise ConfigError(
            f"ema_sigma_rel: {run_dir / 'ema'} holds no EMA snapshots (only runs trained with ema=posthoc have "
            f"them): drop ema_sigma_rel, or train with ema=posthoc"
        )
    device = pick_device(cfg.device)
    set_threads(cfg.threads)
    loaded = load_run(run_dir)
    unet = loaded.unet.to(device)
    run_eval = loaded.config.get("eval") or {}
    name, steps = run_eval.get("sampler") or cfg.eval.sampler, run_eval.get("sampler_steps") or cfg.eval.sampler_steps
    n = cfg.n or cfg.eval.n_samples
    reference = reference_for(loaded, cfg, n, device)
    floor = reference.floor(n)
    rows = [{"sampler": FLOOR, "n_fake": floor["n"], "n_real": len(reference.real), **flat_row(floor)}]
    records, pictures = {}, []
    for w in widths:
        start = time.perf_counter()
        held = load_width(unet, run_dir, float(w))
        figures, nearest = reference.score(sample_seeds(unet, loaded.scheduler, name, steps, n, cfg, device), cfg.seed)
        figures |= {"sampler": name, "sampler_steps": steps} | held
        records[f"{float(w):g}"] = figures
        pictures.append((figures["memorised"], float(w), nearest))
        seconds = round(time.perf_counter() - start, 2)
        row = {"sampler": name, "steps": steps, "nfe": nfe(name, steps), **flat_row(figures, floor)}
        rows.append(row | {"seconds": seconds})
        log.info("ema_sigma_rel %g: fid %s", w, fid_text(figures))
    tag = "_".join(f"{float(w):g}" for w in widths)
    stem = f"ema_sigma_rel-{tag}-{name}-{steps}-{cfg.eval.net}-n{n}-seed{cfg.seed}-x{cfg.eval.seeds}"
    path = free_path(run_dir / "eval", stem, ".csv")
    width = ["ema_sigma_rel", "profile_error"]  # each width beside how well the snapshots build it
    write_table(rows, [*width, *COLUMNS], path, [*width, *MD_COLUMNS])
    path.with_suffix(".json").write_text(json.dumps({"ema_sigma_rel": records}, indent=1, default=str) + "\n")
    plot_widths(rows[1:], path.with_suffix(".png"), f"{cfg.eval.net} FID, {name}-{steps}, {n} x {cfg.eval.seeds}")
    _, shown, (samples, dist, index) = max(pictures, key=lambda p: p[0])
    picture = path.with_name(f"{path.stem}-nearest-{shown:g}.png")
    plot_nearest(samples, reference.train_images, dist, index, reference.threshold, picture)
    with path.with_suffix(".md").open("a") as f:
        f.write(
            f"\nEMA of each width reconstructed from {held['snapshots']} snapshots at step {held['step']}; against "
            f"{len(reference.real)} held-out images, intervals 95% (FID: t over {cfg.eval.seeds} sampling seeds). "
            f"{picture.name} shows width {shown:g}. {kid_note()} Held-out set against the run's: "
            f"{reference.data_check}.\n"
        )
    print(path.with_suffix(".md").read_text())
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def hydra_main(cfg: DictConfig) -> None:
    report(run, cfg)


main = entry("evaluate", hydra_main)  # the console script: the command line checked first (diffexp.cli)


if __name__ == "__main__":
    main()
