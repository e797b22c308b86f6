"""metrics.json as a typed, versioned record: written and read back whole, older files read, newer keys kept."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from diffexp.record import VERSION, RunRecord


def test_a_record_round_trips_with_its_version(tmp_path):
    written = RunRecord(status="finished", steps=12, final_loss=0.25, eval={"fid": 6.0, "fid_ci": [4.0, 8.0]})
    written.write(tmp_path)
    raw = json.loads((tmp_path / "metrics.json").read_text())
    assert raw["version"] == VERSION and raw["status"] == "finished" and raw["eval"]["fid_ci"] == [4.0, 8.0]
    assert RunRecord.read(tmp_path) == written


def test_a_file_written_before_the_record_reads_as_version_1(tmp_path):
    old = {"status": "pruned", "reason": "pruned at 96 images", "steps": 6, "images_seen": 96, "objective": 41.5}
    (tmp_path / "metrics.json").write_text(json.dumps(old))
    record = RunRecord.read(tmp_path)
    assert (record.version, record.status, record.steps, record.objective) == (1, "pruned", 6, 41.5)
    assert record.eval is None and record.eval_history == [] and record.extra == {}


def test_keys_the_record_does_not_know_survive_an_update(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"status": "running", "heldout_fingerprint": "ab12"}))
    RunRecord.update(tmp_path, status="finished", steps=3)
    raw = json.loads((tmp_path / "metrics.json").read_text())
    assert raw["heldout_fingerprint"] == "ab12" and raw["status"] == "finished" and raw["version"] == VERSION


def test_a_field_that_is_not_in_the_record_is_refused(tmp_path):
    with pytest.raises(TypeError):
        RunRecord.update(tmp_path, stauts="finished")
    assert not (tmp_path / "metrics.json").exists()


def test_no_record_reads_as_none(tmp_path):
    assert RunRecord.read(tmp_path) is None


def test_rank_is_lightnings_rank_of_the_launcher_environment():
    # Three fresh processes (the rank is read when Lightning is imported), at once: each is mostly its import.
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "SLURM_PROCID")}
    code = "from diffexp.runtime import rank; print(rank())"
    cases = [({}, 0), ({"LOCAL_RANK": "1"}, 1), ({"RANK": "3"}, 3)]
    run = [sys.executable, "-c", code]
    procs = [subprocess.Popen(run, env=clean | env, stdout=subprocess.PIPE, text=True) for env, _ in cases]
    outs = [p.communicate()[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    assert [int(out) for out in outs] == [expected for _, expected in cases]
