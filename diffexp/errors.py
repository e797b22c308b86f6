"""The one kind of error a user can fix by changing a setting, and how entry points report errors."""

from __future__ import annotations

import difflib
import logging
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("diffexp")


class ConfigError(ValueError):
    """A bad setting: the message is one line naming the setting and the fix."""


def nearest(key: str, keys: Iterable[str]) -> str:
    """` (did you mean X?)` for the real key nearest a misspelt one, or "" where none is near enough to help."""
    close = difflib.get_close_matches(key, [k for k in keys if k != key], n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


class ForeignFolderError(ConfigError):
    """The run folder belongs to another run: nothing may be recorded in it."""


def report(
    run: Callable[[Any], Any],
    cfg: Any,
    in_multirun: bool = False,
    record_failure: Callable[[str], None] | None = None,
) -> Any:
    """Runs an entry point's `run(cfg)`; a ConfigError becomes one line and exit status 2, with no traceback.

    Any failure is first handed to `record_failure`, so the run's folder can say why it failed; but not a single
    run's ConfigError, a refusal before any work: the folder it names (`resume=` a finished run) stays as it was.

    Inside a Hydra multirun any failure is logged as one line and the job returns None, so the sweep goes on
    (`sys.exit` in one job would end them all) and an Optuna sweeper records the trial as failed.
    `HYDRA_FULL_ERROR=1` keeps the full traceback.
    """
    try:
        return run(cfg)
    except Exception as e:
        line = str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}".splitlines()[0]
        refused = isinstance(e, ForeignFolderError) or (isinstance(e, ConfigError) and not in_multirun)
        if record_failure is not None and not refused:
            record_failure(line)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" or not (in_multirun or isinstance(e, ConfigError)):
            raise
        if not in_multirun:
            print(f"error: {line}", file=sys.stderr)
            sys.exit(2)
        log.error("error: %s", line)
        return None
