"""The search benchmark's verdict (benchmarks/search.py): which trials it re-scores and when an arm reached the best."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

spec = importlib.util.spec_from_file_location("bench_search", Path(__file__).parents[1] / "benchmarks" / "search.py")
bench = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bench  # dataclasses look their module up there
spec.loader.exec_module(bench)


def test_incumbents_are_the_trials_that_improved_the_best_so_far_in_completion_order():
    trials = [(3, 9.0, 5.0), (0, 2.0, 8.0), (1, 4.0, 9.0), (2, 6.0, 6.0), (4, 12.0, 5.5)]  # number, minutes, FID
    assert [(p.trial, p.minutes, p.objective) for p in bench.incumbents(trials)] == [
        (0, 2.0, 8.0),
        (2, 6.0, 6.0),
        (3, 9.0, 5.0),
    ]


def test_an_arm_reaches_the_best_at_its_first_rescored_figure_inside_the_interval():
    points = bench.incumbents([(0, 2.0, 8.0), (1, 6.0, 6.0), (2, 9.0, 5.0)])
    for p, fid in zip(points, [8.5, 6.4, 5.9], strict=True):  # re-scored: the search's own figures were optimistic
        p.fid = fid
    assert bench.time_to_reach(points, hi=6.5) == 6.0
    assert bench.time_to_reach(points, hi=5.0) is None  # never inside: did not reach


def test_speedup_is_the_baseline_arms_time_over_the_levers_and_needs_both():
    pruning = bench.COMPARISONS["pruning"]
    assert (pruning.baseline, pruning.lever) == ("no pruning", "pruning")
    assert bench.speedup({"pruning": 12.0, "no pruning": 36.0}, pruning) == 3.0
    assert bench.speedup({"pruning": None, "no pruning": 36.0}, pruning) is None  # pruning never reached the best
    assert bench.speedup({"pruning": 12.0, "no pruning": None}, pruning) is None
    warm = bench.COMPARISONS["warm-start"]
    assert bench.speedup({"warm start": 20.0, "from scratch": 90.0}, warm) == 4.5


def test_the_recipe_to_reach_is_either_arms_best_for_pruning_and_the_baselines_for_the_other_levers():
    points = {
        "from scratch": bench.incumbents([(0, 5.0, 9.0), (1, 30.0, 7.0)]),
        "warm start": bench.incumbents([(0, 2.0, 6.0)]),
    }
    for p, fid in zip([*points["from scratch"], *points["warm start"]], [9.5, 7.2, 6.1], strict=True):
        p.fid, p.hi = fid, fid + 1.0
    best, arm = bench.target(points, bench.COMPARISONS["warm-start"])
    assert (arm, best.fid) == ("from scratch", 7.2)  # what the plain search found: the aim counts reaching it
    assert bench.time_to_reach(points["warm start"], best.hi) == 2.0
    either = bench.Comparison("optuna_small", {"from scratch": [], "warm start": []}, None)
    assert bench.target(points, either)[1] == "warm start"


def test_shared_recipes_counts_the_leading_trials_with_the_same_parameters_in_every_arm():
    a = [{"lr": 1e-3}, {"lr": 2e-3}, {"lr": 3e-3}, {"lr": 4e-3}]
    b = [{"lr": 1e-3}, {"lr": 2e-3}, {"lr": 5e-3}]
    assert bench.shared_recipes([a, b]) == 2  # the third trial differs: what follows is no longer a timing comparison
    assert bench.shared_recipes([a, a[:3]]) == 3  # the shorter arm ran out: shared as far as both ran


def test_the_table_head_names_the_warm_starts_tiny_study_its_budget_and_minutes():
    warm = bench.COMPARISONS["warm-start"]
    a = argparse.Namespace(minutes=60, rescore_seeds=5, tiny_images=24000)
    head = bench.header(warm, a, "its own budget's", {0: 29.94})
    assert "`sweeps=optuna_tiny` at 24000 images a trial" in head and "searched 29.9 minutes" in head
    assert "the from scratch arm's best recipe" in head  # the mark is the plain search's best
    a.tiny_images = None
    assert "`sweeps=optuna_tiny` at its own budget" in bench.header(warm, a, "its own budget's", {0: 60.0})


def test_the_plot_is_a_png_for_a_budget_in_images_and_for_the_sweep_files_own(tmp_path):
    point = {"trial": 0, "minutes": 2.0, "objective": 9.0, "fid": 10.0, "lo": 8.0, "hi": 12.0}
    arms = {arm: {"incumbents": [point, {**point, "fid": None}]} for arm in ("1 worker", "2 workers")}
    for images in (24000, "its own budget's"):
        path = tmp_path / f"plot-{images}.png"
        bench.plot({"images": images, "seeds": {"0": arms}}, bench.COMPARISONS["workers"], path)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
