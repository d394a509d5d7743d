"""VLM judge of edits (``vlm-edit-judge``): ``vlm-judge`` with each row's source image(s) shown first and an edit
rubric, the judge flow_grpo, Pref-GRPO and EditScore-style reward servers use for instruction-based editing.

Every request shows the prompt row's source image(s) (its ``image`` column, read from disk and sent as PNG data URLs),
then the edit(s), then the instruction. The rubric asks for the three things an edit is judged on: the instruction
carried out, everything it does not mention left as it was, and visual quality. Pairwise (default): two edits of one
source, the verdict "Image 1/2 is better", each edit's win rate in its group (and the preference matrix); pointwise:
a 1-5 score of one edit, divided by 5. The options, the parsing and the position balancing are ``vlm-judge``'s.
"""

from __future__ import annotations

from torch import Tensor

from .base import REWARDS
from .preprocess import load_image
from .vlm_judge import VLMJudge, png_data_url

EDIT_PAIRWISE = (
    "You are shown the source picture(s) of an image edit first, then two AI edits of it, Image 1 and Image 2, both "
    "made for the editing instruction below. Judge which edit carries out the instruction more faithfully while "
    "leaving everything the instruction does not mention as it was in the source, and has the better visual quality "
    "(no artifacts).\n"
    "Instruction: {prompt}\n"
    "Reason briefly, then finish with exactly one line: 'Image 1 is better' or 'Image 2 is better'."
)
EDIT_POINTWISE = (
    "You are shown the source picture(s) of an image edit first, then the AI edit of it, made for the editing "
    "instruction below. Rate the edit from 1 (poor) to 5 (excellent): is the instruction carried out, is everything "
    "it does not mention left as it was in the source, and is the visual quality good?\n"
    "Instruction: {prompt}\n"
    "Reason briefly, then finish with exactly one line: 'Score: N' with N from 1 to 5."
)


@REWARDS.register("vlm-edit-judge", preferences_when=("mode", "pairwise"), inputs=("image",))
class VLMEditJudge(VLMJudge):
    """``reward(images, prompts, groups=..., image=[paths per row])``: ``vlm-judge``'s outputs, each request
    preceded by the row's source images (module docstring)."""

    inputs = ("image",)
    pairwise_instruction, pointwise_instruction = EDIT_PAIRWISE, EDIT_POINTWISE

    def __call__(
        self, images: Tensor, prompts: list[str], groups: Tensor | None = None, image: list[list[str]] | None = None
    ) -> dict[str, Tensor]:
        if image is None or len(image) != len(prompts):
            raise ValueError("vlm-edit-judge shows each edit's source: it needs the rows' image column (image=)")
        urls = {
            path: png_data_url(load_image(path)) for paths in image for path in paths
        }  # a group's requests share them
        return self.judge(images, prompts, groups, [[urls[path] for path in paths] for paths in image])
