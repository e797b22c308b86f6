"""Which pruner would have kept the search's best trials? Replays recorded learning curves (issue 13, item 7).

    python benchmarks/prune_replay.py OUT/multirun/bench-no-pruning-seed*  [--startup 4]

A no-pruning arm of `benchmarks/search.py` ran every trial to the end, so its trials hold the whole curve: the FID
reported at each images point and the final figure with its 95% interval. This feeds those curves, trial by trial in
their order, to Optuna's own pruners (a fresh in-memory study each, the same calls the sweeper makes) and prints what
each would have stopped: how many trials, the training images saved, and the *lost* trials, pruned though their final
FID lies inside the arm's best trial's 95% interval. It is a screen, not the measurement: with pruning, TPE would have
drawn other trials afterwards; `benchmarks/search.py` measures the search itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
from optuna.trial import TrialState

PRUNERS = {  # the sweeper's options (hydra_plugins/diffexp_optuna_sweeper/config.py), n_startup_trials set below
    "median": lambda n: optuna.pruners.MedianPruner(n_startup_trials=n),
    "median after 2 points": lambda n: optuna.pruners.MedianPruner(n_startup_trials=n, n_warmup_steps=7000),
    "percentile 75": lambda n: optuna.pruners.PercentilePruner(75.0, n_startup_trials=n),
    "successive halving": lambda n: optuna.pruners.SuccessiveHalvingPruner(reduction_factor=2),
    "hyperband": lambda n: optuna.pruners.HyperbandPruner(min_resource=6000, max_resource=24064, reduction_factor=2),
}


def curves(arm: Path) -> list[dict]:
    """Every finished trial of an arm, in trial order: its (images, FID) points and final figure."""
    out = []
    for f in sorted(arm.glob("trial-*/metrics.json")):
        m = json.loads(f.read_text())
        if m.get("status") == "finished":
            points = [(e["images"], e["fid"]) for e in m["eval_history"][:-1]]  # the last one is the final eval
            out.append({"trial": f.parent.name, "points": points, "final": m["eval"]["fid"], "ci": m["eval"]["fid_ci"]})
    return out


def replay(trials: list[dict], pruner: optuna.pruners.BasePruner) -> list[tuple[str, int]]:
    """(trial, images at the stop) of each trial the pruner stops, in a study fed the curves in order."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(pruner=pruner, study_name="replay")  # Hyperband brackets hash the name
    stopped = []
    for t in trials:
        trial = study.ask()
        for images, fid in t["points"]:
            trial.report(fid, images)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                stopped.append((t["trial"], images))
                break
        else:
            study.tell(trial, t["final"])
    return stopped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("arms", type=Path, nargs="+", help="no-pruning sweep folders of benchmarks/search.py")
    parser.add_argument("--startup", type=int, default=3, help="finished trials before median/percentile prune")
    a = parser.parse_args()
    arms = {arm.name: curves(arm) for arm in a.arms}
    print(f"{sum(map(len, arms.values()))} finished trials from {len(arms)} arm(s); images saved: of all trials' "
          "training images; lost: pruned, but the final FID is inside the arm's best's 95% interval\n")
    print("| pruner | pruned | training images saved | lost |\n| --- | --- | --- | --- |")
    for name, make in PRUNERS.items():
        pruned, saved, total, lost = 0, 0, 0, []
        for arm, trials in arms.items():
            best_hi = min(trials, key=lambda t: t["final"])["ci"][1]
            final_images = {t["trial"]: t["points"][-1][0] / 3 * 4 for t in trials}  # 4 equal steps a trial
            total += sum(final_images.values())
            for trial, images in replay(trials, make(a.startup)):
                pruned += 1
                saved += final_images[trial] - images
                final = next(t["final"] for t in trials if t["trial"] == trial)
                if final <= best_hi:
                    lost.append(f"{arm[-5:]}/{trial} ({final:.1f})")
        print(f"| {name} | {pruned} | {saved / total:.0%} | {len(lost)}{': ' + ', '.join(lost) if lost else ''} |")


if __name__ == "__main__":
    main()
