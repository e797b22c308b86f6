"""The sweeper's config (`hydra/sweeper=diffexp_optuna`) and its sampler and pruner options, registered with Hydra's
ConfigStore when Hydra scans the `hydra_plugins` namespace. Each option is a `_target_` dict that
`hydra.utils.instantiate` builds, so any Optuna sampler or pruner works with its own arguments."""

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

SAMPLERS = {
    # `seed`: the draws of trial N follow from (seed, N), so workers differ and a restart continues (_sampler.py)
    "tpe": {"_target_": "optuna.samplers.TPESampler", "seed": None, "n_startup_trials": 10},
    "random": {"_target_": "optuna.samplers.RandomSampler", "seed": None},
}
PRUNERS = {
    "none": {"_target_": "optuna.pruners.NopPruner"},
    # Stops a trial whose figure is worse than the median of earlier trials at the same images point.
    "median": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 4, "n_warmup_steps": 0},
    # Stops only a trial in the worst quarter at its images point: single-seed FIDs early in a run are noisy and rank
    # learning speed; replayed on 14 measured curves the median rule stopped 3 trials that tied the best and this one
    # none, and a rerun of the search confirmed it (benchmarks/prune_replay.py, docs/recipes.md "Does pruning pay?").
    "percentile": {
        "_target_": "optuna.pruners.PercentilePruner",
        "percentile": 75.0,
        "n_startup_trials": 3,
        "n_warmup_steps": 0,
    },
    # Steps are images seen: min_resource is the first evaluation point (eval.every_n_images).
    "successive_halving": {
        "_target_": "optuna.pruners.SuccessiveHalvingPruner",
        "min_resource": "auto",
        "reduction_factor": 2,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": "${oc.select:eval.every_n_images,1}",  # the first evaluation point, in images
        "max_resource": "auto",
        "reduction_factor": 2,
    },
    # Stops a trial whose figure passes a bound at any evaluation (e.g. FID over 100: the recipe diverged).
    "threshold": {"_target_": "optuna.pruners.ThresholdPruner", "upper": None, "lower": None},
}


@dataclass
class DiffexpOptunaSweeperConf:
    _target_: str = "hydra_plugins.diffexp_optuna_sweeper.sweeper.DiffexpOptunaSweeper"
    _recursive_: bool = False  # the sweeper builds its sampler; the study carries its pruner to the jobs
    defaults: list[Any] = field(default_factory=lambda: ["_self_", {"sampler": "tpe"}, {"pruner": "none"}])
    sampler: Any = None  # hydra/sweeper/sampler=tpe|random, or any {_target_: ...}
    pruner: Any = None  # hydra/sweeper/pruner=none|percentile|median|successive_halving|hyperband|threshold
    direction: Optional[str] = None  # null = eval.monitor's (diffexp.metrics.HIGHER_IS_BETTER); no monitor: minimize
    seeds_per_trial: int = 1  # training seeds per drawn recipe (seed, seed+1, ...): the study is told their mean
    study_name: Optional[str] = None  # null = the sweep folder's name
    storage: Optional[str] = None  # null = sqlite:///<sweep folder>/optuna.db; an Optuna URL or a journal file path
    n_trials: int = 20  # COMPLETE + PRUNED trials of the whole study (all workers together)
    timeout: Optional[float] = None  # seconds after this worker starts that it begins no new trial
    heartbeat_interval: float = 30.0  # seconds between a worker's heartbeats into its running trial
    grace_period: float = 120.0  # a RUNNING trial silent this long belongs to a dead worker: failed and retried
    custom_search_space: Optional[str] = None  # a function(cfg, trial) adding conditional parameters
    warm_start: Optional[str] = None  # an earlier search (sweep folder, URL or journal): its best recipes go first
    warm_start_k: int = 4  # how many of its best COMPLETE recipes
    warm_start_study: Optional[str] = None  # its study (null: the sweep folder's name, or the storage's only one)
    params: Optional[dict[str, str]] = None  # the search space, in Hydra's sweep syntax


cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="diffexp_optuna", node=DiffexpOptunaSweeperConf, provider="diffexp")
for name, node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=name, node=node, provider="diffexp")
for name, node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=name, node=node, provider="diffexp")
