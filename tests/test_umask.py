"""Everything diffexp writes follows the user's umask, as any other program's output would: the run folder (metrics,
losses, checkpoints, the pipeline's safetensors, post-hoc EMA snapshots), the report (built in a temporary folder)
and the reference-feature cache. Temporary files from mkstemp/mkdtemp and safetensors' files start at 600/700
whatever the umask; under 022 a colleague must be able to read them, under 077 nobody else may.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from fsspec.implementations.local import get_umask

from diffexp.compare import run as compare
from diffexp.features import load_feature_net
from diffexp.heldout import Reference
from diffexp.train import run as train
from helpers import TINY, compose_train


def modes(root: Path) -> dict[Path, int]:
    return {p: stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_outputs_follow_the_umask(mask, tmp_path):
    # Lightning writes checkpoints through fsspec, which reads the umask once per process (an lru_cache): a process's
    # umask is fixed in practice, but this test changes it between cases in one process.
    get_umask.cache_clear()
    old = os.umask(mask)
    try:
        run_dir = tmp_path / "run"
        train(compose_train([*TINY, "logger=csv", "ema=posthoc", "ema.snapshot_every=32"], run_dir))
        report = compare(compose_train([f"runs=[{run_dir}]", f"out={tmp_path / 'report'}"], tmp_path, "compare"))
        # the reference-feature cache, as in-training evaluation and diffexp-evaluate fill it (the same call)
        images = torch.randint(0, 256, (24, 1, 16, 16), dtype=torch.uint8)
        Reference.build(images[:16], images[16:], load_feature_net("digits", 1, 16), "digits", tmp_path / "cache")
    finally:
        os.umask(old)
        get_umask.cache_clear()
    found = modes(run_dir) | modes(report) | modes(tmp_path / "cache")
    names = {p.relative_to(tmp_path).as_posix() for p in found}
    for expected in ("run/metrics.json", "run/losses.csv", "run/checkpoints/last.ckpt", "report/leaderboard.md"):
        assert expected in names, expected
    assert "run/pipeline/unet/diffusion_pytorch_model.safetensors" in names
    assert any(n.startswith("run/ema/") for n in names) and any(n.startswith("cache/digits") for n in names)
    wrong = {str(p): oct(m) for p, m in found.items() if m != (0o777 if p.is_dir() else 0o666) & ~mask}
    assert not wrong, f"under umask {mask:03o}: {wrong}"
