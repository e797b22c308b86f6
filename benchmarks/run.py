"""`make bench`: diffexp against the course notebook's way, measured in one run, printed side by side.

    python benchmarks/run.py [--only train,data,sampling,make_train] [--steps 30] [--skip-course]

Writes `benchmarks/results/<date>.json` and prints a Markdown table to paste into `benchmarks/RESULTS.md`.
Every figure is measured here, now, on this machine: nothing is assumed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from diffexp.callbacks import LossHistory  # noqa: E402
from diffexp.diffusion import DiffusionModule  # noqa: E402
from diffexp.model import unet as build_unet  # noqa: E402
from diffexp.schedule import ddpm_scheduler  # noqa: E402

HERE = Path(__file__).resolve().parent
THREADS = len(os.sched_getaffinity(0))
RECIPES = {  # name: (resolution, channels, widths, attention, layers, batch)
    "digits default (tiny, 16px)": (16, 1, [16, 32, 64], [False, False, True], 2, 64),
    "course UNet (18.5M, 32px RGB)": (32, 3, [64, 128, 128, 256], [False, False, True, True], 2, 64),
}


def groups(widths: list[int]) -> int:
    return 8 if min(widths) < 32 else 32


def plain_step(resolution, channels, widths, attention, layers, batch, images) -> Callable[[], None]:
    """One step of the course notebook's loop: sample a batch, add noise, MSE on the noise, AdamW (torch's default
    kernel, as the notebook has it)."""
    torch.manual_seed(0)
    model = build_unet(resolution, channels, widths, attention, layers, norm_num_groups=groups(widths))
    scheduler = ddpm_scheduler("squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=4e-4)
    data = torch.rand(images, channels, resolution, resolution) * 2 - 1

    def step() -> None:
        clean = data[torch.randint(0, len(data), (batch,))]
        noise = torch.randn_like(clean)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,)).long()
        loss = F.mse_loss(model(scheduler.add_noise(clean, noise, t), t, return_dict=False)[0], noise)
        loss.backward()
        opt.step()
        opt.zero_grad()

    return step


class Paired(pl.Callback):
    """Runs one plain-loop step at the start of each diffexp step, and times both.

    The two sides alternate step by step in one process, so a busy moment of the machine hits both alike: on 2
    shared cores, runs timed one after the other differ by 5-10%, more than the difference being measured.
    """

    def __init__(self, plain: Callable[[], None], warmup: int) -> None:
        self.plain, self.warmup = plain, warmup
        self.plain_seconds: list[float] = []
        self.diffexp_seconds: list[float] = []
        self.plain_end: float | None = None

    def on_train_batch_start(self, trainer, *args) -> None:
        start = time.perf_counter()
        if self.plain_end is not None and trainer.global_step > self.warmup:
            self.diffexp_seconds.append(start - self.plain_end)  # diffexp's previous step and this batch's fetch
        self.plain()
        self.plain_end = time.perf_counter()
        if trainer.global_step >= self.warmup:
            self.plain_seconds.append(self.plain_end - start)


def paired_steps(
    recipe, steps, images, warmup=3, fused=True, ema="power", keep=None
) -> tuple[list[float], list[float]]:
    """Seconds per step of the plain loop and of diffexp's training, step by step side by side.

    diffexp's side is the Trainer and callbacks `diffexp-train` builds from its default config (W&B offline, the
    per-step loss record, checkpoint and preview callbacks, gradient clipping, deterministic algorithms, the
    progress bar) around a DiffusionModule with EMA; evaluation off. `fused` is diffexp's default AdamW kernel
    (`speed.fused_adamw`); False uses the plain loop's. `ema` is the `ema` group's option (`posthoc` adds its
    snapshot callback, as `diffexp-train` does); `keep` receives the trained module.
    """
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from diffexp.callbacks import run_callbacks
    from diffexp.config import CONF_DIR
    from diffexp.data import ImageDataModule
    from diffexp.posthoc import Snapshots

    resolution, channels, widths, attention, layers, batch = recipe

    class Random(ImageDataModule):
        def load_split(self):  # every image trains: nothing is scored here
            shape = (images, channels, resolution, resolution)
            return torch.randint(0, 256, shape, dtype=torch.uint8), torch.empty(0, dtype=torch.long)

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["eval=none", f"ema={ema}"])
    paired = Paired(plain_step(*recipe, images=images), warmup)
    torch.manual_seed(0)
    module = DiffusionModule(
        build_unet(resolution, channels, widths, attention, layers, norm_num_groups=groups(widths)),
        ddpm_scheduler("squaredcos_cap_v2"),
        lambda p: torch.optim.AdamW(p, lr=4e-4, fused=fused),
        ema=instantiate(cfg.ema),
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        callbacks = run_callbacks(cfg, run_dir, LossHistory(run_dir / "losses.csv"), instantiate(cfg.sampler), None)
        if ema == "posthoc":
            callbacks.append(Snapshots(run_dir / "ema", module.ema, batch))
        trainer = instantiate(
            cfg.trainer,
            max_steps=warmup + steps + 1,
            gradient_clip_val=cfg.optim.grad_clip,
            logger=pl.loggers.WandbLogger(save_dir=tmp, project="bench", offline=True),
            callbacks=[paired, *callbacks],
            default_root_dir=tmp,
        )
        trainer.fit(module, datamodule=Random(resolution, channels, batch, flip=True))
        import wandb

        wandb.finish()
        if keep is not None:
            keep(module, run_dir)
    return paired.plain_seconds[:steps], paired.diffexp_seconds[:steps]


def bench_train(steps: int, skip_course: bool) -> list[dict]:
    """Images per second of diffexp's training against the plain loop, from the median step of each side."""
    rows = []
    for name, recipe in RECIPES.items():
        if skip_course and "course" in name:
            continue
        digits = "digits" in name
        n, images = (steps, 1797) if digits else (max(4, steps // 6), 1000)  # the real datasets' sizes
        variants = [("defaults (fused AdamW)", True)] + ([("same AdamW kernel", False)] if digits else [])
        for label, fused in variants:
            plain, ours = paired_steps(recipe, n, images, fused=fused)
            batch = recipe[-1]
            plain_ips, ours_ips = batch / float(np.median(plain)), batch / float(np.median(ours))
            rows.append(
                {
                    "benchmark": f"train step: {name}, {label}",
                    "diffexp": f"{ours_ips:.1f} img/s",
                    "reference": f"{plain_ips:.1f} img/s (plain loop)",
                    "ratio": round(ours_ips / plain_ips, 3),
                    "target": ">= 0.95",
                    "steps": n,
                    "ms_per_step": {
                        "plain": [round(1000 * s, 1) for s in plain],
                        "diffexp": [round(1000 * s, 1) for s in ours],
                    },
                }
            )
    return rows


def digits_size(size: str) -> tuple[tuple, int]:
    """A digits size as `diffexp-train experiment=digits_best_<size>` composes it: the RECIPES tuple, its images."""
    from hydra import compose, initialize_config_dir

    from diffexp.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment=digits_best_{size}"])
    m = cfg.model
    recipe = (cfg.data.resolution, cfg.data.channels, list(m.block_out_channels), list(m.attention_levels))
    images = cfg.budget.images or cfg.trainer.max_steps * cfg.data.batch_size  # no budget: the trainer's steps
    return (*recipe, m.layers_per_block, cfg.data.batch_size), images


def bench_posthoc(steps: int) -> list[dict]:
    """What post-hoc EMA costs a run of each digits size: its two profiles (each EMA's steps paired against the
    plain loop, the shared yardstick) plus its snapshot writes, timed apart and spread over the steps between two
    snapshots; the bytes of a snapshot and of a run's snapshots at the size's budget."""
    from omegaconf import OmegaConf

    from diffexp.config import CONF_DIR
    from diffexp.snapshots import write_snapshot

    shipped = OmegaConf.load(Path(CONF_DIR) / "ema" / "posthoc.yaml")  # ema.snapshots a run, unless snapshot_every
    rows = []
    for size in ("tiny", "small", "base"):
        recipe, images = digits_size(size)
        batch, ratios, ours_s, writes, sizes = recipe[-1], {}, {}, [], []
        n = steps if size == "tiny" else max(10, steps // 3)  # the larger UNets' steps are slow on CPU

        def time_writes(module, run_dir, writes=writes, sizes=sizes) -> None:  # this size's lists
            for i in range(5):
                start = time.perf_counter()
                path = write_snapshot(run_dir / "ema", 10_000 + i, module.ema)
                writes.append(time.perf_counter() - start)
                sizes.append(path.stat().st_size)

        for ema in ("power", "posthoc"):
            plain, ours = paired_steps(recipe, n, 1797, ema=ema, keep=time_writes if ema == "posthoc" else None)
            ours_s[ema] = float(np.median(ours))
            ratios[ema] = float(np.median(plain)) / ours_s[ema]
        run_steps = images // batch
        between = shipped.snapshot_every / batch if shipped.snapshot_every else run_steps / shipped.snapshots
        snapshots = -(-run_steps // int(between))  # every `between` steps, the last step included
        write_s = float(np.median(writes))
        # each side against its own plain-loop steps, plus the writes spread over their steps
        cost = (ratios["power"] / ratios["posthoc"]) * (1 + write_s / between / ours_s["posthoc"]) - 1
        mb = sizes[0] / 1e6
        rows.append(
            {
                "benchmark": f"ema=posthoc on {size} (batch {batch}, {images // 1000}k images, a snapshot every "
                f"{between:g} steps), against ema=power",
                "diffexp": f"{mb:.1f} MB and {1000 * write_s:.0f} ms a snapshot; {snapshots} a run, "
                f"{snapshots * mb:.0f} MB",
                "reference": f"{100 * cost:+.1f}% a step, {cost * run_steps * ours_s['power']:+.0f} s a run",
                "ratio": round(ratios["posthoc"] / ratios["power"], 3),
                "target": "<= +5% a step",
                "steps": n,
            }
        )
    return rows


def butterfly_like(folder: Path, n: int = 1000) -> Path:
    """A local dataset of the butterflies' schema: an `image` column of RGB PIL images of varied sizes."""
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(
            rng.integers(0, 255, (int(rng.integers(200, 320)), int(rng.integers(200, 320)), 3), dtype=np.uint8)
        )
        for _ in range(n)
    ]
    ds = datasets.Dataset.from_dict({"image": images}, features=datasets.Features({"image": datasets.Image()}))
    ds.save_to_disk(str(folder))
    return folder


def bench_data() -> list[dict]:
    """One epoch of batches at 32 px: cached uint8 tensors vs the course's per-item PIL transforms."""
    import datasets
    from PIL import Image

    from diffexp.data import HubDataModule

    with tempfile.TemporaryDirectory() as tmp:
        folder = butterfly_like(Path(tmp) / "butterflies")
        dm = HubDataModule(name=str(folder), resolution=32, channels=3, batch_size=64, flip=True)
        start = time.perf_counter()
        dm.prepare()
        first_decode = time.perf_counter() - start
        dm2 = HubDataModule(name=str(folder), resolution=32, channels=3, batch_size=64, flip=True)
        start = time.perf_counter()
        dm2.prepare()
        cached_load = time.perf_counter() - start
        start = time.perf_counter()
        for batch in dm2.train_dataloader():
            dm2.on_after_batch_transfer(batch, 0)
        ours = time.perf_counter() - start

        ds = datasets.load_from_disk(str(folder))

        def course_transform(examples):  # Resize((32, 32)), RandomHorizontalFlip, ToTensor, Normalize([0.5], [0.5])
            out = []
            for img in examples["image"]:
                img = img.convert("RGB").resize((32, 32), Image.BILINEAR)
                if np.random.rand() < 0.5:
                    img = img.transpose(Image.FLIP_LEFT_RIGHT)
                x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
                out.append((x - 0.5) / 0.5)
            return {"images": out}

        ds.set_transform(course_transform)
        loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
        start = time.perf_counter()
        for _ in loader:
            pass
        course = time.perf_counter() - start
    return [
        {
            "benchmark": "data: one epoch, 1000 RGB images at 32px",
            "diffexp": f"{ours * 1e3:.1f} ms",
            "reference": f"{course * 1e3:.1f} ms (per-item PIL transforms)",
            "ratio": round(course / ours, 1),
            "target": ">= 10x less time",
        },
        {
            "benchmark": "data: decode once (first run) / from cache (second run)",
            "diffexp": f"{first_decode:.2f} s / {cached_load:.2f} s",
            "reference": "",
            "ratio": "",
            "target": "",
        },
    ]


def bench_sampling(n: int = 64, ddpm_steps: int = 100) -> list[dict]:
    """Images per second of each sampler at its default steps; our DDPM loop vs DDPMPipeline.__call__."""
    from diffusers import DDPMPipeline
    from hydra import compose, initialize_config_dir

    from diffexp.config import CONF_DIR
    from diffexp.samplers import Sampler, seeded_noise

    torch.manual_seed(0)
    unet = build_unet(16, 1, [16, 32, 64], [False, False, True], 2, norm_num_groups=8).eval()
    scheduler = ddpm_scheduler("squaredcos_cap_v2")
    Sampler("ddim", 5)(unet, scheduler, seeded_noise(n, 1, 16, 0)[0], progress=False)  # warm-up: allocations, caches
    rows = []
    for name in ("ddpm", "ddim", "dpm_solver", "dpm_solver_sde", "euler", "unipc"):
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            steps = compose(config_name="sample", overrides=[f"sampler={name}", "run=x"]).sampler.steps
        steps = ddpm_steps if name == "ddpm" else steps
        noise = seeded_noise(n, 1, 16, 0)[0]
        start = time.perf_counter()
        Sampler(name, steps)(unet, scheduler, noise, progress=False)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "benchmark": f"sampling: {name}, {steps} steps (NFE {steps}), {n} images",
                "diffexp": f"{n / seconds:.1f} img/s",
                "reference": "",
                "ratio": "",
                "target": "",
            }
        )
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    pipe(batch_size=n, num_inference_steps=ddpm_steps, output_type="np")
    theirs = n / (time.perf_counter() - start)
    ours = float(rows[0]["diffexp"].split()[0])
    rows[0].update(reference=f"{theirs:.1f} img/s (DDPMPipeline.__call__)", ratio=round(ours / theirs, 3))
    return rows


def bench_make_train() -> list[dict]:
    """The default `make train` as a user runs it: wall time and peak resident memory of the process."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(sys.executable).parent / "diffexp-train"
        start = time.perf_counter()
        out = subprocess.run([str(exe)], cwd=tmp, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        metrics = (
            json.loads(next(Path(tmp).glob("outputs/*/*/metrics.json")).read_text()) if out.returncode == 0 else {}
        )
    if out.returncode != 0:
        raise SystemExit(f"make train failed:\n{out.stderr[-2000:]}")
    history = metrics.get("eval_history", [])
    return [
        {
            "benchmark": "make train: wall time (default recipe, 2 CPU cores)",
            "diffexp": f"{wall:.0f} s",
            "reference": "",
            "ratio": "",
            "target": "<= 300 s",
        },
        {
            "benchmark": "make train: peak resident memory",
            "diffexp": f"{peak_mb:.0f} MiB",
            "reference": "",
            "ratio": "",
            "target": "<= 2048 MiB",
        },
        {
            "benchmark": "make train: training time / steps / final FID",
            "diffexp": f"{metrics.get('train_seconds')} s / {metrics.get('steps')} / {history[-1]['fid']:.2f}"
            if history
            else "",
            "reference": "",
            "ratio": "",
            "target": "",
        },
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="train,posthoc,data,sampling,make_train")
    parser.add_argument("--steps", type=int, default=60, help="timed steps of the digits training benchmark")
    parser.add_argument("--skip-course", action="store_true", help="skip the 18.5M course model (slow on CPU)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    pl.seed_everything(0, verbose=False)
    only = args.only.split(",")
    rows = []
    if "train" in only:
        rows += bench_train(args.steps, args.skip_course)
    if "posthoc" in only:
        rows += bench_posthoc(args.steps)
    if "data" in only:
        rows += bench_data()
    if "sampling" in only:
        rows += bench_sampling()
    if "make_train" in only:
        rows += bench_make_train()
    machine = f"{platform.processor() or platform.machine()}, {THREADS} threads, torch {torch.__version__}"
    print(f"\n## {datetime.now():%Y-%m-%d %H:%M} — {machine}\n")
    cols = ["benchmark", "diffexp", "reference", "ratio", "target"]
    print("| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    out = HERE / "results" / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
