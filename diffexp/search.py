"""The Optuna side of a search that both the sweeper (hydra_plugins/diffexp_optuna_sweeper) and its jobs need.

A study's storage is given as one string: an Optuna URL (`sqlite:///FILE`, `postgresql://...`: an RDB storage) or a
file path (Optuna's journal file, for a shared file system). The study carries its pruner (a `_target_` dict in its
user attribute `pruner`), so a job in any process or on any machine prunes with the sweep file's pruner.

Dead workers: a worker writes the time into each trial it runs (system attribute `diffexp:heartbeat`) every
`heartbeat_interval` seconds. Optuna's own heartbeats exist for RDB storages only (its JournalStorage has none), so
this one works the same on SQLite, PostgreSQL and a journal file: a RUNNING trial whose heartbeat is older than the
grace period belongs to a dead worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytorch_lightning as pl

if TYPE_CHECKING:  # optuna is imported where it is used: a plain training run never needs it
    import optuna

log = logging.getLogger("diffexp.search")
HEARTBEAT = "diffexp:heartbeat"


def local_file(spec: str) -> Path | None:
    """The file behind a SQLite URL or a journal path (None for a database server)."""
    if spec.startswith("sqlite:///"):
        return Path(spec[len("sqlite:///") :])
    return None if "://" in spec else Path(spec)


def make_storage(spec: str) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL (RDB storage) or a file path (journal file storage)."""
    import optuna

    if "://" not in spec:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(Path(spec).expanduser())))
    # SQLite waits up to a minute for another worker's write instead of failing after 5 s.
    kwargs = {"connect_args": {"timeout": 60}} if spec.startswith("sqlite") else {}
    return optuna.storages.RDBStorage(spec, engine_kwargs=kwargs)


@contextlib.contextmanager
def _creation_lock(spec: str) -> Iterator[None]:
    """Workers on one machine create a local storage's tables and study one at a time."""
    path = local_file(spec)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def open_study(
    spec: str,
    name: str,
    direction: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner_cfg: dict | None = None,
) -> optuna.Study:
    """Creates the study or loads it, race-free: a file lock for local storage; for a database server, another
    machine's worker may create the tables or the study at the same moment (PostgreSQL then raises): load again."""
    import optuna

    with _creation_lock(spec):
        for attempt in range(5):
            try:
                study = optuna.create_study(
                    storage=make_storage(spec),
                    study_name=name,
                    direction=direction,
                    sampler=sampler,
                    load_if_exists=True,
                )
                break
            except Exception as e:  # noqa: BLE001 (the SQL errors of a lost creation race vary by database)
                if attempt == 4:
                    raise
                log.info("study creation raced (%s); loading it again", type(e).__name__)
                time.sleep(0.5 * (attempt + 1))
        if pruner_cfg is not None:
            study.set_user_attr("pruner", pruner_cfg)
    return study


def pruner_of(storage: optuna.storages.BaseStorage, study_id: int) -> optuna.pruners.BasePruner:
    """The pruner the sweep file chose, as the study records it; none if the study has none."""
    import optuna
    from hydra.utils import instantiate

    cfg = storage.get_study_user_attrs(study_id).get("pruner")
    return instantiate(cfg) if cfg else optuna.pruners.NopPruner()


class Heartbeat:
    """Writes the time into a running trial every `interval` seconds, from a thread, until `stop`."""

    def __init__(self, storage, trial_id: int, interval: float) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self.beat()
        self._thread = threading.Thread(target=self._run, daemon=True, name="diffexp-heartbeat")
        self._thread.start()

    def beat(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as e:  # noqa: BLE001 (a finished trial or a busy database: the next beat retries)
                log.debug("heartbeat: %s", e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def fail_stale_trials(study, grace_period: float) -> list[int]:
    """Fails the RUNNING trials whose worker stopped beating (killed, machine lost) and enqueues each one's
    parameters again, so a new trial in a new folder retries it. Returns the failed trial numbers."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        last = t.system_attrs.get(HEARTBEAT) or (t.datetime_start.timestamp() if t.datetime_start else now)
        if now - last <= grace_period:
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker failed it first, or it just finished
        study.set_user_attr(f"stale:{t.number}", now)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log.warning("trial %d: its worker stopped (no heartbeat for %.0f s); retrying it", t.number, now - last)
        failed.append(t.number)
    return failed


class TrialReport(pl.Callback):
    """Reports each evaluation's `monitor` figure to the job's Optuna trial at step = the evaluation's images
    point, and stops training when the study's pruner says so (`pruned_at` then holds that point)."""

    def __init__(self, evaluate, spec: str, study_name: str, number: int, monitor: str) -> None:
        import optuna

        storage = make_storage(spec)
        study_id = storage.get_study_id_from_name(study_name)
        study = optuna.load_study(study_name=study_name, storage=storage, pruner=pruner_of(storage, study_id))
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        self.trial = optuna.trial.Trial(study, trial_id)
        self.evaluate, self.monitor, self.reported = evaluate, monitor, 0
        self.pruned_at: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if len(self.evaluate.history) == self.reported:
            return
        self.reported = len(self.evaluate.history)
        entry = self.evaluate.history[-1]
        prune = False
        if trainer.is_global_zero:
            value = entry.get(self.monitor)
            if value is not None and math.isfinite(value):
                self.trial.report(float(value), step=int(entry["images"]))
                prune = entry["step"] < trainer.max_steps and self.trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            self.pruned_at = int(entry["images"])
            trainer.should_stop = True


class StopAt(pl.Callback):
    """Stops training after `step`, as the study's pruner once stopped the trial being reproduced there (the LR
    schedule keeps the full budget's horizon, so the steps match); `pruned_at` then holds that point in images."""

    def __init__(self, step: int, images: int) -> None:
        self.step, self.images = step, images
        self.pruned_at: int | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            self.pruned_at = self.images
            trainer.should_stop = True


def trial_keys(cfg: Any) -> dict | None:
    """The job's `optuna` keys when it runs as a trial of a study (set by the sweeper), else None."""
    keys = cfg.get("optuna")
    return keys if keys and keys.get("trial") is not None else None
