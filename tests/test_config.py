"""Configuration: typed options, YAML presets, dotted overrides, cross-field checks, prompt sources and the CLI.

No test here reaches training: the CLI is only driven with invalid configs or ``--help``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from flowrl import cli
from flowrl.core.advantages import ADVANTAGES, StratifiedOptions, TrackerOptions
from flowrl.core.errors import ConfigError, DataError
from flowrl.core.losses import LOSSES, AwmOptions, NftOptions, NormalizesBy, SapoOptions, TrainsOn
from flowrl.core.method_options import Backend, upgrade
from flowrl.core.options import describe, load, set_dotted, to_dict
from flowrl.core.presets import parse_override
from flowrl.core.registry import Fact
from flowrl.image.config import (
    Config,
    SamplerConfig,
    check_combinations,
    window_of,
)
from flowrl.image.data import load_prompts
from flowrl.recipes import load_config
from flowrl.samplers import WINDOW_SCHEDULES
from flowrl.samplers.modes import ROLLOUT_MODES, Branching, TreeModeOptions

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """An empty directory standing in for the model (validation never loads it)."""
    path = tmp_path / "model"
    path.mkdir()
    return path


@pytest.fixture
def mp(model_dir: Path) -> str:
    """The ``model.path=...`` override every valid config needs."""
    return f"model.path={model_dir}"


def config_error(overrides: list[str], path: str | Path | None = None) -> str:
    """The message of the ``ConfigError`` that ``load_config`` raises."""
    with pytest.raises(ConfigError) as info:
        load_config(None if path is None else str(path), overrides)
    return str(info.value)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- loading


def test_defaults_load(mp: str, model_dir: Path) -> None:
    cfg = load_config(None, [mp])
    assert isinstance(cfg, Config)
    assert cfg.model.path == str(model_dir)
    expected = Config()
    expected.model.path = str(model_dir)
    assert cfg == expected
    assert cfg.sampler.mode == "flow-grpo"
    assert cfg.train.lr == 3e-4
    assert cfg.advantage.name == "grpo"
    assert cfg.loss.name == "ppo-clip"
    assert [r.name for r in cfg.rewards] == ["toy-geneval"]
    assert cfg.data.train_prompts == "toy:train"


def test_mutable_defaults_are_copied_per_instance() -> None:
    a, b = Config(), Config()
    assert a.model.lora_targets == []  # the model family's default (FamilyFacts.lora_targets)
    assert a.model.lora_targets is not b.model.lora_targets
    assert a.sampler.window_options is not b.sampler.window_options
    assert a.rewards is not b.rewards


def test_yaml_preset_loads(tmp_path: Path, mp: str) -> None:
    preset = write(
        tmp_path,
        "preset.yaml",
        "seed: 7\n"
        "sampler:\n  mode: mixgrpo\n  num_steps: 12\n"
        "train:\n  group_size: 4\n  lr: 0.001\n"
        "rewards:\n  - name: toy-geneval\n    weight: 2\n",
    )
    cfg = load_config(str(preset), [mp])
    assert cfg.seed == 7
    assert cfg.sampler.mode == "mixgrpo"
    assert cfg.sampler.num_steps == 12
    assert cfg.train.group_size == 4
    assert cfg.train.lr == 0.001
    assert cfg.rewards[0].weight == 2.0 and isinstance(cfg.rewards[0].weight, float)
    # untouched keys keep their defaults
    assert cfg.train.iterations == Config().train.iterations


def test_overrides_override_the_file(tmp_path: Path, mp: str) -> None:
    preset = write(tmp_path, "preset.yaml", "train:\n  lr: 0.001\n  group_size: 4\nsampler:\n  mode: branchgrpo\n")
    cfg = load_config(str(preset), [mp, "train.lr=2.0e-4", "sampler.branchgrpo.split_steps=[1,3]"])
    assert cfg.train.lr == 2e-4 and isinstance(cfg.train.lr, float)
    assert cfg.sampler.options.split_steps == [1, 3]
    assert isinstance(cfg.sampler.options.split_steps, list)
    assert cfg.train.group_size == 4  # from the file, not overridden


def test_later_override_wins(mp: str) -> None:
    cfg = load_config(None, [mp, "train.iterations=3", "train.iterations=5"])
    assert cfg.train.iterations == 5


def test_yaml_1_1_boolean_words_stay_text_for_text_options(mp: str) -> None:
    # YAML 1.1 reads no / off / yes as booleans: a text option keeps the word, a bool option still takes it
    cfg = load_config(None, [mp, "model.mixed_precision=no", "model.untrained_copy=none"])
    assert (cfg.model.mixed_precision, cfg.model.untrained_copy) == ("no", "none")
    assert load_config(None, [mp, "model.gradient_checkpointing=yes"]).model.gradient_checkpointing is True
    assert load_config(None, [mp, "train.overlap_rewards=off"]).train.overlap_rewards is False
    assert parse_override("eval.enabled=false") == ("eval.enabled", False)


def test_mixgrpo_tail_grid_needs_the_fixed_shift_grid(mp: str) -> None:
    flash = [mp, "sampler.mode=mixgrpo-flash", "sampler.tail_steps=2", "sampler.tail_grid=mixgrpo"]
    assert config_error(flash).startswith("sampler.tail_grid=mixgrpo re-spaces the tail")
    assert load_config(None, [*flash, "sampler.shift=3"]).sampler.tail_grid == "mixgrpo"


def test_override_lr_in_exponent_notation_is_a_float(mp: str) -> None:
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)
    cfg = load_config(None, [mp, "train.lr=1e-4"])
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)


def test_demo_preset_loads(mp: str, model_dir: Path) -> None:
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    cfg = load_config(str(REPO / "configs" / "demo.yaml"), [mp])
    assert cfg.model.path == str(model_dir)
    for section, values in raw.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if section == "model" and key == "path":
                continue
            assert getattr(getattr(cfg, section), key) == value, f"{section}.{key}"
    assert [r.name for r in cfg.rewards] == [r["name"] for r in raw["rewards"]]


def test_empty_yaml_file_gives_defaults(tmp_path: Path, mp: str, model_dir: Path) -> None:
    cfg = load_config(str(write(tmp_path, "empty.yaml", "")), [mp])
    assert cfg == load_config(None, [mp])


def test_optional_float_accepts_null(mp: str) -> None:
    cfg = load_config(None, [mp, "advantage.clip_max=null"])
    assert cfg.advantage.clip_max is None
    cfg = load_config(None, [mp, "advantage.clip_max=3"])
    assert cfg.advantage.clip_max == 3.0 and isinstance(cfg.advantage.clip_max, float)


def test_tuple_option_is_loaded_as_tuple(mp: str) -> None:
    tree = ["advantage.name=tree", "sampler.mode=branchgrpo", "sampler.branchgrpo.split_steps=[0,2,4]"]
    cfg = load_config(None, [mp, *tree, "advantage.tree.skip_depths=[0,2]"])
    assert cfg.advantage.options.skip_depths == (0, 2)


def test_override_into_empty_yaml_section(tmp_path: Path, mp: str) -> None:
    preset = write(tmp_path, "preset.yaml", "train:\nseed: 1\n")
    assert load_config(str(preset), [mp]).train == Config().train  # the null section alone is fine
    cfg = load_config(str(preset), [mp, "train.lr=0.1"])
    assert cfg.train.lr == 0.1


# --------------------------------------------------------------------------- keys, types, ranges


def test_unknown_nested_key_suggests(mp: str) -> None:
    assert config_error([mp, "train.lrr=1"]) == "unknown config key train.lrr; did you mean train.lr?"


def test_unknown_top_level_key_suggests(mp: str) -> None:
    assert config_error([mp, "sede=1"]) == "unknown config key sede; did you mean seed?"
    assert config_error([mp, "trian.lr=1"]) == "unknown config key trian; did you mean train?"


def test_unknown_key_without_close_match_lists_valid_keys(mp: str) -> None:
    assert config_error([mp, "zzz=1"]) == (
        "unknown config key zzz; valid keys: seed, imports, model, sampler, train, advantage, loss, rollout, rewards, "
        "data, eval, output"
    )


def test_unknown_key_in_yaml_file(tmp_path: Path, mp: str) -> None:
    preset = write(tmp_path, "preset.yaml", "loss:\n  clip_lo: 0.1\n")
    assert config_error([mp], preset) == "unknown config key loss.clip_lo; did you mean loss.clip_low?"


def test_unknown_key_inside_reward_entry(tmp_path: Path, mp: str) -> None:
    preset = write(tmp_path, "preset.yaml", "rewards:\n  - name: toy-geneval\n    wieght: 2\n")
    assert config_error([mp], preset) == "unknown config key rewards[0].wieght; did you mean rewards[0].weight?"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.group_size=two", "train.group_size: expected int, got 'two' (str)"),
        ("train.lr=[1]", "train.lr: expected float, got [1] (list)"),
        ("train.group_size=true", "train.group_size: expected int, got True (bool)"),
        ("train.group_size=2.5", "train.group_size: expected int, got 2.5 (float)"),
        ("train.lr=true", "train.lr: expected float, got True (bool)"),
        ("eval.enabled=1", "eval.enabled: expected true or false, got 1"),
        ("model.path=3", "model.path: expected str, got 3 (int)"),
        ("model.lora_targets=attn", "model.lora_targets: expected a list, got 'attn'"),
        ("sampler.branchgrpo.split_steps=[1,x]", "sampler.branchgrpo.split_steps[1]: expected int, got 'x' (str)"),
        ("sampler.window_options=3", "sampler.window_options: expected a mapping, got 3"),
        ("train=5", "train: expected a mapping, got 5"),
        ("advantage.clip_max=abc", "advantage.clip_max: expected float, got 'abc' (str)"),
    ],
)
def test_wrong_type(mp: str, override: str, message: str) -> None:
    assert config_error([mp, override]) == message


def test_int_is_accepted_for_float(mp: str) -> None:
    cfg = load_config(None, [mp, "train.lr=1", "loss.clip_low=0"])
    assert cfg.train.lr == 1.0 and type(cfg.train.lr) is float
    assert cfg.loss.clip_low == 0.0 and type(cfg.loss.clip_low) is float


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.group_size=1", "train.group_size: must be >= 2, got 1"),
        ("loss.clip_low=-1", "loss.clip_low: must be >= 0.0, got -1.0"),
        ("advantage.stratified.alpha=2", "advantage.stratified.alpha: must be <= 1.0, got 2.0"),
        ("train.ema_decay=1", "train.ema_decay: must be <= 0.99999, got 1.0"),
        ("loss.dual_clip=0.5", "loss.dual_clip: must be >= 1.0, got 0.5"),
        ("sampler.branchgrpo.split_steps=[1,-1]", "sampler.branchgrpo.split_steps: must be >= 0, got -1"),
        ("sampler.extra_tail_steps=[0]", "sampler.extra_tail_steps: must be >= 1, got 0"),
        ("seed=-3", "seed: must be >= 0, got -3"),
    ],
)
def test_out_of_range(mp: str, override: str, message: str) -> None:
    assert config_error([mp, override]) == message


def test_range_bounds_are_inclusive(mp: str) -> None:
    cfg = load_config(None, [mp, "train.group_size=2", "advantage.name=ngrpo", "loss.clip_low=0",
                             "sampler.noise_level=0"])  # fmt: skip
    assert (cfg.train.group_size, cfg.sampler.noise_level, cfg.loss.clip_low) == (2, 0.0, 0.0)
    own = load(StratifiedOptions, {"alpha": 1}, "advantage.stratified.")
    assert own.alpha == 1.0 and load(StratifiedOptions, {"alpha": 0}).alpha == 0.0


def test_unknown_advantage_name_suggests(mp: str) -> None:
    assert config_error([mp, "advantage.name=grp0"]) == (
        f"advantage.name: 'grp0' is not one of {', '.join(ADVANTAGES.names())} (did you mean 'grpo'?)"
    )


def test_unknown_loss_name_suggests(mp: str) -> None:
    flow_losses = ", ".join(LOSSES.names(lambda f: Backend.FLOW in f.trainers))
    assert config_error([mp, "loss.name=ppo-clp"]) == (
        f"loss.name: 'ppo-clp' is not one of {flow_losses} (did you mean 'ppo-clip'?)"
    )


def test_unknown_sampler_mode_suggests(mp: str) -> None:
    assert config_error([mp, "sampler.mode=mixgrp"]) == (
        f"sampler.mode: 'mixgrp' is not one of {', '.join(ROLLOUT_MODES.names())} (did you mean 'mixgrpo'?)"
    )


@pytest.mark.parametrize(
    ("override", "prefix"),
    [
        ("sampler.window=randm", "sampler.window: 'randm' is not one of "),
        ("model.finetune=ful", "model.finetune: 'ful' is not one of lora, full"),
        ("loss.step_weighting=uniformm", "loss.step_weighting: 'uniformm' is not one of "),
    ],
)
def test_unknown_choice_of_fixed_sets(mp: str, override: str, prefix: str) -> None:
    message = config_error([mp, override])
    assert message.startswith(prefix)
    assert message.endswith("?)")  # each has a close match


def test_unknown_reward_name_in_yaml(tmp_path: Path, mp: str) -> None:
    from flowrl.rewards import REWARDS, Scores

    valid = ", ".join(REWARDS.names(lambda f: f.scores is Scores.IMAGES))  # the text rewards are not offered
    preset = write(tmp_path, "preset.yaml", "rewards: [{name: nope}]\n")
    assert config_error([mp], preset) == f"rewards[0].name: 'nope' is not one of {valid}"
    preset = write(tmp_path, "close.yaml", "rewards: [{name: toy-genevl}]\n")
    assert config_error([mp], preset) == (
        f"rewards[0].name: 'toy-genevl' is not one of {valid} (did you mean 'toy-geneval'?)"
    )
    # one registry holds both recipes' rewards; each declares what it scores, and a config refuses the other kind
    preset = write(tmp_path, "text.yaml", "rewards: [{name: 'toy-text:correct'}]\n")
    assert config_error([mp], preset) == (
        f"rewards[0].name: 'toy-text:correct' scores text completions, and this recipe trains on images (its "
        f"rewards: {valid})"
    )


def test_set_dotted_into_a_scalar_is_an_error(mp: str) -> None:
    assert config_error([mp, "seed=1", "seed.x=1"]) == "cannot set seed.x: seed is not a section"
    # with no scalar there yet, the section is created and then fails type checking
    assert config_error([mp, "seed.x=1"]) == "seed: expected int, got {'x': 1} (dict)"


def test_set_dotted_creates_sections() -> None:
    data: dict = {"train": {"lr": 1.0}}
    set_dotted(data, "train.group_size", 4)
    set_dotted(data, "a.b.c", "x")
    assert data == {"train": {"lr": 1.0, "group_size": 4}, "a": {"b": {"c": "x"}}}


# --------------------------------------------------------------------------- combinations


def test_window_longer_than_schedule(mp: str) -> None:
    assert config_error([mp, "sampler.window_size=11"]) == "sampler.window_size=11 is longer than sampler.num_steps=10"
    assert load_config(None, [mp, "sampler.window_size=10"]).sampler.window_size == 10


def test_branchgrpo_needs_split_steps(mp: str) -> None:
    assert config_error([mp, "sampler.mode=branchgrpo"]) == (
        "sampler.mode=branchgrpo needs sampler.branchgrpo.split_steps (steps at which to branch)"
    )
    assert config_error([mp, "sampler.mode=branchgrpo-mix"]) == (
        "sampler.mode=branchgrpo-mix needs sampler.branchgrpo-mix.split_steps (steps at which to branch)"
    )


def test_branchgrpo_leaves_must_equal_group_size(mp: str) -> None:
    assert config_error([mp, "sampler.mode=branchgrpo", "sampler.branchgrpo.split_steps=[1,3]"]) == (
        "sampler.branchgrpo.branch_factor=2 ** len(sampler.branchgrpo.split_steps)=2 = 4 leaves per prompt, but "
        "train.group_size=8; make them equal"
    )
    cfg = load_config(None, [mp, "sampler.mode=branchgrpo", "sampler.branchgrpo.split_steps=[1,3,5]"])  # 2**3 == 8
    assert cfg.sampler.options.split_steps == [1, 3, 5]
    cfg = load_config(None, [mp, "sampler.mode=branchgrpo", "sampler.branchgrpo={split_steps: [2], branch_factor: 8}"])
    assert cfg.sampler.options.branch_factor == 8


def test_split_steps_with_chain_mode(mp: str) -> None:
    for mode in ("flow-grpo", "mixgrpo"):
        assert config_error([mp, f"sampler.mode={mode}", "sampler.branchgrpo.split_steps=[1,3]"]) == (
            f"sampler.branchgrpo.split_steps is an option of sampler.mode=branchgrpo; sampler.mode={mode} does not "
            "read it (remove it)"
        )


def test_split_step_outside_schedule(mp: str) -> None:
    assert config_error([mp, "sampler.mode=branchgrpo", "sampler.branchgrpo.split_steps=[1,3,10]"]) == (
        "sampler.branchgrpo.split_steps [1, 3, 10] must all be < sampler.num_steps=10"
    )


def test_singular_needs_window_of_one(mp: str) -> None:
    assert config_error([mp, "sampler.mode=singular", "sampler.window_size=2"]) == (
        "sampler.mode=singular branches at one step; sampler.window_size must be 1, got 2"
    )
    assert load_config(None, [mp, "sampler.mode=singular"]).sampler.mode == "singular"


def test_full_finetune_with_kl(mp: str) -> None:  # the reference is a frozen copy of the base
    assert load_config(None, [mp, "model.finetune=full", "loss.kl_coef=0.1"]).loss.kl_coef == 0.1
    assert load_config(None, [mp, "model.finetune=full"]).model.finetune == "full"
    assert load_config(None, [mp, "loss.kl_coef=0.1"]).loss.kl_coef == 0.1


def test_awm_combinations(mp: str) -> None:
    awm = [mp, "loss.name=awm"]
    assert config_error([*awm, "advantage.name=tree", "sampler.mode=singular"]) == (
        "loss.name=awm trains on final samples; advantage.name=tree gives per-transition advantages "
        "(use a per-sample estimator such as grpo)"
    )
    assert config_error([*awm, "model.cfg_scale=4"]) == (
        "loss.name=awm is CFG-free (its rollouts unguided); needs model.cfg_scale=1"
    )
    assert load_config(None, [*awm, "loss.velocity_kl_coef=0.1", "model.finetune=full"]).model.finetune == "full"
    assert load_config(None, [*awm, "loss.velocity_kl_coef=0.1"]).loss.velocity_kl_coef == 0.1


def test_missing_model_dir(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    message = "model.path {!r} is neither a directory nor a hub id (org/name)"
    assert config_error([f"model.path={missing}"]) == message.format(str(missing))
    a_file = write(tmp_path, "file.txt", "x")
    assert config_error([f"model.path={a_file}"]) == message.format(str(a_file))


def test_missing_prompt_file(mp: str) -> None:
    assert config_error([mp, "data.train_prompts=/nonexistent.txt"]) == (
        "data.train_prompts: prompt file '/nonexistent.txt' does not exist"
    )
    assert config_error([mp, "data.eval_prompts=/nonexistent.txt"]) == (
        "data.eval_prompts: prompt file '/nonexistent.txt' does not exist"
    )


def test_existing_prompt_file_is_accepted(tmp_path: Path, mp: str) -> None:
    prompts = write(tmp_path, "prompts.txt", "a red circle\n")
    assert load_config(None, [mp, f"data.train_prompts={prompts}"]).data.train_prompts == str(prompts)


def test_empty_rewards(mp: str) -> None:
    assert config_error([mp, "rewards=[]"]) == "rewards: list at least one reward"


def test_extra_tail_steps_need_ode_tail(mp: str) -> None:
    assert config_error([mp, "sampler.extra_tail_steps=[2]"]) == (
        "sampler.extra_tail_steps needs ODE steps after the last stochastic step (use a window)"
    )
    cfg = load_config(None, [mp, "sampler.extra_tail_steps=[2]", "sampler.window_size=4"])
    assert cfg.sampler.extra_tail_steps == [2]
    # a random window that can reach the last step would fail mid-run: caught here
    single = [mp, "sampler.mode=singular", "sampler.extra_tail_steps=[2]"]
    assert config_error(single) == (
        "sampler.extra_tail_steps needs ODE steps after the window, but the random window can start at step 9 "
        "and end at the last step; set sampler.window_options.max_start <= 8"
    )
    assert load_config(None, [*single, "sampler.window_options={max_start: 8}"]).sampler.window_options == {
        "max_start": 8
    }


def test_check_combinations_on_a_built_config(model_dir: Path) -> None:
    cfg = Config()
    cfg.model.path = str(model_dir)
    check_combinations(cfg)  # defaults are consistent
    cfg.sampler.window_size = 20
    with pytest.raises(ConfigError, match=r"^sampler\.window_size=20 is longer than sampler\.num_steps=10$"):
        check_combinations(cfg)


# --------------------------------------------------------------------------- window_of


def test_every_mode_declares_a_default_window_and_its_branching() -> None:
    for mode in ROLLOUT_MODES.names():
        facts = ROLLOUT_MODES.facts(mode)
        assert facts.window[0] in WINDOW_SCHEDULES and isinstance(facts.branching, Branching)
    assert ROLLOUT_MODES.names(lambda f: f.branching is Branching.TREE) == ["branchgrpo", "branchgrpo-mix"]


@pytest.mark.parametrize("mode", ROLLOUT_MODES.names())
def test_window_of_mode_default(mode: str) -> None:
    kind, size = ROLLOUT_MODES.facts(mode).window
    assert window_of(SamplerConfig(mode=mode, num_steps=10)) == (kind, size or 10)
    assert window_of(SamplerConfig(mode=mode, num_steps=7)) == (kind, size or 7)


def test_window_of_known_defaults() -> None:
    assert window_of(SamplerConfig(mode="flow-grpo", num_steps=10)) == ("fixed", 10)
    assert window_of(SamplerConfig(mode="flow-grpo-fast", num_steps=10)) == ("random", 2)
    assert window_of(SamplerConfig(mode="mixgrpo", num_steps=10)) == ("progressive", 4)
    assert window_of(SamplerConfig(mode="singular", num_steps=10)) == ("random", 1)


@pytest.mark.parametrize("mode", ROLLOUT_MODES.names())
def test_window_of_explicit_overrides_win(mode: str) -> None:
    assert window_of(SamplerConfig(mode=mode, num_steps=10, window="decaying", window_size=3)) == ("decaying", 3)
    assert window_of(SamplerConfig(mode=mode, num_steps=10, window_size=5))[1] == 5
    assert window_of(SamplerConfig(mode=mode, num_steps=10, window="fixed"))[0] == "fixed"


def test_window_of_through_load_config(mp: str) -> None:
    cfg = load_config(None, [mp, "sampler.mode=mixgrpo", "sampler.window=random", "sampler.window_size=3"])
    assert window_of(cfg.sampler) == ("random", 3)


# --------------------------------------------------------------------------- switching the mode on the command line

DEMO = str(REPO / "configs" / "demo.yaml")
BRANCH = ["sampler.mode=branchgrpo", "sampler.branchgrpo.split_steps=[2,5]", "train.group_size=4"]  # README's


def test_the_demo_samples_on_the_window_it_always_had() -> None:
    """configs/demo.yaml (make demo) resolves to the sampler section written in it, nothing dropped: a 3-step
    random window starting at step 0, 1 or 2, the same starts as a schedule built by hand from those values."""
    from flowrl.samplers import RandomWindow

    cfg = load_config(DEMO)
    assert to_dict(cfg.sampler) == {
        "mode": "flow-grpo-fast", "num_steps": 10, "kind": "flow_sde", "noise_level": 0.7, "window": "",
        "window_size": 3, "window_options": {"max_start": 2},
        "tail_solver": "euler", "tail_steps": 0, "tail_grid": "subsample", "extra_tail_steps": [],
        "same_noise": False, "shift": 0.0,
    }  # fmt: skip
    assert window_of(cfg.sampler) == ("random", 3)
    by_hand = RandomWindow(10, 3, max_start=2, seed=0)
    starts = []
    for _ in range(40):
        starts.append(by_hand.start)
        by_hand.advance()
    assert set(starts) == {0, 1, 2}


#: every bench method's resolved (mode, window, size, window options), as the code before the mode switch gave them
#: (their overrides set what they mean: no setting of the demo's is dropped from them)
BENCH_WINDOWS = {
    ("full", "flow-grpo"): ("flow-grpo", "fixed", 10, {}),
    ("full", "flow-grpo-fast"): ("flow-grpo-fast", "random", 3, {"max_start": 2}),
    ("full", "mixgrpo"): ("mixgrpo", "progressive", 3, {"stride": 1, "shift_interval": 10}),
    ("full", "mixgrpo-flash"): ("mixgrpo-flash", "progressive", 3, {"stride": 1, "shift_interval": 10}),
    ("full", "branchgrpo"): ("branchgrpo", "fixed", 10, {}),
    ("full", "branchgrpo-pruned"): ("branchgrpo", "fixed", 10, {}),
    ("full", "branchgrpo-mix"): ("branchgrpo-mix", "fixed", 10, {}),
    ("full", "tempflow"): ("singular", "random", 1, {"max_start": 2}),
    ("full", "g2rpo"): ("singular", "random", 1, {"max_start": 2}),
    ("full", "grpo-guard"): ("flow-grpo-fast", "random", 3, {"max_start": 2}),
    ("full", "nft"): ("ode", "fixed", 10, {}),
    ("full", "awm"): ("ode", "fixed", 10, {}),
    ("full", "dpo"): ("ode", "fixed", 10, {}),
    ("full", "best-of-n"): ("ode", "fixed", 10, {}),
    ("full", "smpo"): ("ode", "fixed", 10, {}),
    ("full", "draft-learned"): ("ode", "fixed", 10, {}),
    ("full", "refl-learned"): ("ode", "fixed", 10, {}),
    ("full", "flow-grpo-fast-learned"): ("flow-grpo-fast", "random", 3, {"max_start": 2}),
    ("full", "dpo-learned"): ("ode", "fixed", 10, {}),
    ("short", "flow-grpo"): ("flow-grpo", "fixed", 6, {}),
    ("short", "flow-grpo-fast"): ("flow-grpo-fast", "random", 3, {"max_start": 2}),
}


def test_bench_methods_keep_their_windows(caplog) -> None:
    from flowrl.image.bench import load_preset

    seen = {}
    for name in ("full", "short"):
        preset = load_preset(str(REPO / "configs" / "bench" / f"{name}.yaml"))
        for method in preset.methods:
            cfg = load_config(preset.base, [*preset.overrides, *method.overrides])
            s = cfg.sampler
            seen[name, method.name] = (s.mode, *window_of(s), s.window_options)
    assert seen == BENCH_WINDOWS
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]


def test_the_readme_branchgrpo_quick_start_runs_branchgrpo(caplog) -> None:
    """Switching the demo to BranchGRPO drops the demo's random-window settings (size 3, max_start 2), with one
    warning naming them and the new mode: the tree samples with SDE on every step, as BranchGRPO does."""
    cfg = load_config(DEMO, BRANCH)
    assert (cfg.sampler.mode, window_of(cfg.sampler), cfg.sampler.window_options) == ("branchgrpo", ("fixed", 10), {})
    assert cfg.sampler.options.split_steps == [2, 5] and cfg.train.group_size == 4
    (record,) = [r for r in caplog.records if r.name == "flowrl"]
    assert record.levelname == "WARNING" and "\n" not in record.getMessage()
    assert record.getMessage().startswith(
        f"sampler.mode=branchgrpo ({DEMO} says flow-grpo-fast): dropped sampler.window_size=3, "
        "sampler.window_options={max_start: 2}, written for flow-grpo-fast's window; branchgrpo uses its own (fixed "
        "window of every step)"
    )


def test_sample_losses_on_the_demo() -> None:
    """`sampler.mode=ode loss.name=nft` on the demo: ODE rollouts with no window options left over."""
    cfg = load_config(DEMO, ["sampler.mode=ode", "loss.name=nft"])
    assert (cfg.sampler.mode, window_of(cfg.sampler), cfg.sampler.window_options) == ("ode", ("fixed", 10), {})


@pytest.mark.parametrize(
    ("overrides", "expected", "dropped"),
    [
        # singular branching also draws a random step: the demo's first-half range (max_start 2) carries over
        (["sampler.mode=singular"], ("random", 1, {"max_start": 2}), ["sampler.window_size=3"]),
        # settings given as overrides stay; the fixed window takes no max_start
        (["sampler.mode=branchgrpo-mix", "sampler.branchgrpo-mix.split_steps=[2,5]", "train.group_size=4",
          "sampler.window_size=3"], ("fixed", 3, {}), ["sampler.window_options={max_start: 2}"]),
        (["sampler.mode=mixgrpo"], ("progressive", 4, {}),
         ["sampler.window_size=3", "sampler.window_options={max_start: 2}"]),
        (["sampler.mode=flow-grpo-fast"], ("random", 3, {"max_start": 2}), []),  # the file's own mode: no switch
        (["sampler.mode=mixgrpo", "sampler.window_options={stride: 2}"], ("progressive", 4, {"stride": 2}),
         ["sampler.window_size=3"]),
    ],
)  # fmt: skip
def test_a_mode_switch_drops_what_the_new_mode_does_not_mean(overrides, expected, dropped, caplog) -> None:
    cfg = load_config(DEMO, overrides)
    assert (*window_of(cfg.sampler), cfg.sampler.window_options) == expected
    messages = [r.getMessage() for r in caplog.records if r.name == "flowrl"]
    assert len(messages) == (1 if dropped else 0)
    if dropped:
        assert f"dropped {', '.join(dropped)}, written for flow-grpo-fast's window" in messages[0]


def test_a_mode_with_the_same_window_keeps_the_files_window(tmp_path: Path, mp: str, caplog) -> None:
    """MixGRPO-Flash has MixGRPO's default window: a MixGRPO file's tuned window is kept as written."""
    path = write(tmp_path, "mix.yaml", "sampler:\n  mode: mixgrpo\n  window_size: 3\n"
                                       "  window_options: {stride: 1, shift_interval: 10}\n")  # fmt: skip
    cfg = load_config(str(path), [mp, "sampler.mode=mixgrpo-flash"])
    assert (*window_of(cfg.sampler), cfg.sampler.window_options) == (
        "progressive",
        3,
        {"stride": 1, "shift_interval": 10},
    )
    assert not caplog.records
    # a file without a mode is written for the default mode (flow-grpo, every step)
    path = write(tmp_path, "plain.yaml", "sampler:\n  window: fixed\n  window_size: 9\n")
    cfg = load_config(str(path), [mp, "sampler.mode=flow-grpo-fast"])
    assert window_of(cfg.sampler) == ("random", 2)
    assert (
        "dropped sampler.window=fixed, sampler.window_size=9, written for flow-grpo's"
        in caplog.records[0].getMessage()
    )
    assert window_of(load_config(str(path), [mp, "sampler.mode=branchgrpo", "sampler.split_steps=[1]",
                                             "train.group_size=2"]).sampler) == ("fixed", 9)  # fmt: skip


def test_stale_window_keys_by_hand() -> None:
    from flowrl.samplers.modes import stale_window_keys

    demo = {"mode": "flow-grpo-fast", "window_size": 3, "window_options": {"max_start": 2}}
    assert stale_window_keys(demo, {**demo, "mode": "branchgrpo"}, ()) == ["window_size", "window_options"]
    assert stale_window_keys(demo, {**demo, "mode": "branchgrpo"}, {"window_size"}) == ["window_options"]
    assert stale_window_keys(demo, {**demo, "mode": "singular"}, ()) == ["window_size"]
    assert stale_window_keys(demo, {**demo, "mode": "singular", "window": "fixed"}, {"window"}) == [
        "window_size", "window_options"
    ]  # fmt: skip
    assert stale_window_keys(demo, demo, ()) == []
    written = {"mode": "flow-grpo-fast", "window": "progressive", "window_options": {"stride": 2}}
    assert stale_window_keys(written, {**written, "mode": "mixgrpo"}, ()) == ["window"]  # options fit progressive


# --------------------------------------------------------------------------- overrides and files


def test_parse_override_values() -> None:
    assert parse_override("train.lr=0.5") == ("train.lr", 0.5)
    assert parse_override("train.iterations=5") == ("train.iterations", 5)
    assert parse_override("sampler.split_steps=[1,3]") == ("sampler.split_steps", [1, 3])
    assert parse_override("eval.enabled=false") == ("eval.enabled", False)
    assert parse_override("output.run_dir=") == ("output.run_dir", "")
    assert parse_override(" output.run_dir =a=b") == ("output.run_dir", "a=b")
    assert parse_override("advantage.clip_max=null") == ("advantage.clip_max", None)


def test_parse_override_without_equals() -> None:
    with pytest.raises(ConfigError) as info:
        parse_override("train.lr")
    assert str(info.value) == "override 'train.lr' must look like key=value (e.g. train.lr=1e-4)"


def test_parse_override_bad_yaml_value() -> None:
    with pytest.raises(ConfigError) as info:
        parse_override("sampler.split_steps=[1")
    assert str(info.value).startswith("override sampler.split_steps: cannot parse value '[1': ")


def test_yaml_file_not_a_mapping(tmp_path: Path, mp: str) -> None:
    preset = write(tmp_path, "list.yaml", "- a\n- b\n")
    assert config_error([mp], preset) == f"config file {str(preset)!r} must hold a mapping of sections"
    preset = write(tmp_path, "scalar.yaml", "hello\n")
    assert config_error([mp], preset) == f"config file {str(preset)!r} must hold a mapping of sections"


def test_invalid_yaml_file(tmp_path: Path, mp: str) -> None:
    preset = write(tmp_path, "bad.yaml", "train: [1\n")
    assert config_error([mp], preset).startswith(f"config file {str(preset)!r} is not valid YAML: ")


def test_nonexistent_config_file(tmp_path: Path, mp: str) -> None:
    missing = tmp_path / "missing.yaml"
    assert config_error([mp], missing) == f"config file {str(missing)!r} does not exist"


# --------------------------------------------------------------------------- prompts


def test_toy_prompt_sets() -> None:
    train, held_out, everything = load_prompts("toy:train"), load_prompts("toy:held-out"), load_prompts("toy:all")
    assert len(train) == 374
    assert len(held_out) == 94
    assert len(set(train)) == 374 and len(set(held_out)) == 94
    assert not set(train) & set(held_out)
    assert set(train) | set(held_out) == set(everything)
    assert load_prompts("toy:train") == train  # deterministic


def test_unknown_toy_set() -> None:
    with pytest.raises(ConfigError) as info:
        load_prompts("toy:test")
    valid = ", ".join(f"{w}:{s}" for w in ("toy", "toy-video") for s in ("train", "held-out", "all", "validation",
                                                                           "train-no-val"))  # fmt: skip
    assert str(info.value) == f"unknown prompt set 'toy:test'; valid: {valid} or a file path"


def test_prompt_file_skips_blanks_and_comments(tmp_path: Path) -> None:
    path = write(
        tmp_path, "prompts.txt", "# header\na red circle\n\n   \n  two blue squares  \n  # indented comment\nx\n"
    )
    assert load_prompts(str(path)) == ["a red circle", "two blue squares", "x"]


def test_empty_prompt_file(tmp_path: Path) -> None:
    path = write(tmp_path, "empty.txt", "")
    with pytest.raises(DataError) as info:
        load_prompts(str(path))
    assert str(info.value) == f"prompt file {str(path)!r} has no prompts (blank lines and # comments are skipped)"
    only_comments = write(tmp_path, "comments.txt", "# a\n\n#b\n")
    with pytest.raises(DataError, match="has no prompts"):
        load_prompts(str(only_comments))


def test_non_utf8_prompt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xff\xfe bad")
    with pytest.raises(DataError) as info:
        load_prompts(str(path))
    assert str(info.value) == f"prompt file {str(path)!r} is not UTF-8 text (line 1, byte 0); re-save it as UTF-8"


def test_missing_prompt_file_in_load_prompts(tmp_path: Path) -> None:
    path = tmp_path / "missing.txt"
    with pytest.raises(ConfigError) as info:
        load_prompts(str(path))
    assert str(info.value) == f"prompt file {str(path)!r} does not exist"


# --------------------------------------------------------------------------- to_dict / describe


def test_to_dict_round_trips_defaults(mp: str) -> None:
    cfg = load_config(None, [mp])
    data = to_dict(cfg)
    assert isinstance(data, dict) and isinstance(data["train"], dict) and isinstance(data["rewards"][0], dict)
    assert load(Config, data) == cfg


def test_to_dict_round_trips_non_defaults(tmp_path: Path, mp: str) -> None:
    preset = write(
        tmp_path,
        "preset.yaml",
        "rewards:\n  - name: jpeg-compressibility\n    weight: 0.5\n    options: {quality: 80}\n",
    )
    cfg = load_config(
        str(preset),
        [
            mp,
            "sampler.mode=branchgrpo",
            "sampler.branchgrpo.split_steps=[1,3,5]",
            "sampler.window=progressive",
            "sampler.window_size=4",
            "sampler.window_options={stride: 2}",
            "advantage.name=tree",
            "advantage.tree.skip_depths=[0,2]",
            "advantage.clip_max=null",
            "loss.dual_clip=3",
            "train.lr=0.01",
        ],
    )
    data = to_dict(cfg)
    assert data["advantage"]["tree"]["skip_depths"] == [0, 2] and "options" not in data["advantage"]
    assert data["sampler"]["branchgrpo"] == {"split_steps": [1, 3, 5], "branch_factor": 2}
    back = load(Config, data)
    assert back == cfg
    assert back.advantage.options.skip_depths == (0, 2)
    assert back.rewards[0].options == {"quality": 80}


def _describe() -> dict[str, tuple[str, object, str]]:
    return {key: (tp, default, text) for key, tp, default, text in describe(Config)}


def test_describe_lists_leaf_keys_with_help() -> None:
    rows = _describe()
    for key in ("seed", "train.lr", "loss.clip_low", "advantage.name", "sampler.mode", "model.path", "eval.solver"):
        assert key in rows
        assert rows[key][2].strip()
    assert rows["train.lr"][:2] == ("float", 3e-4)
    assert rows["train.group_size"][:2] == ("int", 8)
    assert rows["model.lora_targets"][1] == []
    # sections are descended into, not listed themselves
    for section in ("model", "sampler", "train", "advantage", "loss", "data", "eval", "output"):
        assert section not in rows


def test_describe_covers_every_loadable_leaf(mp: str) -> None:
    """Every leaf key of ``to_dict(cfg)`` (outside the rewards list) is described."""

    def leaves(data: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in data.items():
            if isinstance(v, dict) and k != "window_options":
                out |= leaves(v, prefix + k + ".")
            else:
                out.add(prefix + k)
        return out

    data = to_dict(load_config(None, [mp]))
    # every method's own options, under its name in its section (loss.awm.weighting, rollout.generate.sol-rl.pool)
    sections = ("loss.", "advantage.", "sampler.", "rollout.generate.", "rollout.control.")
    nested = {key for key in set(_describe()) - leaves(data) if key.startswith(sections)}
    assert leaves(data) == set(_describe()) - nested
    for loss in LOSSES.names(lambda f: Backend.FLOW in f.trainers):
        own = LOSSES.options(loss)
        if own is not None:
            assert {f"loss.{loss}.{f.name}" for f in dataclasses.fields(own)} <= nested
    assert "sampler.branchgrpo-mix.split_steps" in nested and "advantage.tree.fusion" in nested
    assert {"rollout.generate.sol-rl.pool", "rollout.generate.sol-rl.select"} <= nested
    assert all(key.count(".") == (3 if key.startswith("rollout.") else 2) for key in nested)


def test_describe_every_help_is_non_empty() -> None:
    empty = [key for key, (_, _, text) in _describe().items() if not text.strip()]
    assert empty == []


# --------------------------------------------------------------------------- CLI


def test_cli_bad_key_prints_one_line(mp: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", mp, "train.lrr=1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "flowrl: config error: unknown config key train.lrr; did you mean train.lr?\n"


def test_cli_bad_config_file(tmp_path: Path, mp: str, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.yaml"
    assert cli.main(["train", "--config", str(missing), mp]) == 2
    err = capsys.readouterr().err
    assert err == f"flowrl: config error: config file {str(missing)!r} does not exist\n"


def test_cli_combination_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", f"model.path={tmp_path / 'nope'}"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("flowrl: config error: model.path ")


@pytest.mark.parametrize("kind", ["file", "override"])
def test_cli_yaml_error_is_one_line(tmp_path: Path, mp: str, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "file":
        argv = ["train", "--config", str(write(tmp_path, "bad.yaml", "train: [1\n")), mp]
    else:
        argv = ["train", mp, "sampler.split_steps=[1"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowrl: config error: ")
    assert len(err.splitlines()) == 1


def test_cli_debug_reraises(mp: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"^unknown config key train\.lrr; did you mean train\.lr\?$"):
        cli.main(["train", "--debug", mp, "train.lrr=1"])
    assert capsys.readouterr().err == ""


def test_cli_train_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "train.lr" in out
    assert "sampler.mode" in out
    assert "loss.clip_low (float, default 0.2)" in out
    assert "--config" in out and "--debug" in out


def test_yaml_words_mean_what_a_config_means(tmp_path):
    """YAML 1.1 reads no / off / yes as booleans and 1e-4 as text; a preset means the words and the number."""
    preset = tmp_path / "preset.yaml"
    preset.write_text("model:\n  mixed_precision: no\ntrain:\n  lr: 1e-4\neval:\n  enabled: off\n")
    cfg = load_config(str(preset))
    assert cfg.model.mixed_precision == "no" and cfg.train.lr == 1e-4 and cfg.eval.enabled is False
    assert load_config(None, ["eval.enabled=yes", "model.mixed_precision=no"]).eval.enabled is True


def test_train_help_lists_every_choice_and_the_text_keys(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["train", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # wrapped lines joined
    assert "model.mixed_precision (str, default 'no') accelerate mixed precision (one of: no, fp16, bf16)" in text
    assert "(one of: branchgrpo, branchgrpo-mix, flow-grpo, flow-grpo-fast, mixgrpo, mixgrpo-flash, ode" in text
    losses = "awm, best-of-n, bnpo, dapo, dpo, dr-grpo, draft, grpo, grpo-guard, gspo, nft, ppo-clip, refl, smpo"
    assert f"one of: {losses}" in text
    assert "options of the text backend" in text and "generation.max_new_tokens (int, default 64)" in text
    assert "generation.engine (str, default 'generate')" in text and "one of: generate, continuous" in text
    assert "TRL's GRPOConfig names, translated: " in text and "epsilon_high, generation_batch_size" in text


def test_train_help_with_a_config_lists_its_backends_keys(capsys, tmp_path):
    def help_text(*argv):
        with pytest.raises(SystemExit):
            cli.main(["train", *argv])
        return " ".join(capsys.readouterr().out.split())

    text = help_text("--config", "configs/text_demo.yaml", "--help")
    assert "generation.engine (str, default 'generate')" in text and "TRL's GRPOConfig names" in text
    assert "model.resolution" not in text and "sampler.mode" not in text
    image = help_text("--help", "--config=configs/demo.yaml")
    assert "model.resolution (int" in image and "sampler.mode" in image
    assert "generation.engine" not in image and "a config with `backend: text` lists" in image
    assert "generation.engine" in help_text("-h", "backend=text") and "model.resolution" not in text
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    both = help_text("--config", str(broken), "--help")  # the config's own error waits for a real run
    assert "model.resolution (int" in both and "generation.engine" in both


def test_version_flag(capsys):
    from flowrl import __version__

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"flowrl {__version__}"


def test_relative_model_path_is_found_next_to_the_preset_or_in_the_project(tmp_path, monkeypatch):
    import shutil

    project = Path(__file__).resolve().parents[1]
    presets = tmp_path / "presets"
    (presets / "weights").mkdir(parents=True)
    shutil.copy(project / "assets" / "toy-sd3" / "model_index.json", presets / "weights" / "model_index.json")
    (presets / "mine.yaml").write_text("model:\n  path: weights\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_config(str(presets / "mine.yaml")).model.path == str(presets / "weights")
    demo = load_config(str(project / "configs" / "demo.yaml"))  # assets/toy-sd3 is the project's
    assert demo.model.path == str(project / "assets" / "toy-sd3")
    (presets / "lost.yaml").write_text("model:\n  path: ./nowhere/model\n")
    with pytest.raises(ConfigError, match=r"'./nowhere/model' is neither a directory nor a hub id .* looked for in"):
        load_config(str(presets / "lost.yaml"))


def test_resolution_must_fit_the_vae_and_the_patches_before_anything_loads(tmp_path):
    import json

    with pytest.raises(ConfigError, match=r"model\.resolution=30 must be a multiple of 4 .* 4×4 pixel patches"):
        load_config(str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"), ["model.resolution=30"])
    for name, vae, patch in (("flux", {"block_out_channels": [128, 256, 512, 512]}, 1),
                             ("qwen", {"temperal_downsample": [False, True, True]}, 2)):  # fmt: skip
        folder = tmp_path / name
        for sub, config in (("vae", vae), ("transformer", {"patch_size": patch})):
            (folder / sub).mkdir(parents=True)
            (folder / sub / "config.json").write_text(json.dumps(config))
        (folder / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
        with pytest.raises(ConfigError, match=r"multiple of 16 .* VAE downsamples 8× .* 2×2 latent patches"):
            load_config(None, [f"model.path={folder}", "model.resolution=520"])
        assert load_config(None, [f"model.path={folder}", "model.resolution=512"]).model.resolution == 512


# --------------------------------------------------------------------------- method options

AWM = ["loss.name=awm", "sampler.mode=ode"]
TEXT = "configs/text_demo.yaml"


def test_method_options_nest_under_the_method(tmp_path: Path, mp: str) -> None:
    cfg = load_config(None, [mp, *AWM, "loss.awm.weighting=ghuber", "loss.awm.ghuber_power=0.5"])
    assert cfg.loss.options == AwmOptions(weighting="ghuber", ghuber_power=0.5)
    preset = write(tmp_path, "awm.yaml", "loss:\n  name: awm\n  clip_low: 1.0\n  awm: {weighting: t, ratio: true}\n")
    cfg = load_config(str(preset), [mp, "sampler.mode=ode"])
    assert cfg.loss.options == AwmOptions(weighting="t", ratio=True) and cfg.loss.clip_low == 1.0
    data = to_dict(cfg)
    assert data["loss"]["awm"]["weighting"] == "t" and "nft" not in data["loss"] and "options" not in data["loss"]
    assert load(Config, data) == cfg
    # a method without options of its own holds none; each estimator and mode with options gets its defaults
    assert load_config(None, [mp]).loss.options is None and "ppo-clip" not in to_dict(load_config(None, [mp]))["loss"]
    cfg = load_config(None, [mp, "advantage.name=per-prompt", "advantage.per-prompt.buffer=4"])
    assert cfg.advantage.options == TrackerOptions(buffer=4)
    nft = load_config(None, [mp, "loss.name=nft", "sampler.mode=ode"])
    assert nft.loss.options == NftOptions() and nft.loss.options.renoise == "subset"  # NFT's own default scheme


def test_a_loaded_section_carries_the_options_its_method_declares() -> None:
    assert Config().sampler.options is None and SamplerConfig(mode="branchgrpo").options == TreeModeOptions()
    with pytest.raises(TypeError, match="NftOptions are not the options of policy loss 'awm'"):
        dataclasses.replace(Config().loss, name="awm", options=NftOptions())


FLAT = [  # (old flat override, the method's selection, the new key, the value read)
    ("loss.awm_weighting=ghuber", AWM, "loss.awm.weighting", "ghuber"),
    ("loss.awm_ratio=true", AWM, "loss.awm.ratio", True),
    ("loss.awm_ema_decay=0.5", AWM, "loss.awm.ema_decay", 0.5),
    ("loss.renoise=logit-normal", AWM, "loss.awm.renoise", "logit-normal"),
    ("loss.renoise_count=3", ["loss.name=nft", "sampler.mode=ode"], "loss.nft.renoise_count", 3),
    ("loss.nft_beta=0.5", ["loss.name=nft", "sampler.mode=ode"], "loss.nft.beta", 0.5),
    ("advantage.tracker_min_count=2", ["advantage.name=per-prompt"], "advantage.per-prompt.min_count", 2),
    ("advantage.ngrpo_max_reward=2", ["advantage.name=ngrpo"], "advantage.ngrpo.max_reward", 2.0),
    ("advantage.tree_fusion=logprob", ["advantage.name=tree", "sampler.mode=branchgrpo",
                                       "sampler.branchgrpo.split_steps=[0,2,4]"], "advantage.tree.fusion", "logprob"),
    ("sampler.split_steps=[1,3,5]", ["sampler.mode=branchgrpo-mix"], "sampler.branchgrpo-mix.split_steps", [1, 3, 5]),
]  # fmt: skip


@pytest.mark.parametrize(("flat", "method", "key", "value"), FLAT)
def test_old_flat_names_still_work_with_a_notice(mp, caplog, flat, method, key, value) -> None:
    with caplog.at_level(logging.WARNING, logger="flowrl"):
        old = load_config(None, [mp, *method, flat])
    notices = [r.getMessage() for r in caplog.records]
    assert notices == [f"{flat.split('=')[0]} is now {key} (the old name still works)"]
    section, _, field = key.split(".")
    assert getattr(getattr(old, section).options, field) == value
    assert old == load_config(None, [mp, *method, f"{key}={flat.split('=', 1)[1]}"])  # the same config as nested


def test_old_flat_names_in_a_preset_and_their_edge_cases(tmp_path: Path, mp: str) -> None:
    preset = write(tmp_path, "old.yaml", "loss:\n  name: nft\n  nft_beta: 0.5\n  renoise: auto\n")
    cfg = load_config(str(preset), [mp, "sampler.mode=ode"])
    assert cfg.loss.options == NftOptions(beta=0.5)  # renoise: auto meant the loss's own scheme, subset
    assert config_error([mp, *AWM, "loss.awm_ratio=true", "loss.awm.ratio=false"]) == (
        "loss.awm.ratio is set twice: also as loss.awm_ratio (its old name)"
    )
    assert config_error([mp, *AWM, "loss.options={weighting: t}"]).startswith("unknown config key loss.options; ")


def test_an_option_of_another_method_is_refused_in_one_line(mp: str) -> None:
    assert config_error([mp, "loss.awm.weighting=t"]) == (
        "loss.awm.weighting is an option of loss.name=awm; loss.name=ppo-clip does not read it (remove it)"
    )
    assert config_error([mp, *AWM, "loss.nft_beta=0.5"]) == (  # an old flat name: its method is still named
        "loss.nft.beta is an option of loss.name=nft; loss.name=awm does not read it (remove it)"
    )
    assert config_error([mp, "advantage.tree.keep_fraction=0.5"]) == (
        "advantage.tree.keep_fraction is an option of advantage.name=tree; advantage.name=grpo does not read it "
        "(remove it)"
    )
    assert config_error([mp, "loss.ppo-clip.x=1"]) == "loss.ppo-clip: policy loss ppo-clip has no options of its own"
    assert config_error([mp, "loss.awm.weightin=t"]).startswith("unknown config key loss.awm.weightin; did you mean")
    # another method's block left at its defaults reads nothing and is dropped (TRL configs list every field)
    assert load_config(None, [mp, "loss.awm.weighting=uniform"]) == load_config(None, [mp])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.top_entropy_quantile=0.5"], "loss.top_entropy_quantile is read by the text backend only; "
         "loss.name=ppo-clip on the flow backend does not read it (leave it at 1.0)"),
        (["loss.name=gspo", "loss.step_weighting=noise-aware"], "loss.step_weighting is not read by loss.name=gspo; "
         "leave it at its default ('uniform')"),
        (["loss.name=nft", "sampler.mode=ode", "loss.kl_coef=0.1"], "loss.kl_coef is not read by loss.name=nft; "
         "leave it at its default (0.0)"),
        (["loss.velocity_kl_coef=0.1"], "loss.velocity_kl_coef is not read by loss.name=ppo-clip; leave it at its "
         "default (0.0)"),
        (["advantage.strata=toy-geneval/objects"], "advantage.strata is not read by advantage.name=grpo; leave it at "
         "its default ('')"),
        (["advantage.name=dr-grpo", "advantage.eps=0.01"], "advantage.eps is not read by advantage.name=dr-grpo; "
         "leave it at its default (0.0001)"),
        (["sampler.tail_solver=dpm2m"], "sampler.tail_solver is not read by sampler.mode=flow-grpo; leave it at its "
         "default ('euler')"),
        ([*AWM, "sampler.noise_level=0.5"], "sampler.noise_level is not read by sampler.mode=ode; leave it at its "
         "default (0.7)"),
    ],
)  # fmt: skip
def test_a_section_option_the_method_or_backend_does_not_read_is_refused(mp, overrides, message) -> None:
    assert config_error([mp, *overrides]) == message


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.nft.beta=0.5"], "loss.nft.beta is an option of loss.name=nft; loss.name=grpo does not read it "
         "(remove it)"),
        (["loss.nft_beta=0.5"], "loss.nft.beta is an option of loss.name=nft; loss.name=grpo does not read it "
         "(remove it)"),
        (["loss.sapo.temperature_neg=2"], "loss.sapo.temperature_neg is an option of loss.name=sapo; "
         "loss.name=grpo does not read it (remove it)"),
        (["loss.step_weighting=noise-aware"], "loss.step_weighting is read by the flow backend only; loss.name=grpo "
         "on the text backend does not read it (leave it at 'uniform')"),
        (["loss.velocity_kl_coef=0.1"], "loss.velocity_kl_coef is read by the flow backend only; loss.name=grpo on "
         "the text backend does not read it (leave it at 0.0)"),
        (["loss.name=cispo", "loss.delta=2"], "loss.delta is not read by loss.name=cispo; leave it at its default "
         "(None)"),
        (["advantage.tree_fusion=logprob"], "advantage.tree.fusion is an option of advantage.name=tree; "
         "advantage.name=grpo does not read it (remove it)"),
    ],
)  # fmt: skip
def test_the_text_backend_refuses_what_its_method_does_not_read(overrides, message) -> None:
    assert config_error(overrides, TEXT) == message


def test_the_text_backend_reads_its_methods_options(tmp_path: Path, caplog) -> None:
    cfg = load_config(TEXT, ["loss.name=sapo", "loss.sapo.temperature_neg=2"])
    assert cfg.loss.options == SapoOptions(temperature_neg=2.0)
    with caplog.at_level(logging.WARNING, logger="flowrl"):
        assert load_config(TEXT, ["loss.name=sapo", "loss.sapo_temperature_neg=2"]) == cfg
    assert [r.getMessage() for r in caplog.records] == [
        "loss.sapo_temperature_neg is now loss.sapo.temperature_neg (the old name still works)"
    ]
    text = (REPO / TEXT).read_text()
    preset = write(tmp_path, "trl.yaml", text.replace("  name: grpo\n  clip_low", "  clip_low") + "trl: {loss_type: "
                   "sapo, sapo_temperature_neg: 2.0}\n")  # fmt: skip
    assert load_config(str(preset)).loss == cfg.loss  # TRL's field lands on the nested key


def test_train_help_lists_each_methods_options_with_their_help(capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "loss.awm.weighting (str, default 'uniform') the time weighting of the per-sample matching error" in text
    assert "(one of: uniform, t, t2, huber, ghuber) (loss.name=awm)" in text
    assert "loss.nft.beta (float, default 1.0)" in text and "advantage.tree.fusion (str, default 'mean')" in text
    assert "sampler.branchgrpo-mix.split_steps (list, default []) steps at which each state branches" in text
    assert "loss.sapo.temperature_pos (float, default 1.0)" in text  # the text backend's options follow
    assert "loss.awm_weighting" not in text and "sampler.split_steps" not in text and "loss.options" not in text


def test_facts_are_enums_checked_at_registration() -> None:
    for name in LOSSES.names():
        facts = LOSSES.facts(name)
        assert isinstance(facts.trains_on, TrainsOn) and isinstance(facts.normalizes_by, NormalizesBy)
        assert all(isinstance(t, Backend) for t in facts.trainers)
    assert LOSSES.names(lambda f: f.trains_on is TrainsOn.SAMPLES) == ["awm", "best-of-n", "nft"]
    assert LOSSES.names(lambda f: f.trains_on is TrainsOn.PAIRS) == ["dpo", "smpo"]
    assert LOSSES.names(lambda f: f.trains_on is TrainsOn.CHAINS) == ["draft", "refl"]
    assert all(isinstance(ROLLOUT_MODES.facts(m).branching, Branching) for m in ROLLOUT_MODES.names())
    assert str(TrainsOn.SAMPLES) == f"{TrainsOn.SAMPLES}" == "samples" and isinstance(Branching.TREE, Fact)
    with pytest.raises(TypeError, match="trains_on must be a TrainsOn, got 'samples'"):
        LOSSES.register("loss-with-a-string-fact", trains_on="samples")
    with pytest.raises(TypeError, match="branching must be a Branching"):
        ROLLOUT_MODES.register("mode-with-a-string-fact", window=("fixed", 0), branching="tree")
    with pytest.raises(TypeError, match="ignores names no LossConfig option: clip"):
        LOSSES.register("loss-ignoring-a-typo", ignores=("clip",))
    with pytest.raises(TypeError, match="options must be a dataclass"):
        LOSSES.register("loss-with-a-dict", options=dict)
    assert "loss-with-a-string-fact" not in LOSSES and "loss-with-a-dict" not in LOSSES


def test_a_stored_config_written_before_options_nested_is_read_in_todays_layout(mp: str) -> None:
    """A checkpoint's or benchmark run's config.yaml written with the flat names (every method's options present,
    as to_dict wrote them) reads as today's to_dict: the chosen method's options under its name, the others
    dropped, ``renoise: auto`` as the loss's own scheme."""
    cfg = load_config(None, [mp, *AWM, "loss.awm.weighting=ghuber", "loss.awm.renoise=stratified",
                             "train.timestep_fraction=0.9"])  # fmt: skip
    now = to_dict(cfg)
    old = {**now, "loss": {k: v for k, v in now["loss"].items() if k != "awm"}}
    old["loss"].update({"awm_weighting": "ghuber", "awm_ghuber_power": 0.25, "awm_ratio": False, "awm_adv_scale": 1.0,
                        "awm_kl_weight": "uniform", "awm_ema_coef": 0.0, "awm_ema_decay": 0.3,
                        "renoise": "stratified", "renoise_count": 6, "renoise_shift": 3.0, "nft_beta": 1.0,
                        "nft_adv_clip": 5.0, "nft_decay_type": 1, "sapo_temperature_pos": 1.0,
                        "sapo_temperature_neg": 1.05})  # fmt: skip
    old["advantage"] = {**now["advantage"], "tracker_buffer": 32, "tree_fusion": "mean", "stratified_alpha": 0.8}
    old["sampler"] = {**now["sampler"], "split_steps": [], "branch_factor": 2}
    assert upgrade(Config, old) == now
    old["loss"]["renoise"] = "auto"
    assert upgrade(Config, old)["loss"]["awm"]["renoise"] == "uniform"


def test_a_resolution_of_height_and_width_samples_that_size(tiny_model):
    from flowrl.image.generate import generate
    from flowrl.image.models import policy_for

    demo = str(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml")
    cfg = load_config(demo, [f"model.path={tiny_model}", "model.resolution=[16, 32]"])
    assert cfg.model.resolution == [16, 32]
    for bad, says in (("[16, 30]", r"resolution=\[16, 30\] must be a multiple of"), ("[16, 32, 8]", "two: \\[height")):
        with pytest.raises(ConfigError, match=says):
            load_config(demo, [f"model.path={tiny_model}", f"model.resolution={bad}"])
    policy = policy_for(cfg.model)
    images = generate(policy, ["a red circle"], [0], resolution=cfg.model.resolution, num_steps=2)
    assert images.shape == (1, 3, 16, 32)
