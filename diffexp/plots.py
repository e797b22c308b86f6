"""Every picture of a run (the report's are in `diffexp/report/plots.py`): sample grids, the forward noising of
training images across t (`RUN/plots/noising.png`) and a sampler's denoising trajectory, as the course draws them;
samples beside their nearest training images; the loss curve and the noise schedule (`RUN/plots/`); FID against
network evaluations or the post-hoc EMA width (`RUN/eval/`).

Image pictures are drawn with PIL, not matplotlib: a grid of 28 matplotlib axes costs ~7 s on a busy 2-core
machine, and every run draws the noising picture; this costs milliseconds. Curves (one axes each) use matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from diffexp.schedule import signal_noise_scales

NOISING_T = (0, 50, 100, 250, 500, 750, 999)  # timesteps shown (scaled to the schedule's length)


def tile(image: torch.Tensor, size: int):
    """One image (`[C, H, W]`, uint8, or float in [-1, 1]) as an RGB PIL tile of `size` px, nearest-neighbour."""
    from PIL import Image

    if image.dtype != torch.uint8:
        image = image.detach().float().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    img = image.cpu()
    picture = Image.fromarray(img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy())
    return picture.convert("RGB").resize((size, size), Image.NEAREST)


def labelled_grid(
    rows: list[list[torch.Tensor]],
    column_labels: list[str],
    row_labels: list[str],
    title: str,
    size: int = 64,
):
    """A PIL picture of images in [-1, 1] (`[C, H, W]`, grey or RGB), each enlarged to `size` px with
    nearest-neighbour, under a title and column labels, with row labels on the left."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=11)
    left, top, gap, line = 8 + 7 * max(len(r) for r in row_labels), 40, 4, 13
    width = left + len(column_labels) * (size + gap) + gap
    height = top + len(rows) * (size + gap) + gap
    canvas = Image.new("RGB", (max(width, 7 * len(title) + 16), height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((8, 4), title, fill="black", font=font)
    for c, label in enumerate(column_labels):
        for k, part in enumerate(label.split("\n")[:2]):
            draw.text((left + c * (size + gap), 4 + line * (k + 1)), part, fill="black", font=font)
    for r, images in enumerate(rows):
        y = top + r * (size + gap)
        draw.text((4, y + size // 2 - 6), row_labels[r], fill="black", font=font)
        for c, image in enumerate(images):
            canvas.paste(tile(image, size), (left + c * (size + gap), y))
    return canvas


def save_png(picture, path: Path, info: dict | None = None) -> Path:
    """Saves `picture` with `info` as PNG text chunks."""
    from PIL.PngImagePlugin import PngInfo

    text = PngInfo()
    for key, value in (info or {}).items():
        text.add_text(str(key), str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, pnginfo=text)
    return path


def schedule_name(scheduler) -> str:
    """`cosine`'s beta schedule name, or `flow (shift S)`."""
    if not hasattr(scheduler, "alphas_cumprod"):
        return f"flow (shift {float(scheduler.config.shift):g})"
    return str(scheduler.config.beta_schedule)


def plot_noising(scheduler: DDPMScheduler, images: torch.Tensor, path: Path, seed: int = 0) -> Path:
    """`images` (uint8 `[N, C, H, W]`, a few training images) noised to x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
    with the schedule's `add_noise` at timesteps across the run; one row per image, its own seeded noise (the
    training RNG is left alone)."""
    total = scheduler.config.num_train_timesteps
    ts = sorted({min(total - 1, round(t * (total - 1) / 999)) for t in NOISING_T})
    x0 = images.float().div(127.5).sub(1).cpu()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    signal, scale = (s.float() for s in signal_noise_scales(scheduler))
    noisy = [signal[t] * x0 + scale[t] * noise for t in ts]  # add_noise's x_t; flow's (1 - t) x0 + t noise
    picture = labelled_grid(
        [[x[i] for x in noisy] for i in range(len(x0))],
        [f"t={t}\nsignal {signal[t]:.2f}" for t in ts],
        [f"#{i}" for i in range(len(x0))],
        f"forward noising x_t of training images, {schedule_name(scheduler)} schedule",
    )
    return save_png(picture, path, {"what": "forward noising", "timesteps": ts})


def pick_steps(count: int, shown: int = 6) -> list[int]:
    """`shown` step indices spread over `count` steps, the first and the last included."""
    return sorted({round(i * (count - 1) / max(1, shown - 1)) for i in range(min(shown, count))})


def plot_trajectory(
    records: list[tuple[int, torch.Tensor, torch.Tensor]],
    path: Path,
    title: str,
    images: int = 4,
    shown: int = 6,
    info: dict | None = None,
    final: torch.Tensor | None = None,
) -> Path:
    """The denoising trajectory: for each of the first `images` samples, a row of x_t and a row of the predicted
    x0 at `shown` of the sampler's steps (`records`: one `(t, x_t, x0)` per step, as `samplers.sample` records),
    then the sampler's `final` output (uint8 `[N, C, H, W]`) where given."""
    cols = [records[i] for i in pick_steps(len(records), shown)]
    n = min(images, len(records[0][1]))
    rows, labels = [], []
    for k in range(n):
        out = [final[k].float().div(127.5).sub(1)] if final is not None else []
        rows += [[x_t[k] for _, x_t, _ in cols] + out, [x0[k] for _, _, x0 in cols] + out]
        labels += [f"#{k} x_t", f"#{k} pred x0"]
    heads = [f"t={int(t)}" for t, _, _ in cols] + (["output"] if final is not None else [])
    picture = labelled_grid(rows, heads, labels, title)
    return save_png(picture, path, info)


def plot_loss_curve(steps: list[int], values: list[float], path: Path) -> None:
    """The loss per step and its running mean, log scale (`RUN/plots/loss.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    if values:
        ax.plot(steps, values, alpha=0.3, label="per step")
        k = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1 :], smooth, label=f"mean of {k}")
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def image_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2):
    """uint8 `[N, C, H, W]` -> one PIL image, `nrow` images a row."""
    from PIL import Image

    n, c, h, w = images.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i, img in enumerate(images.cpu().numpy()):
        r, col = divmod(i, nrow)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = (
            img.transpose(1, 2, 0)
        )
    return Image.fromarray(grid[..., 0] if c == 1 else grid)


def save_grid(
    images: torch.Tensor,
    path: Path,
    nrow: int | None = None,
    scale: int = 1,
    pad: int = 2,
    info: dict | None = None,
) -> Path:
    """Saves a PNG grid; `scale` enlarges small images with nearest-neighbour so pixels stay visible; `info` goes
    into the PNG's text chunks (e.g. step, sampler, steps: what made the grid)."""
    from PIL import Image

    grid = image_grid(images, nrow, pad)
    if scale > 1:
        grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    return save_png(grid, path, info)


def plot_schedule(scheduler: DDPMScheduler, path: Path) -> None:
    """Signal and noise scales against t, as the course plots them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    signal, noise = signal_noise_scales(scheduler)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    flow = not hasattr(scheduler, "alphas_cumprod")
    ax.plot(signal.numpy(), label="1 - t (signal)" if flow else r"$\sqrt{\bar\alpha_t}$ (signal)")
    ax.plot(noise.numpy(), label="t (noise)" if flow else r"$\sqrt{1-\bar\alpha_t}$ (noise)")
    ax.set_xlabel("timestep (t x 1000 for flow)" if flow else "timestep t")
    ax.set_title(f"{schedule_name(scheduler)}, {scheduler.config.num_train_timesteps} steps")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_nearest(
    samples: torch.Tensor,
    train: torch.Tensor,
    dist: torch.Tensor,
    index: torch.Tensor,
    threshold: float,
    path: Path,
    pairs: int = 16,
) -> Path:
    """The `pairs` samples nearest to a training image, each beside that image, with the distance; a red caption
    marks a sample under the memorisation threshold. Drawn with PIL (matplotlib's 32 axes took ~10 s on 2 busy
    cores, at every final evaluation)."""
    from PIL import Image, ImageDraw, ImageFont

    order = dist.argsort()[: min(pairs, len(dist))].tolist()
    cols, size, gap, top, caption = 4, 64, 4, 22, 14
    rows = -(-len(order) // cols)
    pair_w = 2 * size + gap + 12
    canvas = Image.new("RGB", (max(cols * pair_w + 8, 640), top + rows * (size + caption + gap) + 4), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=11)
    title = f"samples (left) beside their nearest training image; red: below the copy threshold {threshold:.2f}"
    draw.text((6, 4), title, fill="black", font=font)
    for k, i in enumerate(order):
        x, y = 6 + (k % cols) * pair_w, top + (k // cols) * (size + caption + gap)
        copied = float(dist[i]) < threshold
        draw.text((x, y), f"d={float(dist[i]):.2f}", fill="red" if copied else "black", font=font)
        draw.text((x + size + gap, y), "train", fill="black", font=font)
        canvas.paste(tile(samples[i], size), (x, y + caption))
        canvas.paste(tile(train[index[i]], size), (x + size + gap, y + caption))
    return save_png(canvas, path)


def plot_widths(rows: list[dict], path: Path, title: str) -> None:
    """FID against the post-hoc EMA width, with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["ema_sigma_rel"])
    x = [r["ema_sigma_rel"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(x, [r["fid"] for r in rows], marker="o")
    if all(r.get("fid_lo") is not None for r in rows):
        ax.fill_between(x, [r["fid_lo"] for r in rows], [r["fid_hi"] for r in rows], alpha=0.2, label="95% interval")
        ax.legend()
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{v:g}" for v in x])
    ax.minorticks_off()
    ax.set_xlabel("EMA width sigma_rel (post-hoc reconstruction)")
    ax.set_ylabel("FID (lower is better)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_quality(rows: list[dict], path: Path, title: str) -> None:
    """FID against model calls (NFE), one line per sampler of the family; the family's reference (DDPM-1000 or
    flow Euler-1000: rows with `reference_sampler`) as a band over its FID interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(8, 3.8))
    rows = [r for r in rows if r.get("fid") is not None]  # eval=dinov2 refuses FD below its feature count
    for r in [r for r in rows if r.get("reference_sampler")]:
        label = f"reference: {r['sampler']}-{r['steps']}"
        if r.get("fid_lo") is not None:
            ax.axhspan(r["fid_lo"], r["fid_hi"], color="grey", alpha=0.2, label=f"{label} (95% CI)")
        ax.axhline(r["fid"], color="grey", linestyle="--", linewidth=1, label=None if r.get("fid_lo") else label)
    rows = [r for r in rows if not r.get("reference_sampler")]
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r["nfe"], r["fid"]) for r in rows if r["sampler"] == name)
        ax.plot(*zip(*mine, strict=True), marker="o", label=name)
    for name in dict.fromkeys(r["sampler"] for r in rows):
        mine = sorted((r["nfe"], r.get("fid_lo"), r.get("fid_hi")) for r in rows if r["sampler"] == name)
        if all(lo is not None for _, lo, _ in mine):
            ax.fill_between([m[0] for m in mine], [m[1] for m in mine], [m[2] for m in mine], alpha=0.15)
    ax.set_xscale("log")
    calls = sorted({r["nfe"] for r in rows if r["nfe"] == r["steps"]} or {r["nfe"] for r in rows})
    ax.set_xticks(calls, [str(c) for c in calls])  # the step counts asked for, as plain numbers
    ax.minorticks_off()
    ax.set_yscale("log")  # a sampler far off at few calls leaves the others readable
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())  # under a decade, matplotlib labels minor ticks
    ax.set_xlabel("model calls per image (NFE)")
    ax.set_ylabel("FID (lower is better, log scale)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))  # beside the lines, not over them
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
