"""`metrics.json`: a run's final figures as one typed, versioned record.

Training writes it (status `running` at the start, the figures at the end, `failed` with a reason on an error);
the report, export, the model card, reproduce and the sweeper read it back through `RunRecord.read`. Files of older
versions read as the current one (absent fields are None), and keys this version does not know are kept as read,
so a newer diffexp's file is never cut down by an older one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from diffexp.files import atomic_write_text

VERSION = 3  # 1: the untyped dict of diffexp before the record (no "version" key); 3 adds heldout and process
STATUSES = ("running", "finished", "pruned", "failed")


@dataclass
class RunRecord:
    """What one run reached. `eval` and `eval_best` are figure records (`diffexp.heldout.Reference.score`): name
    -> value, `<name>_ci` -> [lo, hi], with the step, the feature net and the sample counts."""

    status: str | None = None  # one of STATUSES (None: a record made for a pipeline folder that has none)
    reason: str | None = None  # why it failed or was pruned
    parameters: int | None = None  # the UNet's parameter count
    recipe: dict[str, str] = field(default_factory=dict)  # the option chosen in each config group
    environment: dict[str, Any] = field(default_factory=dict)  # code and library versions, threads (provenance)
    wandb_id: str | None = None  # kept across resumes
    steps: int | None = None
    images_seen: int | None = None
    train_seconds: float | None = None
    final_loss: float | None = None  # the mean of the last 50 steps' losses
    eval: dict[str, Any] | None = None  # the final evaluation
    eval_best: dict[str, Any] | None = None  # the best evaluation by eval.monitor
    eval_history: list[dict[str, Any]] = field(default_factory=list)
    objective: float | None = None  # what a sweep optimises: the final eval.monitor figure, else the final loss
    objective_name: str | None = None
    heldout: dict[str, Any] | None = None  # the held-out set's fingerprint (diffexp.identity); None: an older run
    process: dict[str, Any] | None = None  # host, pid and start time of the process training it (`stopped_reason`)
    version: int = VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # keys of another version, written back as read

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """A record from a parsed `metrics.json` of any version."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "version"}
        known = {k: v for k, v in data.items() if k in names and v is not None}
        extra = {k: v for k, v in data.items() if k not in names and k != "version"}
        return cls(**known, version=int(data.get("version", 1)), extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data, "version": VERSION}

    @classmethod
    def read(cls, folder: Path) -> RunRecord | None:
        """The record of the run in `folder`; None where there is none (refused, or killed before it started)."""
        path = Path(folder) / "metrics.json"
        return cls.from_dict(json.loads(path.read_text())) if path.exists() else None

    def write(self, folder: Path) -> RunRecord:
        """Writes the record to `folder/metrics.json` atomically (a reader never sees half a file)."""
        atomic_write_text(Path(folder) / "metrics.json", json.dumps(self.to_dict(), indent=2, default=str) + "\n")
        return self

    @classmethod
    def update(cls, folder: Path, **fields: Any) -> RunRecord:
        """Sets `fields` in the run's record (a new record where there is none) and writes it."""
        record = cls.read(folder) or cls()
        return dataclasses.replace(record, **fields).write(folder)


STALE_SECONDS = 6 * 3600  # a run on another host that wrote no file for this long is read as stopped


def process_identity() -> dict[str, Any]:
    """This process as a running run records it: host, pid and the pid's start time (a reused pid has another)."""
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "started": psutil.Process().create_time()}


def stopped_reason(record: RunRecord, folder: Path, now: float | None = None) -> str | None:
    """Why a run whose record says `running` is not running any more, or None where it may still be.

    On the host that trained it, the recorded process is looked up: gone (or its pid reused by a process started at
    another time) means it was killed. Elsewhere, or for runs recorded before the process was, a run folder where no
    file changed for `STALE_SECONDS` is read as stopped.
    """
    proc = record.process or {}
    if proc.get("host") == socket.gethostname() and proc.get("pid"):
        import psutil

        try:
            alive = abs(psutil.Process(int(proc["pid"])).create_time() - float(proc["started"])) < 1.0
        except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError, TypeError):
            alive = False
        return None if alive else f"stopped: its process (pid {proc['pid']} on {proc['host']}) is gone"
    files = [p.stat().st_mtime for p in Path(folder).rglob("*") if p.is_file()]
    idle = (now or time.time()) - max(files, default=0.0)
    if idle > STALE_SECONDS:
        return f"stopped: no file in its folder changed for {idle / 3600:.1f} h (killed, or its machine went down)"
    return None
