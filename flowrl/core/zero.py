"""DeepSpeed ZeRO (stages 1 and 2) through accelerate: the optimizer state and gradients are partitioned over
the processes, the weights stay whole on every process (so sampling, evaluation and the reference policy call
the plain module, as under DDP).

accelerate's own ``backward`` steps the engine after every call; the trainer instead makes a varying number of
backward calls per optimizer step (every process the same number, see ``flowrl.core.share.step_rows``), so it
drives the engine itself: each call says whether it closes the step (the accumulation boundary, where ZeRO
reduces the gradients), losses go in unscaled (they are already weighted), and one ``engine.step()`` clips (the
config's ``gradient_clipping`` = ``train.max_grad_norm``) and updates. DeepSpeed skips a step whose gradient norm
is not finite by itself; the trainer counts it. The engine runs in fp32: DeepSpeed's bf16 mode would hold the
trainable weights in bf16 and does not autocast the passes that call the module directly (frozen weights can
still be bf16 with ``model.weights_dtype``).
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError


def deepspeed_requested() -> bool:
    """Whether the launch asks for DeepSpeed (``accelerate launch`` with a DEEPSPEED config sets this)."""
    import os

    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() in ("1", "true")


def require_deepspeed() -> None:
    """Refuse a DeepSpeed launch without the package, before accelerate fails on it less clearly."""
    if deepspeed_requested() and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "the launch asks for DeepSpeed (ACCELERATE_USE_DEEPSPEED) but it is not installed: pip install "
            "deepspeed, or launch with configs/accelerate/ddp.yaml or fsdp.yaml"
        )


def configure(accelerator: Any, micro_batch: int, max_grad_norm: float, mixed_precision: str) -> None:
    """Fill in the DeepSpeed config before ``accelerator.prepare``; refuse what the trainer cannot drive."""
    if mixed_precision != "no":
        raise ConfigError(
            f"model.mixed_precision={mixed_precision} with DeepSpeed would hold the trainable weights in "
            f"{mixed_precision}: use model.mixed_precision=no (frozen weights can be model.weights_dtype=bf16), or "
            "FSDP (configs/accelerate/fsdp.yaml) for bf16 compute with fp32 weights"
        )
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ConfigError(
            f"DeepSpeed ZeRO stage {stage} partitions the weights, which sampling calls directly: use stage 2 "
            "(configs/accelerate/deepspeed_zero2.yaml) or FSDP (configs/accelerate/fsdp.yaml)"
        )
    if ds.get("gradient_accumulation_steps") not in (None, 1, "auto"):
        raise ConfigError("DeepSpeed gradient_accumulation_steps must be 1: the trainer accumulates the gradients "
                          "of each optimizer step itself (train.micro_batch, train.minibatches)")  # fmt: skip
    ds["gradient_accumulation_steps"] = 1
    ds["train_micro_batch_size_per_gpu"] = micro_batch  # only feeds DeepSpeed's counters: no dataloader is prepared
    ds["gradient_clipping"] = max_grad_norm  # accelerate would put 1.0 for a missing value


def backward(engine: Any, loss: Tensor, last: bool) -> None:
    """One backward call of an optimizer step; ``last`` closes the step (ZeRO then reduces the gradients)."""
    engine.set_gradient_accumulation_boundary(last)
    engine.backward(loss, scale_wrt_gas=False)


def step(engine: Any) -> float | None:
    """Clip, update and clear the gradients; returns the gradient norm before clipping, or None when it was not
    finite and DeepSpeed skipped the update."""
    engine.step()
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None and math.isfinite(float(norm)) else None


def optimizer_state(engine: Any, params: list[Tensor]) -> dict[str, Any]:
    """The partitioned AdamW state as whole CPU tensors, one per trainable weight (a collective)."""
    from deepspeed.utils import safe_get_full_optimizer_state

    state: dict[str, Any] = {"zero": True, "step": _step_count(engine)}
    for key in ("exp_avg", "exp_avg_sq"):
        state[key] = [safe_get_full_optimizer_state(p, key).detach().cpu() for p in params]
    return state


def load_optimizer_state(engine: Any, params: list[Tensor], state: dict[str, Any]) -> None:
    """Put back what ``optimizer_state`` returned, and the weights into ZeRO's fp32 master copies (which the next
    step writes into the module)."""
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    if not state.get("zero"):
        raise ConfigError("the checkpoint's optimizer state was not written under DeepSpeed; resume with the launch "
                          "that wrote it")  # fmt: skip
    zo = engine.optimizer
    for flat in zo.single_partition_of_fp32_groups:  # AdamW makes its state at the first step: make it now
        if flat not in zo.optimizer.state:
            zeros = torch.zeros_like(flat)
            zo.optimizer.state[flat] = {"step": torch.tensor(0.0), "exp_avg": zeros, "exp_avg_sq": zeros.clone()}
    zo._lazy_init_hp_params_optimizer_state()  # point each weight's fragment at the new state (DeepSpeed 0.19)
    for i, p in enumerate(params):
        safe_set_full_fp32_param(p, p.detach().clone())
        for key in ("exp_avg", "exp_avg_sq"):
            safe_set_full_optimizer_state(p, state[key][i].to(p.device), key)
    for group_state in engine.optimizer.optimizer.state.values():
        if "step" in group_state:
            group_state["step"] = torch.as_tensor(state["step"], dtype=group_state["step"].dtype)


def _step_count(engine: Any) -> int:
    """AdamW's step count (the same for every partition)."""
    for group_state in engine.optimizer.optimizer.state.values():
        if "step" in group_state:
            return int(group_state["step"])
    return 0


__all__ = [
    "backward",
    "configure",
    "deepspeed_requested",
    "load_optimizer_state",
    "optimizer_state",
    "require_deepspeed",
    "step",
]
