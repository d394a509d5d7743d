"""A text preset written with TRL's ``GRPOConfig`` field names: the ``trl:`` section.

``trl: {loss_type: cispo, epsilon_high: 5.0, num_generations: 8, ...}`` is translated into flowrl's keys before the
preset is checked, so every value is validated like any other key. Only the fields given are translated; the rest
keep flowrl's text defaults, which are TRL's (dapo, ε = 0.2, β = 0, the group std with Bessel's correction + 1e-4,
the KL weighted by the ratio) except for ``learning_rate`` (flowrl 1e-5, TRL 1e-6), ``max_completion_length``
(64, TRL 512) and ``gradient_checkpointing`` (off, TRL on). A field flowrl does not read is refused with the reason,
as is a value also set under flowrl's own name.

The batch, by ``GRPOConfig.__post_init__``'s rule: TRL generates ``generation_batch_size`` completions at a time
(default ``per_device_train_batch_size × processes × steps_per_generation``, ``steps_per_generation`` defaulting to
``gradient_accumulation_steps``; given, it sets ``steps_per_generation``), that is ``generation_batch_size /
num_generations`` prompts (``train.prompts_per_step``), and makes ``steps_per_generation /
gradient_accumulation_steps`` optimizer steps on them (``train.minibatches``); ``per_device_train_batch_size`` is
the completions of one forward/backward (``train.micro_batch``). The processes are counted from ``WORLD_SIZE``
(``accelerate launch`` sets it). ``max_steps``, ``warmup_steps`` and ``save_steps`` count optimizer steps: they
become iterations (each ``minibatches × inner_epochs`` steps), and must divide evenly.
"""

from __future__ import annotations

import os
from typing import Any

from flowrl.core.errors import ConfigError
from flowrl.core.options import closest, set_dotted

LOSS_TYPES = {"grpo": "grpo", "bnpo": "bnpo", "dr_grpo": "dr-grpo", "dapo": "dapo", "cispo": "cispo", "sapo": "sapo"}
SCALE_REWARDS = {"group": "grpo", True: "grpo", "batch": "global-std", "none": "dr-grpo", False: "dr-grpo"}

#: TRL field -> flowrl dotted key, for the fields that carry over one to one
DIRECT = {
    "learning_rate": "train.lr",
    "num_generations": "train.group_size",
    "max_completion_length": "generation.max_new_tokens",
    "temperature": "generation.temperature",
    "top_p": "generation.top_p",
    "top_k": "generation.top_k",
    "beta": "loss.kl_coef",
    "epsilon_high": "loss.clip_high",
    "delta": "loss.delta",
    "importance_sampling_level": "loss.importance_sampling_level",
    "top_entropy_quantile": "loss.top_entropy_quantile",
    "sapo_temperature_pos": "loss.sapo.temperature_pos",
    "sapo_temperature_neg": "loss.sapo.temperature_neg",
    "use_bias_correction_kl": "loss.kl_importance",
    "mask_truncated_completions": "train.mask_truncated_completions",
    "num_iterations": "train.inner_epochs",
    "max_grad_norm": "train.max_grad_norm",
    "weight_decay": "train.weight_decay",
    "seed": "seed",
    "output_dir": "output.run_dir",
    "chat_template_kwargs": "data.chat_template_kwargs",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "cache_implementation": "generation.cache_implementation",
}

#: flowrl's metric names -> TRL's (GRPOTrainer's logs), for ``output.metric_names: trl``
METRIC_NAMES = {"reward/mean": "reward", "reward/std": "reward_std", "reward/zero_std_frac": "frac_reward_zero_std",
                "train/loss": "loss", "train/grad_norm": "grad_norm", "train/entropy": "entropy", "train/lr": "lr",
                "train/num_tokens": "num_tokens", "clip_frac_low": "clip_ratio/low_mean",
                "clip_frac_high": "clip_ratio/high_mean", "reward/non_finite": "rewards/infinite"}  # fmt: skip


def trl_metric_names(metrics: dict[str, float], reward_names: list[str]) -> dict[str, float]:
    """``metrics`` under TRL's names: the table above, ``reward/<f>`` and ``reward/<f>/std`` as
    ``rewards/<f>/mean|std``, and ``clip_ratio/region_mean`` (low + high) when the clip fractions are there."""
    renamed = {f"reward/{n}": f"rewards/{n}/mean" for n in reward_names}
    renamed.update({f"reward/{n}/std": f"rewards/{n}/std" for n in reward_names})
    out = {METRIC_NAMES.get(k, renamed.get(k, k)): v for k, v in metrics.items()}
    if "clip_ratio/low_mean" in out and "clip_ratio/high_mean" in out:
        out["clip_ratio/region_mean"] = out["clip_ratio/low_mean"] + out["clip_ratio/high_mean"]
    return out


#: TRL's counts of optimizer steps -> flowrl's counts of iterations (generation batches)
STEPS = {"max_steps": "train.iterations", "warmup_steps": "train.warmup_iterations", "save_steps": "train.save_every"}

#: TRL fields flowrl does not read (unless left off or false), and why
REFUSED = {
    "use_vllm": "flowrl generates with transformers (generation.engine); vLLM is not used",
    "entropy_coef": "an entropy bonus is not implemented",
    "use_adaptive_entropy": "an entropy bonus is not implemented",
    "off_policy_mask_threshold": "off-policy sequence masking is not implemented",
    "sync_ref_model": "the reference is the base model (LoRA: adapter disabled) and is never synced",
    "bf16": "set model.weights_dtype (the frozen weights) instead; trained weights stay fp32",
    "fp16": "set model.weights_dtype (the frozen weights) instead; trained weights stay fp32",
    "min_p": "not a flowrl sampling option (temperature, top_p, top_k)",
    "repetition_penalty": "not a flowrl sampling option (temperature, top_p, top_k)",
    "generation_kwargs": "not a flowrl sampling option (temperature, top_p, top_k)",
    "num_generations_eval": "evaluation completions per prompt are eval.samples_per_prompt",
}

BATCH = ("generation_batch_size", "per_device_train_batch_size", "gradient_accumulation_steps", "steps_per_generation")
OTHERS = (
    "loss_type",
    "epsilon",
    "scale_rewards",
    "multi_objective_aggregation",
    "reward_weights",
    "use_transformers_continuous_batching",
    "use_transformers_paged",
    "transformers_continuous_batching_config",
)


def read_fields() -> list[str]:
    """The GRPOConfig fields the ``trl:`` section translates, sorted."""
    return sorted([*DIRECT, *BATCH, *OTHERS, *STEPS])


def apply_trl_section(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with its ``trl:`` section (if any) translated into flowrl keys (module docstring)."""
    trl = data.pop("trl", None)
    if trl is None:
        return data
    if not isinstance(trl, dict):
        raise ConfigError(f"trl must be a mapping of GRPOConfig fields, got {type(trl).__name__}")
    out: dict[str, Any] = {}
    for field, value in trl.items():
        if field in REFUSED and value not in (None, False):
            raise ConfigError(f"trl.{field}={value!r} is not supported: {REFUSED[field]}")
        if field in DIRECT:
            out[DIRECT[field]] = value
        elif field not in (*BATCH, *OTHERS, *STEPS, *REFUSED):
            hint = closest(str(field), [*read_fields(), *REFUSED])
            extra = f"did you mean trl.{hint}?" if hint else f"it reads: {', '.join(read_fields())}"
            raise ConfigError(f"trl.{field} is not a GRPOConfig field flowrl reads; {extra}")
    out.update(_translated(trl, data))
    if not _has(data, "output.metric_names"):  # a TRL user reads TRL's metric names
        out["output.metric_names"] = "trl"
    for dotted, value in out.items():
        if _has(data, dotted):
            raise ConfigError(f"{dotted} is set twice: under trl and under its flowrl name")
        set_dotted(data, dotted, value)
    if "reward_weights" in trl:
        data["rewards"] = _reward_weights(trl["reward_weights"], data.get("rewards"))
    return data


def _translated(trl: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The fields that do not carry over one to one."""
    out: dict[str, Any] = {}
    if "loss_type" in trl:
        if trl["loss_type"] in ("luspo", "vespo"):
            raise ConfigError(f"trl.loss_type={trl['loss_type']!r} is not supported: not implemented in flowrl")
        out["loss.name"] = _lookup("loss_type", trl["loss_type"], LOSS_TYPES)
    if "epsilon" in trl:
        out["loss.clip_low"] = trl["epsilon"]
        if "epsilon_high" not in trl and not _has(data, "loss.clip_high"):  # TRL: epsilon_high defaults to epsilon
            out["loss.clip_high"] = trl["epsilon"]
    if trl.get("multi_objective_aggregation", "sum_then_normalize") != "sum_then_normalize":
        _lookup("multi_objective_aggregation", trl["multi_objective_aggregation"], {"normalize_then_sum": 0})
        out["advantage.name"] = "gdpo"  # TRL ignores scale_rewards then
    elif "scale_rewards" in trl:
        out["advantage.name"] = _lookup("scale_rewards", trl["scale_rewards"], SCALE_REWARDS)
    if trl.get("use_transformers_continuous_batching") or trl.get("use_transformers_paged"):
        out["generation.engine"] = "continuous"
    if trl.get("transformers_continuous_batching_config"):
        out["generation.continuous_options"] = trl["transformers_continuous_batching_config"]
    out.update(_batch(trl))
    out.update(_steps(trl, out, data))
    return out


def _lookup(field: str, value: Any, table: dict[Any, Any]) -> Any:
    if isinstance(value, bool) and not any(isinstance(k, bool) for k in table):
        value = str(value)
    if value not in table:
        valid = ", ".join(repr(k) for k in table)
        raise ConfigError(f"trl.{field}={value!r} is not one of {valid}")
    return table[value]


def _reward_weights(weights: Any, rewards: Any) -> list[dict[str, Any]]:
    """``rewards`` with TRL's ``reward_weights``, one per function in order; a weight set on both sides is refused."""
    if not isinstance(rewards, list) or not all(isinstance(r, dict) for r in rewards):
        raise ConfigError("trl.reward_weights needs the rewards list (each {name: ...}) in the preset")
    if not isinstance(weights, list) or len(weights) != len(rewards):
        raise ConfigError(f"trl.reward_weights must list one weight per reward function ({len(rewards)} in rewards)")
    if any("weight" in r for r in rewards):
        raise ConfigError("rewards[].weight is set twice: under trl.reward_weights and in the rewards list")
    return [{**r, "weight": w} for r, w in zip(rewards, weights, strict=True)]


def _batch(trl: dict[str, Any]) -> dict[str, Any]:
    """``train.prompts_per_step`` / ``minibatches`` / ``micro_batch`` from TRL's batch fields, by the rule of
    ``GRPOConfig.__post_init__`` (module docstring)."""
    if not any(k in trl for k in BATCH):
        return {}
    per_device = trl.get("per_device_train_batch_size", 8)  # TrainingArguments' default
    accumulation = trl.get("gradient_accumulation_steps", 1)
    total, steps = trl.get("generation_batch_size"), trl.get("steps_per_generation")
    group, world = trl.get("num_generations", 8), int(os.environ.get("WORLD_SIZE", "1"))
    if not all(isinstance(v, int) and v >= 1 for v in (per_device, accumulation, group, total or 1, steps or 1)):
        raise ConfigError("trl: the batch fields must be positive integers")
    if total is not None and steps is not None:
        raise ConfigError("trl: set generation_batch_size or steps_per_generation, not both (TRL's rule)")
    if total is None:
        total = per_device * world * (steps or accumulation)
    elif total % (per_device * world):
        raise ConfigError(f"trl: generation_batch_size {total} must be a multiple of per_device_train_batch_size "
                          f"× processes = {per_device * world} (TRL's rule)")  # fmt: skip
    steps = total // (per_device * world)
    if total % group or steps % accumulation:
        raise ConfigError(f"trl: the generation batch ({total} completions, {steps} steps per generation) must be a "
                          f"multiple of num_generations {group}, and its steps of gradient_accumulation_steps "
                          f"{accumulation}")  # fmt: skip
    return {"train.prompts_per_step": total // group, "train.minibatches": steps // accumulation,
            "train.micro_batch": per_device}  # fmt: skip


def _steps(trl: dict[str, Any], out: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """TRL's optimizer-step counts as iterations: one iteration makes ``minibatches × inner_epochs`` steps."""
    train = data.get("train", {}) if isinstance(data.get("train"), dict) else {}
    minibatches = out.get("train.minibatches", train.get("minibatches", 1))
    per_iteration = minibatches * trl.get("num_iterations", train.get("inner_epochs", 1))
    result = {}
    for field, key in STEPS.items():
        if field in trl:
            value = trl[field]
            if not isinstance(value, int) or value % per_iteration:
                raise ConfigError(f"trl.{field}={value!r} counts optimizer steps; an iteration makes "
                                  f"{per_iteration} of them: give a multiple, or set {key}")  # fmt: skip
            result[key] = value // per_iteration
    return result


def _has(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


__all__ = ["apply_trl_section", "read_fields"]
