"""VLM judge (Pref-GRPO): a vision-language model behind an OpenAI-compatible chat API compares the images
of one prompt two at a time, and each image's reward is its win rate within its group.

The model is served by vLLM / sglang (e.g. UnifiedReward-Think): ``POST {base_url}/chat/completions`` with
both images as PNG data URLs and an instruction holding the prompt. For a group of G images every
unordered pair is judged once (G(G−1)/2 requests, sent concurrently); a win counts 1, a tie or an
unparseable answer ½ to each image, and ``score = wins / (G − 1)`` in [0, 1]. Diagnostics ``[B]``:
``unparseable`` and ``ties``, the fractions of an image's comparisons that had no verdict / a tie.

Which image is shown first (``order``): ``balanced`` (default) orients the pairs so that every image is
shown first in half of its comparisons (±½), ``random`` flips a seeded coin per pair, ``fixed`` shows
the lower index first. Verdicts are mapped back to the images, so a judge that always prefers the first
position gives everyone the same win rate instead of favouring some samples.

``mode: pointwise`` asks for a 1–5 score of each image alone and returns score / 5 (no groups needed);
an unparseable reply scores the midpoint 3 / 5.
"""

from __future__ import annotations

import base64
import io
import os
import random
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import torch
from PIL import Image
from torch import Tensor

from .base import REWARDS
from .http import post_json

PAIRWISE_INSTRUCTION = (
    "You are shown two AI-generated images, Image 1 first and Image 2 second, both made for the prompt below. "
    "Judge which one follows the prompt more faithfully (objects, counts, attributes, positions, text) and has "
    "the better visual quality (composition, detail, no artifacts).\n"
    "Prompt: {prompt}\n"
    "Reason briefly, then finish with exactly one line: 'Image 1 is better' or 'Image 2 is better'."
)
POINTWISE_INSTRUCTION = (
    "You are shown an AI-generated image made for the prompt below. Rate how faithfully it follows the prompt "
    "and its visual quality on a scale from 1 (poor) to 5 (excellent).\n"
    "Prompt: {prompt}\n"
    "Reason briefly, then finish with exactly one line: 'Score: N' with N from 1 to 5."
)
# "Image 2 is (clearly) better" / "the better image is Image 1" / "Final answer: **Image 2**"
WIN_PATTERN = (
    r"image\s*#?\s*([12])\s+(?:is|was|looks|seems)?\s*(?:clearly\s+|slightly\s+|much\s+|overall\s+|the\s+)?"
    r"(?:better|superior|preferred|stronger|winner|wins)"
    r"|(?:better\s+(?:one|image)|preferred\s+(?:one|image)|winner|prefer|choose|answer|verdict)\s*(?:is|:)?\s*"
    r"\**\s*image\s*#?\s*([12])\b"
)
TIE_PATTERN = r"\b(?:tie|tied|draw|equally\s+(?:good|bad|well)|neither\s+(?:image\s+)?is\s+better)\b"
SCORE_PATTERN = r"(?:score|rating)\s*(?:is|of)?\s*[:=]?\s*\**\s*([1-5](?:\.\d+)?)(?!\d)"
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.IGNORECASE | re.DOTALL)
_BARE_IMAGE = re.compile(r"\W*(?:image\s*#?\s*)?([12])\W*", re.IGNORECASE)  # an answer that is just "Image 2"
_BARE_SCORE = re.compile(r"\W*([1-5](?:\.\d+)?)\s*(?:/\s*5)?\W*")
ORDERS = ("balanced", "random", "fixed")
MODES = ("pairwise", "pointwise")
T = TypeVar("T")


def answer_section(text: str) -> str:
    """The part of a reply that carries the verdict: the last ``<answer>…</answer>`` block, else the text after
    the last ``</think>``, else the whole reply (think-style models reason at length before answering)."""
    answers = _ANSWER_TAG.findall(text)
    if answers:
        return answers[-1]
    _, sep, after = text.rpartition("</think>")
    return after if sep else text


def parse_verdict(text: str, win: re.Pattern[str], tie: re.Pattern[str]) -> int | None:
    """The verdict of a pairwise reply: 1 or 2 (the preferred image in the order shown), 0 for a tie, None if
    none is found. The last match in the answer section counts, as replies weigh both images before concluding;
    ``win``'s first non-empty group is the image number."""
    section = answer_section(text)
    matches = [(m.start(), _win_number(m)) for m in win.finditer(section)]
    matches += [(m.start(), 0) for m in tie.finditer(section)]
    matches = [(pos, v) for pos, v in matches if v is not None]
    if matches:
        return max(matches)[1]
    bare = _BARE_IMAGE.fullmatch(section.strip())
    return int(bare.group(1)) if bare else None


def _win_number(match: re.Match[str]) -> int | None:
    number = next((g for g in match.groups() if g), None)
    return int(number) if number in ("1", "2") else None


def parse_score(text: str, pattern: re.Pattern[str]) -> float | None:
    """A 1–5 score from a pointwise reply (last match of ``pattern``'s first group in the answer section, or an
    answer that is just the number); None if absent or outside [1, 5]."""
    section = answer_section(text)
    found = [m.group(1) for m in pattern.finditer(section)]
    if not found and (bare := _BARE_SCORE.fullmatch(section.strip())):
        found = [bare.group(1)]
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 5.0 else None


def png_data_url(image: Tensor) -> str:
    """``image`` ``[3, H, W]`` in [0, 1] as an 8-bit PNG ``data:`` URL."""
    array = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def balanced_first(i: int, j: int, size: int) -> bool:
    """Whether member ``i`` < ``j`` of a group of ``size`` is shown first: a round-robin orientation in which each
    member leads in half of its pairs (exactly for odd sizes, ±½ for even ones)."""
    n = size | 1  # even groups: drop one member of the next odd size's regular tournament
    return (j - i) % n <= n // 2


@REWARDS.register("vlm-judge", preferences_when=("mode", "pairwise"))
class VLMJudge:
    """``reward(images [B, 3, H, W], prompts, groups=[B]) -> {"score", "unparseable", "ties"}`` (each ``[B]``) and,
    in pairwise mode, ``"preferences"`` ``[B, B]`` (1 won, ½ tie or no verdict, 0 lost; within groups); see the
    module docstring. ``groupwise`` is True in pairwise mode, so ``RewardSet`` passes the groups."""

    pairwise_instruction, pointwise_instruction = PAIRWISE_INSTRUCTION, POINTWISE_INSTRUCTION  # the defaults

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000/v1",
        model: str = "UnifiedReward-Think-qwen-7b",
        mode: str = "pairwise",
        instruction: str = "",
        temperature: float = 0.0,
        max_tokens: int = 0,
        workers: int = 8,
        timeout: float = 120.0,
        retries: int = 3,
        backoff: float = 1.0,
        order: str = "balanced",
        seed: int = 0,
        verdict_pattern: str = WIN_PATTERN,
        tie_pattern: str = TIE_PATTERN,
        score_pattern: str = SCORE_PATTERN,
        api_key_env: str = "",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"vlm-judge: mode must be one of {', '.join(MODES)}, got {mode!r}")
        if order not in ORDERS:
            raise ValueError(f"vlm-judge: order must be one of {', '.join(ORDERS)}, got {order!r}")
        if workers < 1 or retries < 0 or timeout <= 0 or backoff < 0:
            raise ValueError("vlm-judge: need workers >= 1, retries >= 0, timeout > 0, backoff >= 0")
        instruction = instruction or (self.pairwise_instruction if mode == "pairwise" else self.pointwise_instruction)
        if "{prompt}" not in instruction:
            raise ValueError("vlm-judge: the instruction must contain '{prompt}' where the prompt goes")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.mode, self.instruction = model, mode, instruction
        self.temperature, self.max_tokens, self.workers = temperature, max_tokens, workers
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.order, self.rng = order, random.Random(seed)
        self.win = re.compile(verdict_pattern, re.IGNORECASE)
        self.tie = re.compile(tie_pattern, re.IGNORECASE)
        self.score_re = re.compile(score_pattern, re.IGNORECASE)
        self.groupwise = mode == "pairwise"
        self.api_key = _api_key(api_key_env)

    def __call__(self, images: Tensor, prompts: list[str], groups: Tensor | None = None) -> dict[str, Tensor]:
        return self.judge(images, prompts, groups, [[] for _ in prompts])

    def judge(
        self, images: Tensor, prompts: list[str], groups: Tensor | None, lead: list[list[str]]
    ) -> dict[str, Tensor]:
        """Score as ``__call__`` does, each request showing ``lead[k]`` (image URLs of row k, e.g. an edit's source
        images) before row k's image(s)."""
        if self.mode == "pointwise":
            return self._pointwise(images, prompts, lead)
        if groups is None or len(groups) != len(images):
            raise ValueError("vlm-judge (pairwise) compares images within groups and needs groups= ([B] ids)")
        return self._pairwise(images, prompts, groups, lead)

    def shown(self, image: Tensor) -> list[str]:
        """The data URLs one batch item is shown as: its PNG (a video judge shows several frames)."""
        return [png_data_url(image)]

    def _pointwise(self, images: Tensor, prompts: list[str], lead: list[list[str]]) -> dict[str, Tensor]:
        urls = [self.shown(img) for img in images]
        replies = _run_all(lambda k: self.ask([*lead[k], *urls[k]], prompts[k]), range(len(urls)), self.workers)
        scores = [parse_score(r, self.score_re) for r in replies]
        unparseable = torch.tensor([s is None for s in scores], dtype=torch.float32)
        score = torch.tensor([3.0 if s is None else s for s in scores]) / 5
        return {"score": score, "unparseable": unparseable}

    def _pairwise(
        self, images: Tensor, prompts: list[str], groups: Tensor, lead: list[list[str]]
    ) -> dict[str, Tensor]:
        pairs = self.pairs(groups.tolist(), prompts)  # checks the groups before any work is done
        urls = [self.shown(img) for img in images]  # each image is sent G − 1 times: encode it once

        def ask(pair: tuple[int, int]) -> str:
            return self.ask([*lead[pair[0]], *urls[pair[0]], *urls[pair[1]]], prompts[pair[0]])

        replies = _run_all(ask, pairs, self.workers)
        batch = len(urls)
        unparseable, ties, played = (torch.zeros(batch, dtype=torch.float64) for _ in range(3))
        preferences = torch.zeros(batch, batch, dtype=torch.float64)
        for (first, second), reply in zip(pairs, replies, strict=True):
            verdict = parse_verdict(reply, self.win, self.tie)
            won = {1: 1.0, 2: 0.0}.get(verdict, 0.5)  # a tie or no verdict: half a win each
            preferences[first, second], preferences[second, first] = won, 1.0 - won
            if verdict not in (1, 2):
                (ties if verdict == 0 else unparseable)[[first, second]] += 1.0
            played[[first, second]] += 1.0
        wins = preferences.sum(1)
        return {
            "score": wins / played,
            "unparseable": unparseable / played,
            "ties": ties / played,
            "preferences": preferences,
        }

    def pairs(self, groups: Sequence[int], prompts: Sequence[str]) -> list[tuple[int, int]]:
        """Every unordered pair of each group as ``(shown first, shown second)`` batch indices."""
        members: dict[int, list[int]] = {}
        for k, g in enumerate(groups):
            members.setdefault(g, []).append(k)
        out = []
        for g, idx in members.items():
            if len(idx) < 2:
                raise ValueError(
                    f"vlm-judge (pairwise) needs at least 2 images per group; group {g} has 1 "
                    "(in evaluation, set eval.seeds_per_prompt >= 2, or use mode: pointwise)"
                )
            if len({prompts[k] for k in idx}) > 1:
                raise ValueError(f"vlm-judge: group {g} mixes different prompts; a group is one prompt's images")
            for a in range(len(idx)):
                for b in range(a + 1, len(idx)):
                    if self.order == "balanced":
                        lead = balanced_first(a, b, len(idx))
                    else:
                        lead = self.order == "fixed" or self.rng.random() < 0.5
                    out.append((idx[a], idx[b]) if lead else (idx[b], idx[a]))
        return out

    def ask(self, image_urls: list[str], prompt: str) -> str:
        """One chat completion with ``image_urls`` then the instruction for ``prompt``; returns the reply text."""
        content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": u}} for u in image_urls]
        content.append({"type": "text", "text": self.instruction.replace("{prompt}", prompt)})
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": self.temperature,
        }
        if self.max_tokens > 0:
            payload["max_tokens"] = self.max_tokens
        auth = {"headers": {"Authorization": f"Bearer {self.api_key}"}} if self.api_key else {}
        reply = post_json(self.url, payload, timeout=self.timeout, retries=self.retries, backoff=self.backoff, **auth)
        return reply_text(reply, self.url)


def reply_text(reply: Any, url: str) -> str:
    """The assistant's text of a chat completion (``""`` if it has none); raises on a body of another shape."""
    try:
        content = reply["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise ValueError(f"vlm-judge: {url} did not return a chat completion: {str(reply)[:300]}") from None
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


def _api_key(env: str) -> str:
    # the key comes from the environment so that it never lands in config.yaml or summary.json
    if not env:
        return ""
    key = os.environ.get(env, "")
    if not key:
        raise ValueError(f"vlm-judge: api_key_env names {env!r}, but that environment variable is empty")
    return key


def _run_all(fn: Callable[[Any], T], jobs: Sequence[Any], workers: int) -> list[T]:
    """``[fn(job) for job in jobs]`` on a thread pool (requests wait on the network, not the CPU)."""
    if not jobs:
        return []
    pool = ThreadPoolExecutor(max_workers=min(workers, len(jobs)))
    try:
        return list(pool.map(fn, jobs))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # one failure: skip the requests not yet sent
