"""Warm start: a search's first trials are the k best recipes of an earlier study, enqueued once, in its space."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from diffexp.errors import ConfigError
from diffexp.warm_start import check_k, enqueue, load_source
from helpers import finish, study, worker

SPACE = {
    "optim.optimizer.lr": FloatDistribution(1e-4, 1e-2, log=True),
    "data.batch_size": CategoricalDistribution([32, 64]),
}


def earlier_search(folder, values, direction="minimize", name=None):
    """A finished search's sweep folder: one COMPLETE trial per (lr, batch, value)."""
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name=name or folder.name, storage=f"sqlite:///{folder / 'optuna.db'}",
                                direction=direction)  # fmt: skip
    for lr, batch, value in values:
        study.add_trial(
            optuna.trial.create_trial(
                params={"optim.optimizer.lr": lr, "data.batch_size": batch},
                distributions={
                    "optim.optimizer.lr": FloatDistribution(1e-5, 1e-1, log=True),
                    "data.batch_size": CategoricalDistribution([16, 32, 64]),
                },  # fmt: skip
                value=value,
            )
        )
    return study


def target(tmp_path):
    url = f"sqlite:///{tmp_path / 'small.db'}"
    return optuna.create_study(study_name="optuna_small", storage=url, load_if_exists=True)


VALUES = [(1e-3, 64, 9.0), (2e-3, 32, 7.0), (5e-3, 64, 12.0), (3e-3, 32, 8.0), (1e-3, 32, 20.0)]


def test_the_k_best_recipes_are_the_first_trials_once_however_often_enqueued(tmp_path):
    earlier_search(tmp_path / "multirun" / "optuna_tiny", VALUES)
    study = target(tmp_path)
    for _ in range(2):  # a second worker, or a rerun, enqueues nothing twice
        earlier = load_source(str(tmp_path / "multirun" / "optuna_tiny"), None)
        assert enqueue(study, earlier, 3, SPACE, custom=False) == 3
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 3
    asked = [study.ask(SPACE).params for _ in range(3)]
    assert [a["optim.optimizer.lr"] for a in asked] == [2e-3, 3e-3, 1e-3]


def test_a_maximised_study_gives_its_highest_and_values_outside_this_space_are_drawn_anew(tmp_path):
    values = [(5e-5, 16, 0.9), (2e-3, 64, 0.8), (1e-3, 32, 0.1)]
    earlier_search(tmp_path / "tiny", values, direction="maximize")
    study = target(tmp_path)
    # the best (lr 5e-5, batch 16) lies wholly outside this search's space: nothing of it is kept
    assert enqueue(study, load_source(str(tmp_path / "tiny"), None), 2, SPACE, custom=False) == 1
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["fixed_params"] == {"optim.optimizer.lr": 2e-3, "data.batch_size": 64}
    values = [(2e-3, 16, 0.9)]  # a value outside the space is left to the sampler, the rest kept
    earlier_search(tmp_path / "tiny2", values, direction="maximize")
    enqueue(study, load_source(str(tmp_path / "tiny2"), None), 1, SPACE, custom=False)
    last = study.get_trials(states=(TrialState.WAITING,))[-1]
    assert last.system_attrs["fixed_params"] == {"optim.optimizer.lr": 2e-3}


def test_a_storage_url_with_several_studies_needs_the_study_named(tmp_path):
    earlier_search(tmp_path / "a", VALUES, name="one")
    url = f"sqlite:///{tmp_path / 'a' / 'optuna.db'}"
    optuna.create_study(study_name="two", storage=url)
    with pytest.raises(ConfigError, match="warm_start_study"):
        load_source(url, None)
    assert enqueue(target(tmp_path), load_source(url, "one"), 2, SPACE, custom=False) == 2


def test_a_folder_without_a_study_is_refused_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no optuna.db"):
        load_source(str(tmp_path / "empty"), None)
    with pytest.raises(ConfigError, match="no such folder"):
        load_source(str(tmp_path / "missing"), None)
    with pytest.raises(ConfigError, match="warm_start_k"):
        check_k(0)


@pytest.mark.slow  # whole searches, 20-45 s on 2 cores: make test stays under 10 minutes
def test_a_search_warm_started_from_an_earlier_one_trains_its_best_recipe_first(tmp_path):
    best = {"optim.optimizer.lr": 0.002, "optim.warmup": 0.05, "data.batch_size": 32,
            "schedule.prediction_type": "v_prediction", "ema": "none"}  # fmt: skip
    tiny = tmp_path / "optuna_tiny"  # a finished search's sweep folder: its study is named after it
    tiny.mkdir()
    earlier = optuna.create_study(study_name="optuna_tiny", storage=f"sqlite:///{tiny / 'optuna.db'}")
    dists = {
        "optim.optimizer.lr": FloatDistribution(3e-4, 6e-3, log=True),
        "optim.warmup": CategoricalDistribution([0, 0.05, 0.15]),
        "data.batch_size": CategoricalDistribution([32, 64, 128]),
        "schedule.prediction_type": CategoricalDistribution(["epsilon", "v_prediction"]),
        "ema": CategoricalDistribution(["none", "power"]),
    }
    for lr, value in ((0.002, 5.0), (0.004, 9.0)):
        params = best | {"optim.optimizer.lr": lr}
        earlier.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    args = [f"hydra.sweeper.warm_start={tiny}", "hydra.sweeper.warm_start_k=1", "hydra.sweeper.n_trials=1"]
    finish([worker(tmp_path, "sweep_name=small", *args, "hydra/sweeper/pruner=none")])
    (trial,) = study(tmp_path, "small").get_trials()
    assert trial.state == TrialState.COMPLETE and trial.params == best
