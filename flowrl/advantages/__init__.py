"""Advantage estimators: one registry, one signature ``fn(batch, cfg, state) -> AdvantageResult``.

Registered names: grpo, global-std, dr-grpo, rloo, median, gdpo, pairwise, stratified, ngrpo,
multi-granularity, per-prompt, tree. See the README's table for formulas and when to use each.
"""

from . import group, tracker, tree  # noqa: F401  (importing registers the estimators)
from .core import (
    ADVANTAGES,
    EXTRA_INPUTS,
    AdvantageBatch,
    AdvantageConfig,
    AdvantageResult,
    Estimator,
    EstimatorFacts,
    Groups,
    TreeStructure,
    broadcast_to_transitions,
    combine,
    compute_advantages,
    refusal,
    zscore,
)
from .tree import node_rewards

__all__ = [
    "ADVANTAGES",
    "EXTRA_INPUTS",
    "AdvantageBatch",
    "AdvantageConfig",
    "AdvantageResult",
    "Estimator",
    "EstimatorFacts",
    "Groups",
    "TreeStructure",
    "broadcast_to_transitions",
    "combine",
    "compute_advantages",
    "node_rewards",
    "refusal",
    "zscore",
]
