"""Trainable weights: LoRA through peft or full fine-tuning, the reference policy, EMA, and saving.

With LoRA the reference policy is the same network with its adapter disabled, so KL costs one extra forward pass
and no second copy of the model; full fine-tuning keeps a frozen copy of the base (both recipes do the same). LoRA
checkpoints are written with ``StableDiffusion3Pipeline.save_lora_weights`` so that
``pipeline.load_lora_weights(dir)`` loads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from copy import deepcopy
from typing import Any

import torch
from torch import nn

from flowrl.core.errors import ConfigError

ADAPTER = "default"


def check_lora_targets(model: nn.Module, targets: list[str]) -> None:
    """Raise naming every entry of ``model.lora_targets`` that matches no module of ``model`` (a module name, or its
    suffix after a dot): a target that silently matched nothing would train less than the config says. Both
    recipes use it."""
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(f"model.lora_targets {missing} match no module of {type(model).__name__}")


def make_trainable(
    transformer: nn.Module, finetune: str, rank: int, alpha: float, targets: list[str]
) -> list[nn.Parameter]:
    """Add a LoRA adapter (``finetune="lora"``) or unfreeze everything (``"full"``); return the trainables."""
    if finetune == "lora":
        from peft import LoraConfig

        check_lora_targets(transformer, targets)
        config = LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))
        transformer.add_adapter(config, adapter_name=ADAPTER)
    elif finetune == "full":
        transformer.requires_grad_(True)
    else:
        raise ConfigError(f"model.finetune must be 'lora' or 'full', got {finetune!r}")
    params = [p for p in transformer.parameters() if p.requires_grad]
    for p in params:  # frozen weights may be bf16/fp16; the optimizer keeps fp32 adapter weights
        p.data = p.data.float()
    if not params:
        raise ConfigError("no trainable parameters after setting up fine-tuning")
    return params


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` as it is now, frozen in eval mode: the reference policy of a full fine-tuning run."""
    copy = deepcopy(module).eval()
    copy.requires_grad_(False)
    return copy


@contextlib.contextmanager
def reference_policy(policy: Any) -> Iterator[None]:
    """Inside the block (without gradients) the policy's forward passes are the reference policy's: the frozen copy
    ``policy.reference`` when the trainer made one (full fine-tuning), else the same network with its LoRA adapter
    disabled. The flow and text recipes both use this rule."""
    with torch.no_grad():
        frozen = getattr(policy, "reference", None)
        if frozen is not None:
            live, policy.transformer = policy.transformer, frozen
            try:
                yield
            finally:
                policy.transformer = live
            return
        transformer = policy.transformer
        if not getattr(transformer, "_hf_peft_config_loaded", False):
            raise ConfigError("the reference policy needs a LoRA adapter (model.finetune=lora) or a frozen copy")
        transformer.disable_adapters()
        try:
            yield
        finally:
            transformer.enable_adapters()


class EMA:
    """Exponential moving average of trainable parameters: ``avg ← decay·avg + (1 − decay)·p``."""

    def __init__(self, params: list[nn.Parameter], decay: float) -> None:
        self.params, self.decay = params, decay
        self.shadow = [p.detach().clone() for p in params]

    @torch.no_grad()
    def update(self) -> None:
        for avg, p in zip(self.shadow, self.params, strict=True):
            avg.lerp_(p.detach(), 1 - self.decay)

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Temporarily load the averaged weights into the live parameters."""
        live = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            for p, avg in zip(self.params, self.shadow, strict=True):
                p.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(self.params, live, strict=True):
                    p.copy_(value)

    def state_dict(self) -> dict[str, object]:
        """The averages as whole CPU tensors (gathered from every process under FSDP: a collective)."""
        from flowrl.core.sharding import full

        return {"decay": self.decay, "shadow": [full(t) for t in self.shadow]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        from flowrl.core.checkpoint import copy_into

        self.decay = float(state["decay"])
        copy_into(self.shadow, state["shadow"])


def weight_state(transformer: nn.Module, finetune: str, sharded: bool = False) -> dict[str, torch.Tensor]:
    """What ``save_weights`` writes, as whole CPU tensors: the trainable (LoRA) tensors by parameter name, or the
    whole state dict for full fine-tuning. With FSDP (``sharded``) every process must call this (the shards are
    gathered); the full fine-tuning state then comes back on the main process only (empty elsewhere)."""
    from flowrl.core.sharding import full, full_model_state

    if finetune == "lora":
        return {n: full(p) for n, p in transformer.named_parameters() if p.requires_grad}
    if sharded:
        return full_model_state(transformer)
    return {k: v.detach().cpu() for k, v in transformer.state_dict().items()}


def save_weights(
    transformer: nn.Module,
    finetune: str,
    path: str,
    pipeline: str = "StableDiffusion3Pipeline",
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """Write the trainable weights into folder ``path`` (callers make the whole checkpoint atomic).

    LoRA: ``pytorch_lora_weights.safetensors`` in the LoRA format of diffusers' ``pipeline`` class
    (so ``pipeline.load_lora_weights(path)`` loads it); full: the transformer in diffusers format
    (``from_pretrained``-loadable). ``state`` is ``weight_state``'s result (computed here by default).
    Non-finite weights are never written.
    """
    state = weight_state(transformer, finetune) if state is None else state
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise FloatingPointError(f"refusing to save non-finite weights ({bad[0]}, {len(bad)} tensors)")
    if finetune == "lora":
        import diffusers
        from peft.utils import get_peft_model_state_dict

        layers = get_peft_model_state_dict(transformer, state_dict=state, adapter_name=ADAPTER)
        # the adapter's config (rank, alpha, targets) rides along: without it a loader assumes alpha = rank
        metadata = transformer.peft_config[ADAPTER].to_dict()
        getattr(diffusers, pipeline).save_lora_weights(
            path, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata
        )
    else:
        from huggingface_hub import save_torch_state_dict

        # what diffusers' save_pretrained writes: config.json and safetensors shards named as it names them
        transformer.save_config(path)
        pattern = "diffusion_pytorch_model{suffix}.safetensors"
        save_torch_state_dict(state, path, filename_pattern=pattern, max_shard_size="10GB")


__all__ = [
    "EMA",
    "check_lora_targets",
    "frozen_copy",
    "make_trainable",
    "reference_policy",
    "save_weights",
    "weight_state",
]
