"""Reward models, installed as ``flowrl.rewards``: one file per reward, registered by name in ``REWARDS`` (one
registry for both recipes: each reward declares whether it scores images, videos or text completions, ``Scores``).

- ``base``: the reward interface, ``make_reward`` (registered names or ``module:callable`` paths to your own
  reward) and the weighted ``RewardSet``; every reward failure is a ``flowrl.core.errors.RewardError`` naming it.
- ``toy``: the toy world's rule-based evaluator (``toy-geneval``).
- ``toy_learned``: the toy world's learned reward (``toy-learned``: a small CNN trained to predict ``toy-geneval``;
  differentiable, hackable).
- ``toy_edit``: the toy edit world's evaluator (``toy-edit``: instruction carried out and source preserved, from each
  prompt row's source image, target caption and edit kind).
- ``toy_video``: the toy video world's evaluator (``toy-video``: objects in every frame, the described motion,
  consistency between frames; a video reward, ``Scores.VIDEOS``).
- ``image_similarity``: preservation for editing, the CLIP or DINOv2 image-image cosine of an edit with its source
  image (``image-similarity``), LPIPS (``lpips``) and a model-free pixel version (``pixel-similarity``).
- ``clip_direction``: CLIP directional similarity of an edit (``clip-direction``: the image change against the
  captions' change).
- ``per_frame``: any image reward on a video's frames, aggregated per video (``per-frame``: mean, min or first-last).
- ``video_temporal``: what a video does over time (``temporal-consistency``: consecutive frames' CLIP / DINOv2 or
  pixel similarity, with a flicker measure; ``motion``: how much moves, so that a frozen video cannot win).
- ``jpeg``: JPEG (in)compressibility (DDPO).
- ``aesthetic``: LAION aesthetic predictor v2 (CLIP ViT-L/14 + MLP head); ``preprocess``: CLIP transforms.
- ``pickscore``, ``clipscore``: image-text similarity of a ``CLIPModel`` (``clip_similarity``).
- ``hps``: HPSv2 / HPSv2.1 (open_clip ViT-H-14 with the HPS state dict).
- ``ocr``: OCR edit-distance reward (Flow-GRPO convention; PaddleOCR or your own recogniser).
- ``geneval``: GenEval-style rules (counts, colours, positions) over a detector (toy world or HTTP server).
- ``vlm_judge``: pairwise (win rate in the group) or pointwise VLM judge over an OpenAI-compatible API;
  ``vlm_edit_judge``: the same judge of edits, shown each row's source image first, with an edit rubric;
  ``vlm_video_judge``: of videos, shown evenly spaced frames of each, with a video rubric.
- ``imagereward``: ImageReward (BLIP ViT + cross-attending BERT + MLP, mapped onto transformers' BLIP).
- ``text``: the text recipe's rewards, called as TRL calls them, and the toy text world's (``toy-text:correct``,
  ``toy-text:well_formed``, ``toy-text:answer_digits``).
- ``remote``: a reward served by ``flowrl serve-reward`` (wire format in its docstring); ``http``: JSON client.
"""

from . import (  # noqa: F401  (register their rewards)
    aesthetic,
    clip_direction,
    clipscore,
    geneval,
    hps,
    image_similarity,
    imagereward,
    jpeg,
    ocr,
    per_frame,
    pickscore,
    remote,
    text,
    toy,
    toy_edit,
    toy_learned,
    toy_video,
    video_temporal,
    vlm_edit_judge,
    vlm_judge,
    vlm_video_judge,
)
from .base import (
    REWARDS,
    RewardFacts,
    RewardFn,
    RewardSet,
    Scores,
    check_reward_name,
    check_reward_options,
    check_reward_output,
    gives_preferences,
    is_groupwise,
    is_user_reward,
    make_reward,
)

__all__ = [
    "REWARDS",
    "RewardFacts",
    "RewardFn",
    "RewardSet",
    "Scores",
    "check_reward_name",
    "check_reward_options",
    "check_reward_output",
    "gives_preferences",
    "is_groupwise",
    "is_user_reward",
    "make_reward",
]
