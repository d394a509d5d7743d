"""Sharded training (FSDP): the transformer's weights, gradients and optimizer state split over the processes.

Requested by the launch (``accelerate launch --config_file configs/accelerate/fsdp.yaml``, which sets
``ACCELERATE_USE_FSDP``) and done here with PyTorch's FSDP2 (``fully_shard``), not by ``accelerator.prepare``:
the trainer runs the sharded module itself for sampling, evaluation and the reference policy, and on CPU
accelerate drops an FSDP request and runs DDP, so its own path could not be tested. One FSDP unit per
transformer block (the classes in diffusers' ``_no_split_modules``, or the launch's
``fsdp_transformer_layer_cls_to_wrap``) and one for the rest of the network.

A sharded module gathers each unit's weights from every process in every forward pass, with or without
gradients, so all processes must make the same passes: sampling does (the same number of prompts each),
evaluation pads its shares to equal length, and the update pads with zero-weight passes (``StepPlan``).
"""

from __future__ import annotations

import os

import torch
from torch import Tensor, nn

from flowrl.core.errors import LaunchError

_TRUE = ("1", "true", "yes")


def sharding_requested() -> bool:
    """Whether the launch asked for FSDP (accelerate sets ``ACCELERATE_USE_FSDP`` on CPU and GPU alike)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in _TRUE


def shard(transformer: nn.Module, device: torch.device, mixed_precision: str) -> None:
    """Shard ``transformer`` in place over all processes (``torch.distributed`` must be initialised).

    ``mixed_precision`` ``"bf16"`` computes every forward pass (sampling too) in bf16 with fp32 gradient
    reduction (FSDP's ``MixedPrecisionPolicy``); the sharded fp32 weights stay the optimizer's."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _refuse_unsupported_launch_options()
    if mixed_precision == "fp16":
        raise LaunchError("model.mixed_precision=fp16 is not supported with FSDP (no loss scaling): use bf16")
    policy = MixedPrecisionPolicy()
    if mixed_precision == "bf16":
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    options = {"mesh": mesh, "mp_policy": policy, "reshard_after_forward": _reshard_after_forward()}
    for block in _blocks(transformer):
        fully_shard(block, **options)
    fully_shard(transformer, **options)


def _blocks(transformer: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units: instances of the launch's or the model's block classes."""
    listed = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP", "")
    names = [n.strip() for n in listed.split(",") if n.strip()] or list(transformer._no_split_modules or [])
    present = {type(m).__name__ for m in transformer.modules()}
    missing = [n for n in names if n not in present]
    if missing or not names:
        raise LaunchError(
            f"FSDP: block classes {missing or names} are not in {type(transformer).__name__} "
            f"(fsdp_transformer_layer_cls_to_wrap; its blocks are {list(transformer._no_split_modules or [])})"
        )
    return [m for m in transformer.modules() if type(m).__name__ in names]


def _reshard_after_forward() -> bool:
    """accelerate's ``fsdp_reshard_after_forward``: FSDP2 booleans or FSDP1 strategy names."""
    value = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    if value in ("true", "full_shard", "1"):
        return True
    if value in ("false", "shard_grad_op", "0"):
        return False
    raise LaunchError(f"FSDP: fsdp_reshard_after_forward={value!r} is not supported (true/FULL_SHARD or false)")


def _refuse_unsupported_launch_options() -> None:
    if os.environ.get("FSDP_OFFLOAD_PARAMS", "").lower() in _TRUE:
        raise LaunchError("FSDP: fsdp_offload_params is not supported by flowrl; set it to false")
    if os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() in _TRUE:
        raise LaunchError("FSDP: use model.gradient_checkpointing=true instead of fsdp_activation_checkpointing")


def full(tensor: Tensor) -> Tensor:
    """A copy of the whole tensor on the CPU: a sharded ``DTensor`` is gathered from every process (a
    collective: all processes must call this in the same order)."""
    from torch.distributed.tensor import DTensor

    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()
    return tensor.detach().to("cpu", copy=True)


def local(tensor: Tensor) -> Tensor:
    """This process's part of a sharded ``DTensor`` (the tensor itself when not sharded)."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_model_state(module: nn.Module) -> dict[str, Tensor]:
    """The sharded module's whole state dict on the CPU of the main process (empty elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's whole state dict (keyed by parameter names) on the main process's CPU; collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(module, optimizer, options=options)


__all__ = [
    "full",
    "full_model_state",
    "full_optimizer_state",
    "local",
    "shard",
    "sharding_requested",
]
