"""diffexp-compare: the recipe report of sweeps: which recipe wins per model size, and at what training cost.

`diffexp-compare sweep=multirun/lr-sweep [metric=fid compute=images_seen out=FOLDER name=best]` (also
`sweep=[DIR1,DIR2]` or `runs=[RUN1,RUN2]`) writes, into a new folder (`<first sweep>/report`, else `report-2`, ...,
built aside and renamed into place whole): `leaderboard.csv/.md`, `recipes.csv/.md` (seeds averaged), `best.md`,
`pareto.png`, `losses.png`, `samples.png`, `conf/experiment/<name>_<size>.yaml` (train one with
`diffexp-train --config-dir REPORT/conf experiment=<name>_<size>`), `importances.csv/.png` (a sweep folder
holding an Optuna study with enough finished trials) and `report.md`.
The parts live in `diffexp/report/`; this module reads the settings, builds the report aside and renames it in.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, ListConfig

from diffexp.cli import entry
from diffexp.config import CONF_DIR
from diffexp.errors import ConfigError, report
from diffexp.files import AtomicFolder
from diffexp.metrics import HIGHER_IS_BETTER
from diffexp.report.experiments import name_experiments, write_experiments
from diffexp.report.importances import section as importances_section
from diffexp.report.pages import (
    LEADERBOARD,
    RECIPES,
    REPORT,
    VERDICTS,
    best_markdown,
    by_size,
    columns_for,
    readable,
    shown,
)
from diffexp.report.plots import plot_pareto, plot_run_losses, plot_samples
from diffexp.report.ranking import (
    basis_note,
    best_recipes,
    choose_metric,
    drop_repeats,
    judge,
    label_recipes,
    rank,
    recipes,
    score,
    spread,
)
from diffexp.report.runs import find_runs, run_row
from diffexp.tables import markdown, write_table

COMPUTE = ("images_seen", "train_seconds")


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple | ListConfig) else [str(value)]


def build(runs: list[dict], metric: str, compute: str, name: str, sources: list[str], folder: Path) -> list[dict]:
    """Writes every part of the report into `folder`; returns the best recipe per model size (and basis)."""
    import matplotlib

    matplotlib.use("Agg")
    runs, repeats = drop_repeats(runs)  # the same recipe and seed twice is one run
    used, fallback = choose_metric(runs, metric)
    higher = HIGHER_IS_BETTER[used]
    board = rank([score(r, used) for r in label_recipes(runs)], higher)
    common = [o for o in runs[0]["overrides"] if all(o in r["overrides"] for r in runs)] if runs else []
    table = judge(recipes(board, higher))
    best = best_recipes(table)
    name_experiments(best, name)  # a name the package ships is refused before anything is written
    bases = sorted({r["basis"] for r in board if r["basis"]})

    ranking = f"Ranked by `{used}` ({'higher' if higher else 'lower'} is better) of the final model" + (
        "." if used == "final_loss" else f"; `best {used}` is the best evaluation during training."
    )
    notes = [ranking, *([fallback] if fallback else []), *([repeats] if repeats else []), VERDICTS]
    if basis_note(used, bases):
        notes.append(basis_note(used, bases))
    header = "\n\n".join([*notes, f"Settings shared by all runs: `{' '.join(common) or '(none)'}`."]) + "\n\n"
    posthoc = any(r.get("ema_sigma_rel") is not None for r in board)
    columns, recipe_columns = columns_for(LEADERBOARD, used, posthoc), columns_for(RECIPES, used, posthoc)
    board_page, table_page = shown(board, used), shown(table, used, recipes=True)
    write_table(board_page, [*columns, "n_fake", "basis", "overrides", "path"], folder / "leaderboard.csv", columns)
    (folder / "leaderboard.md").write_text("# Leaderboard\n\n" + header + by_size(board_page, columns, "runs"))
    write_table(table_page, recipe_columns, folder / "recipes.csv")
    title = "# Recipes (runs that differ only by seed, averaged)\n\n"
    (folder / "recipes.md").write_text(title + header + by_size(table_page, recipe_columns, "recipes"))
    write_experiments(best, used, sources, folder / "conf" / "experiment")
    (folder / "best.md").write_text(best_markdown(best, table, used, notes[:-1], len(bases) > 1))
    plot_pareto(table, used, compute, folder / "pareto.png")
    plot_run_losses(board, folder / "losses.png")
    plot_samples(board, used, folder / "samples.png")

    failed = [r for r in board if r["status"] == "failed"]
    running = [r for r in board if r["status"] == "running"]
    pruned = [r for r in board if r["status"] == "pruned"]
    best_page = shown(best, used, recipes=True)
    for b in best_page:
        path = f"conf/experiment/{b['experiment']}.yaml"
        b["experiment config"] = f"[{b['experiment']}]({path})" if b["experiment"] else ""
    best_columns = ["size", "recipe", "verdict", f"{used} mean", f"{used} 95% CI", "seeds", "samples"]
    best_columns.append("experiment config")
    text = REPORT.format(
        count=len(board),
        finished=len(board) - len(failed) - len(running) - len(pruned),
        pruned=len(pruned),
        running=len(running),
        failed=len(failed),
        sources=", ".join(f"`{s}`" for s in sources),
        date=f"{datetime.now():%Y-%m-%d %H:%M}",
        notes=header,
        best=markdown(*readable(best_page, best_columns)),
        experiments="\n".join(
            f"- [conf/experiment/{p.name}](conf/experiment/{p.name})"
            for p in sorted(folder.glob("conf/experiment/*.yaml"))
        ),
        compute=compute,
        failed_list="\n".join(f"- `{r['name']}` ({r['size']}, `{r['recipe']}`): {r['reason']}" for r in failed)
        or "None.",
        pruned_list="\n".join(f"- `{r['name']}` ({r['size']}, `{r['recipe']}`): {r['reason']}" for r in pruned)
        or "None.",
        running_list="\n".join(f"- `{r['name']}` ({r['size']}, `{r['recipe']}`)" for r in running) or "None.",
    )
    (folder / "report.md").write_text(text + importances_section(sources, folder))
    return best


def default_out(sweeps: list, folders: list[Path]) -> Path:
    """`<first sweep>/report`; for runs alone, beside their folder, except in `outputs/DATE/`, which holds runs
    only: there `reports/report` beside `outputs/` (a later report is `report-2`, ...)."""
    if sweeps:
        return Path(sweeps[0]) / "report"
    parent = folders[0].parent
    return parent.parent.parent / "reports" / "report" if parent.parent.name == "outputs" else parent / "report"


def run(cfg: DictConfig) -> Path:
    """Loads the runs, writes the report into a temporary folder and renames it into place, so no report is
    ever half-written or overwritten; prints where the leaderboard is and the best recipe per model size."""
    if cfg.metric not in HIGHER_IS_BETTER:
        raise ConfigError(f"metric={cfg.metric}: use one of {', '.join(HIGHER_IS_BETTER)}")
    if cfg.compute not in COMPUTE:
        raise ConfigError(f"compute={cfg.compute}: use images_seen or train_seconds")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(cfg.name)):
        raise ConfigError(f"name={cfg.name}: use letters, digits, '_', '-' or '.' (it names the experiment files)")
    sweeps, run_list = _as_list(cfg.sweep), _as_list(cfg.runs)
    folders = find_runs(sweeps, run_list)
    runs = [run_row(f) for f in folders]
    out = Path(cfg.out).expanduser() if cfg.out else default_out(sweeps, folders)
    folder = AtomicFolder(out, replace=False)  # a new report never replaces an earlier one
    with folder as tmp:
        best = build(runs, cfg.metric, cfg.compute, cfg.name, [str(s) for s in sweeps + run_list], tmp)
    final = folder.path
    print(f"leaderboard: {final / 'leaderboard.md'}")
    for b in best:
        print(f"best {b['size']}: {b['recipe']}: {spread(b)}, {b['verdict']}")
        if b["experiment"]:
            print(f"  train it: diffexp-train --config-dir {final.resolve() / 'conf'} experiment={b['experiment']}")
    return final


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def hydra_main(cfg: DictConfig) -> None:
    report(run, cfg)


main = entry("compare", hydra_main)  # the console script: the command line checked first (diffexp.cli)


if __name__ == "__main__":
    main()
