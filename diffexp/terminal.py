"""What a training run shows a person: one progress bar for the whole run, the run's own log lines, and none of the
libraries' notices that are not the user's to act on.

Each notice is silenced where it starts (a warning by its message, a library's info logger, W&B's own settings),
never by hiding all warnings: a new warning still shows. `verbose=true` shows everything the libraries print.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import AbstractContextManager, nullcontext

import pytorch_lightning as pl

log = logging.getLogger("diffexp.train")

# Warnings raised inside the libraries on every run, about nothing the user set: (message regex, category).
WARNINGS = [
    # Lightning sees Debian's slurm-client on PATH and suggests srun, even for a plain local run.
    (r"The `srun` command is available on your system but is not used", Warning),
    # Lightning 2.6's own use of a torch 2.13 deprecation (pytorch_lightning/utilities/_pytree.py).
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
]
# Info loggers that print Lightning's banner lines ("GPU available: False", "TPU available", a litlogger tip,
# "`Trainer.fit` stopped: `max_steps=N` reached", "`weights_only` was not set") and "Seed set to 0". Their warnings
# still show.
INFO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "pytorch_lightning.trainer.connectors.checkpoint_connector",
    "lightning_fabric.utilities.seed",
)


def quiet(verbose: bool) -> None:
    """Silences the notices above for this process; `verbose` leaves every library's output as it is."""
    if verbose:
        return
    for message, category in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in INFO_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class RunProgress(pl.callbacks.ProgressBar):
    """One bar for the whole run: steps of the total, images seen of the total, rate, ETA and the (smoothed) loss.

    About every tenth of the run it also logs a line (to the terminal above the bar, and to `train.log`), so the
    log holds the run's course; where stderr is a file rather than a terminal (SLURM, nohup, CI) those lines are all
    it prints. Rank 0 only. Per step it costs a float and a counter (no terminal write unless
    `refresh` seconds passed), so the training step keeps its speed (`make bench`).
    """

    def __init__(self, batch_size: int, refresh: float = 0.5, lines: int = 10) -> None:
        super().__init__()
        self.batch_size, self.refresh, self.lines = batch_size, refresh, lines
        self._enabled = True
        self.bar = None
        self.loss: float | None = None
        self._redirect: AbstractContextManager = nullcontext()

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self.per_step = self.batch_size * trainer.world_size
        self.start, self.first = time.perf_counter(), trainer.global_step
        if not bars_wanted():  # a log file (SLURM, nohup, CI): the lines alone, no bar
            self.bar = _Counter(trainer.global_step)
            return
        self.bar = tqdm(
            total=trainer.max_steps,
            initial=trainer.global_step,
            desc="train",
            unit="step",
            dynamic_ncols=bar_columns() is None,  # follow the window's width, where it reports one
            ncols=bar_columns(),
            mininterval=self.refresh,
            smoothing=0.05,
            file=sys.stderr,
        )
        self._redirect = logging_redirect_tqdm()  # log lines print above the bar instead of through it
        self._redirect.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.bar is None:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            value = float(loss)
            self.loss = value if self.loss is None else 0.9 * self.loss + 0.1 * value
        step, total = trainer.global_step, trainer.max_steps
        self.bar.set_postfix_str(self._figures(step, total), refresh=False)
        self.bar.update(step - self.bar.n)
        every = max(1, total // self.lines)
        if step % every == 0 or step == total:
            self._log_line(trainer, step, total)

    def _figures(self, step: int, total: int) -> str:
        loss = f", loss {self.loss:.4f}" if self.loss is not None else ""
        return f"{step * self.per_step:,}/{total * self.per_step:,} images{loss}"

    def _log_line(self, trainer: pl.Trainer, step: int, total: int) -> None:
        seconds = time.perf_counter() - self.start
        rate = (step - self.first) / seconds if seconds > 0 else 0.0
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        left = (total - step) / rate if rate > 0 else float("nan")
        log.info(
            "step %d/%d (%s): lr %.2e, %.2f steps/s, %s elapsed, %s left",
            step, total, self._figures(step, total), lr, rate, _clock(seconds), _clock(left),
        )  # fmt: skip

    def on_train_end(self, trainer, pl_module) -> None:
        self.close()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self._redirect.__exit__(None, None, None)
            self.bar, self._redirect = None, nullcontext()


class _Counter:
    """The bar's bookkeeping without a bar, where the output is a file rather than a terminal."""

    def __init__(self, n: int) -> None:
        self.n = n

    def update(self, k: int) -> None:
        self.n += k

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


def bars_wanted() -> bool:
    """Progress bars go to a terminal or a notebook (tqdm.auto's widget), never into a pipe or a log file."""
    from tqdm.asyncio import tqdm as plain_async
    from tqdm.auto import tqdm
    from tqdm.std import tqdm as plain

    return stderr_is_terminal() or tqdm not in (plain, plain_async)


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: asked of the file descriptor, since W&B wraps `sys.stderr` to record it."""
    try:
        return os.isatty(sys.__stderr__.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def bar_columns(fd: int | None = None) -> int | None:
    """None where the terminal reports its width (the bar follows it); 80 where it reports 0 columns (a pty
    nobody sized, some CI and container consoles), where a bar sized by it would be empty."""
    try:
        columns = os.get_terminal_size(sys.__stderr__.fileno() if fd is None else fd).columns
    except (AttributeError, OSError, ValueError):
        return 80
    return None if columns > 0 else 80


def _clock(seconds: float) -> str:
    if seconds != seconds:  # nan
        return "?"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"
