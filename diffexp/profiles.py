"""How well a post-hoc EMA width is built from the stored snapshots: its profile error, one formula everywhere.

A power-function EMA at step T averages the training weights with a profile p(t) ~ t ** gamma over [0, T]; a
snapshot i holds the average of profile p_i up to its step. The reconstruction of width r is sum_i w_i * snapshot_i,
with weights w from EDM2's least squares between profiles (ema-pytorch's `solve_weights`, plus the constraint
sum(w) = 1). Its profile error is

    ||p_r - sum_i w_i p_i|| / ||p_r||    (L2 over the training steps [0, T])

computed exactly from the profiles' inner products (ema-pytorch's `p_dot_p`): 0 for a tracked width at a snapshot
step, growing for widths far from the tracked ones and for sparse snapshots. It depends only on the snapshot steps,
the tracked widths and the width asked for, so it can be computed for any schedule without the weights.
"""

from __future__ import annotations

import torch

from diffexp.ema import sigma_rel_to_gamma
from diffexp.errors import ConfigError

MAX_PROFILE_ERROR = 0.10  # `ema.max_profile_error`'s default: a width built worse than this is refused
MOST_SNAPSHOTS = 4096  # the largest snapshot count `snapshots_needed` considers


def solve(steps: list[int], sigma_rels: list[float], widths: list[float], step: int) -> tuple[torch.Tensor, list]:
    """The reconstruction weights `[len(steps) x len(sigma_rels), len(widths)]` (snapshot-major, as
    `diffexp.snapshots.reconstruct` sums them) and each width's profile error (see the module docstring)."""
    from ema_pytorch.post_hoc_ema import p_dot_p, solve_weights

    gammas = [sigma_rel_to_gamma(s) for s in sigma_rels]
    t_i = torch.tensor([float(s) for s in steps for _ in gammas], dtype=torch.float64).reshape(-1, 1)
    g_i = torch.tensor([g for _ in steps for g in gammas], dtype=torch.float64).reshape(-1, 1)
    t_r = torch.full((1, len(widths)), float(step), dtype=torch.float64)
    g_r = torch.tensor([[sigma_rel_to_gamma(w) for w in widths]], dtype=torch.float64)
    weights = solve_weights(t_i, g_i, t_r, g_r)
    # Every profile has mass 1, so the reconstruction must too: least squares alone leaves the weights' sum off 1 by
    # ~1e-3, which scales the whole parameter vector (an error 3x the gap between 0.05 and 0.07 in a 40-step run).
    # The Lagrange correction along A^-1 1 is the least squares under the constraint sum(w) = 1.
    gram = p_dot_p(t_i, g_i, t_i.T, g_i.T)
    ones = torch.linalg.solve(gram, torch.ones(len(t_i), 1, dtype=torch.float64))
    weights = weights + ones * (1 - weights.sum(0, keepdim=True)) / ones.sum()
    cross = p_dot_p(t_i, g_i, t_r, g_r)  # <p_i, p_r>
    norm = p_dot_p(t_r, g_r, t_r, g_r).flatten()  # ||p_r||^2
    residual = norm - 2 * (weights * cross).sum(0) + (weights * (gram @ weights)).sum(0)
    errors = (residual.clamp(min=0) / norm).sqrt()
    return weights, [float(e) for e in errors]


def profile_errors(steps: list[int], sigma_rels: list[float], widths: list[float], step: int) -> dict[float, float]:
    """Each width's profile error at `step` from snapshots at `steps` of the tracked `sigma_rels`."""
    widths = [float(w) for w in widths]
    return dict(zip(widths, solve(steps, sigma_rels, widths, step)[1], strict=True))


def even_steps(count: int, step: int) -> list[int]:
    """`count` snapshot steps spread evenly over a run of `step` steps, the last one at `step` (`ema.snapshots`)."""
    return sorted({max(1, round(step * j / count)) for j in range(1, count + 1)})


def snapshots_needed(sigma_rels: list[float], width: float, step: int, most: float = MAX_PROFILE_ERROR) -> int | None:
    """The fewest evenly spread snapshots that build `width` at `step` within profile error `most` (None where no
    count up to `MOST_SNAPSHOTS`, or one a step, does)."""

    def good(k: int) -> bool:
        return profile_errors(even_steps(k, step), sigma_rels, [width], step)[float(width)] <= most

    top = min(MOST_SNAPSHOTS, step)
    hi = 2
    while hi < top and not good(hi):
        hi *= 2
    hi = min(hi, top)
    if not good(hi):
        return None
    lo = hi // 2  # good(lo) is false (or lo < 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if good(mid) else (mid, hi)
    return hi


def check_width(
    width: float, error: float, count: int, sigma_rels: list[float], step: int, most: float, setting: str
) -> None:
    """Refuses, in one line, a width whose reconstruction from `count` snapshots has a profile error above `most`,
    saying how many snapshots would build it."""
    if error <= most:
        return
    needed = snapshots_needed(sigma_rels, width, step, most)
    more = f"about {needed} evenly spread snapshots would build it" if needed else "no snapshot count would build it"
    raise ConfigError(
        f"{setting}={width:g}: its profile error is {error:.1%} from {count} snapshots, above "
        f"ema.max_profile_error={most:g}; {more} (train with ema.snapshots={needed or 'more'}), or choose a width "
        f"nearer the tracked {', '.join(f'{s:g}' for s in sigma_rels)}"
    )
