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

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
import torch

from diffexp.ema import PowerEMA, SwapWeights, check_sigma_rel
from diffexp.errors import ConfigError
from diffexp.profiles import MAX_PROFILE_ERROR
from diffexp.snapshots import list_snapshots, reconstruct, snapshot_path, write_snapshot

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
