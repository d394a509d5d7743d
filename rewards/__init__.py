"""Reward models, installed as ``flowrl.rewards``: one file per reward, registered by name in ``REWARDS``.

- ``base``: the reward interface, ``make_reward`` and the weighted ``RewardSet``.
- ``toy``: the toy world's rule-based evaluator (``toy-geneval``).
- ``jpeg``: JPEG (in)compressibility (DDPO).
- ``aesthetic``: LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP head); ``preprocess``: CLIP transforms.
- ``pickscore``, ``clipscore``: image-text similarity of a ``CLIPModel`` (``clip_similarity``).
- ``hps``: HPSv2 / HPSv2.1 (open_clip ViT-H-14 with the HPS state dict).
"""

from . import aesthetic, clipscore, hps, jpeg, pickscore, toy  # noqa: F401  (register their rewards)
from .base import REWARDS, RewardFn, RewardSet, check_reward_output, make_reward

__all__ = ["REWARDS", "RewardFn", "RewardSet", "check_reward_output", "make_reward"]
