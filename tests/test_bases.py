"""Only like with like (issue 27): the report's basis holds the dataset, resolution, channels and held-out
fingerprint, so runs on different data are never in one verdict, and the report says why in one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from omegaconf import OmegaConf

from diffexp.compare import run as compare
from helpers import compose_app

HELD = {"count": 360, "hash": "a" * 16, "revision": None}


def made(folder: Path, lr: float, seed: int, fid: float, data: dict, heldout: dict | None = HELD) -> Path:
    """A finished run folder written by hand: its data, learning rate and seed, and a digits FID."""
    (folder / ".hydra").mkdir(parents=True)
    config = {"seed": seed, "data": data, "optim": {"optimizer": {"lr": lr}}}
    OmegaConf.save(config, folder / ".hydra" / "config.yaml")
    OmegaConf.save([f"optim.optimizer.lr={lr}", f"seed={seed}"], folder / ".hydra" / "overrides.yaml")
    ev = {"fid": fid, "feature_net": "digits", "n_real": 360, "n_fake": 256, "reference": "heldout"}
    record = {"status": "finished", "recipe": {"model": "tiny"}, "eval": ev, "final_loss": 0.1, "parameters": 1}
    if heldout is not None:
        record["heldout"] = heldout
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def report(runs: list[Path], out: Path) -> tuple[list[dict], str]:
    folder = compare(compose_app("compare", [f"runs=[{','.join(map(str, runs))}]", f"out={out}"]))
    return rows(folder / "recipes.csv"), (folder / "report.md").read_text()


DIGITS = {"_target_": "diffexp.data.DigitsDataModule", "resolution": 16, "channels": 1}


def test_runs_on_different_datasets_or_resolutions_are_never_in_one_verdict(tmp_path):
    butterflies = {"_target_": "diffexp.data.HubDataModule", "name": "huggan/butterflies", "resolution": 16,
                   "channels": 1}  # fmt: skip
    for other, tag in ((butterflies, "dataset"), (DIGITS | {"resolution": 8}, "resolution")):
        runs = []
        for seed in (0, 1):  # the same two recipes on two data: the better FIDs on the other data
            runs.append(made(tmp_path / tag / "a" / str(seed), 1e-3, seed, 10 + seed, DIGITS))
            runs.append(made(tmp_path / tag / "b" / str(seed), 2e-3, seed, 20 + seed, DIGITS))
            runs.append(made(tmp_path / tag / "c" / str(seed), 1e-3, seed, 1 + seed, other))
            runs.append(made(tmp_path / tag / "d" / str(seed), 2e-3, seed, 2 + seed, other))
        table, text = report(runs, tmp_path / f"report-{tag}")
        bases = {r["basis"] for r in table}
        assert len(bases) == 2 and len(table) == 4
        for basis in bases:  # each data has its own best and its own verdicts
            verdicts = sorted(r["verdict"] for r in table if r["basis"] == basis)
            assert verdicts[0].startswith("best") and verdicts[1] in ("tie", "worse")
        mine = [r for r in table if r["basis"].startswith("DigitsDataModule 16px")]
        digits_best = next(r for r in mine if "best" in r["verdict"])
        assert float(digits_best["fid mean"]) == 10.5  # judged against digits runs only, not the other data's 1.5
        assert "Runs are of different data" in text and "\n" not in text.split("Runs are of different data")[1][:200]


def test_runs_without_a_fingerprint_still_compare_marked_and_apart_from_other_held_out_sets(tmp_path):
    old = [made(tmp_path / "old" / str(s), 1e-3, s, 10 + s, DIGITS, heldout=None) for s in (0, 1)]
    other = [made(tmp_path / "new" / str(s), 2e-3, s, 9 + s, DIGITS, {"count": 50, "hash": "b" * 16}) for s in (0, 1)]
    table, text = report(old + other, tmp_path / "report")
    assert {r["basis"].split(" | ")[0] for r in table} == {
        "DigitsDataModule 16px 1ch, no held-out fingerprint",
        f"DigitsDataModule 16px 1ch, held-out 50 images #{'b' * 16}",
    }
    assert all(r["verdict"] == "only recipe" for r in table) and "Runs are of different data" in text
