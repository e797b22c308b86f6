"""diffexp-evaluate end to end: a real tiny run, every sampler and step count asked for, tables, plot, no overwrite."""

from __future__ import annotations

import csv
import math

from conftest import compose_train


def test_evaluate_scores_each_setting_reproducibly_and_never_overwrites(tiny_cfg, tmp_path):
    from diffexp.evaluate import run as evaluate
    from diffexp.train import run as train

    train(tiny_cfg("data.resolution=16"))  # the digits net scores 16 px digits
    args = [
        f"run={tmp_path / 'run'}",
        "samplers=[ddim,dpm_solver_sde]",
        "steps=[2,3]",
        "ddpm_steps=[4]",
        "n=64",
        "eval.reference_size=100",
        "threads=1",
    ]
    first = evaluate(compose_train(args, tmp_path / "evaluate", name="evaluate"))
    before = first.read_bytes()
    second = evaluate(compose_train(args, tmp_path / "evaluate", name="evaluate"))

    assert first != second and first.read_bytes() == before  # a new file; the first one untouched
    assert first.with_suffix(".md").exists() and first.with_suffix(".png").stat().st_size > 0
    rows = [list(csv.DictReader(path.open())) for path in (first, second)]
    settings = {(r["sampler"], int(r["steps"])) for r in rows[0]}
    assert settings == {("ddim", 2), ("ddim", 3), ("dpm_solver_sde", 2), ("dpm_solver_sde", 3), ("ddpm", 4)}
    assert all(math.isfinite(float(r["fid"])) and float(r["fid"]) > 0 for r in rows[0])
    assert all(0.1 <= float(r["top_prob"]) <= 1 and float(r["class_min"]) <= float(r["class_max"]) for r in rows[0])
    # Same seed, same figures: the stochastic samplers' step noise is seeded too.
    assert [r["fid"] for r in rows[0]] == [r["fid"] for r in rows[1]]
