"""The flow trainer's configuration: typed sections with help text, YAML presets, dotted overrides.

``load_config(path, overrides)`` reads a YAML preset, applies ``key=value`` overrides (values are
parsed as YAML: ``train.lr=1e-4``, ``sampler.branchgrpo.split_steps=[1,3]``), and validates every key, type,
range and combination before anything heavy is imported, raising ``ConfigError`` with the key.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

import yaml

import flowrl.image.sol_rl  # noqa: F401  (registers the sol-rl generator before configs are read)
from flowrl.core.advantages import ADVANTAGES, AdvantageConfig, refusal
from flowrl.core.errors import ConfigError
from flowrl.core.losses import LOSSES, LossConfig, TrainsOn, trains_on
from flowrl.core.method_options import NESTED, Backend, MethodSection, refuse_unread_options, section_option
from flowrl.core.options import load, option, set_dotted, to_dict
from flowrl.core.presets import one_line, parse_override, resolve_relative_path, yaml_load
from flowrl.core.rollout import RolloutConfig, check_rollout
from flowrl.core.sections import OutputConfig, RunControl, check_trackers, imports_option
from flowrl.image.model_config import ModelConfig, check_model, makes_videos
from flowrl.samplers import ODE_SOLVERS, STEP_KINDS, WINDOW_SCHEDULES, make_window
from flowrl.samplers.modes import ROLLOUT_MODES, Branching, ModeFacts, switch_mode


def _stochastic(facts: ModeFacts) -> bool:
    return facts.stochastic


@dataclass
class SamplerConfig(MethodSection):
    REGISTRY, SELECTOR, BACKEND = ROLLOUT_MODES, "mode", Backend.FLOW

    mode: str = option("flow-grpo", "rollout layout (see the README's sampler modes)", choices=ROLLOUT_MODES.names)
    num_steps: int = option(10, "denoising steps of the sampling schedule", low=1)
    kind: str = section_option(option(
        "flow_sde", "stochastic step kind", choices=lambda: STEP_KINDS.names(lambda f: f.stochastic)
    ), read_by=_stochastic)  # fmt: skip
    noise_level: float = section_option(option(0.7, "a (flow_sde, cps) or eta (dance_sde)", low=0.0),
                                        read_by=_stochastic)  # fmt: skip
    window: str = section_option(option(
        "", "window schedule of stochastic steps; empty = the mode's default", choices=lambda: ("", *WINDOW_SCHEDULES)
    ), read_by=_stochastic)  # fmt: skip
    window_size: int = section_option(option(
        0, "steps in the window; 0 = the mode's default (0 there = every step)", low=0
    ), read_by=_stochastic)  # fmt: skip
    window_options: dict[str, Any] = section_option(option(
        {}, "extra window options (stride, shift_interval, decay, min_start, ...)"
    ), read_by=_stochastic)  # fmt: skip
    tail_solver: str = option("euler", "ODE solver after the last stochastic step", choices=ODE_SOLVERS.names)
    tail_steps: int = option(0, "steps of the tail solver (0 = as scheduled)", low=0)
    tail_grid: str = option(
        "subsample",
        "how tail_steps re-discretise the tail: 'subsample' keeps scheduled sigmas; 'mixgrpo' re-spaces the tail "
        "evenly in un-shifted time and shifts it, as MixGRPO's code does (needs sampler.shift > 0)",
        choices=("subsample", "mixgrpo"),
    )
    extra_tail_steps: list[int] = option([], "G2RPO: also decode with these coarser tails (multi-granularity)", low=1)
    same_noise: bool = option(
        False, "one initial noise for all images of a prompt (flow_grpo same_latent): they differ only by SDE noise"
    )
    shift: float = option(
        0.0,
        "s > 0: sample (and evaluate) on the linear grid shifted σ' = sσ/(1+(s−1)σ) instead of the scheduler's "
        "own schedule (DanceGRPO/MixGRPO/Pref-GRPO FLUX: 3)",
        low=0.0,
    )
    options: Any = dataclasses.field(default=None, metadata=NESTED)


@dataclass
class AdvantageSection(AdvantageConfig, MethodSection):
    REGISTRY, BACKEND = ADVANTAGES, Backend.FLOW

    name: str = option("grpo", "advantage estimator (registry name)", choices=ADVANTAGES.names)
    options: Any = dataclasses.field(default=None, metadata=NESTED)


@dataclass
class LossSection(LossConfig, MethodSection):
    REGISTRY, BACKEND = LOSSES, Backend.FLOW

    name: str = option(
        "ppo-clip", "policy loss (registry name)", choices=lambda: LOSSES.names(lambda f: Backend.FLOW in f.trainers)
    )
    options: Any = dataclasses.field(default=None, metadata=NESTED)


@dataclass
class RewardSpec:
    name: str = option(
        "toy-geneval",
        "reward: a registry name, or package.module:callable for your own (a function "
        "f(images, prompts, **options) -> {'score': [B]}, or a class built with the options)",
    )
    weight: float = option(1.0, "weight in the total reward")
    options: dict[str, Any] = option({}, "keyword options of the reward's factory (or of your callable)")
    label: str = option("", "its key in logs, weights and the reward matrix (default: name): list a reward twice")


@dataclass
class TrainConfig(RunControl):
    iterations: int = option(20, "training iterations (sample, score, update)", low=0)
    prompts_per_step: int = option(
        8,
        "prompts per iteration, over all processes (their images are dealt out evenly, a group may span them)",
        low=1,
    )
    group_size: int = option(8, "images per prompt (GRPO group)", low=2)
    inner_epochs: int = option(1, "passes over each iteration's transitions", low=1)
    minibatches: int = option(1, "optimizer steps per inner epoch (gradients accumulate across timesteps)", low=1)
    micro_batch: int = option(64, "transitions per forward/backward pass", low=1)
    sample_batch: int = option(
        0, "images per transformer forward and VAE decode when sampling and evaluating (0 = all at once)", low=0
    )
    overlap_rewards: bool = option(
        True,
        "with train.sample_batch > 0, roll out the batch a chunk of about sample_batch roots (whole prompts) at a "
        "time and score each chunk in a background thread while the next one samples (the samples, rewards and "
        "transitions are those of one rollout)",
    )
    lr: float = option(3e-4, "AdamW learning rate (the peak, with a schedule)", low=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay", low=0.0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)", low=0.0)
    ema_decay: float = option(
        0.0, "EMA of trainable weights, used for evaluation and saving (0 = off)", low=0.0, high=0.99999
    )
    timestep_fraction: float = option(
        1.0,
        "train a random max(1, int(n × this)) of each sample's n trainable steps per iteration (DanceGRPO/Pref-GRPO "
        "--timestep_fraction); 1 = all",
        low=0.0,
        high=1.0,
    )


@dataclass
class DataConfig:
    train_prompts: str = option(
        "toy:train",
        "toy:train | toy:train-no-val | toy:validation | toy:held-out | toy:all | a text file, one prompt a line",
    )
    eval_prompts: str = option("toy:held-out", "prompts for evaluation and the gallery (same forms)")
    pairs: str = option(
        "", "a pair dataset to train on instead of rollouts (offline DPO): a JSONL file of {prompt, chosen, rejected, "
        "label} or a datasets folder; train.prompts_per_step pairs per iteration (flowrl.image.pairs)"
    )  # fmt: skip
    pairs_cache: str = option(
        "", "where data.pairs' VAE latents are cached ('' = $XDG_CACHE_HOME/flowrl/pair-latents)"
    )


@dataclass
class EvalConfig:
    enabled: bool = option(True, "evaluate the base before and the policy after training")
    num_prompts: int = option(0, "evaluation prompts (0 = all)", low=0)
    seeds_per_prompt: int = option(2, "images per prompt (seed indices 0..n-1; own noise per prompt, index)", low=1)
    num_steps: int = option(10, "ODE steps of evaluation sampling", low=1)
    solver: str = option("euler", "ODE solver for evaluation", choices=ODE_SOLVERS.names)
    gallery_prompts: int = option(24, "rows in the gallery (0 = no gallery)", low=0)
    fps: int = option(16, "video families: frames per second of the gallery's clips (the Wan pipelines' 16)", low=1)
    watch_rewards: list[RewardSpec] = dataclasses.field(
        default_factory=list,
        metadata={"help": "rewards scored on training and evaluation images but never trained on, to see reward "
                          "hacking: a list of {name, options} like rewards (logged as watch/<name>)"},
    )  # fmt: skip
    watch_drop: float = option(
        0.02, "warn when the trained reward rises while a watch reward falls by more than this (and 2 SE)", low=0.0
    )
    diversity_drop: float = option(
        0.3, "warn when the trained reward rises while within-prompt diversity falls by more than this fraction",
        low=0.0, high=1.0,
    )  # fmt: skip
    metadata: str = option("", "GenEval metadata JSONL (prompt -> tag) for per-category results (toy: not needed)")


@dataclass
class Config:
    seed: int = option(0, "seed of prompts, noise and initialisation", low=0, high=999_999_999)
    imports: list[str] = imports_option()
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    advantage: AdvantageSection = dataclasses.field(default_factory=AdvantageSection)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = dataclasses.field(
        default_factory=lambda: [RewardSpec()],
        metadata={"help": "rewards to maximise: a list of {name, weight, options} (rewards[i].name etc.)"},
    )
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)


def window_of(cfg: SamplerConfig) -> tuple[str, int]:
    """The effective (window schedule, size) after the mode's defaults; size 0 → every step."""
    kind, size = ROLLOUT_MODES.facts(cfg.mode).window
    kind = cfg.window or kind
    size = cfg.window_size or size or cfg.num_steps
    return kind, size


def check_rewards(specs: list[RewardSpec], key: str = "rewards", videos: bool | None = False) -> None:
    """Each reward exists (a registered name, or an importable ``module:callable``) and takes its options; no
    reward is listed twice under one key (its label, else its name). Reads signatures only: no reward model loads.
    ``key`` names the list in messages; ``videos``: the model makes videos, whose rewards score videos (None: not
    known before the model loads, either kind passes here and ``check_reward_kinds`` runs then)."""
    from flowrl.rewards import Scores, check_reward_name, check_reward_options

    seen = set()
    for i, spec in enumerate(specs):
        if "/" in spec.label:
            raise ConfigError(f"{key}[{i}].label: {spec.label!r} has a '/', which separates a reward's components")
        if (spec.label or spec.name) in seen:
            field = "label" if spec.label else "name"
            raise ConfigError(f"{key}[{i}].{field}: {spec.label or spec.name!r} is listed twice (give it one weight, "
                              "or each listing its own label)")  # fmt: skip
        seen.add(spec.label or spec.name)
        try:
            if videos is None:
                check_reward_name(spec.name, Scores.VIDEOS if spec.name in video_rewards() else Scores.IMAGES)
            else:
                check_reward_name(spec.name, Scores.VIDEOS if videos else Scores.IMAGES)
        except ValueError as e:
            raise ConfigError(f"{key}[{i}].name: {e}") from None
        try:
            check_reward_options(spec.name, spec.options)
        except ValueError as e:
            raise ConfigError(f"{key}[{i}].options: {e}") from None


def video_rewards() -> set[str]:
    """The registered rewards that score videos."""
    from flowrl.rewards import REWARDS, Scores

    return set(REWARDS.names(lambda f: f.scores is Scores.VIDEOS))


def check_reward_kinds(cfg: Config, videos: bool) -> None:
    """Once the model is known (a hub id's files came with it): its rewards score what it makes."""
    check_rewards(cfg.rewards, videos=videos)
    check_rewards(cfg.eval.watch_rewards, "eval.watch_rewards", videos)


def check_prompts(key: str, source: str) -> None:
    """``source`` is a toy split or a readable file of prompts (read now, so a bad file fails before training)."""
    from flowrl.image.data import check_prompt_source, has_rows, is_toy_split, load_prompts

    try:
        check_prompt_source(source)
    except ConfigError as e:
        raise ConfigError(f"{key}: {e}") from None
    if not is_toy_split(source) and not has_rows(source):  # check_rows reads the rows
        load_prompts(source)  # DataError naming the file


def check_window(s: SamplerConfig, kind: str, size: int) -> None:
    """The window schedule builds from ``sampler.window_options`` (its options are the schedule's own) and, with
    ``sampler.extra_tail_steps``, always leaves ODE steps after it for the coarser decodings."""
    options = dict(s.window_options)
    if WINDOW_SCHEDULES.facts(kind).seeded:
        options.setdefault("seed", 0)
    try:
        window = make_window(kind, s.num_steps, size, **options)
    except TypeError as e:
        raise ConfigError(
            f"sampler.window_options {s.window_options} do not fit the {kind!r} window of sampler.mode={s.mode} "
            f"({one_line(e).split('() ')[-1]}); its options: {', '.join(_window_options(kind))}"
        ) from None
    except ValueError as e:
        raise ConfigError(f"sampler.window_options ({kind} window): {one_line(e)}") from None
    last_start = getattr(window, "max_start", window.start)
    if not s.extra_tail_steps or last_start + size < s.num_steps:
        return
    if not WINDOW_SCHEDULES.facts(kind).moves:
        raise ConfigError("sampler.extra_tail_steps needs ODE steps after the last stochastic step (use a window)")
    raise ConfigError(
        f"sampler.extra_tail_steps needs ODE steps after the window, but the {kind} window can start at step "
        f"{last_start} and end at the last step; set sampler.window_options.max_start <= {s.num_steps - size - 1}"
    )


def _window_options(kind: str) -> list[str]:
    import inspect

    params = inspect.signature(WINDOW_SCHEDULES.get(kind).__init__).parameters
    return [p for p in params if p not in ("self", "num_steps", "size")] or ["none"]


def flow_inputs(cfg: Config, branching: Branching) -> set[str]:
    """The optional advantage inputs the flow trainer feeds under ``cfg``."""
    from flowrl.rewards import gives_preferences

    feeds = {"prompt_keys"}
    if branching is not Branching.NONE:
        feeds.add("tree")
    if cfg.sampler.extra_tail_steps:
        feeds.add("granular_rewards")
    if cfg.advantage.strata:
        feeds.add("strata")
    if sum(gives_preferences(r.name, r.options) for r in cfg.rewards) == 1:
        feeds.add("pairwise")
    return feeds


def flow_input_hints() -> dict[str, str]:
    """How a flow run gets each input it can feed, for refusal messages."""
    from flowrl.rewards import REWARDS

    branching = ROLLOUT_MODES.names(lambda f: f.branching is not Branching.NONE)
    judges = REWARDS.names(lambda f: f.preferences_when is not None)
    return {
        "tree": f"use a branching sampler.mode ({', '.join(branching)})",
        "granular_rewards": "set sampler.extra_tail_steps (coarser ODE decodings of each sample, G2RPO)",
        "strata": "set advantage.strata to a scored component that differs between a prompt's images, e.g. "
        "toy-geneval/objects (the number of objects found)",
        "pairwise": f"list exactly one reward that compares a group's images in pairs ({', '.join(judges)} in its "
        "pairwise mode)",
    }


def check_strata(cfg: Config) -> None:
    """``advantage.strata`` names a component of a configured reward (``<reward>`` or ``<reward>/<key>``); whether
    that reward gives the key is known when it first scores (the trainer then names the components it has)."""
    key = cfg.advantage.strata
    names = [r.label or r.name for r in cfg.rewards]
    if key and key.split("/", 1)[0] not in names and key.rsplit("/", 1)[0] not in names:
        raise ConfigError(
            f"advantage.strata={key!r} names no configured reward's component (rewards: {', '.join(names)}; "
            "a component is '<reward>/<key>', e.g. toy-geneval/objects)"
        )


def check_method(cfg: Config, branching: Branching) -> None:
    """The estimator gets every input it needs from the flow trainer (the loss's trainers are its choices)."""
    why = refusal(cfg.advantage.name, cfg.train.group_size, flow_inputs(cfg, branching), flow_input_hints())
    if why:
        raise ConfigError(why)


def check_renoise(cfg: Config) -> None:
    """The re-noising scheme of a sample loss (its options' ``renoise``) reads train.timestep_fraction only where it
    uses it."""
    name = cfg.loss.name
    scheme, top = cfg.loss.options.renoise, int(cfg.sampler.num_steps * cfg.train.timestep_fraction)
    if cfg.train.timestep_fraction < 1 and scheme in ("uniform", "logit-normal"):
        raise ConfigError(
            f"train.timestep_fraction < 1 picks trained steps; loss.name={name} with loss.{name}.renoise={scheme} "
            "has none (the subset and stratified schemes use it)"
        )
    if scheme == "stratified" and top < 2:
        raise ConfigError(
            f"loss.{name}.renoise=stratified draws from schedule indices 1..int(sampler.num_steps * "
            f"train.timestep_fraction) = 1..{top}: needs at least 2"
        )
    clips_old_value = LOSSES.facts(name).old_value(cfg.loss.options) is not None
    if clips_old_value and cfg.loss.options.renoise_each_epoch and cfg.train.inner_epochs > 1:
        raise ConfigError(
            f"loss.name={name} clips a ratio against each row's value before the update, which needs the same noise "
            f"in every inner epoch: set loss.{name}.renoise_each_epoch=false or train.inner_epochs=1"
        )


def check_chains(cfg: Config) -> None:
    """A chain loss (ReFL, DRaFT) re-runs each sample's ODE chain on Euler steps and backpropagates every configured
    reward: the rollouts must be those chains and every reward differentiable."""
    name, s = cfg.loss.name, cfg.sampler
    if s.mode != "ode" or s.tail_solver != "euler":
        raise ConfigError(
            f"loss.name={name} differentiates the sampler's Euler chains: use sampler.mode=ode with "
            f"sampler.tail_solver=euler (got {s.mode}, {s.tail_solver})"
        )
    if ADVANTAGES.facts(cfg.advantage.name).per_transition:
        adv = cfg.advantage.name
        raise ConfigError(f"loss.name={name} trains on whole chains; advantage.name={adv} needs transitions")
    from flowrl.rewards import REWARDS

    for i, r in enumerate(cfg.rewards):
        if r.name in REWARDS and not REWARDS.facts(r.name).differentiable:
            raise ConfigError(
                f"rewards[{i}].name={r.name!r} is not differentiable; loss.name={name} backpropagates through the "
                "reward (differentiable: " + ", ".join(REWARDS.names(lambda f: f.differentiable)) + ")"
            )


def check_tree(s: SamplerConfig, group_size: int) -> None:
    """A tree mode's split steps: distinct, inside the schedule, and as many leaves per prompt as the group."""
    key, splits, factor = f"sampler.{s.mode}", s.options.split_steps, s.options.branch_factor
    if not splits:
        raise ConfigError(f"sampler.mode={s.mode} needs {key}.split_steps (steps at which to branch)")
    if len(set(splits)) != len(splits):
        raise ConfigError(f"{key}.split_steps {splits} lists a step twice")
    if any(k >= s.num_steps for k in splits):
        raise ConfigError(f"{key}.split_steps {splits} must all be < sampler.num_steps={s.num_steps}")
    leaves = factor ** len(splits)
    if leaves != group_size:
        raise ConfigError(
            f"{key}.branch_factor={factor} ** len({key}.split_steps)={len(splits)} = {leaves} leaves per prompt, but "
            f"train.group_size={group_size}; make them equal"
        )


def check_combinations(cfg: Config) -> None:
    """Cross-field rules (each message names the keys)."""
    videos = makes_videos(cfg.model.path)
    check_rewards(cfg.rewards, videos=videos)
    check_trackers(cfg.output.trackers)
    check_rewards(cfg.eval.watch_rewards, "eval.watch_rewards", videos)
    check_rollout(cfg, Backend.FLOW, ADVANTAGES.facts(cfg.advantage.name).per_transition)
    trained = {r.name for r in cfg.rewards}
    for i, spec in enumerate(cfg.eval.watch_rewards):
        if spec.name in trained:
            raise ConfigError(f"eval.watch_rewards[{i}].name: {spec.name!r} is trained on (in rewards); a watch "
                              "reward must be one the policy does not see")  # fmt: skip
    if cfg.eval.metadata and not os.path.isfile(cfg.eval.metadata):
        raise ConfigError(f"eval.metadata: GenEval metadata file {cfg.eval.metadata!r} does not exist")
    s, t = cfg.sampler, cfg.train
    kind, size = window_of(s)
    if size > s.num_steps:
        raise ConfigError(f"sampler.window_size={size} is longer than sampler.num_steps={s.num_steps}")
    branching = ROLLOUT_MODES.facts(s.mode).branching
    if branching is Branching.TREE:
        check_tree(s, t.group_size)
    if branching is Branching.SINGULAR and size != 1:
        raise ConfigError(f"sampler.mode=singular branches at one step; sampler.window_size must be 1, got {size}")
    check_window(s, kind, size)
    if s.tail_grid == "mixgrpo" and (s.shift <= 0 or not s.tail_steps):
        raise ConfigError(
            "sampler.tail_grid=mixgrpo re-spaces the tail on sampler.tail_steps steps of the fixed-shift grid: set "
            "sampler.shift > 0 and sampler.tail_steps > 0"
        )
    check_method(cfg, branching)
    check_strata(cfg)
    if cfg.train.timestep_fraction <= 0:
        raise ConfigError("train.timestep_fraction must be > 0 (1 trains every step)")
    if not ROLLOUT_MODES.facts(s.mode).stochastic and trains_on(cfg.loss.name) is TrainsOn.TRANSITIONS:
        raise ConfigError(
            f"sampler.mode={s.mode} records no transitions; loss.name={cfg.loss.name} trains on them (use a loss that "
            f"trains on final samples: {', '.join(LOSSES.names(lambda f: f.trains_on is not TrainsOn.TRANSITIONS))})"
        )
    if trains_on(cfg.loss.name) is TrainsOn.CHAINS:
        check_chains(cfg)
    if trains_on(cfg.loss.name) in (TrainsOn.SAMPLES, TrainsOn.PAIRS):
        check_renoise(cfg)
        if ADVANTAGES.facts(cfg.advantage.name).per_transition:
            raise ConfigError(
                f"loss.name={cfg.loss.name} trains on final samples; advantage.name={cfg.advantage.name} gives "
                "per-transition advantages (use a per-sample estimator such as grpo)"
            )
        if cfg.model.cfg_scale > 1 and not LOSSES.facts(cfg.loss.name).guided_rollouts:
            name = cfg.loss.name
            raise ConfigError(f"loss.name={name} is CFG-free (its rollouts unguided); needs model.cfg_scale=1")
    if cfg.data.pairs:
        from flowrl.image.pair_data import check_pair_data

        offline = LOSSES.names(lambda f: f.offline)
        check_pair_data(cfg, offline, LOSSES.facts(cfg.loss.name).offline, videos)
    if not cfg.rewards:
        raise ConfigError("rewards: list at least one reward")
    for key in ("train_prompts", "eval_prompts"):
        check_prompts(f"data.{key}", getattr(cfg.data, key))
    family = check_model(cfg.model)
    from flowrl.image.data import check_rows

    sources = {key: getattr(cfg.data, key) for key in ("train_prompts", "eval_prompts")}
    check_rows(sources, family, [*cfg.rewards, *cfg.eval.watch_rewards])


log = logging.getLogger("flowrl")


def read_config_data(path: str | None = None, overrides: list[str] = ()) -> dict[str, Any]:
    """A YAML preset's mapping (or an empty one) with the dotted ``overrides`` applied and a relative
    ``model.path`` resolved; ``flowrl.recipes.load_config`` hands it to the recipe its ``backend`` names."""
    data: dict[str, Any] = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ConfigError(f"config file {path!r} does not exist")
        with open(path, encoding="utf-8") as f:
            try:
                data = yaml_load(f)
            except yaml.YAMLError as e:
                raise ConfigError(f"config file {path!r} is not valid YAML: {one_line(e)}") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path!r} must hold a mapping of sections")
    written = copy.deepcopy(data.get("sampler")) if isinstance(data.get("sampler"), dict) else {}
    keys = []
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
        keys.append(key)
    if notice := switch_mode(data.get("sampler"), written, keys, SamplerConfig().mode, str(path)):
        log.warning(notice)  # window settings the overrides' mode does not share (flowrl.samplers.modes)
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("path"), str):
        model["path"] = resolve_relative_path(model["path"], path)
    return data


def load_flow_config(data: dict[str, Any]) -> Config:
    """Build and check the image recipe's ``Config`` from a preset's mapping (overrides applied, no ``backend``)."""
    cfg = load(Config, data)
    refuse_unread_options(cfg)
    check_combinations(cfg)
    return cfg


__all__ = ["Config", "load_flow_config", "read_config_data", "to_dict", "window_of"]
