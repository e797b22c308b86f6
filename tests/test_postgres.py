"""Optuna on a real PostgreSQL server (tests/postgres.py): two worker processes fill one study at once."""

from __future__ import annotations

import re

import optuna
import pytest
from optuna.trial import TrialState

from helpers import finish, trained_once_each, worker
from postgres import listening, server


@pytest.mark.slow
def test_two_workers_fill_one_postgresql_study(tmp_path):
    pytest.importorskip("psycopg2", reason="psycopg2 missing: pip install -e '.[postgres]' (dev includes it)")
    with server("diffexp") as url:
        port = int(re.search(r":(\d+)/", url).group(1))
        from diffexp.search import open_study

        open_study(url, "optuna_tiny", "minimize")  # once, before the workers: two creating it at once race
        # no pruner: distinct draws differ in FID, and the sweep file's pruner could stop the worst of 4
        args = [f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=4", "hydra/sweeper/pruner=none"]
        workers = [worker(tmp_path, *args) for _ in range(2)]
        finish(workers)
        trials = optuna.load_study(study_name="optuna_tiny", storage=url).trials
        assert listening(port)
    assert not listening(port)  # the server stopped with its context
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4, [(t.number, t.state) for t in trials]
    pids = {int(t.user_attrs["worker"].rsplit(":", 1)[1]) for t in complete}
    assert pids == {w.pid for w in workers}, (pids, [w.pid for w in workers])
    sweep = tmp_path / "multirun" / "optuna_tiny"
    for t in complete:  # each trial's job trained in its own folder and reported its figure
        assert (sweep / f"trial-{t.number:04d}" / "metrics.json").exists()
    assert trained_once_each(sweep, trials) == complete  # the two workers drew distinct trials, none trained twice
