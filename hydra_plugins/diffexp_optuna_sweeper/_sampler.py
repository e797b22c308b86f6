"""A sampler whose random draws for a trial follow from (seed, trial number) alone.

Why: every worker of a study builds the same seeded sampler, so its random state replays the same draws: two workers
asked the same start-up parameters, and a worker started later replayed the start-up from the beginning. Optuna has
no per-ask seed (its `reseed_rng` draws from OS entropy), so before each trial this wrapper reseeds the wrapped
sampler's generators (TPE's own and its random start-up sampler's) from the trial number: workers asking different
trial numbers draw differently, one worker reproduces its search from the seed, and a restarted worker continues.
The module's name starts with `_`, so Hydra's plugin scan at every command's start does not import Optuna.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

INNER = ("_random_sampler", "_independent_sampler", "_base_sampler")  # where Optuna's samplers keep a sub-sampler


def generators(sampler: BaseSampler) -> Iterator[np.random.RandomState]:
    """The random generators of a sampler and of the samplers it delegates to, in a fixed order."""
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            yield value.rng
        elif isinstance(value, np.random.RandomState):
            yield value
    for name in INNER:
        inner = getattr(sampler, name, None)
        if isinstance(inner, BaseSampler):
            yield from generators(inner)


class TrialSeeded(BaseSampler):
    """Delegates every draw to `sampler`, after seeding its generators from (`seed`, trial number); `seed` None
    takes one from OS entropy (distinct workers, not reproducible)."""

    def __init__(self, sampler: BaseSampler, seed: int | None) -> None:
        self.sampler = sampler
        self.seed = secrets.randbits(32) if seed is None else int(seed)

    def __str__(self) -> str:
        return f"TrialSeeded({self.sampler}, seed={self.seed})"

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        for k, rng in enumerate(generators(self.sampler)):
            rng.seed(np.random.SeedSequence([self.seed, trial.number, k]).generate_state(4))
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()
