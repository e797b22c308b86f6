"""Warm start: a search's first trials are the best recipes of an earlier study (e.g. the tiny model's, before the
small one's search), so TPE starts from what already worked instead of from random draws.

`hydra.sweeper.warm_start` names the earlier study's storage: a sweep folder (its `optuna.db`), an Optuna URL, or a
journal file; its study is the folder's name, `hydra.sweeper.warm_start_study`, or the storage's only study. The
`warm_start_k` best COMPLETE trials (by that study's direction) are enqueued with the parameters both searches
share (a value outside this search's range or choices is left to the sampler), each at most once however many
workers or reruns enqueue them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from diffexp.errors import ConfigError

log = logging.getLogger("diffexp.sweeper")


def source_spec(source: str) -> tuple[str, str | None]:
    """The storage spec of `warm_start` and the study name it implies (a sweep folder's name; None otherwise)."""
    if "://" in source:
        return source, None
    path = Path(source).expanduser().resolve()
    if path.is_dir():
        db = path / "optuna.db"
        if not db.exists():
            raise ConfigError(
                f"hydra.sweeper.warm_start={source}: the folder holds no optuna.db: point it at a finished search's "
                f"sweep folder (multirun/<sweep name>), its storage URL or its journal file"
            )
        return f"sqlite:///{db}", path.name
    if not path.exists():
        raise ConfigError(f"hydra.sweeper.warm_start={source}: no such folder or journal file")
    return str(path), None


def load_source(source: str, study_name: str | None) -> Any:
    """The earlier study, read only."""
    import optuna

    from diffexp.search import make_storage

    spec, implied = source_spec(source)
    storage = make_storage(spec)
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    name = study_name or implied or (names[0] if len(names) == 1 else None)
    if name not in names:
        which = f"study {name!r} is not in it" if name else f"it holds {len(names)} studies"
        raise ConfigError(
            f"hydra.sweeper.warm_start={source}: {which} ({', '.join(names) or 'none'}): "
            f"name one with hydra.sweeper.warm_start_study=NAME"
        )
    return optuna.load_study(study_name=name, storage=storage)


def best_params(study: Any, k: int) -> list[dict[str, Any]]:
    """The parameters of the study's `k` best COMPLETE trials, best first."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    sign = -1 if study.direction == StudyDirection.MAXIMIZE else 1
    return [t.params for t in sorted(done, key=lambda t: sign * t.value)[:k]]


def shared(params: dict[str, Any], space: dict[str, Any], custom: bool) -> dict[str, Any]:
    """What of `params` this search can take: values its distributions hold; with a custom search space (the same
    function adds the same conditional parameters) the others too."""
    kept = {}
    for name, value in params.items():
        dist = space.get(name)
        if (dist is None and custom) or (dist is not None and holds(dist, value)):
            kept[name] = value
    return kept


def holds(dist: Any, value: Any) -> bool:
    """Whether an Optuna distribution can give `value`: among a categorical's choices, within a range's bounds."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return value in dist.choices
    return isinstance(value, int | float) and dist.low <= value <= dist.high


def check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"hydra.sweeper.warm_start_k={k}: enqueue at least 1 recipe (default 4)")


def enqueue(study: Any, earlier: Any, k: int, space: dict, custom: bool) -> int:
    """Enqueues the `earlier` study's `k` best recipes as this study's next trials; returns how many."""
    check_k(k)
    recipes = [p for p in (shared(p, space, custom) for p in best_params(earlier, k)) if p]
    for params in recipes:
        study.enqueue_trial(params, skip_if_exists=True)
    log.info("warm start: the %d best recipes of study %s enqueued first", len(recipes), earlier.study_name)
    return len(recipes)
