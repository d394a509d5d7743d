"""Reproducible noise seeds, the same convention for every recipe.

Evaluation pair (prompt, seed index k) gets its own initial-noise seed, a keyed hash of the prompt text and the index
(``eval_noise_seed``). So an evaluated sample depends only on (weights, prompt, seed index, schedule): never on the
batch it was made in, the number of processes, or the other prompts. Evaluation seeds have bit 63 set; training's
noise seeds stay below ``2**63`` (``TRAIN_SEED_LIMIT``), so the two streams never meet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from flowrl.core.inputs import row_key

EVAL_STREAM = 1 << 63  # evaluation seeds are EVAL_STREAM + a 63-bit hash
TRAIN_SEED_LIMIT = 1 << 63  # every training noise seed is below this (see flowrl.image.trainer.sample)


def eval_noise_seed(prompt: str, index: int) -> int:
    """The seed of the initial noise of evaluation pair (``prompt``, ``index``): 63 bits of a keyed BLAKE2b hash of
    the UTF-8 prompt text and the index, with bit 63 set (disjoint from training's seeds)."""
    if index < 0:
        raise ValueError(f"seed index must be >= 0, got {index}")
    digest = hashlib.blake2b(
        prompt.encode("utf-8") + b"\x00" + str(int(index)).encode(), digest_size=8, person=b"flowrl-eval-nz"
    ).digest()
    return EVAL_STREAM | (int.from_bytes(digest, "little") >> 1)


def eval_noise_seeds(prompts: Sequence[str], indices: Sequence[int]) -> list[int]:
    """``eval_noise_seed`` of every pair (``prompts[i]``, ``indices[i]``)."""
    if len(prompts) != len(indices):
        raise ValueError(f"{len(prompts)} prompts but {len(indices)} seed indices")
    return [eval_noise_seed(row_key(p), k) for p, k in zip(prompts, indices, strict=True)]  # a PromptRow: its key


__all__ = ["EVAL_STREAM", "TRAIN_SEED_LIMIT", "eval_noise_seed", "eval_noise_seeds"]
