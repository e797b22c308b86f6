"""The training benchmark runs diffexp's real Trainer beside the plain loop (`make bench` would rot otherwise)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from run import RECIPES, paired_steps  # noqa: E402


def test_paired_training_benchmark_times_both_sides_step_by_step():
    resolution, channels, _, _, _, _ = RECIPES["digits default (tiny, 16px)"]
    small = (resolution, channels, [16, 32], [False, True], 1, 8)
    plain, ours = paired_steps(small, steps=3, images=32, warmup=1)
    assert len(plain) == len(ours) == 3
    assert all(0 < s < 10 for s in plain + ours)
