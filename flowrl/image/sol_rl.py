"""Sol-RL's rollout generation (``rollout.generate.name: sol-rl``; Li et al., "FP4 Explore, BF16 Train: Diffusion RL
via Efficient Rollout Scaling", NVlabs/Sana ``train_scripts/sol_rl/train_sana.py``): explore a large pool cheaply,
keep a contrastive subset, regenerate only the subset with the training sampler.

For each of the iteration's P prompts:

1. **Explore**: ``pool`` candidates, each from its own seeded initial noise, ODE-sampled in ``explore_steps`` steps
   by the cheaper untrained copy of the policy (``model.untrained_copy``: the trained weights with LoRA merged,
   bf16 where the hardware has fast bf16 matmul; Sol-RL's NVFP4 copy of the current weights, 6 of 10 steps), decoded
   and scored by the configured rewards (their weighted total ranks the candidates).
2. **Select** ``train.group_size`` candidates per prompt (``select``): ``best-worst``, Sol-RL's rule, the top half
   and the bottom half by explored reward (``select_indices_by_mode(..., "best_worst")``, without its duplicates
   when rewards tie); ``max-variance``, the subset of that size whose explored rewards have the largest variance
   (always some top j and bottom k − j; every j is tried); ``max-min``, flowrl's spread rule: the best and the
   worst, then repeatedly the candidate farthest in reward from those already kept.
3. **Regenerate** the kept candidates from the same initial noise with the training sampler (its mode, window,
   SDE steps, rewards), so every stored log-prob is the live policy's and the first pass's ratio is exactly 1; the
   advantages are the training rewards' (Sol-RL's BF16 rewards), not the explored ones.

Each candidate's noise seed is a keyed hash of the iteration's seed and the candidate's index with bit 62 set
(``candidate_seed``): below ``TRAIN_SEED_LIMIT`` and apart from the roots' own seeds (below 2**62), so a pool of any
size gets distinct noise. The pool is dealt over the processes and its rewards gathered, so every process selects
the same subset; the regenerated roots are then dealt as any batch's. Logged: ``rollout/pool`` and
``rollout/kept`` (samples), ``reward/explored`` (the kept candidates' explored reward, by sample) and
``rollout/explore_s`` (the stage's time, also in ``time/explore_s``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError
from flowrl.core.method_options import Backend
from flowrl.core.options import option
from flowrl.core.rollout.generate import GENERATORS

SELECTIONS = ("best-worst", "max-variance", "max-min")
CANDIDATE_STREAM = 1 << 62  # candidates' seeds: [2**62, 2**63), roots' own seeds stay below 2**62


@dataclass
class SolRlOptions:
    """Sol-RL's own options (NVlabs/Sana configs/sol_rl/sana.py: 96 candidates, 24 kept, 6 preview steps)."""

    pool: int = option(32, "candidates explored per prompt (Sol-RL: 96 for 24 kept); at least train.group_size", low=2)
    explore_steps: int = option(6, "ODE steps of the exploration (Sol-RL preview_step 6 of its 10)", low=1)
    solver: str = option("euler", "ODE solver of the exploration", choices=("euler", "dpm2m"))
    select: str = option("best-worst", "which train.group_size candidates each prompt keeps", choices=SELECTIONS)


def candidate_seed(seed: int, index: int) -> int:
    """The initial-noise seed of exploration candidate ``index`` of the iteration seeded ``seed``."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8, person=b"flowrl-explore").digest()
    return CANDIDATE_STREAM | (int.from_bytes(digest, "little") >> 2)


def select_candidates(rewards: Tensor, keep: int, rule: str) -> Tensor:
    """The ``keep`` indices into one prompt's explored ``rewards`` ``[M]`` that ``rule`` keeps (module docstring),
    distinct, best first. Ties rank by position (the earlier candidate first)."""
    m = rewards.numel()
    if not 1 <= keep <= m:
        raise ValueError(f"cannot keep {keep} of {m} candidates")
    order = torch.sort(-rewards.double(), stable=True).indices  # best first
    if rule == "best-worst":
        top = keep // 2
        return torch.cat([order[:top], order[m - (keep - top) :]])
    if rule == "max-variance":
        ranked = rewards.double()[order]
        best_j = max(range(keep + 1), key=lambda j: (_variance(ranked, j, keep - j), -abs(j - keep // 2)))
        return torch.cat([order[:best_j], order[m - (keep - best_j) :]])
    if rule == "max-min":
        chosen = [int(order[0]), int(order[-1])][: min(keep, 2 if m > 1 else 1)]
        values = rewards.double()
        while len(chosen) < keep:
            gap = torch.stack([(values - values[c]).abs() for c in chosen]).min(0).values
            gap[chosen] = -math.inf
            chosen.append(int(torch.argmax(gap)))  # the first of equal gaps
        return torch.tensor(sorted(chosen, key=lambda c: (-float(values[c]), c)), dtype=torch.long)
    raise ValueError(f"unknown selection rule {rule!r} (choose from {', '.join(SELECTIONS)})")


def _variance(ranked: Tensor, top: int, bottom: int) -> float:
    """The population variance of the ``top`` first and ``bottom`` last of ``ranked``."""
    part = torch.cat([ranked[:top], ranked[ranked.numel() - bottom :]])
    return float(part.var(unbiased=False)) if part.numel() > 1 else 0.0


def check(cfg: Any, options: SolRlOptions) -> None:
    """Sol-RL keeps train.group_size of ``pool`` chains per prompt, each from its own noise, ranked by pointwise
    rewards, and the rollouts train (no pair dataset)."""
    from flowrl.samplers.modes import ROLLOUT_MODES, Branching

    name = "rollout.generate.name=sol-rl"
    if options.pool < cfg.train.group_size:
        raise ConfigError(f"rollout.generate.sol-rl.pool={options.pool} must be at least train.group_size="
                          f"{cfg.train.group_size} (the candidates each prompt keeps)")  # fmt: skip
    if ROLLOUT_MODES.facts(cfg.sampler.mode).branching is not Branching.NONE:
        raise ConfigError(f"{name} regenerates kept candidates as chains; sampler.mode={cfg.sampler.mode} branches")
    if cfg.sampler.same_noise:
        raise ConfigError(f"{name} gives every candidate its own noise: set sampler.same_noise=false")
    if cfg.data.pairs:
        raise ConfigError(f"{name} makes rollouts; data.pairs trains on a dataset's pairs instead")


@GENERATORS.register("sol-rl", options=SolRlOptions, backends=(Backend.FLOW,), check=check)
def sol_rl(run: Any, prompts: list[str], sample: Callable[..., Any], options: SolRlOptions) -> Any:
    """Explore, select and regenerate (module docstring) for the image recipe's ``run`` (``flowrl.image.state.Run``);
    returns the regenerated, scored ``Batch``."""
    from flowrl.core.inputs import row_inputs
    from flowrl.core.share import deal, gather_all
    from flowrl.image.generate import generate_from_noise

    cfg, acc, policy = run.cfg, run.accelerator, run.policy
    from flowrl.rewards import is_groupwise

    if run.parallel.sharded:
        raise ConfigError("rollout.generate.name=sol-rl explores with the untrained copy, which sharded weights "
                          "(FSDP) do not have: use DDP or rollout.generate.name=sampler")  # fmt: skip
    groupwise = [name for name, fn in run.rewards.rewards.items() if is_groupwise(fn)]
    if groupwise:
        raise ConfigError(f"reward {groupwise[0]!r} compares a prompt's images with each other; "
                          "rollout.generate.name=sol-rl ranks candidates by pointwise rewards")  # fmt: skip
    pool, keep = options.pool, cfg.train.group_size
    seed = cfg.seed * 1_000_003 + run.iteration
    seeds = [candidate_seed(seed, c) for c in range(len(prompts) * pool)]
    first, count = deal(len(seeds), acc.num_processes, acc.process_index)
    mine = [prompts[c // pool] for c in range(first, first + count)]
    with run.clock.stage("explore"), torch.no_grad():
        policy.train_mode(False)
        images = generate_from_noise(policy, mine, seeds[first : first + count], inputs=row_inputs(run.inputs, mine),
                                     resolution=cfg.model.resolution, num_steps=options.explore_steps,
                                     solver=options.solver, batch_size=cfg.train.sample_batch or 64)  # fmt: skip
        groups = torch.arange(first, first + count) // pool
        total, _ = run.rewards(images, mine, groups, None, run.inputs)  # the weighted total [count]
        totals = torch.cat(gather_all(acc, total.float().cpu()))  # [P·pool], in candidate order
    explored = totals.view(len(prompts), pool)
    chosen = torch.cat([p * pool + select_candidates(explored[p], keep, options.select) for p in range(len(prompts))])
    batch = sample(run, prompts, noise_seeds=[seeds[int(c)] for c in chosen])
    root_first, roots = deal(chosen.numel(), acc.num_processes, acc.process_index)
    batch.components["explored"] = totals[chosen[root_first : root_first + roots]].to(batch.rewards)
    batch.metrics.update({"rollout/pool": float(len(seeds)), "rollout/kept": float(chosen.numel()),
                          "rollout/explore_s": run.clock.seconds.get("explore", 0.0)})  # fmt: skip
    return batch


__all__ = ["CANDIDATE_STREAM", "SELECTIONS", "SolRlOptions", "candidate_seed", "select_candidates", "sol_rl"]
