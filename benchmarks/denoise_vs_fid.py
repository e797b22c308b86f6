"""How well the held-out denoising error ranks runs the way a sample-quality figure does: Spearman's rho over runs.

    python benchmarks/denoise_vs_fid.py RUN_OR_SWEEP... [--quality fid] [--boots 2000] [--json OUT.json]

Each argument is a run folder or a folder of runs (a multirun: every folder below holding a metrics.json). Every
finished run whose final evaluation (metrics.json `eval`) holds the quality figure counts; where it holds no
`denoise` (runs trained before diffexp recorded it) the figure is computed here from the run's exported EMA weights
with the same images, noise and levels (`diffexp.denoise.denoise_run`; seconds per run on CPU), and never written
into the run folder (`--json` keeps it). Prints
rho, n and a 95% percentile bootstrap interval (runs resampled with replacement, seed 0; resamples where either
figure is constant are dropped, their count reported). Both figures are lower-is-better for fid and kid, so a rho
near +1 means the denoising error orders the runs as the quality figure does.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy.stats import rankdata


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho (Pearson's correlation of mid-ranks); NaN where either side is constant."""
    rx, ry = rankdata(x), rankdata(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])


def rank_correlation(x: list[float], y: list[float], boots: int = 2000, seed: int = 0) -> dict:
    """rho of `x` against `y` with n and a 95% percentile bootstrap interval over the pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    rho = spearman(x, y)
    rng = np.random.default_rng(seed)
    draws = [spearman(x[i], y[i]) for i in rng.integers(0, len(x), (boots, len(x)))] if len(x) > 1 else []
    kept = [d for d in draws if not math.isnan(d)]
    lo, hi = (float(np.quantile(kept, 0.025)), float(np.quantile(kept, 0.975))) if kept else (None, None)
    return {"rho": rho, "n": len(x), "ci": [lo, hi], "boots": len(kept), "dropped": len(draws) - len(kept)}


def collect(folders: list[str], quality: str, images: int = 256) -> list[dict]:
    """(run, denoise, quality) of every finished run under `folders` with the quality figure (denoise computed where
    the run did not record it, on `images` held-out images)."""
    found = []
    for f in folders:
        folder = Path(f).expanduser()
        own = folder / "metrics.json"
        paths = [own] if own.exists() else sorted(folder.rglob("metrics.json"))
        for path in paths:
            record = json.loads(path.read_text())
            ev = record.get("eval") or {}
            if record.get("status") != "finished" or ev.get(quality) is None:
                continue
            denoise, source = ev.get("denoise"), "metrics.json"
            if denoise is None:
                from diffexp.denoise import denoise_run

                denoise, source = denoise_run(path.parent, images)["denoise"], "computed from the pipeline"
            found.append({"run": str(path.parent), "denoise": denoise, quality: ev[quality], "denoise_from": source})
    return found


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="run folders or folders of runs")
    parser.add_argument("--quality", default="fid", help="the final evaluation's figure to rank against (fid, kid)")
    parser.add_argument("--boots", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--json", type=Path, default=None, help="also write the result (and the runs) here")
    parser.add_argument("--images", type=int, default=256, help="held-out images where denoise is computed here")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads where denoise is computed here")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    runs = collect(args.folders, args.quality, args.images)
    if len(runs) < 3:
        raise SystemExit(f"{len(runs)} finished runs have `{args.quality}`: at least 3 are needed")
    result = rank_correlation([r["denoise"] for r in runs], [r[args.quality] for r in runs], args.boots)
    result |= {"quality": args.quality, "runs": runs}
    lo, hi = result["ci"]
    interval = f"[{lo:.2f}, {hi:.2f}]" if lo is not None else "(no interval)"
    print(
        f"Spearman rho(denoise, {args.quality}) = {result['rho']:.2f}, n = {result['n']} runs, 95% bootstrap "
        f"interval {interval} ({result['boots']} resamples, {result['dropped']} constant ones dropped)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
