"""The one kind of error a user can fix by changing a setting, and how entry points report it."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("diffexp")


class ConfigError(ValueError):
    """A bad setting: the message is one line naming the setting and the fix."""


def report(run: Callable[[Any], Any], cfg: Any, in_multirun: bool = False) -> Any:
    """Runs an entry point's `run(cfg)`; a ConfigError becomes one line and exit status 2, with no traceback.

    Inside a Hydra multirun the line is logged and the job returns None instead, so the sweep goes on
    (`sys.exit` in one job would end them all). `HYDRA_FULL_ERROR=1` keeps the full traceback.
    """
    try:
        return run(cfg)
    except ConfigError as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if in_multirun:
            log.error("error: %s", e)
            return None
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
