"""The parallel layer, in one place: how the trainable network is prepared, how a backward call and an
optimizer step are made, how the optimizer state is saved and restored, and whether the weights are sharded.

Three strategies, chosen by the launch (``accelerate launch --config_file configs/accelerate/<name>.yaml``):

- ``Replicated``: one process, or DDP. Every process holds the whole network; accelerate's wrapper averages the
  gradients in backward.
- ``Sharded``: FSDP2 (``flowrl.core.sharding``). Weights, gradients and optimizer state are split over the
  processes, so every forward pass is a collective: callers pad their passes to equal counts (``sharded``).
- ``Zero``: DeepSpeed ZeRO-1/2 (``flowrl.core.zero``). The optimizer state and gradients are partitioned;
  the engine clips, steps and skips a non-finite step itself.

``parallel_for`` reads the launch; the recipes and the checkpoint code call the strategy's methods and never ask
which one it is.
"""

from __future__ import annotations

import atexit
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from flowrl.core import zero
from flowrl.core.errors import LaunchError
from flowrl.core.sharding import full, full_optimizer_state, shard, sharding_requested
from flowrl.core.share import gather_all

if TYPE_CHECKING:
    from accelerate import Accelerator

MakeOptimizer = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


class Replicated:
    """One process or DDP: accelerate prepares the module (a ``DistributedDataParallel`` wrapper with several
    processes) and averages the gradients in backward; the optimizer is stepped here."""

    sharded = False  # every process holds the whole network: passes without gradients need no communication

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.module: nn.Module | None = None  # the network as prepared: passes with gradients go through it
        self.optimizer: torch.optim.Optimizer | None = None
        self.params: list[nn.Parameter] = []

    def prepare(
        self, module: nn.Module, params: list[nn.Parameter], make_optimizer: MakeOptimizer, **options: Any
    ) -> tuple[nn.Module, torch.optim.Optimizer, list[nn.Parameter]]:
        """Wrap ``module`` for training and build its optimizer over ``params``; returns the module to run
        passes with gradients through, the optimizer and the parameters it holds (this process's own).
        ``options``: ``micro_batch``, ``max_grad_norm``, ``mixed_precision``, ``shard_root`` (what to shard)."""
        self.module, self.optimizer = self.accelerator.prepare(module, make_optimizer(params))
        self.params = params
        return self.module, self.optimizer, self.params

    def backward(self, loss: Tensor, last: bool) -> None:
        """One backward call of an optimizer step (``last``: its final one)."""
        self.accelerator.backward(loss)

    def step(self, max_grad_norm: float, sums: dict[str, float]) -> float | None:
        """Clip, step and clear the gradients; returns the norm before clipping, or None (nothing changed) when
        it or any process's step metrics ``sums`` are not finite."""
        norm = check_step(self.accelerator, self.params, max_grad_norm, sums)
        if norm is not None:
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return norm

    def even_out(self, made: int, filler: Callable[[], object]) -> None:
        """Make passes of ``filler`` (results dropped) until this process has made as many passes without
        gradients as the process that made most (``made`` here). Only a sharded network needs it."""

    def optimizer_state(self) -> dict[str, Any]:
        """The optimizer state to save (a collective for the sharding strategies)."""
        return self.optimizer.state_dict()

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Put back what ``optimizer_state`` returned (after the weights were restored)."""
        self.optimizer.load_state_dict(state)


class Sharded(Replicated):
    """FSDP2: the network is sharded in place (one unit per block, see ``flowrl.core.sharding``) and the
    optimizer holds the local shards; its state is saved whole (keyed by parameter names)."""

    sharded = True  # every forward pass gathers weights from all processes: all must make the same passes

    def prepare(
        self, module: nn.Module, params: list[nn.Parameter], make_optimizer: MakeOptimizer, **options: Any
    ) -> tuple[nn.Module, torch.optim.Optimizer, list[nn.Parameter]]:
        root = options.get("shard_root") or module
        shard(root, self.accelerator.device, options.get("mixed_precision", "no"))
        self.module, self.params = module, [p for p in module.parameters() if p.requires_grad]  # the local shards
        self.optimizer = make_optimizer(self.params)
        self._root = root
        return self.module, self.optimizer, self.params

    def even_out(self, made: int, filler: Callable[[], object]) -> None:
        for _ in range(made, max(gather_all(self.accelerator, made))):
            filler()

    def optimizer_state(self) -> dict[str, Any]:
        return full_optimizer_state(self._root, self.optimizer)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(self._root, self.optimizer, state, options=options)


class Zero(Replicated):
    """DeepSpeed ZeRO-1/2: the engine holds the partitioned optimizer; it clips, steps and clears in one call
    and skips a step whose gradient norm is not finite."""

    def prepare(
        self, module: nn.Module, params: list[nn.Parameter], make_optimizer: MakeOptimizer, **options: Any
    ) -> tuple[nn.Module, torch.optim.Optimizer, list[nn.Parameter]]:
        zero.configure(
            self.accelerator, options["micro_batch"], options["max_grad_norm"], options.get("mixed_precision", "no")
        )
        return super().prepare(module, params, make_optimizer)

    def backward(self, loss: Tensor, last: bool) -> None:
        zero.backward(self.module, loss, last)

    def step(self, max_grad_norm: float, sums: dict[str, float]) -> float | None:
        return zero.step(self.module)  # the engine's own clipping (gradient_clipping = train.max_grad_norm)

    def optimizer_state(self) -> dict[str, Any]:
        return zero.optimizer_state(self.module, self.params)

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        zero.load_optimizer_state(self.module, self.params, state)


Parallel = Replicated  # the interface: Sharded and Zero override what differs


def launch(mixed_precision: str = "no", **kwargs: Any) -> tuple[Accelerator, Parallel]:
    """accelerate's ``Accelerator`` for this launch (``kwargs`` go to it) and the parallel strategy it asked for. A
    DeepSpeed launch without the package is refused before accelerate fails on it less clearly."""
    from accelerate import Accelerator

    zero.require_deepspeed()
    accelerator = Accelerator(mixed_precision=mixed_precision, **kwargs)
    if accelerator.num_processes > 1:
        atexit.unregister(_destroy_process_group)  # one hook however many launches a process makes
        atexit.register(_destroy_process_group)
    return accelerator, parallel_for(accelerator)


def _destroy_process_group() -> None:
    """At exit: left to the interpreter, a communication thread of gloo or DeepSpeed may still be joinable when C++
    destroys it, which aborts a finished process (exit code -6, "terminate called without an active exception") and
    makes its launcher report a failure."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def parallel_for(accelerator: Accelerator) -> Parallel:
    """The parallel strategy the launch asked for. Refuses Megatron-LM, a launch whose processes accelerate did not
    join, and FSDP on one process."""
    kind = accelerator.distributed_type.name
    if kind == "MEGATRON_LM":
        raise LaunchError(
            "accelerate's MEGATRON_LM backend is not supported: launch with configs/accelerate/ddp.yaml (every "
            "process holds the model), fsdp.yaml (weights sharded) or deepspeed_zero2.yaml (optimizer state sharded)"
        )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise LaunchError(
            f"{launched} processes were launched but accelerate set up {accelerator.num_processes} "
            f"({kind}); without GPUs launch CPU processes with `ACCELERATE_USE_CPU=true torchrun --nproc_per_node "
            f"{launched} -m flowrl train ...` (and ACCELERATE_USE_FSDP=true to shard)"
        )
    if kind == "DEEPSPEED":
        return Zero(accelerator)
    if sharding_requested() or kind == "FSDP":  # flowrl shards itself: on CPU accelerate would drop the request
        if accelerator.num_processes < 2:
            raise LaunchError("FSDP needs at least 2 processes (accelerate launch --num_processes N)")
        return Sharded(accelerator)
    return Replicated(accelerator)


def check_step(acc: Accelerator, params: list[Tensor], max_norm: float, sums: dict[str, float]) -> float | None:
    """Clip the accumulated gradients to ``max_norm`` (0 = no clipping) and return their norm; or, if the norm or
    any process's step metrics ``sums`` (its losses) are not finite, clear the gradients and return None (on every
    process alike, or the others would wait for its next collective)."""
    # clipping at inf measures the norm (FSDP: a replicated DTensor) and leaves the gradients as they are
    norm = float(full(acc.clip_grad_norm_(params, max_norm or math.inf)))
    finite = math.isfinite(norm) and all(math.isfinite(v) for v in sums.values())
    if acc.num_processes > 1:
        finite = bool(acc.reduce(torch.tensor([float(not finite)], device=acc.device), "sum").item() == 0)
    if finite:
        return norm
    for p in params:
        p.grad = None
    return None


__all__ = ["Parallel", "Replicated", "Sharded", "Zero", "check_step", "launch", "parallel_for"]
