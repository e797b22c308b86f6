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


def study_direction(direction: str | None, monitor: str | None) -> str:
    """The study's direction: the monitor's (diffexp.metrics.HIGHER_IS_BETTER; with no monitor the objective is the
    final loss: minimize). An explicit direction against the monitor would search for the worst recipe: refused."""
    from diffexp.errors import ConfigError
    from diffexp.metrics import HIGHER_IS_BETTER

    implied = "maximize" if HIGHER_IS_BETTER.get(monitor or "final_loss", False) else "minimize"
    if direction is None:
        return implied
    if direction not in ("minimize", "maximize"):
        raise ConfigError(f"hydra.sweeper.direction={direction}: use null (from eval.monitor), minimize or maximize")
    if direction != implied:
        objective = f"eval.monitor={monitor}" if monitor else "the final loss (no eval.monitor)"
        raise ConfigError(
            f"hydra.sweeper.direction={direction} contradicts {objective}, which a search must {implied[:-1]}e: "
            f"drop the setting (null follows eval.monitor) or set hydra.sweeper.direction={implied}"
        )
    return direction


def trial_seeds(base: int, seeds_per_trial: int) -> list[int]:
    """The training seeds each drawn recipe trains with, one after another: base, base+1, ..."""
    from diffexp.errors import ConfigError

    if seeds_per_trial < 1:
        raise ConfigError(f"hydra.sweeper.seeds_per_trial={seeds_per_trial}: use 1 or more training seeds a trial")
    return [base + k for k in range(seeds_per_trial)]


def build_sampler(sampler_cfg: Any) -> Any:
    """The sweep file's sampler, its draws seeded per trial from its `seed` (see _sampler.TrialSeeded)."""
    import optuna
    from hydra.utils import instantiate

    from hydra_plugins.diffexp_optuna_sweeper._sampler import TrialSeeded

    if not sampler_cfg:
        return TrialSeeded(optuna.samplers.TPESampler(), None)
    return TrialSeeded(instantiate(sampler_cfg), sampler_cfg.get("seed"))


def repeat_of(study, trial) -> Any:
    """The earlier COMPLETE trial with the trial's parameters and seeds, whose result the trial takes instead of
    training the same run again; None for a new draw, and for a dead worker's retry (`retry_of`), which is meant.
    A repeat of a PRUNED or FAILED trial trains: its result is not known."""
    from optuna.trial import TrialState

    if "retry_of" in trial.user_attrs:
        return None
    seeds = trial.user_attrs.get("seeds")
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.number != trial.number and t.params == trial.params and t.user_attrs.get("seeds") == seeds:
            return t
    return None


class DiffexpOptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """A bad sweep setting is one line and exit status 2, before any folder or study is made."""
        from diffexp.errors import report

        return report(self._sweep, arguments)

    def _sweep(self, arguments: list[str]) -> None:
        import optuna
        from hydra.utils import get_method
        from optuna.trial import TrialState

        from diffexp.runtime import register
        from diffexp.search import Heartbeat
        from diffexp.warm_start import check_k, enqueue, load_source

        register()  # a live training of this host for as long as the worker lives (threads=auto shares the cores)
        s = self.config.hydra.sweeper
        direction = study_direction(s.direction, OmegaConf.select(self.config, "eval.monitor"))
        seeds = trial_seeds(int(OmegaConf.select(self.config, "seed") or 0), s.seeds_per_trial)
        params = [f"{k}={v}" for k, v in (s.params or {}).items()]
        fixed, space = search_space([*arguments, *params])
        if len(seeds) > 1:  # each job of a trial gets its own seed=
            fixed = [o for o in fixed if o.lstrip("+~").split("=")[0] != "seed"]
        custom = get_method(s.custom_search_space) if s.custom_search_space else None
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()
        spec = s.storage or f"sqlite:///{sweep_dir / 'optuna.db'}"
        if "://" not in spec:
            spec = str(Path(spec).expanduser().resolve())  # a journal file, found again from every job's folder
        earlier = None
        if s.warm_start:  # read before anything is made, so a bad source leaves nothing behind
            check_k(s.warm_start_k)
            earlier = load_source(str(s.warm_start), s.warm_start_study)
        study = self._open_study(s, spec, sweep_dir, direction)
        if earlier is not None:
            enqueue(study, earlier, s.warm_start_k, space, custom is not None)
        deadline = time.monotonic() + s.timeout if s.timeout else None
        failures = 0
        while self._go_on(study, s, deadline, failures):
            trial = study.ask(space)
            if custom is not None:
                custom(s, trial)
            trial.set_user_attr("seeds", seeds)
            if self._surplus(study, trial.number, s.n_trials):
                study.tell(trial, state=TrialState.FAIL)  # another worker asked at the same moment: enough trials
                continue
            if self._take_repeat(study, trial):
                continue
            heartbeat = Heartbeat(study._storage, trial._trial_id, s.heartbeat_interval)
            try:
                state, value = self._run(trial, fixed, spec, study.study_name, sweep_dir, seeds)
            finally:
                heartbeat.stop()
            failures += state == TrialState.FAIL
            try:
                study.tell(trial, value, state=state)
            except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError) as e:
                log.warning("trial %d: could not record its result (%s)", trial.number, e)  # failed as stale
        self._write_results(study, sweep_dir)

    def _open_study(self, s: DictConfig, spec: str, sweep_dir: Path, direction: str) -> Any:
        """The study, with the sweep file's sampler; its pruner recorded for the jobs."""
        from hydra.utils import instantiate

        from diffexp.errors import ConfigError
        from diffexp.search import open_study

        pruner = OmegaConf.to_container(s.pruner, resolve=True) if s.pruner else None
        if pruner:
            instantiate(pruner)  # a bad pruner setting fails here, before any trial starts
        sampler = build_sampler(s.sampler)
        name = s.study_name or sweep_dir.name
        sweep_dir.mkdir(parents=True, exist_ok=True)
        study = open_study(spec, name, direction, sampler, pruner)
        made = study.direction.name.lower()
        if made != direction:
            raise ConfigError(
                f"hydra.sweeper.direction: study {name} in {spec} was made to {made}, this search would {direction}: "
                f"give this objective its own study (hydra.sweeper.study_name=... or sweep_name=...)"
            )
        log.info("study %s in %s (%s): %d trials so far", name, spec, direction, len(study.trials))
        return study

    @staticmethod
    def _go_on(study, s: DictConfig, deadline: float | None, failures: int) -> bool:
        """Whether this worker starts another trial; it waits while the study's last trials run in other workers
        (one may still fail or die)."""
        from optuna.trial import TrialState

        from diffexp.search import fail_stale_trials

        while True:
            fail_stale_trials(study, s.grace_period)
            states = [t.state for t in study.get_trials(deepcopy=False)]
            done = sum(st in (TrialState.COMPLETE, TrialState.PRUNED) for st in states)
            if done >= s.n_trials:
                log.info("study %s holds %d finished trials (n_trials=%d): done", study.study_name, done, s.n_trials)
                return False
            if deadline is not None and time.monotonic() > deadline:
                log.info("timeout of %s s reached: this worker starts no new trial", s.timeout)
                return False
            if failures > s.n_trials:
                log.error("%d jobs of this worker failed: stopping (see the trial folders' train.log)", failures)
                return False
            if done + states.count(TrialState.RUNNING) < s.n_trials:
                return True
            time.sleep(POLL_SECONDS)

    @staticmethod
    def _surplus(study, number: int, n_trials: int) -> bool:
        """Whether trials numbered below `number` that are finished, running or queued already make n_trials."""
        from optuna.trial import TrialState

        live = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
        return sum(t.number < number for t in study.get_trials(deepcopy=False, states=live)) >= n_trials

    @staticmethod
    def _take_repeat(study, trial) -> bool:
        """Completes a trial that repeats a COMPLETE one (same parameters and seeds) with that trial's value and
        folder, training nothing: the same run twice would count one result as two."""
        earlier = repeat_of(study, trial)
        if earlier is None:
            return False
        trial.set_user_attr("repeat_of", earlier.number)
        trial.set_user_attr("folder", earlier.user_attrs.get("folder"))
        study.tell(trial, earlier.value)
        log.info(
            "trial %d repeats trial %d (same parameters and seeds): its value, no training",
            trial.number,
            earlier.number,
        )
        return True

    def _run(
        self, trial, fixed: list[str], spec: str, name: str, sweep_dir: Path, seeds: list[int]
    ) -> tuple[Any, float | None]:
        """Trains the trial's recipe with each seed in turn, in `trial-NNNN/` (further seeds in `trial-NNNN-seedS/`).
        Only the first seed's job reports to the trial, so the pruner judges that curve and a pruned first seed ends
        the trial; the trial's value is the mean of its seeds' objectives."""
        from optuna.trial import TrialState

        from diffexp.search_check import as_override  # the form the up-front check composed

        first = f"trial-{trial.number:04d}"
        folders = [sweep_dir / (first if k == 0 else f"{first}-seed{seed}") for k, seed in enumerate(seeds)]
        trial.set_user_attr("folder", str(folders[0]))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # which worker ran it
        if len(seeds) > 1:
            trial.set_user_attr("folders", [str(f) for f in folders])
        recipe = [*fixed, *(f"{k}={as_override(v)}" for k, v in trial.params.items())]
        report = [f"optuna.storage='{spec}'", f"optuna.study={name}", f"optuna.trial={trial.number}"]
        values = []
        for k, (seed, folder) in enumerate(zip(seeds, folders, strict=True)):
            overrides = [*recipe, *(report if k == 0 else []), f"hydra.sweep.subdir={folder.name}"]
            state, value = self._job([*overrides, f"seed={seed}"] if len(seeds) > 1 else overrides, folder, trial)
            if state != TrialState.COMPLETE:
                return state, None
            values.append(value)
        if len(values) > 1:
            trial.set_user_attr("values", values)
        return TrialState.COMPLETE, sum(values) / len(values)

    def _job(self, overrides: list[str], folder: Path, trial) -> tuple[Any, float | None]:
        """Runs one job; its state and value from its metrics.json."""
        from hydra.core.utils import JobStatus
        from optuna.trial import TrialState

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
