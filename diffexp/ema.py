"""The averaged weights used for samples, evaluation and export (the `ema` config group).

`ema=power` is EDM2's power-function EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of
Diffusion Models", eq. 3 and Algorithm 1): after optimiser step t (1, 2, ...) the average moves toward the weights
by 1 - beta_t, with beta_t = (1 - 1/t) ** (gamma + 1). After T steps, step i carries the weight
(i/T) ** (gamma + 1) - ((i - 1)/T) ** (gamma + 1): a profile ~ t ** gamma over the whole run, whose standard
deviation is `sigma_rel * T`. So `sigma_rel` (EDM2's relative width) means the same share of any run length,
unlike a fixed decay, which a warm-up ramp hides in runs shorter than a few thousand steps.

`ema=none` builds nothing: samples, evaluation and export use the trained weights.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from diffexp.errors import ConfigError

# What the Optuna searches try (sweeps/optuna_search.yaml names `search_space`): no EMA, or these widths.
# Each pair differs by more than 20% in the averaging profile's width at every sweep's run length
# (tests/test_ema.py measures it with a probe parameter).
SEARCHED_SIGMA_REL = (0.05, 0.10, 0.20)


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """EDM2's exponent gamma of the power profile whose relative standard deviation is `sigma_rel`."""
    from ema_pytorch.post_hoc_ema import sigma_rel_to_gamma as solve

    return float(solve(sigma_rel))


def check_sigma_rel(sigma_rel: float, setting: str = "ema.sigma_rel") -> None:
    """Refuses a width no power-function EMA has: 0.2887 is the plain mean of the whole run (gamma 0) and wider needs
    gamma < 0; EDM2 uses 0.01-0.2. `setting` names where the width came from, for the message."""
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, int | float) or not 0 < sigma_rel <= 0.28:
        off = ", or ema=none" if setting == "ema.sigma_rel" else ""
        raise ConfigError(f"{setting}={sigma_rel}: use relative widths in (0, 0.28], e.g. 0.05 or 0.1{off}")


class SwapWeights:
    """What an average of the weights needs to stand in for the trained weights while sampling or exporting:
    `store` the trained weights, `copy_to` puts the average in (each average's own), `restore` brings them back."""

    collected_params: list[torch.Tensor] | None = None

    @torch.no_grad()
    def store(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Keeps a copy of the trained weights, to `restore` after sampling with the average."""
        self.collected_params = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def restore(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        if self.collected_params is None:
            raise RuntimeError(f"{type(self).__name__}.restore without store")
        for kept, p in zip(self.collected_params, parameters, strict=True):
            p.copy_(kept)
        self.collected_params = None


class PowerEMA(SwapWeights):
    """EDM2's power-function EMA of `parameters`, set by its relative width `sigma_rel`.

    One in-place pass a step (`torch._foreach_lerp_`): about half the time of a copy-and-add update. The state
    (`state_dict`) goes into every checkpoint, so a resumed run averages exactly as an uninterrupted one.
    """

    def __init__(self, parameters: Iterable[torch.nn.Parameter], sigma_rel: float = 0.10) -> None:
        check_sigma_rel(sigma_rel)
        self.sigma_rel, self.gamma = float(sigma_rel), sigma_rel_to_gamma(sigma_rel)
        self.shadow_params = [p.detach().clone() for p in parameters]
        self.optimization_step = 0

    def decay(self, step: int) -> float:
        """beta_t = (1 - 1/t) ** (gamma + 1): 0 at the first step, so the average starts at the trained weights."""
        return (1 - 1 / step) ** (self.gamma + 1)

    @torch.no_grad()
    def step(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        self.optimization_step += 1
        weight = 1 - self.decay(self.optimization_step)
        # shadow += (1 - beta) * (param - shadow)
        torch._foreach_lerp_(self.shadow_params, [p.detach() for p in parameters], weight)

    def to(self, device: torch.device | str) -> PowerEMA:
        self.shadow_params = [p.to(device) for p in self.shadow_params]
        return self

    @torch.no_grad()
    def copy_to(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        for shadow, p in zip(self.shadow_params, parameters, strict=True):
            p.copy_(shadow)

    def state_dict(self) -> dict:
        return {
            "kind": "power",
            "sigma_rel": self.sigma_rel,
            "gamma": self.gamma,
            "optimization_step": self.optimization_step,
            "shadow_params": self.shadow_params,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "power" or state.get("sigma_rel") != self.sigma_rel:
            raise ConfigError(
                f"the checkpoint's EMA ({state.get('kind', 'an older EMA')}, sigma_rel {state.get('sigma_rel')}) "
                f"is not this run's (power, sigma_rel {self.sigma_rel}): resume with the run's own config"
            )
        self.optimization_step = int(state["optimization_step"])
        device = self.shadow_params[0].device if self.shadow_params else "cpu"
        self.shadow_params = [p.to(device) for p in state["shadow_params"]]


def search_space(cfg, trial) -> None:
    """Optuna's conditional search of the EMA (the sweeper's `custom_search_space`): `ema=none`, or `ema=power` with
    one of SEARCHED_SIGMA_REL. A width is drawn only where EMA is on, so no trial repeats another."""
    if trial.suggest_categorical("ema", ["none", "power"]) == "power":
        trial.suggest_categorical("ema.sigma_rel", list(SEARCHED_SIGMA_REL))
