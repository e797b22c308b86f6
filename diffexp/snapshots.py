"""A post-hoc EMA run's snapshots on disk (`RUN/ema/step_NNNNNN.safetensors`) and the widths rebuilt from them:
any width's average at a snapshot step is a weighted sum of the snapshots up to it (EDM2's least squares,
`diffexp.profiles.solve`), refused where its profile error is above the run's `ema.max_profile_error`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from diffexp.ema import check_sigma_rel
from diffexp.errors import ConfigError
from diffexp.files import write_atomic
from diffexp.profiles import MAX_PROFILE_ERROR, check_width, solve

SNAPSHOT = re.compile(r"step_(\d+)\.safetensors")


def snapshot_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:06d}.safetensors"


def list_snapshots(folder: Path | None) -> list[tuple[int, Path]]:
    """`(step, file)` of the snapshots in `folder`, by step (half-written temporary files are not listed)."""
    if folder is None or not Path(folder).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := SNAPSHOT.fullmatch(p.name))]
    return sorted(found)


def write_snapshot(folder: Path, step: int, ema) -> Path:
    """Both profiles at `step` as one float32 safetensors file, written through a rename (a kill leaves no half
    file); keys `<profile index>/<parameter name>`, the widths and gammas in the metadata."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        f"{k}/{name}": v.detach().to("cpu", torch.float32).contiguous()
        for k, profile in enumerate(ema.profiles)
        for name, v in zip(ema.names, profile.shadow_params, strict=True)
    }
    meta = {
        "step": str(step),
        "sigma_rels": json.dumps(ema.sigma_rels),
        "gammas": json.dumps([p.gamma for p in ema.profiles]),
    }
    return write_atomic(snapshot_path(folder, step), lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def reconstruct(
    snapshots: list[tuple[int, Path | dict]], sigma_rels: list[float], widths: Iterable[float], step: int
) -> tuple[dict[float, dict[str, torch.Tensor]], dict[float, float]]:
    """The averages of `widths` at `step` (name -> float32 tensor) from `(step, file or tensors)` snapshots of the
    profiles `sigma_rels`, by EDM2's least squares (`diffexp.profiles.solve`), summed in float64; and each width's
    profile error."""
    from safetensors.torch import load_file

    widths = [float(w) for w in widths]
    weights, errors = solve([s for s, _ in snapshots], sigma_rels, widths, step)  # [snapshots x profiles, widths]
    sums: list[dict[str, torch.Tensor]] = [{} for _ in widths]
    for j, (_, source) in enumerate(snapshots):
        tensors = load_file(str(source)) if isinstance(source, Path) else source
        for key, value in tensors.items():
            index, name = key.split("/", 1)
            row = weights[j * len(sigma_rels) + int(index)].tolist()
            value = value.to("cpu", torch.float64)
            for weight, total in zip(row, sums, strict=True):
                if name in total:
                    total[name].add_(value, alpha=weight)
                else:
                    total[name] = value * weight
    averages = {w: {n: v.float() for n, v in total.items()} for w, total in zip(widths, sums, strict=True)}
    return averages, dict(zip(widths, errors, strict=True))


def profiles_of(folder: Path) -> list[float]:
    """The tracked widths recorded in a snapshot folder's files."""
    from safetensors import safe_open

    snapshots = list_snapshots(folder)
    with safe_open(str(snapshots[-1][1]), "pt") as f:
        return json.loads(f.metadata()["sigma_rels"])


def max_profile_error(run_dir: Path) -> float:
    """The run's `ema.max_profile_error` (saved in its `.hydra/config.yaml`); the default for runs saved before it."""
    from omegaconf import OmegaConf

    saved = Path(run_dir) / ".hydra" / "config.yaml"
    most = OmegaConf.select(OmegaConf.load(saved), "ema.max_profile_error") if saved.exists() else None
    return MAX_PROFILE_ERROR if most is None else float(most)


def width_weights(run_dir: Path, sigma_rel: float, setting: str = "ema_sigma_rel") -> tuple[dict, int, int, float]:
    """The run's average of width `sigma_rel` at its last snapshot (the final step of a finished run): the
    parameters by name, that step, the number of snapshot files used and the profile error; a width built worse
    than the run's `ema.max_profile_error` is refused in one line (`diffexp.profiles.check_width`)."""
    check_sigma_rel(sigma_rel, setting)
    folder = Path(run_dir) / "ema"
    snapshots = list_snapshots(folder)
    if not snapshots:
        raise ConfigError(
            f"{setting}={sigma_rel}: {folder} holds no EMA snapshots (only runs trained with ema=posthoc have them): "
            f"drop {setting}, or train with ema=posthoc"
        )
    step, sigma_rels = snapshots[-1][0], profiles_of(folder)
    error = solve([s for s, _ in snapshots], sigma_rels, [float(sigma_rel)], step)[1][0]
    check_width(float(sigma_rel), error, len(snapshots), sigma_rels, step, max_profile_error(run_dir), setting)
    averages, _ = reconstruct(snapshots, sigma_rels, [sigma_rel], step)
    return averages[float(sigma_rel)], step, len(snapshots), error


def load_width(unet: torch.nn.Module, run_dir: Path, sigma_rel: float, setting: str = "ema_sigma_rel") -> dict:
    """Puts the reconstruction at `sigma_rel` into `unet`; returns what it holds (width, step, snapshots and the
    profile error)."""
    weights, step, count, error = width_weights(run_dir, sigma_rel, setting)
    names = [n for n, _ in unet.named_parameters()]
    if sorted(names) != sorted(weights):
        raise ConfigError(f"{setting}: {Path(run_dir) / 'ema'} holds another model's parameters: point run= at its run")
    with torch.no_grad():
        for name, p in unet.named_parameters():
            p.copy_(weights[name])
    return {"ema_sigma_rel": float(sigma_rel), "step": step, "snapshots": count, "profile_error": error}


def checkpoint_average(state: dict, folder: Path, names: list[str]) -> list[torch.Tensor]:
    """The average in use (`width`) of a checkpoint's post-hoc EMA state, from it and the snapshots before it."""
    profiles = state["profiles"]
    t = int(profiles[0]["optimization_step"])
    if t == 0:
        return list(profiles[0]["shadow_params"])
    current = {f"{k}/{n}": v for k, p in enumerate(profiles) for n, v in zip(names, p["shadow_params"], strict=True)}
    earlier = [(s, p) for s, p in list_snapshots(folder) if s < t]
    sigma_rels = [p["sigma_rel"] for p in profiles]
    found = reconstruct([*earlier, (t, current)], sigma_rels, [state["width"]], t)[0][float(state["width"])]
    return [found[n] for n in names]
