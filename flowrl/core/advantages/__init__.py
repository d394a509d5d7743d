"""Advantage estimators: one registry, one signature ``fn(batch, cfg, options, state) -> AdvantageResult``.

Registered names: grpo, global-std, dr-grpo, rloo, median, gdpo, pairwise, stratified, ngrpo,
multi-granularity, per-prompt, tree. stratified, ngrpo, per-prompt and tree declare their own options
(``advantage.tree.fusion`` in a config). See docs/methods.md for formulas and when to use each.
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
from .group import NgrpoOptions, StratifiedOptions
from .tracker import TrackerOptions
from .tree import TreeOptions, node_rewards

__all__ = [
    "ADVANTAGES",
    "EXTRA_INPUTS",
    "AdvantageBatch",
    "AdvantageConfig",
    "AdvantageResult",
    "Estimator",
    "EstimatorFacts",
    "Groups",
    "NgrpoOptions",
    "StratifiedOptions",
    "TrackerOptions",
    "TreeOptions",
    "TreeStructure",
    "broadcast_to_transitions",
    "combine",
    "compute_advantages",
    "node_rewards",
    "refusal",
    "zscore",
]
