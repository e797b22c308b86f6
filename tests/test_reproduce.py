"""Reproduction from the saved config: bit-identical losses and weights on CPU with the same threads."""

from __future__ import annotations

import json

import torch
from omegaconf import OmegaConf

from conftest import compose_train
from diffexp.reproduce import run as reproduce
from diffexp.train import run as train


def test_reproduce_matches_bit_for_bit_from_the_saved_config(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_steps=5", "optim.optimizer.lr=3e-3", "seed=7"))
    original = tmp_path / "run"
    # Defaults may change after a run; reproduction must use the saved recipe, not re-compose it.
    saved = OmegaConf.load(original / ".hydra" / "config.yaml")
    assert saved.optim.optimizer.lr == 3e-3 and saved.seed == 7

    result = reproduce(compose_train([f"run={original}"], tmp_path / "again", name="reproduce"))
    assert result["matched"], result
    assert result["steps_compared"] == 5 and result["max_loss_difference"] == 0.0
    record = json.loads((tmp_path / "again" / "reproduce.json").read_text())
    assert record["matched"] and record["original"] == str(original)
    a = torch.load(original / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "again/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_reproduce_reports_the_size_of_a_difference(tiny_cfg, tmp_path):
    train(tiny_cfg("trainer.max_steps=3"))
    original = tmp_path / "run"
    # Tamper with the recorded loss history to stand for a run made elsewhere.
    lines = (original / "losses.csv").read_text().splitlines()
    step, loss, lr = lines[2].split(",")
    lines[2] = f"{step},{float(loss) + 0.25},{lr}"
    (original / "losses.csv").write_text("\n".join(lines) + "\n")
    result = reproduce(compose_train([f"run={original}"], tmp_path / "again", name="reproduce"))
    assert not result["matched"]
    assert abs(result["max_loss_difference"] - 0.25) < 1e-6 and result["max_weight_difference"] == 0.0
