"""threads=auto: each training takes its share of the host's cores among the live ones, decided when it starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from diffexp.errors import ConfigError
from diffexp.runtime import launcher_jobs, live_trainings, thread_share, usable_cores

HOLD = "from diffexp.runtime import register; import sys, time; register(); print('ready', flush=True); time.sleep(60)"


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFEXP_RUNTIME_DIR", str(tmp_path))
    return tmp_path / "trainings"


def live_worker() -> subprocess.Popen:
    """Another training process of this host, registered and alive until killed."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE, text=True, env=os.environ)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_auto_alone_takes_every_usable_core(registry):
    assert thread_share("auto") == usable_cores()
    assert live_trainings() == 1


def test_two_live_trainings_take_half_the_cores_each(registry):
    other = live_worker()
    try:
        assert live_trainings() == 1  # the other one; this process registers when it asks for its share
        assert thread_share("auto") == max(1, usable_cores() // 2)
        assert live_trainings() == 2
    finally:
        other.kill()
        other.wait()


def test_a_killed_training_no_longer_counts_and_its_file_goes(registry):
    other = live_worker()
    other.kill()
    other.wait()
    time.sleep(0.1)
    assert live_trainings() == 0
    assert not list(registry.iterdir())


def test_an_explicit_count_wins_and_bad_values_are_refused(registry):
    other = live_worker()
    try:
        assert thread_share(2) == 2
        assert live_trainings() == 2  # an explicit count still registers: the others count its cores
    finally:
        other.kill()
        other.wait()
    for bad in (0, -1, "abc", 1.5, True):
        with pytest.raises(ConfigError, match="threads="):
            thread_share(bad)


def test_the_joblib_launcher_divides_the_cores_among_its_jobs(registry):
    joblib = OmegaConf.create({"launcher": {"_target_": "hydra_plugins.hydra_joblib_launcher.JoblibLauncher"}})
    joblib.launcher.n_jobs = 2
    assert launcher_jobs(joblib) == 2
    assert thread_share("auto", launcher_jobs(joblib)) == max(1, usable_cores() // 2)
    joblib.launcher.n_jobs = -1  # joblib's "one job per core"
    assert launcher_jobs(joblib) == usable_cores()
    basic = OmegaConf.create({"launcher": {"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}})
    assert launcher_jobs(basic) == 1
