"""Pictures of the diffusion process, as the course draws them: the forward noising of training images across t
(`RUN/plots/noising.png`, written when a run starts) and the denoising trajectory of a sampler, x_t beside the
predicted x0 at a few of its steps (`diffexp-sample run=RUN trajectory=true`).

Drawn with PIL, not matplotlib: a grid of 28 matplotlib axes costs ~7 s on a busy 2-core machine, and every run
draws the noising picture; this costs milliseconds. The training-loss curve (`RUN/plots/loss.png`, one axes, drawn
once at the end) uses matplotlib.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDPMScheduler

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


def plot_noising(scheduler: DDPMScheduler, images: torch.Tensor, path: Path, seed: int = 0) -> Path:
    """`images` (uint8 `[N, C, H, W]`, a few training images) noised to x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
    with the schedule's `add_noise` at timesteps across the run; one row per image, its own seeded noise (the
    training RNG is left alone)."""
    total = scheduler.config.num_train_timesteps
    ts = sorted({min(total - 1, round(t * (total - 1) / 999)) for t in NOISING_T})
    x0 = images.float().div(127.5).sub(1).cpu()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    noisy = [scheduler.add_noise(x0, noise, torch.full((len(x0),), t, dtype=torch.long)) for t in ts]
    signal = scheduler.alphas_cumprod.sqrt()
    picture = labelled_grid(
        [[x[i] for x in noisy] for i in range(len(x0))],
        [f"t={t}\nsignal {signal[t]:.2f}" for t in ts],
        [f"#{i}" for i in range(len(x0))],
        f"forward noising x_t of training images, {scheduler.config.beta_schedule} schedule",
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


def plot_losses(steps: list[int], values: list[float], path: Path) -> None:
    """The loss per step and its running mean, log scale (`RUN/plots/loss.png`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
