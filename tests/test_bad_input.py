"""Bad settings stop before any work with one line naming the setting and its fix; runs never share a folder.

Most cases run `run(cfg)` in-process; a few run `diffexp-train` as a real process to check what a user sees:
a non-zero exit, a last stderr line `error: <setting>...`, no traceback, and no run folder left in `outputs/`.
A sweep with a bad job is refused whole before its first job; what only training shows stays per job (test_sweeps).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from diffexp.errors import ConfigError
from diffexp.train import run
from helpers import assert_only_hydra_record, save_hub_copy

# name: (overrides, the setting the message must name); {hub}, {empty}, {hidden} and {tmp} are filled in per test.
CASES = {
    "lr_zero": (["optim.optimizer.lr=0"], "optim.optimizer.lr"),
    "lr_negative": (["optim.optimizer.lr=-0.001"], "optim.optimizer.lr"),
    "resolution_not_divisible": (
        ["data.resolution=10", "model.block_out_channels=[32,32,32]", "model.attention_levels=[false,false,true]"],
        "data.resolution",
    ),
    "model_data_channels": (["model.in_channels=3"], "model.in_channels"),
    "channels_neither_1_nor_3": (["data.channels=2"], "data.channels"),
    "digits_are_greyscale": (["data.channels=3"], "data.channels"),
    "batch_larger_than_dataset": (["data=hub", "data.name={hub}", "data.batch_size=16"], "data.batch_size"),
    "imagefolder_missing": (["data=imagefolder", "data.path={tmp}/nowhere"], "data.path"),
    "imagefolder_without_images": (["data=imagefolder", "data.path={empty}"], "data.path"),
    "imagefolder_only_hidden_images": (["data=imagefolder", "data.path={hidden}"], "data.path"),  # skipped by datasets
    "hub_without_image_column": (["data=hub", "data.name={hub}", "data.image_column=picture"], "data.image_column"),
    "hub_name_offline": (["data=butterflies"], "data.name"),
    "fp16_on_cpu": (["trainer.precision=16-mixed"], "trainer.precision"),
}

# Overrides for real processes: a 2-level UNet on 8 px digits, 2 steps.
CLI = [
    "trainer=debug",
    "trainer.max_steps=2",
    "model.block_out_channels=[32,32]",
    "model.attention_levels=[false,true]",
    "model.layers_per_block=1",
    "data.resolution=8",
    "data.batch_size=16",
    "sampler.steps=2",
    "preview.n=4",
    "logger=csv",
    "threads=2",
    "eval=none",
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-data")
    (root / "empty" / "sub").mkdir(parents=True)
    (root / "empty" / "sub" / "notes.txt").write_text("no images here\n")
    (root / "hidden" / ".ipynb_checkpoints").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "hidden" / ".ipynb_checkpoints" / "copy.png")
    return {
        "hub": str(save_hub_copy(root / "hub", n=10)),
        "empty": str(root / "empty"),
        "hidden": str(root / "hidden"),
        "tmp": str(root),
    }


def fill(overrides: list[str], places: dict[str, str]) -> list[str]:
    return [o.format(**places) for o in overrides]


@pytest.mark.parametrize("case", CASES)
def test_bad_setting_stops_before_any_work(case, places, tiny_cfg, tmp_path):
    overrides, setting = CASES[case]
    cfg = tiny_cfg(*fill(overrides, places))
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        run(cfg)
    message = str(error.value)
    assert setting in message and "\n" not in message, message
    assert ": " in message.split(setting, 1)[1], f"no fix given: {message}"
    assert_only_hydra_record(tmp_path / "run")
    if case == "hub_name_offline":
        assert time.perf_counter() - start < 10
        assert "local" in message or "save_to_disk" in message, message


def test_hub_name_fails_fast_without_the_offline_flag(monkeypatch, tiny_cfg, tmp_path):
    """No HF_HUB_OFFLINE: the Hub is probed, not retried for ~23 s, and the message says how to use local data."""
    try:
        socket.create_connection(("huggingface.co", 443), timeout=3).close()
        pytest.skip("huggingface.co is reachable from here: this case is about a machine without network")
    except OSError:
        pass
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"data\.name=.*(local|save_to_disk)"):
        run(tiny_cfg("data=butterflies"))
    assert time.perf_counter() - start < 10
    assert_only_hydra_record(tmp_path / "run")


# Real processes, two at a time (each spends seconds importing torch): name -> (overrides, setting named). The
# config check's refusals (lr_negative and the rest) take the same way out as the model's; CASES covers their text.
PROCESSES = {
    # A good run: the finished run the refusal test targets. The longest: it starts first, beside the short ones.
    "good": (["hydra.run.dir=good"], None),
    "sweep": (["optim.optimizer.lr=0.002,-1", "hydra.sweep.dir=sweep"], None),  # a bad job: refused whole
    "resolution_not_divisible": (["data.resolution=9"], "data.resolution"),  # caught building the model
    "hub_name_offline": (["data=butterflies"], "data.name"),  # caught loading the data
    "unknown_option": (["model=nope"], None),
}


def env(tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "HF_DATASETS_CACHE": str(tmp / "hf-datasets"),
    }


def train_cli(*args: str, cwd: Path, multirun: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "diffexp-train"
    cmd = [str(exe), *(["-m"] if multirun else []), *CLI, *args]
    return subprocess.run(cmd, cwd=cwd, env=env(cwd), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def processes(places, tmp_path_factory) -> dict[str, tuple[subprocess.CompletedProcess, Path, float]]:
    root = tmp_path_factory.mktemp("cli")

    def one(name: str):
        cwd = root / name
        cwd.mkdir()
        start = time.perf_counter()
        result = train_cli(*fill(PROCESSES[name][0], places), cwd=cwd, multirun=name == "sweep")
        return name, (result, cwd, time.perf_counter() - start)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(one, PROCESSES))


@pytest.mark.parametrize("case", [c for c, (_, setting) in PROCESSES.items() if setting])
def test_user_sees_one_error_line(case, processes):
    result, cwd, seconds = processes[case]
    setting = PROCESSES[case][1]
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: ") and setting in lines[-1], output[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1, output[-3000:]
    assert "Traceback" not in output and "Error executing job" not in output, output[-3000:]
    assert not (cwd / "outputs").exists()  # Hydra's new folder for the run went with the refusal
    if case == "hub_name_offline":
        # no ~23 s of retries: about as quick as a process stopped building the model (both mostly start-up)
        assert seconds < processes["resolution_not_divisible"][2] + 10


def test_unknown_option_is_one_line_with_the_real_options(processes):
    result, cwd, _ = processes["unknown_option"]
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: model=nope: no such option of model; choose one of base, course, large, small, tiny"]
    assert list(cwd.iterdir()) == []  # composition fails before Hydra makes a folder


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def test_a_sweep_with_a_bad_job_is_refused_before_its_first_job(processes):
    result, cwd, _ = processes["sweep"]
    assert result.returncode == 2, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [
        "error: sweep job 1 (optim.optimizer.lr=-1): optim.optimizer.lr=-1: the learning rate must be > 0 (e.g. 1e-3)"
    ], lines
    assert list(cwd.iterdir()) == []  # job 0 never trained, and Hydra wrote no multirun.yaml


def test_existing_run_folder_is_never_overwritten(processes):
    result, cwd, _ = processes["good"]
    folder = cwd / "good"  # a finished run
    assert json.loads((folder / "metrics.json").read_text())["status"] == "finished", result.stderr[-3000:]
    before = digest(folder)
    assert {".hydra/config.yaml", "checkpoints/last.ckpt", "metrics.json", "train.log"} <= set(before)

    again = train_cli(f"hydra.run.dir={folder}", "optim.optimizer.lr=0.01", cwd=cwd)
    assert again.returncode != 0
    lines = [line for line in again.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "hydra.run.dir" in lines[-1] and "resume=" in lines[-1], lines
    assert "Traceback" not in again.stdout + again.stderr
    assert digest(folder) == before  # every file byte-identical, none added or removed
    assert not (cwd / "outputs").exists()  # and the refused run made no other folder
