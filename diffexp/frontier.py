"""The few-step frontier of `diffexp-evaluate`, per sampler family: which samplers a run is scored with, how many
model calls (NFE) each makes, and whether its FID is inside the family's reference.

A DDPM run's family is every DDPM sampler, its reference DDPM at 1000 steps; a flow run's family is the flow
samplers, its reference flow Euler at 1000 steps. "Inside the reference": the sampler's FID interval overlaps the
reference's.
"""

from __future__ import annotations

from omegaconf import DictConfig

from diffexp.errors import ConfigError
from diffexp.flow_samplers import FLOW_REFERENCE, check_sampler_family, family_samplers, is_flow_sampler, model_calls
from diffexp.samplers import SCHEDULERS


def reference_sampler(flow_model: bool) -> str:
    """The family's reference sampler (run at `ddpm_steps`)."""
    return FLOW_REFERENCE if flow_model else "ddpm"


def evaluation_grid(cfg: DictConfig, flow_model: bool) -> list[tuple[str, int, bool]]:
    """(sampler, steps, is the reference) for each setting: `samplers` (null: the run's family) at every `steps`,
    then the family's reference at `ddpm_steps`; a sampler of the other family gets one line."""
    ddpm_names = [k for k in SCHEDULERS if not is_flow_sampler(k)]
    names = list(cfg.samplers) if cfg.samplers is not None else family_samplers(flow_model, ddpm_names)
    for name in names:
        check_sampler_family(name, flow_model, "samplers")
    grid = [(name, int(s), False) for name in names for s in cfg.steps]
    grid += [(reference_sampler(flow_model), int(s), True) for s in cfg.ddpm_steps or []]
    if not grid:
        raise ConfigError("samplers=[] and ddpm_steps=[]: nothing to evaluate; name a sampler, e.g. samplers=[ddim]")
    return grid


def mark_inside(rows: list[dict]) -> None:
    """`inside_reference` on each sampler row: whether its FID interval overlaps the reference row's ('' where
    either has no interval); the reference rows themselves are marked `reference`."""
    refs = [r for r in rows if r.get("reference_sampler")]
    ref = max(refs, key=lambda r: r["steps"]) if refs else None
    for r in rows:
        if r.get("reference_sampler"):
            r["inside_reference"] = "reference"
        elif ref and r.get("fid_lo") is not None and ref.get("fid_lo") is not None:
            r["inside_reference"] = r["fid_lo"] <= ref["fid_hi"] and ref["fid_lo"] <= r["fid_hi"]


def nfe(name: str, steps: int) -> int:
    """Model calls per image of `name` at `steps` steps."""
    return model_calls(name, steps)
