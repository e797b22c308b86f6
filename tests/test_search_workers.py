"""Workers of one study draw different trials, a repeat is not trained, seeds per trial, and the study's direction."""

from __future__ import annotations

import json

import optuna
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_method
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from diffexp.config import CONF_DIR
from diffexp.errors import ConfigError
from helpers import OPTUNA, diffexp, distinct, finish, study, trained_once_each, worker
from hydra_plugins.diffexp_optuna_sweeper.sweeper import build_sampler, repeat_of, search_space, study_direction

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sweep_config(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=["sweeps=optuna_tiny", *overrides], return_hydra_config=True)


class Worker:
    """One worker's view of the study as the sweeper builds it: the sweep file's sampler and search space."""

    def __init__(self, storage: str, cfg) -> None:
        s = cfg.hydra.sweeper
        self.s, self.space = s, search_space([f"{k}={v}" for k, v in s.params.items()])[1]
        self.custom = get_method(s.custom_search_space)
        self.study = optuna.create_study(
            storage=storage, study_name="w", load_if_exists=True, sampler=build_sampler(s.sampler)
        )

    def trial(self, value: float | None = None) -> dict:
        trial = self.study.ask(self.space)
        self.custom(self.s, trial)
        if value is not None:
            self.study.tell(trial, value)
        return dict(trial.params)


def test_two_workers_and_a_late_one_draw_pairwise_distinct_trials_and_one_worker_reproduces_its_draws(tmp_path):
    # Each worker builds the sweep file's sampler (TPE, seed 0, 4 random start-up trials) on one SQLite study.
    cfg = sweep_config()
    assert cfg.hydra.sweeper.sampler.seed == 0 and cfg.hydra.sweeper.sampler.n_startup_trials == 4
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    a, b = Worker(storage, cfg), Worker(storage, cfg)
    draws = []
    for k in range(3):  # the start-up, then TPE: each asks in turn while the other's trial runs
        draws += [a.trial(), b.trial()]
        for t in a.study.get_trials(states=(TrialState.RUNNING,)):
            a.study.tell(t.number, 10.0 + k)
    late = Worker(storage, cfg)  # started after the start-up trials finished: continues, replays nothing
    draws += [late.trial(1.0), late.trial(1.0)]
    assert distinct(draws), draws

    # trial N's draw follows from (seed, N): a lone worker on a fresh study gets its search again
    again = [Worker(f"sqlite:///{tmp_path / 'again.db'}", cfg) for _ in range(2)]
    first, second = ([w.trial(5.0) for _ in range(3)] for w in again)
    assert first != second  # the second worker continues at trial 3
    solo = Worker(f"sqlite:///{tmp_path / 'solo.db'}", cfg)
    assert [solo.trial(5.0) for _ in range(6)] == [*first, *second]


def test_a_repeat_of_a_complete_trial_takes_its_result_a_retry_does_not(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    space = {"x": CategoricalDistribution([1, 2])}
    s = optuna.create_study(storage=storage, study_name="r")
    s.add_trial(create_trial(params={"x": 1}, distributions=space, value=3.0, user_attrs={"seeds": [0]}))
    s.add_trial(create_trial(params={"x": 2}, distributions=space, state=TrialState.PRUNED, user_attrs={"seeds": [0]}))
    s.enqueue_trial({"x": 1})
    s.enqueue_trial({"x": 1}, user_attrs={"retry_of": 0})
    s.enqueue_trial({"x": 2})
    verdicts = []
    for _ in range(3):
        trial = s.ask(space)
        trial.set_user_attr("seeds", [0])
        earlier = repeat_of(s, trial)
        verdicts.append(earlier and earlier.number)
        s.tell(trial, state=TrialState.FAIL)
    assert verdicts == [0, None, None]  # repeats trial 0; a dead worker's retry; a pruned trial's parameters
    trial = s.ask(space)
    trial.set_user_attr("seeds", [1])  # other training seeds: another run
    assert repeat_of(s, trial) is None


@pytest.mark.slow  # whole searches, 20-45 s on 2 cores: make test stays under 10 minutes
def test_a_sweep_trains_no_repeat_of_a_complete_trial_but_does_train_a_pruned_trials_parameters(tmp_path):
    sweep = tmp_path / "multirun" / "optuna_tiny"
    sweep.mkdir(parents=True)
    s = optuna.create_study(storage=f"sqlite:///{sweep / 'optuna.db'}", study_name="optuna_tiny")
    cfg = sweep_config(*OPTUNA)
    space = search_space([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])[1]
    space["ema"] = CategoricalDistribution(["none", "power"])
    done = {"optim.optimizer.lr": 1e-3, "optim.warmup": 0, "data.batch_size": 32, "schedule.prediction_type": "epsilon"}
    pruned = done | {"optim.optimizer.lr": 2e-3, "ema": "none"}
    done |= {"ema": "none"}
    attrs = {"seeds": [0], "folder": str(sweep / "elsewhere")}
    s.add_trial(create_trial(params=done, distributions=space, value=7.5, user_attrs=attrs))
    s.add_trial(create_trial(params=pruned, distributions=space, state=TrialState.PRUNED, user_attrs=attrs))
    s.enqueue_trial(done)
    s.enqueue_trial(pruned)
    out = diffexp("train", "-m", "sweeps=optuna_tiny", *OPTUNA, "hydra.sweeper.n_trials=4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
        TrialState.COMPLETE,
    ]
    repeat, trained = trials[2], trials[3]
    assert repeat.user_attrs["repeat_of"] == 0 and repeat.value == 7.5 and repeat.params == done
    assert repeat.user_attrs["folder"] == str(sweep / "elsewhere")
    assert "repeat_of" not in trained.user_attrs and trained.params == pruned
    assert sorted(p.name for p in sweep.glob("trial-*")) == ["trial-0003"]  # trial 2 trained nothing
    assert json.loads((sweep / "trial-0003" / "metrics.json").read_text())["objective"] == trained.value


@pytest.mark.slow  # whole searches, 20-45 s on 2 cores: make test stays under 10 minutes
def test_each_trial_trains_its_seeds_and_the_study_gets_their_mean_a_pruned_first_seed_ends_it(tmp_path):
    args = ["-m", "sweeps=optuna_tiny", *OPTUNA, "hydra.sweeper.n_trials=1", "hydra.sweeper.seeds_per_trial=2"]
    out = diffexp("train", *args, "seed=3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = tmp_path / "multirun" / "optuna_tiny"
    (trial,) = study(tmp_path).trials
    folders = [sweep / "trial-0000", sweep / "trial-0000-seed4"]
    records = [json.loads((f / "metrics.json").read_text()) for f in folders]
    assert [r["status"] for r in records] == ["finished", "finished"]
    seeds = [OmegaConf.load(f / ".hydra" / "config.yaml").seed for f in folders]
    assert seeds == [3, 4] and trial.user_attrs["seeds"] == [3, 4]
    assert trial.user_attrs["folders"] == [str(f) for f in folders]
    assert trial.value == pytest.approx((records[0]["objective"] + records[1]["objective"]) / 2)
    # only the first seed reported its evaluations to the trial
    assert list(trial.intermediate_values) == [e["images"] for e in records[0]["eval_history"]]
    overrides = (folders[1] / ".hydra" / "overrides.yaml").read_text()
    assert (
        "optuna.trial" not in overrides and "optuna.trial=0" in (folders[0] / ".hydra" / "overrides.yaml").read_text()
    )

    prune = ["hydra/sweeper/pruner=threshold", "hydra.sweeper.pruner.upper=0", "sweep_name=pruned"]
    out = diffexp("train", *args, *prune, "budget.images=512", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    (trial,) = study(tmp_path, "pruned").trials
    assert trial.state == TrialState.PRUNED
    assert [p.name for p in (tmp_path / "multirun" / "pruned").glob("trial-*")] == ["trial-0000"]  # seed 1 never ran


def test_the_direction_follows_the_monitor_and_a_contradicting_one_is_refused(tmp_path):
    cfg = sweep_config("eval.monitor=precision")
    assert cfg.hydra.sweeper.direction is None
    assert study_direction(cfg.hydra.sweeper.direction, cfg.eval.monitor) == "maximize"
    assert study_direction(None, sweep_config().eval.monitor) == "minimize"  # fid
    assert study_direction(None, None) == "minimize"  # no monitor: the final loss
    with pytest.raises(ConfigError, match="hydra.sweeper.direction=maximize contradicts eval.monitor=fid"):
        study_direction("maximize", "fid")

    args = ["-m", "sweeps=optuna_tiny", *OPTUNA, "eval.monitor=precision", "hydra.sweeper.direction=minimize"]
    out = diffexp("train", *args, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: hydra.sweeper.direction=minimize contradicts eval.monitor=precision") and (
        "hydra.sweeper.direction=maximize" in line
    )
    assert not (tmp_path / "multirun").exists()  # nothing left behind


@pytest.mark.slow
def test_two_worker_processes_train_pairwise_distinct_trials(tmp_path):
    workers = [worker(tmp_path, "hydra.sweeper.n_trials=4", "hydra/sweeper/pruner=none") for _ in range(2)]
    finish(workers)
    trials = study(tmp_path).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and trained_once_each(tmp_path / "multirun" / "optuna_tiny", trials) == complete
    pids = {t.user_attrs["worker"] for t in complete}
    assert len(pids) == 2, pids
