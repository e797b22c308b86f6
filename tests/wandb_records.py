"""Reads a W&B offline run file (`run-*.wandb`): a LevelDB-style log of protobuf `Record`s.

wandb has no public reader; the format is 7-byte file header, then 32 KiB blocks of chunks, each with a
7-byte header (crc32 4, length 2, type 1: full/first/middle/last).
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> list[bytes]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if pos + HEADER + length > len(data):
            break  # a chunk still being written
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(chunk)
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pending + chunk)
            pending = b""
        elif kind == 0 and length == 0:
            pos += left - HEADER  # zero padding to the block end
    return out


def read_run(run_folder: Path, wait: float = 30.0) -> dict:
    """`{"config": {...}, "history": [{key: value}], "summary": {...}, "files": [...]}` of an offline run.

    `wandb.finish` returns once the exit is handled, but wandb's service closes (flushes) the run file afterwards,
    on its own thread: a reader right after `finish` can miss the last records, so this waits up to `wait` seconds
    for the exit record (seen on a loaded CI machine: `exit` None right after a run that had finished).
    """
    (wandb_file,) = Path(run_folder).glob("run-*.wandb")
    deadline = time.monotonic() + wait
    while True:
        run = _parse(wandb_file)
        if run["exit"] is not None or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def _parse(wandb_file: Path) -> dict:
    from wandb.proto import wandb_internal_pb2 as pb

    run = {"config": {}, "history": [], "summary": {}, "files": [], "run": None, "exit": None}
    for raw in raw_records(wandb_file):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run["run"] = {"id": rec.run.run_id, "group": rec.run.run_group, "tags": list(rec.run.tags)}
            for item in rec.run.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in rec.config.update:
                run["config"][item.key] = json.loads(item.value_json)
        elif kind == "history":
            run["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                run["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "files":
            run["files"] += [f.path for f in rec.files.files]
        elif kind == "exit":
            run["exit"] = rec.exit.exit_code
    return run
