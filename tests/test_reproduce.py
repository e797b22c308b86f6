"""Reproduction from the saved config: bit-identical losses and weights on CPU with the same threads."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from diffexp.reproduce import run as reproduce
from diffexp.train import run as train
from helpers import compose_train


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

    # The reproduction's .hydra/ holds the recipe it trained (not the reproduce command's own config), so it is a
    # run like any other: compared as the same recipe, and reproducible in turn.
    again = tmp_path / "again"
    assert OmegaConf.load(again / ".hydra" / "config.yaml") == saved
    assert OmegaConf.load(again / ".hydra" / "overrides.yaml") == OmegaConf.load(original / ".hydra" / "overrides.yaml")
    choices = OmegaConf.load(again / ".hydra" / "hydra.yaml").hydra.runtime.choices
    assert choices == OmegaConf.load(original / ".hydra" / "hydra.yaml").hydra.runtime.choices
    assert reproduce(compose_train([f"run={again}"], tmp_path / "third", name="reproduce"))["matched"]


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


def test_a_run_saved_with_the_old_ema_and_warmup_keys_refuses_reproduce_and_resume(tiny_cfg, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from diffexp.config import CONF_DIR
    from diffexp.errors import ConfigError
    from helpers import TINY

    train(tiny_cfg("trainer.max_steps=2"))
    folder = tmp_path / "run"
    saved = OmegaConf.load(folder / ".hydra" / "config.yaml")  # as an older diffexp saved it
    saved.ema = {"decay": 0.999, "warmup": True, "power": 0.6667}
    with open_dict(saved):
        del saved.optim["warmup"]
        saved.optim.warmup_steps = 100
    OmegaConf.save(saved, folder / ".hydra" / "config.yaml")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    with pytest.raises(ConfigError) as refused:
        reproduce(compose_train([f"run={folder}"], tmp_path / "again", name="reproduce"))
    message = str(refused.value)
    assert message.startswith(f"run={folder}: saved by an older diffexp") and "train it anew" in message
    assert "ema.decay" in message and "optim.warmup_steps" in message and "\n" not in message
    assert not (tmp_path / "again" / "checkpoints").exists()

    # resume=DIR: Hydra runs the job in DIR itself, and leaves its .hydra/ as it is.
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[*TINY, f"resume={folder}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(folder)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    with pytest.raises(ConfigError, match=rf"^resume={folder}: saved by an older diffexp .*train it anew$"):
        train(cfg)
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_budget_run_reproduces_bit_for_bit(tiny_cfg, tmp_path):
    train(tiny_cfg("budget.images=80"))  # 5 steps of 16 images, where trainer=debug says 6
    original = tmp_path / "run"
    assert OmegaConf.load(original / ".hydra" / "config.yaml").trainer.max_steps == 5
    result = reproduce(compose_train([f"run={original}"], tmp_path / "again", name="reproduce"))
    assert result["matched"] and result["steps_compared"] == 5, result


def test_a_pruned_trial_reproduces_its_steps_on_the_full_budget_schedule(tiny_cfg, tmp_path, capsys):
    from diffexp.search import StopAt

    # Stopped after 3 of its 6 steps, at a batch's end, as the study's pruner stops a trial (search.TrialReport).
    train(tiny_cfg("budget.images=96"), stop=StopAt(3, 48))
    original = tmp_path / "run"
    record = json.loads((original / "metrics.json").read_text())
    assert record["status"] == "pruned" and record["steps"] == 3 and record["images_seen"] == 48
    assert OmegaConf.load(original / ".hydra" / "config.yaml").trainer.max_steps == 6
    result = reproduce(compose_train([f"run={original}"], tmp_path / "again", name="reproduce"))
    # bit for bit: a 3-step LR schedule (instead of the budget's 6) would change the weights
    assert result["matched"] and result["same_steps"] and result["steps_compared"] == 3, result
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["status"] == "pruned" and again["images_seen"] == 48
    assert "MATCHED bit for bit (3 steps compared; pruned at 48 images, as the original)" in capsys.readouterr().out
