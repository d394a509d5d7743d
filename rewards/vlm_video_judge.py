"""VLM judge of videos (``vlm-video-judge``): ``vlm-judge`` shown ``frames`` evenly spaced frames of each video, in
order, as images of one request, with a video rubric (the prompt followed, smooth and plausible motion, consistent
subjects, visual quality). Pairwise (default): the frames of Video 1, then those of Video 2, the verdict "Video 1/2 is
better", each video's win rate in its group (and the preference matrix); pointwise: a 1-5 score, divided by 5. The
options, parsing and position balancing are ``vlm-judge``'s; a judge served for video (e.g. a VideoScore- or
UnifiedReward-video model behind an OpenAI-compatible endpoint) reads the frames as the video's samples.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from flowrl.core.video import evenly_spaced

from .base import REWARDS, Scores
from .vlm_judge import VLMJudge, png_data_url

VIDEO_PAIRWISE = (
    "You are shown frames of two AI-generated videos in order: first the frames of Video 1, then the frames of "
    "Video 2, both made for the prompt below. Judge which video follows the prompt better (the subjects and the "
    "motion it describes), moves smoothly and plausibly with consistent subjects from frame to frame, and has the "
    "better visual quality.\n"
    "Prompt: {prompt}\n"
    "Reason briefly, then finish with exactly one line: 'Video 1 is better' or 'Video 2 is better'."
)
VIDEO_POINTWISE = (
    "You are shown frames of an AI-generated video in order, made for the prompt below. Rate the video from 1 "
    "(poor) to 5 (excellent): does it follow the prompt (the subjects and the motion it describes), does it move "
    "smoothly and plausibly with consistent subjects, and is the visual quality good?\n"
    "Prompt: {prompt}\n"
    "Reason briefly, then finish with exactly one line: 'Score: N' with N from 1 to 5."
)
VIDEO_WIN = r"video\s*([12])\s*is\s*(?:the\s*)?better"


@REWARDS.register("vlm-video-judge", preferences_when=("mode", "pairwise"), scores=Scores.VIDEOS)
class VLMVideoJudge(VLMJudge):
    """``reward(videos [B, F, 3, H, W], prompts, groups=...)``: ``vlm-judge``'s outputs over ``frames`` frames of
    each video (module docstring)."""

    pairwise_instruction, pointwise_instruction = VIDEO_PAIRWISE, VIDEO_POINTWISE

    def __init__(self, frames: int = 8, verdict_pattern: str = VIDEO_WIN, **options: Any) -> None:
        if frames < 1:
            raise ValueError(f"vlm-video-judge: frames must be >= 1, got {frames}")
        super().__init__(verdict_pattern=verdict_pattern, **options)
        self.frames = frames

    def shown(self, image: Tensor) -> list[str]:
        """``frames`` evenly spaced frames of one video ``[F, 3, H, W]`` (first and last included), as PNG URLs."""
        if image.ndim != 4:
            raise ValueError(
                f"vlm-video-judge scores videos [B, F, 3, H, W], got an item of shape {tuple(image.shape)}"
            )
        return [png_data_url(image[i]) for i in evenly_spaced(image.shape[0], self.frames)]
