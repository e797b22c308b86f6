"""The bad-input catalogue across groups and commands, in one process: each case is one line naming the setting
and its fix, raised before any work, and no existing file changes.

Training cases go through `diffexp.train:main`, the function the `diffexp-train` console script calls, with
`sys.argv` set: Hydra makes the run folder there as it does for the command, so the test sees that a refused run
leaves none behind in `outputs/`. One subprocess per case would prove no more and costs ~10 s each here (importing
Lightning and torch); `test_bad_input.py` runs a few real processes for the exit code and the missing traceback.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
from PIL import Image

from diffexp.errors import ConfigError
from helpers import TINY, compose_train

# name: (command, overrides, the setting the message must name). {run}, {tmp}, {corrupt} are filled per test.
CASES = {
    # train: types and unknown keys (the schema), out-of-range numbers, impossible combinations
    "batch_size_not_a_number": ("train", ["data.batch_size=abc"], "data.batch_size"),
    "seed_not_an_integer": ("train", ["seed=1.5"], "seed"),
    "ema_sigma_rel_not_a_number": ("train", ["ema.sigma_rel=high"], "ema.sigma_rel"),
    "flip_not_a_bool": ("train", ["data.flip=maybe"], "data.flip"),
    "unknown_model_key": ("train", ["+model.depth=3"], "model.depth"),
    "ema_sigma_rel_too_wide": ("train", ["ema.sigma_rel=0.5"], "ema.sigma_rel"),
    "ema_sigma_rel_zero": ("train", ["ema.sigma_rel=0"], "ema.sigma_rel"),
    "ema_none_with_a_width": ("train", ["ema=none", "+ema.sigma_rel=0.1"], "ema=none"),
    "posthoc_one_profile": ("train", ["ema=posthoc", "ema.sigma_rels=[0.1]"], "ema.sigma_rels"),
    "posthoc_eval_width_too_wide": ("train", ["ema=posthoc", "ema.eval_sigma_rel=[0.1,0.4]"], "ema.eval_sigma_rel"),
    "posthoc_snapshot_every_zero": ("train", ["ema=posthoc", "ema.snapshot_every=0"], "ema.snapshot_every"),
    "old_ema_decay_key": ("train", ["+ema.decay=0.999"], "ema.decay"),
    "warmup_whole_run": ("train", ["optim.warmup=1"], "optim.warmup"),
    "warmup_negative": ("train", ["optim.warmup=-0.1"], "optim.warmup"),
    "warmup_in_steps": ("train", ["optim.warmup=200"], "optim.warmup"),
    "old_warmup_steps_key": ("train", ["+optim.warmup_steps=100"], "optim.warmup_steps"),
    "lr_decay_typo": ("train", ["optim.decay=cosin"], "optim.decay"),
    "clipping_in_the_trainer": ("train", ["+trainer.gradient_clip_val=1.0"], "optim.grad_clip"),
    "zero_snr_epsilon": (
        "train",
        ["schedule.rescale_betas_zero_snr=true", "schedule.prediction_type=epsilon", "loss.snr_gamma=null"],
        "schedule.prediction_type=v_prediction",
    ),
    "zero_snr_epsilon_min_snr": (
        "train",
        ["schedule.rescale_betas_zero_snr=true", "schedule.prediction_type=epsilon", "loss.snr_gamma=5"],
        "loss.snr_gamma",
    ),
    "snr_gamma_negative": ("train", ["loss.snr_gamma=-1"], "loss.snr_gamma"),
    "zero_steps": ("train", ["trainer.max_steps=0"], "trainer.max_steps"),
    "budget_negative": ("train", ["budget.images=-100"], "budget.images"),
    "budget_zero": ("train", ["budget.images=0"], "budget.images"),
    "threads_negative": ("train", ["threads=-1"], "threads"),
    "checkpoint_every_negative": ("train", ["checkpoint.every_n_steps=-1"], "checkpoint.every_n_steps"),
    "preview_every_negative": ("train", ["preview.every_n_steps=-5"], "preview.every_n_steps"),
    "weight_decay_negative": ("train", ["optim.optimizer.weight_decay=-1"], "optim.optimizer.weight_decay"),
    "adam_beta_above_one": ("train", ["optim.optimizer.betas=[1.5,0.9]"], "optim.optimizer.betas"),
    "monitor_without_an_eval_net": ("train", ["eval=none", "eval.monitor=fid"], "eval.monitor=fid"),
    "unknown_prediction_type": ("train", ["schedule.prediction_type=x0"], "schedule.prediction_type"),
    "unknown_beta_schedule": ("train", ["schedule.beta_schedule=quadratic"], "schedule.beta_schedule"),
    "beta_start_above_end": ("train", ["schedule.beta_start=0.1", "schedule.beta_end=0.01"], "schedule.beta_start"),
    "attention_levels_length": ("train", ["model.attention_levels=[true]"], "model.attention_levels"),
    "norm_groups_not_dividing": ("train", ["model.norm_num_groups=7"], "model.norm_num_groups"),
    "speed_switch_not_a_bool": ("train", ["speed.channels_last=sometimes"], "speed.channels_last"),
    "eval_net_wrong_resolution": ("train", ["eval=digits"], "data.resolution"),
    "fid_over_too_few_samples": ("train", ["eval=digits", "data.resolution=16", "eval.n_samples=10"], "eval.n_samples"),
    "eval_unknown_monitor": ("train", ["eval=digits", "data.resolution=16", "eval.monitor=fidd"], "eval.monitor=fidd"),
    "imagefolder_corrupt_image": ("train", ["data=imagefolder", "data.path={corrupt}"], "data.path"),
    "sampler_zero_steps": ("train", ["sampler.steps=0"], "sampler.steps"),
    "tensorboard_not_installed": ("train", ["logger=tensorboard"], "logger=tensorboard"),
    "resume_a_folder_that_does_not_exist": ("train", ["resume={tmp}/nowhere/run"], "resume="),
    # sample / evaluate / export / reproduce / compare
    "sample_not_a_run": ("sample", ["run={tmp}"], "run="),
    "sample_zero_images": ("sample", ["run={run}", "n=0"], "n="),
    "sample_one_image": ("sample", ["run={run}", "n=1"], "n="),
    "sample_steps_beyond_training": ("sample", ["run={run}", "sampler.steps=5000"], "sampler.steps"),
    "sample_unknown_sampler": ("sample", ["run={run}", "sampler.name=heun"], "sampler.name"),
    "sample_unknown_sampler_option": (
        "sample",
        ["run={run}", "sampler=ddim", "+sampler.options.etta=1.0"],
        "sampler.options.etta",
    ),
    "evaluate_without_metric": ("evaluate", ["run={run}", "eval=none"], "eval=none"),
    "evaluate_too_few_samples": ("evaluate", ["run={run}", "n=8", "eval.net=digits"], "eval"),
    "evaluate_too_few_samples_by_n": ("evaluate", ["run={run}", "n=8", "eval=digits"], "n=8"),
    "evaluate_nothing_to_sample": ("evaluate", ["run={run}", "samplers=[]", "ddpm_steps=[]"], "samplers=[]"),
    "evaluate_unknown_sampler": ("evaluate", ["run={run}", "samplers=[heun]"], "samplers"),
    "evaluate_width_too_wide": ("evaluate", ["run={run}", "ema_sigma_rel=[0.05,0.3]"], "ema_sigma_rel"),
    "evaluate_width_without_snapshots": ("evaluate", ["run={run}", "ema_sigma_rel=[0.1]"], "ema_sigma_rel"),
    "export_width_zero": ("export", ["run={run}", "ema_sigma_rel=0"], "ema_sigma_rel"),
    "export_width_without_snapshots": ("export", ["run={run}", "ema_sigma_rel=0.1"], "ema_sigma_rel"),
    "export_push_without_repo": ("export", ["run={run}", "push_to_hub=true"], "repo_id"),
    "export_push_offline": ("export", ["run={run}", "push_to_hub=true", "repo_id=me/digits"], "push_to_hub"),
    "reproduce_not_a_run": ("reproduce", ["run={tmp}"], "run="),
    "compare_empty_folder": ("compare", ["sweep={tmp}/empty"], "sweep"),
}


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    from diffexp.train import run

    root = tmp_path_factory.mktemp("catalogue")
    run(compose_train([*TINY, "logger=none"], root / "run"))
    corrupt = root / "corrupt"
    corrupt.mkdir()
    Image.new("L", (8, 8)).save(corrupt / "good.png")
    (corrupt / "broken.png").write_bytes(b"not a png at all")
    (root / "empty").mkdir()
    return {"run": str(root / "run"), "tmp": str(root), "corrupt": str(corrupt)}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_catalogue_has_at_least_25_cases_across_commands():
    assert len(CASES) >= 25 and {c for c, _, _ in CASES.values()} >= {"train", "sample", "evaluate", "export"}


def train_command(args: list[str], cwd: Path, monkeypatch, capsys, command: str = "train") -> str:
    """`diffexp-COMMAND ARGS` run in `cwd` through the console script's function; returns its last stderr line."""
    main = importlib.import_module(f"diffexp.{command}").main
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [f"diffexp-{command}", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), lines
    return lines[-1].removeprefix("error: ")


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_before_any_work(case, places, tmp_path, monkeypatch, capsys):
    command, overrides, setting = CASES[case]
    if case == "tensorboard_not_installed" and importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    overrides = [o.format(**places) for o in overrides]
    before = snapshot(Path(places["tmp"]))
    if command == "train":
        message = train_command([*TINY, "logger=none", *overrides], tmp_path, monkeypatch, capsys)
        assert not (tmp_path / "outputs").exists()  # Hydra's new run folder (and its parents) went with the refusal
    else:
        cfg = compose_train(overrides, tmp_path / "out", name=command)
        with pytest.raises(ConfigError) as error:
            importlib.import_module(f"diffexp.{command}").run(cfg)
        message = str(error.value)
    assert setting in message and "\n" not in message, message
    assert snapshot(Path(places["tmp"])) == before  # nothing already written changed, nothing created
    assert not Path(places["tmp"], "nowhere").exists()


def test_a_folder_the_user_named_is_kept(tmp_path, monkeypatch, capsys):
    """`hydra.run.dir=DIR` names a folder the user chose: a refused run leaves it, and what it held, as it was."""
    (tmp_path / "named").mkdir()
    (tmp_path / "named" / "notes.txt").write_text("mine\n")
    message = train_command(
        [*TINY, "logger=none", "hydra.run.dir=named", "optim.optimizer.lr=0"], tmp_path, monkeypatch, capsys
    )
    assert "optim.optimizer.lr" in message
    assert [p.name for p in (tmp_path / "named").iterdir()] == ["notes.txt"] and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("command", ["export", "reproduce"])
def test_a_refused_export_or_reproduce_leaves_no_folder(command, tmp_path, monkeypatch, capsys):
    """Hydra makes these commands' run folder before they run: a refusal takes it away again (reproduce's new
    outputs/ folder), or there is none to make (export logs to the terminal only, not under a mistyped run=)."""
    typo = tmp_path / "typo" / "run"
    (tmp_path / "cwd").mkdir()
    message = train_command([f"run={typo}"], tmp_path / "cwd", monkeypatch, capsys, command=command)
    assert "run=" in message
    assert not (tmp_path / "typo").exists() and list((tmp_path / "cwd").iterdir()) == []


def test_resume_refuses_a_setting_it_would_drop(places, tmp_path, monkeypatch, capsys):
    """`resume=DIR` trains the saved recipe: a longer run asked for alongside is refused, not silently ignored."""
    run = Path(places["run"])
    before = {k: v for k, v in snapshot(run).items() if not k.endswith("train.log")}  # Hydra logs the attempt
    message = train_command([f"resume={run}", "trainer.max_steps=9", "verbose=true"], tmp_path, monkeypatch, capsys)
    assert message.startswith(f"resume={run} with trainer.max_steps:"), message
    assert {k: v for k, v in snapshot(run).items() if not k.endswith("train.log")} == before


# Checked before Hydra starts (diffexp.cli): the command line composed as Hydra will compose it (a sweep: each job),
# so a refusal makes no folder at all, not even Hydra's `.hydra/` or `multirun.yaml`. Each case runs the command's
# console-script function in an empty folder: name -> (command, argv, text the one line must hold).
BEFORE_HYDRA = {
    # any type, any key, any option (issue #28's cases first)
    "max_steps_not_a_number": ("train", ["trainer.max_steps=abc"], "trainer.max_steps: Value 'abc'"),
    "misspelt_key": (
        "train",
        ["trainer.max_step=3"],
        "trainer.max_step: no such setting (did you mean trainer.max_steps?",
    ),
    "misspelt_group_key": ("train", ["optim.optimzer.lr=3"], "(did you mean optim.optimizer?)"),
    "missing_option": (
        "train",
        ["model=huge"],
        "model=huge: no such option of model; choose one of base, course, large, small, tiny",
    ),
    "missing_logger_option": ("train", ["logger=wandbb"], "logger=wandbb: no such option of logger"),
    "missing_experiment": ("train", ["experiment=best_tiny"], "experiment=best_tiny: no such option of experiment"),
    "unreadable_override": ("train", ["model.block_out_channels=[3,"], "model.block_out_channels=[3,: not an override"),
    "append_an_existing_key": ("train", ["+seed=3"], "seed"),
    "trainer_precision_unknown": ("train", ["trainer.precision=17"], "trainer.precision=17: use one of"),
    "trainer_devices_a_word": ("train", ["trainer.devices=many"], "trainer.devices=many"),
    "trainer_accelerator_unknown": ("train", ["trainer.accelerator=quantum"], "trainer.accelerator=quantum"),
    "grad_clip_negative": ("train", ["optim.grad_clip=-1"], "optim.grad_clip=-1: clip at a norm > 0"),
    "grad_clip_zero": ("train", ["optim.grad_clip=0"], "optim.grad_clip=0"),
    # no silent loser: two settings deciding the same thing, given with values that disagree
    "steps_beside_an_experiments_budget": (
        "train",
        ["experiment=digits_best_tiny", "trainer.max_steps=2"],
        "trainer.max_steps=2 but budget.images=96000 decides 1500 steps (at data.batch_size=64): drop "
        "trainer.max_steps",
    ),
    "steps_beside_a_budget": (
        "train",
        ["budget.images=64", "trainer.max_steps=3", "data.batch_size=32"],
        "decides 2 steps",
    ),
    "in_channels_beside_channels": ("train", ["model.in_channels=3", "data.channels=1"], "drop model.in_channels"),
    "sample_size_beside_resolution": ("train", ["model.sample_size=16", "data.resolution=8"], "drop model.sample_size"),
    "evaluate_n_beside_n_samples": ("evaluate", ["run=x", "n=100", "eval.n_samples=200"], "drop eval.n_samples"),
    # the other commands
    "sample_n_a_word": ("sample", ["run=x", "n=abc"], "n: Value 'abc'"),
    "sample_misspelt_key": ("sample", ["run=x", "seeed=1"], "seeed: no such setting (did you mean seed?)"),
    "sample_missing_sampler": ("sample", ["run=x", "sampler=heun"], "sampler=heun: no such option of sampler"),
    "evaluate_steps_words": ("evaluate", ["run=x", "steps=[a,b]"], "steps"),
    "export_push_maybe": ("export", ["run=x", "push_to_hub=maybe"], "push_to_hub: Value 'maybe'"),
    "compare_misspelt_new_key": (
        "compare",
        ["sweep=x", "+metrik=fid"],
        "metrik: no such setting (did you mean metric?)",
    ),
    "reproduce_threads_a_word": ("reproduce", ["run=x", "threads=all"], "threads=all: use auto"),
    # grid sweeps, on each launcher: the bad job named, nothing trained
    "sweep_bad_job": (
        "train",
        ["-m", "optim.optimizer.lr=1e-3,-1"],
        "sweep job 1 (optim.optimizer.lr=-1): optim.optimizer.lr=-1",
    ),
    "sweep_missing_option": (
        "train",
        ["-m", "model=tiny,huge"],
        "model=huge: no such option of model",
    ),
    "sweep_file_bad_setting": (
        "train",
        ["-m", "sweeps=quick", "optim.warmup=1"],
        "sweep job 0 (optim.optimizer.lr=0.001): optim.warmup=1",
    ),
    "sweep_joblib": ("train", ["-m", "hydra/launcher=joblib", "optim.optimizer.lr=1e-3,-1"], "sweep job 1"),
    "sweep_submitit": (
        "train",
        ["-m", "hydra/launcher=submitit_local", "seed=0,1", "trainer.max_steps=abc"],
        "sweep job 0",
    ),
    "sweep_steps_beside_budget": ("train", ["-m", "sweeps=quick", "trainer.max_steps=7"], "drop trainer.max_steps"),
    # Optuna searches: each value on its own, the combinations, the sweeper's own settings
    "search_without_an_eval_net": ("train", ["-m", "sweeps=optuna_tiny", "eval=none"], "optuna.trial: a trial reports"),
    "search_bad_choice": ("train", ["-m", "sweeps=optuna_tiny", "optim.warmup=choice(0,1.5)"], "optim.warmup=1.5"),
    "search_bad_interval_end": (
        "train",
        ["-m", "sweeps=optuna_tiny", "optim.optimizer.lr=interval(-0.001,0.01)"],
        "optim.optimizer.lr=-0.001",
    ),
    "search_value_of_the_wrong_type": (
        "train",
        ["-m", "sweeps=optuna_tiny", "optim.warmup=choice(0.1,some)"],
        "optim.warmup: Value 'some' of type 'str' could not be converted to Float",
    ),
    "search_misspelt_key": (
        "train",
        ["-m", "sweeps=optuna_tiny", "optim.optimizer.lrr=interval(1e-4,1e-3)"],
        "optim.optimizer.lrr: no such setting (did you mean optim.optimizer.lr?)",
    ),
    "search_bad_combination": (
        "train",
        ["-m", "sweeps=optuna_tiny", "schedule.rescale_betas_zero_snr=choice(false,true)"],
        "schedule.rescale_betas_zero_snr=true with schedule.prediction_type=epsilon",
    ),
    "search_storage_scheme_typo": (
        "train",
        ["-m", "sweeps=optuna_tiny", "hydra.sweeper.storage=postgress://h/db"],
        "not a database URL",
    ),
    "search_journal_folder_missing": (
        "train",
        ["-m", "sweeps=optuna_tiny", "hydra.sweeper.storage=nowhere/j.log"],
        "a journal file's folder must exist",
    ),
    "search_sqlite_folder_missing": (
        "train",
        ["-m", "sweeps=optuna_tiny", "hydra.sweeper.storage=sqlite:///nowhere/o.db"],
        "the database's folder does not exist",
    ),
    "search_pruner_percentile": (
        "train",
        ["-m", "sweeps=optuna_tiny", "hydra.sweeper.pruner.percentile=150"],
        "hydra.sweeper.pruner",
    ),
    "search_no_trials": ("train", ["-m", "sweeps=optuna_tiny", "hydra.sweeper.n_trials=0"], "hydra.sweeper.n_trials=0"),
    "trial_keys_by_hand": ("train", ["optuna.trial=3"], "optuna.trial is set without optuna.storage"),
    # post-hoc EMA and eval=dinov2 settings
    "posthoc_width_a_word": ("train", ["ema=posthoc", "ema.sigma_rels=[0.05,wide]"], "ema.sigma_rels"),
    "posthoc_snapshot_every_negative": ("train", ["ema=posthoc", "ema.snapshot_every=-1"], "ema.snapshot_every"),
    "posthoc_misspelt_key": (
        "train",
        ["ema=posthoc", "ema.sigma_rel=0.1", "ema.snapshot_evry=3"],
        "(did you mean ema.snapshot_every?)",
    ),
    "dinov2_n_samples_a_word": ("train", ["eval=dinov2", "eval.n_samples=many"], "eval.n_samples"),
    "dinov2_monitor_top_prob": ("train", ["eval=dinov2", "eval.monitor=top_prob"], "eval.monitor=top_prob"),
    "eval_every_n_images_negative": ("train", ["eval.every_n_images=-5"], "eval.every_n_images=-5"),
    # flow matching
    "flow_with_a_ddpm_sampler": ("train", ["schedule=flow", "sampler=ddim"], "sampler=ddim samples DDPM models"),
    "flow_with_a_ddpm_judge": ("train", ["schedule=flow", "eval.sampler=dpm_solver"], "eval.sampler=dpm_solver"),
    "ddpm_with_a_flow_sampler": ("train", ["sampler=flow_euler"], "sampler=flow_euler samples flow models"),
    "flow_with_min_snr": ("train", ["schedule=flow", "loss.snr_gamma=5"], "loss.snr_gamma=5 with schedule=flow"),
    "flow_shift_zero": ("train", ["schedule=flow", "schedule.shift=0"], "schedule.shift=0: the timestep shift"),
    "flow_logit_std_negative": ("train", ["schedule=flow", "schedule.logit_std=-1"], "schedule.logit_std=-1"),
    "flow_weighting_unknown": (
        "train",
        ["schedule=flow", "schedule.weighting_scheme=sd3"],
        "schedule.weighting_scheme",
    ),
    "flow_with_epsilon": ("train", ["schedule=flow", "schedule.prediction_type=epsilon"], "a flow model predicts"),
    "sample_flow_sampler_misspelt": ("sample", ["run=x", "sampler=flow_eular"], "sampler=flow_eular: no such option"),
}

# Settings that look alike but are no mistake: nothing refused.
ACCEPTED = {
    "debug_trainers_own_steps_beside_a_budget": ("train", ["trainer=debug", "budget.images=64"]),
    "an_experiments_budget_alone": ("train", ["experiment=digits_best_tiny"]),
    "steps_that_agree_with_the_budget": ("train", ["budget.images=64", "trainer.max_steps=4", "data.batch_size=16"]),
    "another_lightning_argument": ("train", ["+trainer.accumulate_grad_batches=2"]),
    "a_grid_sweep_file": ("train", ["-m", "sweeps=size_lr"]),
    "resume_is_checked_once_its_recipe_is_read": ("train", ["resume=somewhere", "trainer.max_steps=2"]),
}


@pytest.mark.parametrize("case", BEFORE_HYDRA)
def test_a_mistake_is_one_line_before_hydra_starts(case, tmp_path, monkeypatch, capsys):
    command, argv, text = BEFORE_HYDRA[case]
    message = train_command(argv, tmp_path, monkeypatch, capsys, command=command)
    assert text in message and "_base" not in message.replace(", ", " ").split(" "), message  # no option `_base`
    assert list(tmp_path.iterdir()) == []  # no outputs/, no multirun/<sweep>/multirun.yaml, no job folder


@pytest.mark.parametrize("case", ACCEPTED)
def test_what_is_no_mistake_passes_the_checks(case, tmp_path, monkeypatch):
    from diffexp.cli import preflight

    command, argv = ACCEPTED[case]
    monkeypatch.chdir(tmp_path)
    preflight(command, argv)
    assert list(tmp_path.iterdir()) == []


def test_an_optuna_search_is_checked_whole(tmp_path, monkeypatch):
    """optuna_small: each value, then all 144 combinations (3 warm-ups x 3 batches x 2 targets x 4 EMA paths x the
    learning rate's 2 ends), within the up-front count, whatever the machine's speed."""
    import itertools

    from hydra.types import RunMode

    from diffexp.cli import _compose, _loader
    from diffexp.command_schema import checks
    from diffexp.search_check import MAX_COMBINATIONS, SearchCheck

    monkeypatch.chdir(tmp_path)
    loader = _loader("train", None)
    search = SearchCheck(loader, _compose(loader, "train", ["sweeps=optuna_small"], RunMode.MULTIRUN), checks("train"))
    assert len(list(itertools.product(*search.dimensions))) == 144 <= MAX_COMBINATIONS
    search.up_front()
    assert len(search.checked) == 144 // 2  # kinds: the learning rate's ends aside
    assert list(tmp_path.iterdir()) == []
