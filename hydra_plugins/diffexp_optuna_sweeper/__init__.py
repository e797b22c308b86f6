"""diffexp's own Optuna sweeper for Hydra (`hydra/sweeper=diffexp_optuna`, used by sweeps/optuna_*.yaml).

Why it exists: hydra-optuna-sweeper 1.3 pins optuna<3 (and so SQLAlchemy<2), runs trials in batches, keeps its
default study in memory and gives a job no access to its trial. This one runs on current Optuna with ask-and-tell:
one trial at a time per worker (N workers = N commands sharing one storage, none waits on another), a SQLite study
by default, job folders named by trial number, pruning through the job's `optuna.*` keys, dead-worker retries.
Hydra finds sweepers only in the `hydra_plugins` namespace package, so it lives here, shipped by pyproject.
"""
