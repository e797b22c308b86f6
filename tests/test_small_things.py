"""The small things of issue #28, each with its test: what a run prints, where bars go, where a report goes, what
the package declares."""

from __future__ import annotations

import logging
import os
import pty
import sys

import pytest
import tomllib
import torch
from diffusers import DDPMScheduler, UNet2DModel

from diffexp.compare import default_out
from diffexp.samplers import sample
from diffexp.terminal import bar_columns
from helpers import REPO, TINY


def test_eval_none_logs_the_denoising_error_and_no_empty_evaluation_line(tiny_cfg, caplog):
    from diffexp.train import run

    with caplog.at_level(logging.INFO, logger="diffexp"):
        run(tiny_cfg("trainer.max_steps=2", "preview.every_n_steps=0"))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("evaluation at step")]
    assert lines and all("held-out denoising error" in line for line in lines), lines
    assert not any(line.split(": ", 1)[1].startswith("(") for line in lines), lines


def test_sampling_writes_no_bar_into_a_pipe_or_a_file(capfd):
    blocks = {"down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2, "layers_per_block": 1}
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(32, 32), **blocks)
    scheduler = DDPMScheduler(num_train_timesteps=50)
    with torch.no_grad():
        sample(unet, scheduler, torch.randn(1, 1, 8, 8), steps=3, progress=True)
    assert "sampling" not in capfd.readouterr().err  # stderr is a file under capfd: no bar


def test_the_bar_keeps_a_width_where_the_terminal_reports_0_columns():
    import fcntl
    import struct
    import termios

    leader, follower = pty.openpty()
    try:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        assert bar_columns(follower) == 80
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 132, 0, 0))
        assert bar_columns(follower) is None  # a sized terminal: the bar follows its width
    finally:
        os.close(leader), os.close(follower)


def test_a_report_of_runs_alone_stays_out_of_outputs(tmp_path):
    runs = [tmp_path / "outputs" / "2026-12-02" / "10-00-00-abc123"]
    assert default_out([], runs) == tmp_path / "reports" / "report"
    assert default_out([], [tmp_path / "mine" / "run1"]) == tmp_path / "mine" / "report"  # the user's own folder
    assert default_out([str(tmp_path / "multirun" / "quick")], runs) == tmp_path / "multirun" / "quick" / "report"


def test_a_data_refusal_names_no_run_folder(tmp_path, monkeypatch, capsys):
    """The refusal is the last line, and no `run folder:` line names the folder that is then removed."""
    main = __import__("diffexp.train", fromlist=["main"]).main
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["diffexp-train", *TINY, "logger=none", "data=imagefolder", "data.path=nowhere"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    out = capsys.readouterr()
    assert "data.path" in out.err.strip().splitlines()[-1]
    assert "run folder" not in out.out + out.err and not (tmp_path / "outputs").exists()


def test_accelerate_is_declared_for_loading_pipelines():
    """diffusers loads a pipeline with accelerate, else it prints advice to install it."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("accelerate") for d in deps)
    assert all(not d.startswith(("torchvision", "torch-fidelity")) for d in deps)
