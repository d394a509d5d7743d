"""A cheaper transformer for the passes whose log-probs are never trained: ODE steps outside the SDE window, ODE
tails, coarser G2RPO decodings and evaluation.

These passes only move states forward, so they may run different arithmetic from the trained path without
touching the policy-gradient ratio: the trained (stochastic) steps keep the live module, and so their stored
log-probs and the first replay agree bitwise. The copy has the LoRA adapter merged into its weights (no adapter
FLOPs or per-layer Python) and, where the device has fast bf16 matmul (CUDA with compute capability 8.0 or more; a
CPU that reports ``avx512_bf16`` or ``amx_bf16``), is stored in bf16 so no pass casts its weights again. It is
refreshed from the live weights whenever they were written since (an optimizer step, the EMA swapped in for
evaluation), which the tensors' in-place version counters tell (a write through ``.data`` bypasses them: call
``refresh()`` after one).

Cost: one more copy of the transformer in memory (half the fp32 size in bf16). Not available when the weights are
sharded (FSDP): a process does not hold them whole.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from copy import deepcopy
from typing import Any

import torch
from torch import nn

from flowrl.core.errors import ConfigError

PRECISIONS = ("auto", "none", "fp32", "bf16")


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices natively (faster than fp32), as the hardware reports it."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False


def copy_dtype(setting: str, device: torch.device, lora: bool) -> torch.dtype | None:
    """The untrained copy's dtype for ``model.untrained_copy`` (``PRECISIONS``), or None for no copy. ``auto``: bf16
    where the device has fast bf16 matmul, else fp32 when there is a LoRA adapter to merge, else no copy."""
    if setting == "none":
        return None
    if setting == "auto":
        if fast_bf16(device):
            return torch.bfloat16
        return torch.float32 if lora else None
    return torch.bfloat16 if setting == "bf16" else torch.float32


_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def describe_path(setting: str, copy: UntrainedCopy | None, live_dtype: torch.dtype, device: torch.device) -> str:
    """Which weights the untrained passes (evaluation, ODE steps) ran on, and why: the run prints it, since under
    ``auto`` it depends on the hardware (a CPU with or without ``avx512_bf16`` / ``amx_bf16``)."""
    why = f"model.untrained_copy={setting}"
    if setting == "auto":
        why += f": {'fast' if fast_bf16(device) else 'no fast'} bf16 matmul on {device.type}"
    if copy is None:
        return f"the live module in {_NAMES.get(live_dtype, str(live_dtype))} ({why})"
    return f"a {_NAMES.get(copy.dtype, str(copy.dtype))} copy of the transformer ({why})"


class UntrainedCopy:
    """A frozen copy of the transformer in ``dtype`` with its LoRA adapter merged. Make it before the live module is
    wrapped for distributed training (the copy must be a plain module)."""

    def __init__(self, transformer: nn.Module, dtype: torch.dtype) -> None:
        self.dtype, self.live = dtype, transformer
        self.module = deepcopy(transformer).requires_grad_(False).eval()
        for t in (*self.module.parameters(), *self.module.buffers()):  # not Module.to: diffusers warns on a cast
            if t.is_floating_point():
                t.data = t.data.to(dtype)
        self._seen: list[int] = []
        self.refresh()

    def _versions(self) -> list[int]:
        """In-place write counters of the live tensors: an optimizer step or an EMA swap changes them."""
        return [t._version for t in (*self.live.parameters(), *self.live.buffers())]

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the live weights (cast to this copy's dtype) and merge the adapter into them."""
        for dst, src in zip(self.module.parameters(), self.live.parameters(), strict=True):
            dst.copy_(src)
        for dst, src in zip(self.module.buffers(), self.live.buffers(), strict=True):
            dst.copy_(src)
        for layer in self.module.modules():
            if hasattr(layer, "merged_adapters") and hasattr(layer, "merge"):  # a peft LoRA layer
                layer.merged_adapters = []  # its base weight was just overwritten with the unmerged live one
                layer.merge()
        self._seen = self._versions()

    @contextlib.contextmanager
    def serving(self, policy: Any) -> Iterator[None]:
        """Inside the block the policy's forward passes run this copy (in its dtype), refreshed first if the live
        weights were written since the last refresh."""
        if self._versions() != self._seen:
            self.refresh()
        saved = policy.transformer, policy.dtype, policy.prepared
        policy.transformer, policy.dtype, policy.prepared = self.module, self.dtype, None
        try:
            yield
        finally:
            policy.transformer, policy.dtype, policy.prepared = saved


def untrained_copy(policy: Any, setting: str, lora: bool, sharded: bool) -> UntrainedCopy | None:
    """The ``UntrainedCopy`` of ``policy.transformer`` that ``model.untrained_copy`` asks for, or None; make it before
    the module is wrapped for distributed training. Refused (or, for ``auto``, skipped) when weights are sharded."""
    dtype = copy_dtype(setting, policy.device, lora)
    if dtype is None:
        return None
    if sharded:
        if setting != "auto":
            raise ConfigError(f"model.untrained_copy={setting} needs whole weights on every process; with FSDP set "
                              "it to none (or auto)")  # fmt: skip
        return None
    return UntrainedCopy(policy.transformer, dtype)


def compile_policy(policy: Any, sharded: bool) -> None:
    """``torch.compile`` the transformer in place (a distributed wrapper's passes reach it too) and the copy."""
    if sharded:
        raise ConfigError("model.compile=true is not supported with FSDP (flowrl shards the module itself)")
    policy.transformer.compile()
    if policy.untrained is not None:
        policy.untrained.module.compile()


__all__ = [
    "PRECISIONS",
    "UntrainedCopy",
    "compile_policy",
    "copy_dtype",
    "describe_path",
    "fast_bf16",
    "untrained_copy",
]
