"""A Hydra sweeper on Optuna's ask-and-tell: each worker asks for a trial, runs its job, tells the result, and asks
again at once, until the whole study holds `n_trials` COMPLETE + PRUNED trials or `timeout` passes.

Optuna is imported only when a sweep starts: Hydra imports every `hydra_plugins` module at each command's start.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("diffexp.sweeper")
POLL_SECONDS = 2.0  # how often a worker with nothing to start looks again (others' trials still running)


def distribution(override) -> Any:
    """The Optuna distribution of one sweep override: choice/range -> categorical, interval -> float (log when
    tagged `log`); None for a plain value."""
    import optuna.distributions as d

    if not override.is_sweep_override():
        return None
    if override.is_choice_sweep() or override.is_range_sweep():
        return d.CategoricalDistribution(list(override.sweep_iterator()))
    if override.is_interval_sweep():
        value = override.value()
        return d.FloatDistribution(value.start, value.end, log="log" in value.tags)
    raise ValueError(f"{override.input_line}: use choice(...), range(...), interval(...) or tag(log, interval(...))")


def search_space(lines: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Fixed overrides (passed on to every job) and the distributions of the swept ones."""
    fixed, space = [], {}
    for override in OverridesParser.create().parse_overrides(lines):
        dist = distribution(override)
        if dist is None:
            fixed.append(override.input_line)
        else:
            space[override.get_key_element()] = dist
    return fixed, space


def as_override(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, float) else str(value)


class DiffexpOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        import optuna
        from hydra.utils import get_method, instantiate
        from optuna.trial import TrialState

        from diffexp.search import Heartbeat, fail_stale_trials, open_study

        s = self.config.hydra.sweeper
        params = [f"{k}={v}" for k, v in (s.params or {}).items()]
        fixed, space = search_space([*arguments, *params])
        custom = get_method(s.custom_search_space) if s.custom_search_space else None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        spec = s.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
        if "://" not in spec:
            spec = str(Path(spec).expanduser().resolve())  # a journal file, found again from every job's folder
        name = s.study_name or sweep_dir.name
        pruner = OmegaConf.to_container(s.pruner, resolve=True) if s.pruner else None
        if pruner:
            instantiate(pruner)  # a bad pruner setting fails here, before any trial starts
        sampler = instantiate(s.sampler) if s.sampler else None
        study = open_study(spec, name, s.direction, sampler, pruner)
        log.info("study %s in %s: %d trials so far", name, spec, len(study.trials))
        deadline = time.monotonic() + s.timeout if s.timeout else None
        failures = 0
        while True:
            fail_stale_trials(study, s.grace_period)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            done = sum(st in (TrialState.COMPLETE, TrialState.PRUNED) for st in states)
            if done >= s.n_trials:
                log.info("study %s holds %d finished trials (n_trials=%d): done", name, done, s.n_trials)
                break
            if deadline is not None and time.monotonic() > deadline:
                log.info("timeout of %s s reached: this worker starts no new trial", s.timeout)
                break
            if failures > s.n_trials:
                log.error("%d jobs of this worker failed: stopping (see the trial folders' train.log)", failures)
                break
            if done + states.count(TrialState.RUNNING) >= s.n_trials:
                time.sleep(POLL_SECONDS)  # the last trials run in other workers; one may still fail or die
                continue
            trial = study.ask(space)
            if custom is not None:
                custom(s, trial)
            if self._surplus(study, trial.number, s.n_trials):
                study.tell(trial, state=TrialState.FAIL)  # another worker asked at the same moment: enough trials
                continue
            heartbeat = Heartbeat(study._storage, trial._trial_id, s.heartbeat_interval)
            try:
                state, value = self._run(trial, fixed, spec, name, sweep_dir)
            finally:
                heartbeat.stop()
            failures += state == TrialState.FAIL
            try:
                study.tell(trial, value, state=state)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError) as e:
                log.warning("trial %d: could not record its result (%s)", trial.number, e)  # failed as stale
        self._write_results(study, sweep_dir)
        return None

    @staticmethod
    def _surplus(study, number: int, n_trials: int) -> bool:
        """Whether trials numbered below `number` that are finished, running or queued already make n_trials."""
        from optuna.trial import TrialState

        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        return sum(t.number < number for t in study.get_trials(deepcopy=False, states=live)) >= n_trials

    def _run(self, trial, fixed: list[str], spec: str, name: str, sweep_dir: Path) -> tuple[Any, float | None]:
        """Runs the trial's job in `trial-NNNN/`; its state and value from the job's metrics.json."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

        folder = sweep_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("folder", str(folder))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which worker ran it
        overrides = [
            *fixed,
            *(f"{k}={as_override(v)}" for k, v in trial.params.items()),
            f"optuna.storage='{spec}'",
            f"optuna.study={name}",
            f"optuna.trial={trial.number}",
            f"hydra.sweep.subdir={folder.name}",
        ]
        (ret,) = self.launcher.launch([overrides], initial_job_idx=trial.number)
        metrics = folder / "metrics.json"
        record = json.loads(metrics.read_text()) if metrics.exists() else {}
        value = record.get("objective")
        if ret.status != JobStatus.COMPLETED or not isinstance(value, int | float) or not math.isfinite(value):
            return TrialState.FAIL, None
        if record.get("status") == "pruned":
            return TrialState.PRUNED, None
        return (TrialState.COMPLETE, float(value)) if record.get("status") == "finished" else (TrialState.FAIL, None)

    @staticmethod
    def _write_results(study, sweep_dir: Path) -> None:
        from optuna.trial import TrialState

        from diffexp.files import atomic_write_text

        if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            return
        best = study.best_trial
        result = {"name": "optuna", "best_trial": best.number, "best_params": best.params, "best_value": best.value}
        atomic_write_text(sweep_dir / "optimization_results.yaml", OmegaConf.to_yaml(result))
