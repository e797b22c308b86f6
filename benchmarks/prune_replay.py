"""Which pruner would have kept the search's best trials? Replays recorded learning curves (issue 13, item 7).

    python benchmarks/prune_replay.py OUT/multirun/bench-no-pruning-seed*  [--startup 3]

A no-pruning arm of `benchmarks/search.py` ran every trial to the end, so its trials hold the whole curve: the FID
reported at each images point and the final figure with its 95% interval. This feeds those curves, trial by trial in
their order, to Optuna's own pruners (a fresh in-memory study each, the same calls the sweeper makes) and prints what
each would have stopped: how many trials, the training images saved, and the *lost* trials, pruned though their final
FID lies inside the arm's best trial's 95% interval. It is a screen, not the measurement: with pruning TPE could draw
other trials afterwards (in the measured arms it drew the same ones: a pruned trial still counts among its bad ones),
and only `benchmarks/search.py` measures the time the search takes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import optuna
from hydra.utils import instantiate
from optuna.trial import TrialState


def pruner_specs(startup: int, first_point: int) -> dict[str, dict]:
    """The sweeper's pruner options (hydra_plugins/diffexp_optuna_sweeper/config.py) as a sweep file sets them; each
    `hydra.utils.instantiate(spec)` is a fresh pruner."""
    from hydra_plugins.diffexp_optuna_sweeper.config import PRUNERS

    startup_ = {"n_startup_trials": startup}
    return {
        "median": PRUNERS["median"] | startup_,
        "median after 2 points": PRUNERS["median"] | startup_ | {"n_warmup_steps": first_point + 1},
        "percentile 75": PRUNERS["percentile"] | startup_,
        "successive halving": PRUNERS["successive_halving"],
        "hyperband": PRUNERS["hyperband"] | {"min_resource": first_point},
    }


def curves(arm: Path) -> list[dict]:
    """Every finished trial of an arm, in trial order: its (images, FID) points and final figure."""
    out = []
    for f in sorted(arm.glob("trial-*/metrics.json")):
        m = json.loads(f.read_text())
        if m.get("status") == "finished":
            points = [(e["images"], e["fid"]) for e in m["eval_history"][:-1]]  # the last one is the final eval
            out.append(
                {
                    "trial": f.parent.name,
                    "points": points,
                    "images": m["images_seen"],
                    "final": m["eval"]["fid"],
                    "ci": m["eval"]["fid_ci"],
                }
            )
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
    print(
        f"{sum(map(len, arms.values()))} finished trials from {len(arms)} arm(s); images saved: of all trials' "
        "training images; lost: pruned, but the final FID is inside the arm's best's 95% interval\n"
    )
    print("| pruner | pruned | training images saved | lost |\n| --- | --- | --- | --- |")
    first_point = min(t["points"][0][0] for trials in arms.values() for t in trials)
    for name, spec in pruner_specs(a.startup, first_point).items():
        pruned, saved, total, lost = 0, 0, 0, []
        for arm, trials in arms.items():
            best_hi = min(trials, key=lambda t: t["final"])["ci"][1]
            by_name = {t["trial"]: t for t in trials}
            total += sum(t["images"] for t in trials)
            for trial, images in replay(trials, instantiate(spec)):  # a fresh pruner an arm
                pruned += 1
                saved += by_name[trial]["images"] - images
                if by_name[trial]["final"] <= best_hi:
                    lost.append(f"{arm[-5:]}/{trial} ({by_name[trial]['final']:.1f})")
        print(f"| {name} | {pruned} | {saved / total:.0%} | {len(lost)}{': ' + ', '.join(lost) if lost else ''} |")


if __name__ == "__main__":
    main()
