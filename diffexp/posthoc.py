"""Post-hoc EMA (`ema=posthoc`): choose the EMA width after training (EDM2, Karras et al. 2024, section 3).

Two power-function EMAs (`diffexp.ema.PowerEMA`, widths `sigma_rels`, EDM2's 0.05 and 0.10) are stepped after every
optimiser step, and the `Snapshots` callback writes both into `RUN/ema/step_NNNNNN.safetensors` (float32): `snapshots`
times a run, evenly spread (16 by default, whatever the run's length), or every `snapshot_every` images seen where a
config sets it (runs saved before `snapshots` existed), and at the last step. The average of any other width at
step t is a weighted sum of the snapshots up to t: the weights solve EDM2's least squares between averaging profiles
(ema-pytorch's `solve_weights`, Algorithm 3). The discrete EMA of `PowerEMA` gives step i exactly the weight the
continuous profile t ** gamma has over [i - 1, i], so the only error is the least squares' residual, which shrinks as
the snapshots get denser. Each reconstruction computes that residual as its profile error (`diffexp.profiles`), which
every table, JSON and card shows beside the width; a width whose error is above `max_profile_error` (10%) is refused,
and in-training evaluation skips it.

ema-pytorch's own `PostHocEMA` is not used: its snapshots are float16 pickles and its `KarrasEMA` updates only
every 100 steps by default.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch

from diffexp.ema import PowerEMA, SwapWeights, check_sigma_rel
from diffexp.errors import ConfigError
from diffexp.files import write_atomic
from diffexp.profiles import MAX_PROFILE_ERROR, check_width, solve

SNAPSHOT = re.compile(r"step_(\d+)\.safetensors")
SELECTION_SEED_OFFSET = 1000  # in-training evaluation chooses the width on seed (eval seed + this), reports on another


def check_posthoc(ema) -> None:
    """The group's settings, one line each, before any work starts."""
    widths = [float(w) for w in ema.sigma_rels]
    if len(widths) < 2 or len(set(widths)) != len(widths):
        raise ConfigError(f"ema.sigma_rels={widths}: track at least two distinct widths, e.g. [0.05,0.10] (EDM2's)")
    for setting, values in (("ema.sigma_rels", widths), ("ema.eval_sigma_rel", ema.eval_sigma_rel)):
        for w in values:
            check_sigma_rel(w, setting)
    check_sigma_rel(ema.sigma_rel)
    if not ema.eval_sigma_rel:
        raise ConfigError("ema.eval_sigma_rel=[]: give the widths in-training evaluation chooses from, e.g. [0.05,0.1]")
    every, count = ema.get("snapshot_every"), ema.get("snapshots")
    if every is not None and every < 1:
        raise ConfigError(f"ema.snapshot_every={every}: snapshot every N >= 1 images seen (e.g. 8192), or null")
    if every is None and (count is None or count < 1):
        raise ConfigError(f"ema.snapshots={count}: keep at least 1 snapshot a run (e.g. 16), or set ema.snapshot_every")
    most = ema.get("max_profile_error", MAX_PROFILE_ERROR)
    if not 0 < most <= 1:
        raise ConfigError(f"ema.max_profile_error={most}: a share in (0, 1], e.g. 0.1 (10%)")


class PostHocEMA(SwapWeights):
    """Two tracked power profiles with PowerEMA's interface; `copy_to` swaps in the reconstruction at `width`.

    `width` starts at `sigma_rel` (previews, and the export when nothing chose another) and becomes the width the
    in-training evaluation chose; it is part of the checkpointed state, so a resumed run previews as the original.
    """

    def __init__(
        self,
        parameters: Iterable[torch.nn.Parameter],
        sigma_rels: Iterable[float] = (0.05, 0.10),
        snapshot_every: int | None = None,
        sigma_rel: float = 0.10,
        eval_sigma_rel: Iterable[float] = (0.05, 0.10, 0.15),
        snapshots: int | None = 16,
        max_profile_error: float = MAX_PROFILE_ERROR,
    ) -> None:
        parameters = list(parameters)
        self.profiles = [PowerEMA(parameters, float(s)) for s in sigma_rels]
        self.sigma_rels = [p.sigma_rel for p in self.profiles]
        self.snapshot_every = None if snapshot_every is None else int(snapshot_every)  # images; set: wins
        self.snapshots, self.max_profile_error = snapshots, float(max_profile_error)
        self.sigma_rel = float(sigma_rel)
        self.errors: dict[float, float] = {}  # each reconstructed width's profile error at the current step
        self.eval_sigma_rel = [float(w) for w in eval_sigma_rel]
        self.width = self.sigma_rel
        self.folder: Path | None = None  # RUN/ema, set by the Snapshots callback
        self.names = [str(i) for i in range(len(parameters))]  # parameter names, set by the callback
        self._cache: dict[float, list[torch.Tensor]] = {}

    @property
    def optimization_step(self) -> int:
        return self.profiles[0].optimization_step

    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        parameters = list(parameters)
        for profile in self.profiles:
            profile.step(parameters)
        self._cache.clear()
        self.errors.clear()

    def to(self, device: torch.device | str) -> PostHocEMA:
        for profile in self.profiles:
            profile.to(device)
        return self

    def reconstruct(self, widths: Iterable[float]) -> dict[float, list[torch.Tensor]]:
        """The averages of `widths` at the current step, from earlier snapshots and the tracked profiles (cached
        until the next step; one pass over the snapshot files for all widths)."""
        missing = [w for w in widths if w not in self._cache]
        if missing:
            t = self.optimization_step
            if t == 0:  # before the first step every profile is the initial weights
                return {w: self.profiles[0].shadow_params for w in widths}
            earlier = [(s, p) for s, p in list_snapshots(self.folder) if s < t] if self.folder else []
            current = (
                t,
                {
                    f"{k}/{n}": v
                    for k, prof in enumerate(self.profiles)
                    for n, v in zip(self.names, prof.shadow_params, strict=True)
                },
            )
            found, errors = reconstruct([*earlier, current], self.sigma_rels, missing, t)
            self.errors.update(errors)
            device = self.profiles[0].shadow_params[0].device
            for w, tensors in found.items():
                self._cache[w] = [tensors[n].to(device) for n in self.names]
        return {w: self._cache[w] for w in widths}

    @contextmanager
    def using(self, width: float) -> Iterator[None]:
        """Samples inside use the reconstruction at `width`."""
        kept, self.width = self.width, float(width)
        try:
            yield
        finally:
            self.width = kept

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        average = self.reconstruct([self.width])[self.width]
        for value, p in zip(average, parameters, strict=True):
            p.copy_(value)

    def state_dict(self) -> dict:
        return {"kind": "posthoc", "width": self.width, "profiles": [p.state_dict() for p in self.profiles]}

    def load_state_dict(self, state: dict) -> None:
        saved = [p["sigma_rel"] for p in state.get("profiles", [])]
        if state.get("kind") != "posthoc" or saved != self.sigma_rels:
            raise ConfigError(
                f"the checkpoint's EMA ({state.get('kind', 'an older EMA')}, widths {saved}) is not this run's "
                f"(posthoc, sigma_rels {self.sigma_rels}): resume with the run's own config"
            )
        for profile, s in zip(self.profiles, state["profiles"], strict=True):
            profile.load_state_dict(s)
        self.width = float(state["width"])
        self._cache.clear()


def snapshot_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step_{step:06d}.safetensors"


def list_snapshots(folder: Path | None) -> list[tuple[int, Path]]:
    """`(step, file)` of the snapshots in `folder`, by step (half-written temporary files are not listed)."""
    if folder is None or not Path(folder).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := SNAPSHOT.fullmatch(p.name))]
    return sorted(found)


def write_snapshot(folder: Path, step: int, ema: PostHocEMA) -> Path:
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


class Snapshots(pl.Callback):
    """Writes the profiles of `ema` into `folder` when `due` and at the last step (rank 0).

    On a resume the snapshots after the checkpoint's step are deleted (training writes them again, identically),
    and one due at that step but missing (killed between the checkpoint and the snapshot) is written from the
    restored state.
    """

    def __init__(self, folder: Path, ema: PostHocEMA, batch_size: int) -> None:
        self.folder, self.ema, self.batch_size = Path(folder), ema, batch_size

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.ema.folder, self.ema.names = self.folder, [n for n, _ in pl_module.unet.named_parameters()]

    def due(self, trainer, step: int) -> bool:
        """Every `snapshot_every` images where set, else `snapshots` times a run, evenly (the last at its end)."""
        if self.ema.snapshot_every is None:
            count, total = self.ema.snapshots, max(1, trainer.max_steps)
            return 0 < step and (step * count) // total > ((step - 1) * count) // total
        per_step, every = self.batch_size * trainer.world_size, self.ema.snapshot_every
        return step > 0 and (step * per_step) // every > ((step - 1) * per_step) // every

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        step = trainer.global_step
        for s, path in list_snapshots(self.folder):
            if s > step:
                path.unlink()
        for stray in self.folder.glob(".step_*.tmp*"):
            stray.unlink()
        if self.due(trainer, step) and not snapshot_path(self.folder, step).exists():
            write_snapshot(self.folder, step, self.ema)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and (self.due(trainer, step) or step == trainer.max_steps):
            write_snapshot(self.folder, step, self.ema)

    def on_train_end(self, trainer, pl_module) -> None:
        step = trainer.global_step
        if trainer.is_global_zero and step > 0 and not snapshot_path(self.folder, step).exists():
            write_snapshot(self.folder, step, self.ema)  # a run stopped early (a failing loss) still ends with one


def choose_and_score(evaluate, pl_module, seeds: int, picture: bool, monitor: str, higher: bool) -> dict:
    """In-training evaluation of a post-hoc run: each of `ema.eval_sigma_rel` scored on the selection seed, the best
    chosen (and kept as the width in use), then scored on the reporting seed(s), as is the fixed `ema.sigma_rel`.

    The chosen width's figure on the selection seed is recorded too (`<monitor>_selection`): the minimum over
    noisy figures is biased low, which is why the reported figure comes from other seeds. Widths whose profile error
    is above `ema.max_profile_error` at this step are skipped (`ema_skipped`: width -> error); where every one is,
    the fixed width is used.
    """
    ema: PostHocEMA = pl_module.ema
    selection_seed = evaluate.seed + SELECTION_SEED_OFFSET
    ema.reconstruct([*ema.eval_sigma_rel, ema.sigma_rel])  # one pass over the snapshots for every width
    usable = [w for w in ema.eval_sigma_rel if ema.errors.get(w, 0.0) <= ema.max_profile_error] or [ema.sigma_rel]
    selection = {}
    for width in usable:
        with ema.using(width):
            selection[width] = evaluate.score(pl_module, 1, False, first=selection_seed)[monitor]
    chosen = (max if higher else min)(selection, key=lambda w: selection[w])
    ema.width = chosen
    figures = evaluate.score(pl_module, seeds, picture)
    if chosen == ema.sigma_rel:
        fixed = figures[monitor]
    else:
        with ema.using(ema.sigma_rel):
            fixed = evaluate.score(pl_module, seeds, False)[monitor]
    return figures | {
        "ema_sigma_rel": chosen,
        "ema_profile_error": ema.errors.get(chosen, 0.0),
        "ema_skipped": {f"{w:g}": ema.errors[w] for w in ema.eval_sigma_rel if w not in usable},
        f"{monitor}_selection": selection[chosen],
        "ema_selection": {f"{w:g}": v for w, v in selection.items()},
        "selection_seed": selection_seed,
        "ema_fixed_sigma_rel": ema.sigma_rel,
        "ema_fixed_profile_error": ema.errors.get(ema.sigma_rel, 0.0),
        f"{monitor}_fixed": fixed,
    }
