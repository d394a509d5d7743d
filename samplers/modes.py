"""Sampler modes: how one training iteration's rollout is laid out.

Every mode is a registered pure function with ONE signature, ``plan(cfg, window, group_size)
-> RolloutPlan``, and every plan is executed by the same call to ``flowrl.samplers.tree_rollout``
(chains and singular branches are trees with no split or one split), so the trainer never looks
at the mode's name. ``cfg`` is the sampler section; a mode that declares its own options at registration reads
them as ``cfg.options`` (the tree modes' ``TreeModeOptions``: ``sampler.branchgrpo.split_steps`` in a config).
``window`` is the iteration's window schedule (``cfg.window``), already advanced by the trainer.

| mode | rollout | stochastic (trained) steps |
|---|---|---|
| flow-grpo | G independent chains per prompt | all steps (or the window) |
| flow-grpo-fast | G chains | the window (``window: random`` by default in presets) |
| mixgrpo | G chains | the window; ODE elsewhere |
| mixgrpo-flash | G chains | the window; DPM-Solver++(2M) tail on ``tail_steps`` steps |
| branchgrpo | one tree per prompt, ``branch_factor`` children at ``split_steps`` (its options) | all steps |
| branchgrpo-mix | one tree per prompt | split steps and the window; ODE elsewhere |
| singular | ODE to the window's first step, G children there, ODE after | that one step |
| ode | G deterministic chains (``tail_solver`` on ``tail_steps`` steps) | none: for sample losses (NFT, AWM) |
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import yaml
from torch import Tensor

from flowrl.core.options import option
from flowrl.core.registry import Fact, Registry

from .schedules import respaced_tail, subsample_sigmas
from .windows import WindowSchedule


@dataclass
class RolloutPlan:
    """Arguments of ``tree_rollout`` for one iteration, plus how many roots each prompt gets."""

    roots_per_prompt: int
    sde_mask: Tensor
    split_steps: tuple[int, ...] = ()
    branch_factor: int = 2
    tail_solver: str = "euler"
    tail_steps: int | None = None
    extra_tail_steps: tuple[int, ...] = field(default_factory=tuple)
    tail_grid: Callable[[Tensor, int], Tensor] = subsample_sigmas  # (tail sigmas, steps) -> the tail's grid


def tail_grid(cfg) -> Callable[[Tensor, int], Tensor]:
    """``sampler.tail_grid``: ``subsample`` keeps scheduled sigmas, ``mixgrpo`` re-spaces in un-shifted time."""
    return respaced_tail(cfg.shift) if cfg.tail_grid == "mixgrpo" else subsample_sigmas


class Branching(Fact):
    """How a mode's rollout branches."""

    NONE = "none"  # independent chains
    TREE = "tree"  # one tree per prompt from its split steps; its leaves per prompt are the group size
    SINGULAR = "singular"  # one stochastic step, the window's, with G children


@dataclass(frozen=True)
class ModeFacts:
    """What a sampler mode declares at registration (its own options are the registration's ``options``).

    window: the window used when the config leaves ``sampler.window`` empty: (schedule, size; 0 = every step).
    branching: ``Branching``. stochastic: the rollout records transitions (False: final samples only, for losses that
    train on samples). ignores: options of the sampler section the mode does not read (a config that sets one is
    refused).
    """

    window: tuple[str, int]
    branching: Branching = Branching.NONE
    stochastic: bool = True
    ignores: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.branching, Branching):
            raise TypeError(f"branching must be a Branching, got {self.branching!r}")


@dataclass
class TreeModeOptions:
    """The tree modes' own options (BranchGRPO)."""

    FLAT: ClassVar[dict[str, str]] = {"split_steps": "split_steps", "branch_factor": "branch_factor"}

    split_steps: list[int] = option(
        [], "steps at which each state branches (branch_factor ** len = group size)", low=0
    )
    branch_factor: int = option(2, "children per split", low=2)


ModePlanner = Callable[[Any, WindowSchedule, int], RolloutPlan]  # (sampler config, window, group size) -> plan
ROLLOUT_MODES: Registry[ModePlanner, ModeFacts] = Registry("sampler mode", ModeFacts)


def _chain(cfg, window: WindowSchedule, group_size: int, tail_solver: str = "euler") -> RolloutPlan:
    return RolloutPlan(
        roots_per_prompt=group_size,
        sde_mask=window.sde_mask(),
        tail_solver=tail_solver,
        tail_steps=cfg.tail_steps or None,
        extra_tail_steps=tuple(cfg.extra_tail_steps),
        tail_grid=tail_grid(cfg),
    )


CHAIN = ("tail_solver",)  # chains end with Euler (mixgrpo-flash: DPM-Solver++ 2M) whatever sampler.tail_solver says


@ROLLOUT_MODES.register("flow-grpo", window=("fixed", 0), ignores=CHAIN)
@ROLLOUT_MODES.register("flow-grpo-fast", window=("random", 2), ignores=CHAIN)
@ROLLOUT_MODES.register("mixgrpo", window=("progressive", 4), ignores=CHAIN)
def chains(cfg, window: WindowSchedule, group_size: int) -> RolloutPlan:
    """G independent chains per prompt, SDE inside the window and ODE elsewhere. Flow-GRPO, Flow-GRPO-Fast
    and MixGRPO differ only in their window (whole schedule, short random, progressive)."""
    return _chain(cfg, window, group_size)


@ROLLOUT_MODES.register("mixgrpo-flash", window=("progressive", 4), ignores=CHAIN)
def mixgrpo_flash(cfg, window: WindowSchedule, group_size: int) -> RolloutPlan:
    """MixGRPO-Flash: as MixGRPO, with a second-order ODE solver (DPM-Solver++ 2M) after the window."""
    return _chain(cfg, window, group_size, tail_solver="dpm2m")


def _tree(cfg, group_size: int, sde_mask: Tensor) -> RolloutPlan:
    options: TreeModeOptions = cfg.options
    return RolloutPlan(
        roots_per_prompt=1,
        sde_mask=sde_mask,
        split_steps=tuple(options.split_steps),
        branch_factor=options.branch_factor,
        tail_solver=cfg.tail_solver,
        tail_steps=cfg.tail_steps or None,
        extra_tail_steps=tuple(cfg.extra_tail_steps),
        tail_grid=tail_grid(cfg),
    )


@ROLLOUT_MODES.register("branchgrpo", options=TreeModeOptions, window=("fixed", 0), branching=Branching.TREE)
def branchgrpo(cfg, window: WindowSchedule, group_size: int) -> RolloutPlan:
    """BranchGRPO: a tree per prompt; SDE on all steps of the window, branching at ``split_steps``."""
    return _tree(cfg, group_size, window.sde_mask())


@ROLLOUT_MODES.register("branchgrpo-mix", options=TreeModeOptions, window=("fixed", 0), branching=Branching.TREE)
def branchgrpo_mix(cfg, window: WindowSchedule, group_size: int) -> RolloutPlan:
    """BranchGRPO-Mix: the tree with ODE steps off the split steps (and off the window if one is set)."""
    mask = window.sde_mask() if window.size < window.num_steps else torch.zeros(window.num_steps, dtype=torch.bool)
    return _tree(cfg, group_size, mask)


@ROLLOUT_MODES.register("singular", window=("random", 1), branching=Branching.SINGULAR)
def singular(cfg, window: WindowSchedule, group_size: int) -> RolloutPlan:
    """TempFlow / G2RPO singular branching: one stochastic step, the window's first, with G children."""
    return RolloutPlan(
        roots_per_prompt=1,
        sde_mask=torch.zeros(window.num_steps, dtype=torch.bool),
        split_steps=(window.start,),
        branch_factor=group_size,
        tail_solver=cfg.tail_solver,
        tail_steps=cfg.tail_steps or None,
        extra_tail_steps=tuple(cfg.extra_tail_steps),
        tail_grid=tail_grid(cfg),
    )


@ROLLOUT_MODES.register("ode", window=("fixed", 0), stochastic=False)
def ode(cfg, window: WindowSchedule, group_size: int) -> RolloutPlan:
    """G deterministic chains per prompt from their own initial noise, solved by ``sampler.tail_solver`` on
    ``sampler.tail_steps`` steps (default: the schedule's): DiffusionNFT's rollouts (its dpm2 solver is dpm2m). No
    transitions and no log-probs are recorded."""
    return RolloutPlan(
        roots_per_prompt=group_size,
        sde_mask=torch.zeros(window.num_steps, dtype=torch.bool),
        tail_solver=cfg.tail_solver,
        tail_steps=cfg.tail_steps or None,
        extra_tail_steps=tuple(cfg.extra_tail_steps),
        tail_grid=tail_grid(cfg),
    )


WINDOW_KEYS = ("window", "window_size", "window_options")  # the sampler section's window settings


def stale_window_keys(written: Mapping[str, Any], now: Mapping[str, Any], pinned: Collection[str]) -> list[str]:
    """The window settings of a sampler section written for one mode that stop meaning what they meant once the
    mode is switched (by a command-line override), in ``WINDOW_KEYS`` order.

    ``written`` is the section as the config file has it, ``now`` the section after the overrides (both hold a
    registered ``mode``); ``pinned`` are the window keys the overrides set themselves, which always stay. A window
    setting belongs to the window it was written for: ``window`` and ``window_size`` refine the written mode's
    default window and are stale when the new mode's default differs (its schedule for ``window``; its schedule or
    size for ``window_size``); ``window_options`` are options of one schedule and are stale when the schedule in
    use changes. So MixGRPO's tuned window carries over to MixGRPO-Flash (same default window), and the demo's
    random-window options (``max_start``) to singular branching (also a random window), but not to BranchGRPO's
    fixed window of every step.
    """
    if written["mode"] == now["mode"]:
        return []
    old_kind, old_size = ROLLOUT_MODES.facts(written["mode"]).window
    new_kind, new_size = ROLLOUT_MODES.facts(now["mode"]).window
    movable = [k for k in WINDOW_KEYS if k in written and k not in pinned]
    stale = []
    if "window" in movable and new_kind != old_kind:
        stale.append("window")
    if "window_size" in movable and (new_kind, new_size) != (old_kind, old_size):
        stale.append("window_size")
    kind = ("" if "window" in stale else now.get("window")) or new_kind
    if "window_options" in movable and kind != (written.get("window") or old_kind):
        stale.append("window_options")
    return stale


def switch_mode(now: Any, written: Mapping[str, Any], keys: Collection[str], default: str, source: str) -> str:
    """Drop from the sampler section ``now`` (a config's, after its overrides) the window settings of the section as
    the file ``source`` wrote it (``written``) that an override's mode switch left stale (``stale_window_keys``);
    ``keys`` are the overridden dotted keys, ``default`` the mode of a section without one. Returns the one-line
    notice naming what was dropped ("" when nothing was)."""
    if not written or not isinstance(now, dict) or "sampler" in keys:
        return ""
    old, new = written.get("mode", default), now.get("mode", default)
    if not all(isinstance(m, str) and m in ROLLOUT_MODES for m in (old, new)):
        return ""  # loading the config names the bad mode
    pinned = {k.split(".")[1] for k in keys if k.startswith("sampler.")}
    stale = stale_window_keys({**written, "mode": old}, {**now, "mode": new}, pinned)
    if not stale:
        return ""
    for key in stale:
        del now[key]
    kind, size = ROLLOUT_MODES.facts(new).window
    steps = f"{size} step{'s' * (size > 1)}" if size else "every step"
    dropped = ", ".join(f"sampler.{k}={_as_override(written[k])}" for k in stale)
    return (
        f"sampler.mode={new} ({source} says {old}): dropped {dropped}, written for {old}'s window; {new} uses its own "
        f"({kind} window of {steps}); set them as overrides to keep them"
    )


def _as_override(value: Any) -> str:
    """``value`` as an override writes it (YAML flow style: ``{max_start: 2}``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).removesuffix("...\n").strip()


def step_subset(mask: Tensor, owner: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """Train a random ``max(1, int(n × fraction))`` of each sample's ``n`` trainable steps (DanceGRPO and
    Pref-GRPO's ``--timestep_fraction``: a permutation of each sample's steps, the first part trained).

    ``mask`` ``[M]`` marks the trainable transitions, ``owner`` ``[M]`` the final sample each leads to
    (``-1``: a tree prefix shared by several samples, always kept). Returns the reduced mask ``[M]``."""
    if fraction >= 1:
        return mask
    keys = torch.rand(mask.shape, generator=generator)
    out = mask & (owner < 0)
    for sample in owner[mask & (owner >= 0)].unique().tolist():
        rows = (mask & (owner == sample)).nonzero().squeeze(1)
        take = max(1, int(rows.numel() * fraction))
        out[rows[keys[rows].argsort()[:take]]] = True
    return out


__all__ = [
    "ROLLOUT_MODES",
    "WINDOW_KEYS",
    "Branching",
    "ModeFacts",
    "RolloutPlan",
    "TreeModeOptions",
    "stale_window_keys",
    "step_subset",
    "switch_mode",
]
