"""The model card's figures: the Hub's `model-index` results, the figures section with their intervals and sample
counts, and what the figures cannot tell (the card's text around them is `diffexp.card`'s)."""

from __future__ import annotations

from typing import Any

from huggingface_hub import EvalResult

from diffexp.tables import FIGURE_NAMES, SCALE, figure_text, kid_note

SAMPLER_NAMES = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "dpm_solver": "DPM-Solver++ (2nd order)",
    "dpm_solver_sde": "SDE DPM-Solver++ (2nd order, fresh noise each step)",
    "euler": "Euler",
    "unipc": "UniPC",
}
METRIC_NAMES = {  # what each figure is, per feature net (the digits net's FD is not Inception FID)
    "digits": "FD in diffexp's digits-classifier features (not Inception FID)",
    "inception": "FID (Inception-v3 features)",
    "dinov2": "FD in DINOv2 features (FD_DINOv2, not Inception FID)",
}


def plural(count: int, word: str) -> str:
    """`1 channel`, `3 channels`: counts read as words, with no bracketed plural."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def eval_results(ev: dict, dataset: str, dataset_id: str | None) -> list[EvalResult]:
    """`model-index` entries: each figure with what it is and the sample counts behind it."""
    if not ev.get("feature_net") or all(ev.get(key) is None for key in FIGURE_NAMES):
        return []
    net = ev["feature_net"]
    args = {
        "samples_per_seed": ev.get("n_fake"),
        "sampling_seeds": ev.get("n_seeds", 1),
        "real_heldout_images": ev.get("n_real"),
        "feature_net": net,
        "sampler": ev.get("sampler"),
        "sampler_steps": ev.get("sampler_steps"),
    }
    results = []
    for key in FIGURE_NAMES:
        if ev.get(key) is None:
            continue
        scale = SCALE.get(key, 1.0)
        ci = ev.get(f"{key}_ci")
        name = {"fid": METRIC_NAMES.get(net, f"FD ({net} features)"), "kid": f"KID x10^3 ({net} features)"}.get(
            key, f"{key} ({net} features)"
        )
        results.append(
            EvalResult(
                task_type="unconditional-image-generation",
                dataset_type=dataset_id or dataset,
                dataset_name=f"{dataset} (held-out images)",
                dataset_split="held-out",
                metric_type=key,
                metric_name=name,
                metric_value=round(float(ev[key]) * scale, 4),
                metric_args=args | ({"ci95": [round(float(c) * scale, 4) for c in ci]} if ci else {}),
            )
        )
    return results


def figures_section(ev: dict, posthoc_line: str) -> str:
    """The figures the card's weights got, each with its interval and a plain mark where it is within noise, and the
    held-out denoising error (recorded with eval=none too)."""
    denoise = ""
    if ev and ev.get("denoise") is not None:
        denoise = (
            f"\nHeld-out denoising error (`denoise`): {ev['denoise']:.4g} ({ev.get('denoise_images')} held-out images; "
            f"{ev.get('denoise_weighting')}; lower is better, comparable across schedules within one prediction "
            f"target).\n"
        )
    if not ev or ev.get("n_real") is None or all(ev.get(key) is None for key in FIGURE_NAMES):
        return posthoc_line + "These weights have no quality figures (the run trained with `eval=none`, or this width "
        "is unscored).\n" + denoise
    seeds, floor = ev.get("n_seeds", 1), ev.get("floor") or {}
    lines = [
        posthoc_line
        + f"Scored at step {ev.get('step', '?')} against {ev['n_real']} held-out images the model never trained on "
        f"({ev['feature_net']} features, {ev['n_fake']} samples from each of {plural(seeds, 'sampling seed')}, "
        f"{SAMPLER_NAMES.get(ev.get('sampler'), ev.get('sampler'))} at {ev.get('sampler_steps')} steps; 95% intervals: "
        f"FID over the seeds, the others by bootstrap). {kid_note()}",
        "",
        "| figure | these weights | real training images (the floor) |",
        "| --- | --- | --- |",
    ]
    for key in FIGURE_NAMES:
        if ev.get(key) is None:
            continue
        label = "KID x10^3" if key == "kid" else key
        lines.append(
            f"| {label} | {figure_text(key, ev[key], ev.get(f'{key}_ci'), floor.get(key))} "
            f"| {figure_text(key, floor[key], None) if key in floor else ''} |"
        )
    if "top_prob" in ev:
        lines.append(f"| top_prob | {figure_text('top_prob', ev['top_prob'], ev.get('top_prob_ci'))} | |")
        lines.append(f"| not a digit | {ev.get('not_digit', 0):.1%} | |")
    if ev.get("fid_refused"):  # eval=dinov2 refuses FD below its feature width
        lines += ["", f"{ev['fid_refused']}."]
    if "memorised" in ev:
        lines += [
            "",
            f"Memorised: {ev['memorised']:.1%} of samples lie nearer a training image than all but "
            f"{ev['memorised_heldout']:.1%} of held-out images do (in {ev.get('memorised_space')}).",
        ]
    return "\n".join(lines) + "\n" + denoise


def limitations(ev: dict, resolution: Any, own: str = "DDPM at the training steps") -> str:
    net = ev.get("feature_net")
    lines = [
        f"- A small unconditional model at {resolution} px: it makes images like its training set and nothing else; "
        "it takes no prompt or class."
    ]
    if net == "digits":
        lines.append(
            "- `fid` here is the Fréchet distance in the features of diffexp's own small digits classifier "
            "(64 features), not Inception FID: it is not comparable with FIDs published for other models."
        )
    elif net:
        lines.append(f"- The figures use {net} features; compare them only with figures of the same features.")
    if ev.get("n_fake"):
        lines.append(
            f"- {ev['n_fake']} samples per seed against {ev.get('n_real')} real images: FD and KID are biased and "
            "noisy at these counts; compare figures only at equal counts, and mind the intervals."
        )
    lines.append(
        f"- The pipeline's own `DDPMPipeline.__call__` samples with {own}; the figures above "
        "used the sampler in the first snippet, and another sampler or step count gives other figures."
    )
    return "\n".join(lines)
