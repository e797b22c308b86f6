"""diffexp-evaluate end to end: a real tiny run, every sampler and step count asked for, tables, plot, no overwrite."""

from __future__ import annotations

import csv
import math

from helpers import compose_train


def test_evaluate_scores_each_setting_reproducibly_and_never_overwrites(tiny_cfg, tmp_path):
    from diffexp.evaluate import run as evaluate
    from diffexp.train import run as train

    train(tiny_cfg("data.resolution=16"))  # the digits net scores 16 px digits
    args = [
        f"run={tmp_path / 'run'}",
        "samplers=[ddim,dpm_solver_sde]",
        "steps=[2,3]",
        "ddpm_steps=[4]",
        "n=65",
        "eval.reference_size=100",
        "eval.seeds=2",
        "threads=1",
    ]
    first = evaluate(compose_train(args, tmp_path / "evaluate", name="evaluate"))
    before = first.read_bytes()
    second = evaluate(compose_train(args, tmp_path / "evaluate", name="evaluate"))

    assert first != second and first.read_bytes() == before  # a new file; the first one untouched
    assert first.with_suffix(".md").exists() and first.with_suffix(".png").stat().st_size > 0
    assert first.with_name(f"{first.stem}-nearest.png").stat().st_size > 0
    tables = [list(csv.DictReader(path.open())) for path in (first, second)]
    floor, rows = tables[0][0], [t[1:] for t in tables]
    assert floor["sampler"].startswith("floor") and float(floor["fid"]) > 0 and floor["n_fake"] == "65"
    settings = {(r["sampler"], int(r["steps"])) for r in rows[0]}
    assert settings == {("ddim", 2), ("ddim", 3), ("dpm_solver_sde", 2), ("dpm_solver_sde", 3), ("ddpm", 4)}
    assert all(math.isfinite(float(r["fid"])) and float(r["fid"]) > 0 for r in rows[0])
    assert all(0.1 <= float(r["top_prob"]) <= 1 and float(r["class_min"]) <= float(r["class_max"]) for r in rows[0])
    for r in rows[0]:  # every figure with its interval, against the held-out images, with its counts
        assert float(r["fid_lo"]) < float(r["fid"]) < float(r["fid_hi"]) and float(r["fid_std"]) > 0
        for name in ("kid_x1e3", "precision", "recall", "top_prob"):
            assert float(r[f"{name}_lo"]) <= float(r[name]) <= float(r[f"{name}_hi"]), name
        # within noise: the interval holds what real images score (the floor row's figure; KID's is 0)
        noise = {"kid_x1e3": 0.0} | {n: float(floor[n]) for n in ("fid", "precision", "recall")}
        held = {n: float(r[f"{n}_lo"]) <= v <= float(r[f"{n}_hi"]) for n, v in noise.items()}
        assert set(r["within_noise"].split()) == {n.removesuffix("_x1e3") for n, h in held.items() if h}
        assert (r["reference"], r["n_real"], r["n_fake"], r["n_seeds"]) == ("heldout", "100", "65", "2")
        assert 0 <= float(r["memorised"]) <= 1 and r["memorised_heldout"] != ""
    md = first.with_suffix(".md").read_text()
    assert "FID (95% CI)" in md and "KID x10^3 (95% CI)" in md and "KID is shown x10^3" in md
    marked = [line for line in md.splitlines() if line.startswith("|") and "(within noise)" in line]
    assert len(marked) == sum(bool(r["within_noise"]) for r in rows[0])
    assert "floor: real training images" in md and "held-out images" in md
    # Same seed, same figures: the stochastic samplers' step noise is seeded too.
    assert [r["fid"] for r in rows[0]] == [r["fid"] for r in rows[1]]
