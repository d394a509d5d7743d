"""The text GRPO trainer's configuration (a YAML preset with ``backend: text``).

Same conventions as ``flowrl.image.config``: typed sections with help text, dotted overrides, every key,
type, range and combination checked before a model loads. The advantage and loss sections are the
flow trainer's (one registry each, shared by both backends); their defaults here follow TRL's GRPO.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from flowrl.core.advantages import ADVANTAGES, AdvantageConfig, refusal
from flowrl.core.errors import ConfigError
from flowrl.core.losses import LOSSES, LossConfig
from flowrl.core.method_options import NESTED, Backend, MethodSection, refuse_unread_options
from flowrl.core.options import load, option, rename_keys
from flowrl.core.rollout import RolloutConfig, check_rollout
from flowrl.core.sections import HUB_ID, WEIGHT_DTYPES, OutputConfig, RunControl, check_trackers, imports_option

#: what the text trainer feeds an advantage estimator besides rewards and groups
#: (``flowrl.core.advantages.EXTRA_INPUTS``)
TEXT_INPUTS = {"prompt_keys"}
TEXT_INPUT_HINTS = {
    "strata": "set advantage.strata to a function with a reward's signature that returns one integer per "
    "completion (its stratum, e.g. the number of tool calls)",
    "pairwise": "the text trainer has no reward that compares completions in pairs",
    "granular_rewards": "coarser decodings exist only for flow rollouts",
    "tree": "denoising trees exist only for flow rollouts",
}


@dataclass
class TextModelConfig:
    path: str = option("assets/toy-lm", "transformers causal LM folder or hub id (AutoModelForCausalLM)")
    finetune: str = option("lora", "lora (reference = adapter disabled) or full", choices=("lora", "full"))
    lora_rank: int = option(16, "LoRA rank", low=1)
    lora_alpha: float = option(32.0, "LoRA alpha (scale = alpha / rank)", low=0.0)
    lora_targets: list[str] = option(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "module name suffixes that get LoRA adapters",
    )
    weights_dtype: str = option(
        "fp32", "dtype of the frozen weights (LoRA weights stay fp32; full fine-tuning needs fp32)",
        choices=tuple(WEIGHT_DTYPES),
    )  # fmt: skip
    gradient_checkpointing: bool = option(False, "recompute activations in backward (turns the shared prefix off)")


@dataclass
class GenerationConfig:
    max_new_tokens: int = option(64, "completion length limit (TRL max_completion_length)", low=1)
    temperature: float = option(1.0, "sampling temperature; log-probs use softmax(logits / temperature)", low=0.0)
    top_p: float = option(1.0, "nucleus sampling (1 = off)", low=0.0, high=1.0)
    top_k: int = option(0, "top-k sampling (0 = off)", low=0)
    batch_size: int = option(0, "prompts per generate call (0 = all of the iteration's at once)", low=0)
    engine: str = option(
        "generate",
        "training rollouts: transformers' generate (padded batches) or continuous (continuous batching with paged "
        "attention, generate_batch; TRL use_transformers_continuous_batching). Evaluation always uses generate",
        choices=("generate", "continuous"),
    )
    continuous_options: dict[str, Any] = option(
        {}, "engine=continuous: ContinuousBatchingConfig fields, e.g. {num_blocks: 256, max_batch_tokens: 2048}"
    )
    cache_implementation: str = option(
        "",
        "engine=generate: transformers' key/value cache, e.g. static (preallocated) or offloaded; '' = the model's "
        "default (TRL cache_implementation; as in TRL, generate does not compile the model for it)",
    )


@dataclass
class TextTrainConfig(RunControl):
    iterations: int = option(100, "training iterations (generate, score, update)", low=0)
    prompts_per_step: int = option(8, "prompts per iteration, over all processes (a group may span them)", low=1)
    group_size: int = option(8, "completions per prompt (TRL num_generations)", low=2)
    inner_epochs: int = option(
        1, "passes over each batch, ratios against the old log-probs (TRL num_iterations, μ)", low=1
    )
    minibatches: int = option(1, "optimizer steps per pass", low=1)
    micro_batch: int = option(32, "completions per forward/backward (a group's rows in one share its prompt)", low=1)
    shared_prefix: bool = option(True, "run each group's prompt once and reuse its key/value cache")
    mask_truncated_completions: bool = option(
        False, "train on no token of a completion cut at max_new_tokens before its EOS (TRL's option of that name)"
    )
    lr: float = option(1e-5, "AdamW learning rate", low=0.0)
    weight_decay: float = option(0.0, "AdamW weight decay", low=0.0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)", low=0.0)


@dataclass
class TextRewardSpec:
    name: str = option("", "reward function: module:function (TRL signature) or a registered name (toy-text:...)")
    weight: float = option(1.0, "weight in the total reward")


@dataclass
class TextDataConfig:
    train: str = option(
        "toy-text:train",
        "toy-text:train | toy-text:held-out | a .jsonl / .json file or a dataset folder (save_to_disk or hub "
        "format) whose rows have a 'prompt': a string or a list of chat messages (flowrl.text.data)",
    )
    eval: str = option("toy-text:held-out", "evaluation rows (same forms)")
    train_split: str = option("train", "the split of a dataset folder to train on (TRL dataset_train_split)")
    eval_split: str = option("test", "the split of a dataset folder to evaluate on (TRL dataset_test_split)")
    system_prompt: str = option("", "conversational prompts: a system message put first where there is none")
    chat_template_kwargs: dict[str, Any] = option(
        {}, "extra keyword arguments of the chat template (TRL chat_template_kwargs, e.g. enable_thinking)"
    )


@dataclass
class TextEvalConfig:
    enabled: bool = option(True, "evaluate the base before and the policy after training")
    num_prompts: int = option(0, "evaluation prompts (0 = all)", low=0)
    samples_per_prompt: int = option(1, "completions per evaluation prompt", low=1)
    temperature: float = option(0.0, "evaluation sampling temperature (0 = greedy)", low=0.0)
    watch_rewards: list[TextRewardSpec] = dataclasses.field(
        default_factory=list,
        metadata={"help": "reward functions scored on the training completions but never trained on, to see reward "
                          "hacking: a list of {name} like rewards (logged as watch/<name>)"},
    )  # fmt: skip
    watch_drop: float = option(
        0.02, "warn when the trained reward rises while a watch reward falls by more than this (and 2 SE)", low=0.0
    )
    diversity_drop: float = option(
        0.3, "warn when the trained reward rises while the share of distinct completions per prompt falls by more "
        "than this fraction", low=0.0, high=1.0,
    )  # fmt: skip


@dataclass
class TextAdvantageSection(AdvantageConfig, MethodSection):
    REGISTRY, BACKEND = ADVANTAGES, Backend.TEXT

    name: str = option("grpo", "advantage estimator (registry name)", choices=ADVANTAGES.names)
    std_unbiased: bool = option(True, "the std with Bessel's correction (TRL's nanstd) instead of the population std")
    clip_max: float | None = option(None, "clamp advantages to ±clip_max; None (TRL) disables", low=0.0)
    options: Any = dataclasses.field(default=None, metadata=NESTED)


@dataclass
class TextLossSection(LossConfig, MethodSection):
    REGISTRY, BACKEND = LOSSES, Backend.TEXT

    name: str = option(
        "dapo",
        "policy loss (registry name; TRL's default, dapo: token sum over the whole batch's tokens)",
        choices=lambda: LOSSES.names(lambda f: Backend.TEXT in f.trainers),
    )
    kl_importance: bool = option(
        True, "weight the k3 KL by the ratio π/π_old (the tokens came from π_old; TRL use_bias_correction_kl)"
    )
    options: Any = dataclasses.field(default=None, metadata=NESTED)


@dataclass
class TextOutputConfig(OutputConfig):
    metric_names: str = option(
        "flowrl",
        "names of the logged metrics: flowrl's (as the image recipe logs them: reward/mean, train/loss, ...) or "
        "TRL's (reward, loss, clip_ratio/region_mean, ...); a trl: section sets trl unless given",
        choices=("flowrl", "trl"),
    )


@dataclass
class TextConfig:
    backend: str = option("text", "which trainer reads this file", choices=("text",))
    seed: int = option(0, "seed of prompts, sampling and initialisation", low=0)
    imports: list[str] = imports_option()  # noqa: RUF009 (a dataclasses.field, as option() returns)
    model: TextModelConfig = dataclasses.field(default_factory=TextModelConfig)
    generation: GenerationConfig = dataclasses.field(default_factory=GenerationConfig)
    train: TextTrainConfig = dataclasses.field(default_factory=TextTrainConfig)
    advantage: TextAdvantageSection = dataclasses.field(default_factory=TextAdvantageSection)
    loss: TextLossSection = dataclasses.field(default_factory=TextLossSection)
    rollout: RolloutConfig = dataclasses.field(default_factory=RolloutConfig)
    rewards: list[TextRewardSpec] = dataclasses.field(
        default_factory=lambda: [TextRewardSpec(name="toy-text:correct")],
        metadata={"help": "reward functions: a list of {name, weight}"},
    )
    data: TextDataConfig = dataclasses.field(default_factory=TextDataConfig)
    eval: TextEvalConfig = dataclasses.field(default_factory=TextEvalConfig)
    output: TextOutputConfig = dataclasses.field(default_factory=TextOutputConfig)


#: keys that were renamed: the old name still works, with a notice naming the new one
RENAMED = {"train.num_iterations": "train.inner_epochs"}  # the flow recipe's name for the same passes


def load_text_config(data: dict[str, Any]) -> TextConfig:
    """Build and check a ``TextConfig`` from a preset's mapping (overrides already applied). Data files are read
    (``DataError`` naming the file and line) and reward functions imported, so bad input fails before a run."""
    from flowrl.text.trl import apply_trl_section

    data = rename_keys(copy.deepcopy(data), RENAMED)
    cfg = load(TextConfig, apply_trl_section(data))  # TRL's GRPOConfig names, translated
    refuse_unread_options(cfg)  # before defaults are filled in below
    if cfg.model.finetune == "full" and cfg.model.weights_dtype != "fp32":
        raise ConfigError("model.finetune=full trains the weights themselves: model.weights_dtype must be fp32")
    if not cfg.rewards or any(not r.name for r in cfg.rewards):
        raise ConfigError("rewards: list at least one reward function, each with a name")
    for i, spec in enumerate(cfg.rewards):
        _check_reward(f"rewards[{i}].name", spec.name)
    trained = {r.name for r in cfg.rewards}
    for i, spec in enumerate(cfg.eval.watch_rewards):
        _check_reward(f"eval.watch_rewards[{i}].name", spec.name)
        if spec.name in trained:
            raise ConfigError(f"eval.watch_rewards[{i}].name: {spec.name!r} is trained on (in rewards); a watch "
                              "reward must not be")  # fmt: skip
    train, evaluation = (check_data_source(f"data.{key}", getattr(cfg.data, key), getattr(cfg.data, f"{key}_split"))
                         for key in ("train", "eval"))  # fmt: skip
    if train != evaluation:
        kinds = ("strings", "lists of messages")
        raise ConfigError(f"data.train's prompts are {kinds[train]} but data.eval's are {kinds[evaluation]}: give "
                          "an evaluation set of the same format (e.g. another split of the same dataset)")  # fmt: skip
    _check_model(cfg, train)
    check_trackers(cfg.output.trackers)
    _check_engine(cfg)
    if cfg.loss.max_length is None:  # dr-grpo divides by completions × the length limit (TRL max_completion_length)
        cfg.loss.max_length = cfg.generation.max_new_tokens
    if cfg.advantage.strata and ":" not in cfg.advantage.strata:
        raise ConfigError(f"advantage.strata={cfg.advantage.strata!r}: give a function as 'module:function' or "
                          "'toy-text:<name>' (it returns one integer stratum per completion)")  # fmt: skip
    inputs = TEXT_INPUTS | ({"strata"} if cfg.advantage.strata else set())
    why = refusal(cfg.advantage.name, cfg.train.group_size, inputs, TEXT_INPUT_HINTS)
    if why:
        raise ConfigError(why)
    check_rollout(cfg, Backend.TEXT, ADVANTAGES.facts(cfg.advantage.name).per_transition)
    return cfg


def _check_reward(key: str, name: str) -> None:
    """A registered text reward (``flowrl.rewards.REWARDS``, ``Scores.TEXT``) or an importable
    ``package.module:function``."""
    from flowrl.rewards import Scores, check_reward_name
    from flowrl.rewards.text import registered_name

    try:
        check_reward_name(registered_name(name), Scores.TEXT)
    except ValueError as e:
        raise ConfigError(f"{key}: {e}") from None


def check_data_source(key: str, source: str, split: str) -> bool:
    """The rows of a toy-text split, a data file or a dataset folder parse (read now: errors before the run); whether
    they are conversational."""
    from flowrl.text import data as text_data
    from flowrl.text import world as text_world

    if source.startswith(text_world.SOURCE_PREFIX):
        name = source[len(text_world.SOURCE_PREFIX) :]
        if name not in text_world.SPLITS:
            valid = ", ".join(text_world.SOURCE_PREFIX + s for s in text_world.SPLITS)
            raise ConfigError(f"{key}: unknown data source {source!r}; valid: {valid}, a data file or folder")
        return False
    if not os.path.exists(source):
        raise ConfigError(f"{key}: data file or folder {source!r} does not exist")
    if not os.path.isdir(source) and not source.endswith((".jsonl", ".json")):
        raise ConfigError(f"{key}: data file {source!r} must be a .jsonl file (one JSON object per line), a .json "
                          "file (a list of objects) or a dataset folder")  # fmt: skip
    rows = text_data.load_rows(source, split)  # DataError naming the file (and line) or folder
    return text_data.is_conversational(rows[0]["prompt"])


def _check_engine(cfg: TextConfig) -> None:
    """Each engine's own options: a cache transformers' ``generate`` knows; continuous batching's fields of the
    installed transformers' ``ContinuousBatchingConfig``."""
    g = cfg.generation
    if g.engine != "continuous":
        if g.continuous_options:
            raise ConfigError("generation.continuous_options are read only with generation.engine=continuous")
        from transformers.generation.configuration_utils import ALL_CACHE_IMPLEMENTATIONS

        if g.cache_implementation not in ("", *ALL_CACHE_IMPLEMENTATIONS):
            raise ConfigError(f"generation.cache_implementation={g.cache_implementation!r} is not one of "
                              f"{', '.join(ALL_CACHE_IMPLEMENTATIONS)} (or '' for the model's default)")  # fmt: skip
        return
    if g.cache_implementation:
        raise ConfigError("generation.cache_implementation is read only with generation.engine=generate (continuous "
                          "batching keeps its own paged cache)")  # fmt: skip
    try:
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
    except ImportError:
        raise ConfigError("generation.engine=continuous needs a transformers with continuous batching "
                          "(ContinuousBatchingConfig, transformers >= 5.8)") from None  # fmt: skip
    known = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    unknown = sorted(set(g.continuous_options) - known)
    if unknown:
        raise ConfigError(f"generation.continuous_options: {', '.join(unknown)} not ContinuousBatchingConfig "
                          f"fields; valid: {', '.join(sorted(known))}")  # fmt: skip


def _check_model(cfg: TextConfig, conversational: bool) -> None:
    """The model folder exists (or is a hub id), its tokenizer has a chat template when the prompts are
    conversational, and its position limit leaves room for prompt and completion."""
    from flowrl.text.data import has_chat_template

    path = cfg.model.path
    if not os.path.isdir(path):
        if os.path.exists(path) or not HUB_ID.fullmatch(path):
            raise ConfigError(f"model.path {path!r} is neither a directory nor a hub id (org/name)")
        return
    if conversational and not has_chat_template(path):
        raise ConfigError(f"the prompts are conversational (lists of messages) but the tokenizer in model.path "
                          f"{path!r} has no chat template: use a chat model or string prompts")  # fmt: skip
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            limit = json.load(f).get("max_position_embeddings")
    except (OSError, ValueError):
        raise ConfigError(f"model.path {path!r} has no readable config.json (expected a transformers model)") from None
    new = cfg.generation.max_new_tokens
    if isinstance(limit, int) and new >= limit:
        raise ConfigError(
            f"generation.max_new_tokens={new} leaves no room for a prompt: model.path {path!r} reads at most "
            f"{limit} positions (max_position_embeddings)"
        )


__all__ = ["TEXT_INPUTS", "TextConfig", "load_text_config"]
