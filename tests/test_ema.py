"""The EMA knob acts: EDM2's power EMA averages over the configured share of any run, and searched widths differ.

The probe (issue 12): a scalar parameter set to the step index t at each step, and one set to t**2, averaged by
the EMA; the two averages are the mean and second moment of the EMA's averaging profile over steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from diffexp.config import CONF_DIR
from diffexp.ema import SEARCHED_SIGMA_REL, PowerEMA, sigma_rel_to_gamma
from helpers import REPO

SWEEPS = sorted(p.stem for p in (REPO / "sweeps").glob("*.yaml"))


def probe(sigma_rel: float | None, steps: int) -> tuple[float, float]:
    """Mean and std (in steps) of the averaging profile after `steps` steps; no EMA averages the last step only."""
    t = torch.zeros((), dtype=torch.float64)
    t2 = torch.zeros((), dtype=torch.float64)
    ema = PowerEMA([t, t2], sigma_rel) if sigma_rel is not None else None
    for step in range(1, steps + 1):
        t.fill_(step)
        t2.fill_(step**2)
        if ema is not None:
            ema.step([t, t2])
    first, second = ema.shadow_params if ema is not None else (t, t2)
    mean = float(first)
    return mean, math.sqrt(max(0.0, float(second) - mean**2))


def choices(value: str) -> list:
    """The values of a sweeper param (`choice(a, b)`, `a,b` or one value), parsed by Hydra's own grammar."""
    override = OverridesParser.create().parse_overrides([f"key={value}"])[0]
    return list(override.sweep_iterator()) if override.is_sweep_override() else [override.value()]


def searched(name: str) -> tuple[list[float | None], list[int]]:
    """The EMA widths a sweep file searches (None = ema=none) and the run lengths in steps of its trials."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"sweeps={name}"], return_hydra_config=True)
    params = dict(cfg.hydra.sweeper.get("params") or {})
    batches = choices(str(params["data.batch_size"])) if "data.batch_size" in params else [cfg.data.batch_size]
    steps = [math.ceil(cfg.budget.images / b) if cfg.budget.images else cfg.trainer.max_steps for b in batches]
    if cfg.hydra.sweeper.get("custom_search_space") == "diffexp.ema.search_space":
        widths = [None, *SEARCHED_SIGMA_REL]
    elif "ema.sigma_rel" in params or "ema" in params:
        groups = choices(str(params.get("ema", "power")))
        widths = [None] * ("none" in groups) + [float(v) for v in choices(str(params.get("ema.sigma_rel", 0.1)))]
    else:
        widths = [cfg.ema.sigma_rel if cfg.ema else None]
    return widths, steps


@pytest.mark.parametrize("sweep", SWEEPS)
def test_probe_width_is_sigma_rel_of_the_run_and_searched_widths_differ(sweep):
    widths, lengths = searched(sweep)
    assert widths and lengths
    for steps in lengths:
        measured = {}
        for sigma_rel in widths:
            mean, std = probe(sigma_rel, steps)
            measured[sigma_rel] = std / steps
            if sigma_rel is not None:
                assert abs(std / steps / sigma_rel - 1) < 0.05, (sweep, steps, sigma_rel, std / steps)
                assert mean < steps  # it averages the past, weighted toward the end
        values = sorted(measured.values())
        for narrow, wide in zip(values, values[1:], strict=False):
            assert wide > 1.2 * narrow, (sweep, steps, measured)


def test_the_optuna_searches_try_no_ema_and_three_widths():
    widths, lengths = searched("optuna_base")
    assert widths == [None, 0.05, 0.10, 0.20] and min(lengths) == 125  # 16k images at batch 128


def test_the_update_is_edm2s_closed_form():
    """After T steps, step i carries (i/T)^(g+1) - ((i-1)/T)^(g+1) of the average (EDM2, eq. 3 unrolled)."""
    torch.manual_seed(0)
    sigma_rel, steps = 0.1, 40
    gamma = sigma_rel_to_gamma(sigma_rel)
    history = [torch.randn(6, dtype=torch.float64) for _ in range(steps)]
    p = torch.nn.Parameter(torch.zeros(6, dtype=torch.float64))
    ema = PowerEMA([p], sigma_rel)
    for weights in history:
        with torch.no_grad():
            p.copy_(weights)
        ema.step([p])
    w = [(i / steps) ** (gamma + 1) - ((i - 1) / steps) ** (gamma + 1) for i in range(1, steps + 1)]
    expected = sum(wi * h for wi, h in zip(w, history, strict=True))
    torch.testing.assert_close(ema.shadow_params[0], expected)
    assert abs(sum(w) - 1) < 1e-12 and ema.decay(1) == 0.0


def test_sigma_rel_means_the_same_share_of_any_run_length():
    """Unlike a fixed decay, the same sigma_rel averages 10% of a 100-step and of a 3000-step run."""
    shares = [probe(0.1, steps)[1] / steps for steps in (100, 750, 3000)]
    assert max(shares) - min(shares) < 0.005, shares


def test_store_copy_restore_and_state_round_trip():
    params = [torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2, 2))]
    ema = PowerEMA(params, 0.05)
    for _ in range(5):
        with torch.no_grad():
            for p in params:
                p.add_(1.0)
        ema.step(params)
    trained = [p.detach().clone() for p in params]
    ema.store(params)
    ema.copy_to(params)
    assert all(torch.equal(p, s) for p, s in zip(params, ema.shadow_params, strict=True))
    ema.restore(params)
    assert all(torch.equal(p, t) for p, t in zip(params, trained, strict=True))
    again = PowerEMA(params, 0.05)
    again.load_state_dict(ema.state_dict())
    assert again.optimization_step == 5
    assert all(torch.equal(a, b) for a, b in zip(again.shadow_params, ema.shadow_params, strict=True))


def test_every_ema_option_builds(tmp_path):
    for option in sorted(p.stem for p in (Path(CONF_DIR) / "ema").glob("*.yaml")):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="train", overrides=[f"ema={option}"])
        if not cfg.ema:
            assert option == "none"
            continue
        ema = instantiate(cfg.ema)(torch.nn.Linear(2, 2).parameters())
        # ema=posthoc tracks two PowerEMA profiles and reconstructs its width from them
        tracked = ema.profiles if option == "posthoc" else [ema]
        assert all(isinstance(p, PowerEMA) for p in tracked) and ema.sigma_rel == cfg.ema.sigma_rel
