"""Which searched settings mattered: an Optuna study's parameter importances (fANOVA), as a table and a bar plot.

A sweep folder's study is found where the sweeper put it: `optuna.db` in the folder (the default SQLite storage),
else the storage and study its trial jobs recorded (`optuna.storage`, `optuna.study` in `.hydra/config.yaml`: a
PostgreSQL URL or a journal file). fANOVA fits a random forest to the finished trials, so a handful is too few.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from diffexp.tables import markdown, write_table

log = logging.getLogger("diffexp.report")
MIN_TRIALS = 8  # COMPLETE trials below which importances are noise (fANOVA's forest has too little to split)


def find_study(sweep: Path) -> tuple[str, str] | None:
    """(storage, study name) of the sweep folder's Optuna study, or None when it has none."""
    db = sweep / "optuna.db"
    if db.exists():
        import optuna

        storage = f"sqlite:///{db.resolve()}"
        names = optuna.get_all_study_names(storage)
        if len(names) == 1 or sweep.name in names:
            return storage, names[0] if len(names) == 1 else sweep.name
    for config in sorted(sweep.glob("*/.hydra/config.yaml")):
        keys = OmegaConf.load(config).get("optuna")
        if keys and keys.get("storage") and keys.get("study"):
            return str(keys.storage), str(keys.study)
    return None


def importances(storage: str, name: str) -> tuple[list[dict], int]:
    """Each searched parameter's share of the objective's variance (fANOVA, fixed seed), largest first, and the
    number of COMPLETE trials it rests on; no rows when they are fewer than MIN_TRIALS."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances
    from optuna.trial import TrialState

    if "://" not in storage:  # a journal file (diffexp.search.make_storage, without importing Lightning)
        from optuna.storages.journal import JournalFileBackend

        storage = optuna.storages.JournalStorage(JournalFileBackend(storage))
    study = optuna.load_study(study_name=name, storage=storage)
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete < MIN_TRIALS:
        return [], complete
    found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    return [{"parameter": k, "importance": round(float(v), 4)} for k, v in found.items()], complete


def plot(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 0.5 * len(rows) + 1.2))
    names = [r["parameter"] for r in rows][::-1]
    ax.barh(names, [r["importance"] for r in rows][::-1], color="tab:blue")
    ax.set_xlabel("importance (fANOVA: share of the objective's variance)")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def section(sweeps: list[str], folder: Path) -> str:
    """The report's importances section (Markdown) for each sweep folder holding a study; writes
    `importances.csv` and `importances.png` (a `-2`, `-3` suffix for further studies) into the report `folder`."""
    parts, written = [], 0
    for s in sweeps:
        found = find_study(Path(s).expanduser())
        if found is None:
            continue
        storage, name = found
        try:
            rows, complete = importances(storage, name)
        except Exception as e:  # noqa: BLE001 (a database that is gone or unreachable must not stop the report)
            parts.append(f"Study `{name}` ({storage}) could not be read: {type(e).__name__}: {e}\n")
            continue
        if not rows:
            parts.append(f"Study `{name}`: {complete} finished trials; importances need at least {MIN_TRIALS}.\n")
            continue
        written += 1
        suffix = f"-{written}" if written > 1 else ""  # counts written studies, not notes on the others
        write_table(rows, ["parameter", "importance"], folder / f"importances{suffix}.csv")
        plot(rows, f"{name}: {complete} finished trials", folder / f"importances{suffix}.png")
        parts.append(
            f"Study `{name}` ({complete} finished trials; Optuna's fANOVA, seed 0: each setting's share of the "
            f"objective's variance):\n\n{markdown(rows, ['parameter', 'importance'])}\n"
            f"![importances](importances{suffix}.png)\n"
        )
    return "\n## Parameter importances (Optuna study)\n\n" + "\n".join(parts) if parts else ""
