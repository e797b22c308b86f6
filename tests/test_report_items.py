"""Smaller items of issue 27: the Pareto plot tells one-seed intervals apart, memorisation sees mirrored copies
where the data trains with flips, and a killed run reads as stopped instead of running forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import matplotlib

from diffexp.data import digits_images, digits_split
from diffexp.features import load_feature_net
from diffexp.heldout import Reference
from diffexp.record import STALE_SECONDS, process_identity
from diffexp.report.plots import plot_pareto
from diffexp.report.runs import run_row

matplotlib.use("Agg")


def test_pareto_labels_one_seed_sampling_intervals_apart_from_training_seed_intervals(tmp_path):
    rows = [
        {"size": "tiny", "basis": "b", "recipe": "lr=1", "seeds": 3, "mean": 5.0, "interval": (4.0, 6.0),
         "images_seen": 100},
        {"size": "tiny", "basis": "b", "recipe": "lr=2", "seeds": 1, "mean": 4.0, "interval": (3.9, 4.1),
         "images_seen": 200},
    ]  # fmt: skip
    labels = plot_pareto(rows, "fid", "images_seen", tmp_path / "pareto.png")
    assert "tiny (interval over training seeds)" in labels
    assert "tiny (interval over 1 seed: sampling seeds only)" in labels
    assert (tmp_path / "pareto.png").stat().st_size > 0


def test_memorisation_flags_mirrored_training_images_where_the_data_trains_with_flips(tmp_path):
    net = load_feature_net("digits", channels=1, resolution=16)
    images = digits_images(16)
    train, held = (images[i] for i in digits_split(len(images)))
    mirrored = train[:200].flip(-1)  # digits are not mirror-symmetric: far from every unflipped training image
    rates = {}
    for flips in (False, True):
        ref = Reference.build(train, held, net, "digits", tmp_path, flips=flips)
        dist, index = ref.memorised(mirrored)
        rates[flips] = float((dist < ref.threshold).double().mean())
        assert ref.memorised_heldout < 0.05  # fresh images stay unflagged either way
    assert rates[False] < 0.3 and rates[True] > 0.95, rates
    figures, _ = Reference.build(train, held, net, "digits", tmp_path, flips=True).score([mirrored[:100]])
    assert figures["memorised"] > 0.95 and figures["memorised_space"].endswith("and mirrored")


def running(folder, process: dict | None) -> None:
    folder.mkdir(parents=True)
    record = {"status": "running", "recipe": {"model": "tiny"}}
    if process is not None:
        record["process"] = process
    (folder / "metrics.json").write_text(json.dumps(record))


def test_a_killed_run_reads_as_stopped_with_a_reason_and_a_live_one_as_running(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = process_identity() | {"pid": gone.pid}
    running(tmp_path / "killed", dead)
    row = run_row(tmp_path / "killed")
    assert row["status"] == "failed" and row["reason"].startswith(f"stopped: its process (pid {gone.pid} ")
    reused = process_identity() | {"started": process_identity()["started"] - 100}  # this pid, another start
    running(tmp_path / "reused", reused)
    assert run_row(tmp_path / "reused")["status"] == "failed"
    running(tmp_path / "live", process_identity())
    assert run_row(tmp_path / "live")["status"] == "running"
    # Another host's run, or one recorded before the process was: stopped once its folder went quiet for long
    running(tmp_path / "elsewhere", {"host": "another-host", "pid": 1, "started": 0.0})
    running(tmp_path / "old", None)
    assert run_row(tmp_path / "elsewhere")["status"] == run_row(tmp_path / "old")["status"] == "running"
    past = time.time() - STALE_SECONDS - 3600
    for name in ("elsewhere", "old"):
        os.utime(tmp_path / name / "metrics.json", (past, past))
        row = run_row(tmp_path / name)
        assert row["status"] == "failed" and "no file in its folder changed for" in row["reason"]
