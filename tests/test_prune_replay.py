"""benchmarks/prune_replay.py replays recorded curves through the sweeper's own pruners (issue 13's screen)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from hydra.utils import instantiate  # noqa: E402
from prune_replay import curves, pruner_specs, replay  # noqa: E402


def write_arm(folder: Path, finals: list[float], firsts: list[float]) -> Path:
    """Crafted no-pruning trials: FID at 6k, 12k, 18k images falling to the final one at 24k."""
    for i, (final, first) in enumerate(zip(finals, firsts, strict=True)):
        trial = folder / f"trial-{i:04d}"
        trial.mkdir(parents=True)
        history = [{"images": n, "fid": first - (first - final) * k / 3} for k, n in enumerate((6000, 12000, 18000))]
        history.append({"images": 24000, "fid": final})
        record = {"status": "finished", "images_seen": 24000, "eval_history": history}
        record["eval"] = {"fid": final, "fid_ci": [final - 2, final + 2]}
        (trial / "metrics.json").write_text(json.dumps(record))
    return folder


def test_percentile_keeps_a_slow_starter_that_ties_and_stops_a_hopeless_trial(tmp_path):
    # Trial 3 starts a little behind the median but ends at the best; trial 4 is far behind from the start.
    arm = write_arm(tmp_path / "arm", [11.0, 20.0, 30.0, 11.5, 120.0], [40.0, 45.0, 60.0, 50.0, 380.0])
    trials = curves(arm)
    assert [t["points"][0] for t in trials][:2] == [(6000, 40.0), (6000, 45.0)] and trials[0]["images"] == 24000
    specs = pruner_specs(startup=3, first_point=6000)
    assert replay(trials, instantiate(specs["percentile 75"])) == [("trial-0004", 6000)]
    assert ("trial-0003", 6000) in replay(trials, instantiate(specs["median"]))
