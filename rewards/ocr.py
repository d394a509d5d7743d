"""OCR reward (Flow-GRPO convention): how closely the text rendered in the image matches the quoted text of the prompt.

Target = the text between the first pair of double quotes of the prompt. Both the target and the recognised text are
lower-cased and stripped of whitespace; the distance is 0 when the target occurs in the recognised text, else their
Levenshtein distance capped at the target's length (so a page of unrelated text costs no more than no text at all);
reward = 1 − distance / len(target), in [0, 1]. An image whose recogniser call fails scores 0 (and is flagged in the
``failed`` diagnostic). A prompt without a quoted target raises by default (``missing_quotes="zero"`` scores it 0):
an OCR run over a prompt set without quotes is almost always a configuration mistake.

The recogniser sits behind the ``Recognizer`` protocol. The built-in one is PaddleOCR (an optional extra,
``pip install 'flowrl[ocr]'``; the 2.x ``ocr()`` and 3.x ``predict()`` APIs are both handled); ``recognizer`` may
also be a ``"module:callable"`` path to your own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from .base import REWARDS, RewardFn, load_object

log = logging.getLogger(__name__)


class Recognizer(Protocol):
    """Reads the text in a batch of images: ``images [B, 3, H, W]`` in [0, 1] → ``B`` strings (all lines of an
    image concatenated, in any order the recogniser likes; ``""`` when it finds none; ``None`` for an image it
    could not read, which scores 0 like a raised exception)."""

    def __call__(self, images: Tensor) -> list[str]: ...


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each) between ``a`` and ``b``."""
    if len(a) < len(b):
        a, b = b, a  # keep the row as short as the shorter string
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev_diag, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev_diag, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev_diag + (ca != cb))
    return row[-1]


def _fold(text: str) -> str:
    # All whitespace, not only spaces: recognisers may join lines with newlines.
    return "".join(text.lower().split())


def quoted_target(prompt: str) -> str | None:
    """The text between the first pair of double quotes of ``prompt``, or ``None`` when there is no pair."""
    parts = prompt.split('"')
    return parts[1] if len(parts) >= 3 else None


def ocr_distance(recognised: str, target: str) -> int:
    """Distance of the folded texts: 0 if the target is a substring, else Levenshtein capped at ``len(target)``."""
    recognised, target = _fold(recognised), _fold(target)
    if target in recognised:
        return 0
    return min(levenshtein(recognised, target), len(target))


def ocr_score(recognised: str, target: str) -> float:
    """1 − distance / len(target) in [0, 1]; ``target`` must be non-empty once folded."""
    length = len(_fold(target))
    if length == 0:
        raise ValueError(f"OCR target {target!r} is empty once whitespace is removed")
    return 1.0 - ocr_distance(recognised, target) / length


# --- PaddleOCR -------------------------------------------------------------------------------------------------------


def paddle2_text(result: Sequence[Any] | None, min_score: float = 0.0) -> str:
    """Text of a PaddleOCR 2.x ``ocr(img, cls=...)`` result: one entry per page, each ``None`` (nothing found) or
    a list of lines ``[box, (text, confidence)]``. Lines with confidence above ``min_score`` are joined by spaces."""
    lines = [line for page in result or [] for line in page or []]
    return " ".join(str(text) for _, (text, conf) in lines if conf > min_score)


def paddle3_text(results: Iterable[Mapping[str, Any]], min_score: float = 0.0) -> str:
    """Text of PaddleOCR 3.x ``predict(img)`` results: one dict-like ``OCRResult`` per input with parallel
    ``rec_texts`` / ``rec_scores`` lists. Texts with a score above ``min_score`` are joined by spaces."""
    texts = []
    for res in results:
        texts += [str(t) for t, s in zip(res["rec_texts"], res["rec_scores"], strict=True) if s > min_score]
    return " ".join(texts)


class PaddleOCRRecognizer:
    """PaddleOCR (2.x or 3.x) as a ``Recognizer``; ``options`` go to the ``PaddleOCR`` constructor.

    Images are quantised to uint8 HWC in BGR order (PaddleOCR reads arrays the way OpenCV loads them). Orientation
    classification and document unwarping are off by default: generated images are upright single pictures.
    """

    def __init__(self, lang: str = "en", min_score: float = 0.0, **options: Any) -> None:
        try:
            import paddleocr
        except ImportError as e:
            raise ImportError(
                "the 'ocr' reward's PaddleOCR recogniser needs the paddleocr package: pip install 'flowrl[ocr]' "
                "(or set the reward option recognizer='module:callable' to use your own)"
            ) from e
        self.min_score = min_score
        self.v3 = int(str(getattr(paddleocr, "__version__", "2")).split(".")[0]) >= 3
        if self.v3:
            defaults = {"use_doc_orientation_classify": False, "use_doc_unwarping": False}
            defaults["use_textline_orientation"] = False
        else:
            defaults = {"use_angle_cls": False, "show_log": False}
        self.engine = paddleocr.PaddleOCR(lang=lang, **{**defaults, **options})

    def __call__(self, images: Tensor) -> list[str]:
        arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        texts = []
        for rgb in arrays:
            bgr = rgb[..., ::-1].copy()
            if self.v3:
                texts.append(paddle3_text(self.engine.predict(bgr), self.min_score))
            else:
                texts.append(paddle2_text(self.engine.ocr(bgr, cls=False), self.min_score))
        return texts


def build_recognizer(recognizer: str | Recognizer, options: Mapping[str, Any] | None = None) -> Recognizer:
    """``"paddleocr"``, a ``"module:callable"`` path or a recogniser object. A class (named or given) is
    instantiated with ``options``; any other callable is used as the recogniser itself."""
    obj: Any = recognizer
    if recognizer == "paddleocr":
        obj = PaddleOCRRecognizer
    elif isinstance(recognizer, str):
        obj = load_object(recognizer)
    if isinstance(obj, type):
        obj = obj(**dict(options or {}))
    elif options:
        raise ValueError(f"recognizer_options {dict(options)} given, but recogniser {recognizer!r} is not a class")
    if not callable(obj):
        raise TypeError(f"recogniser {recognizer!r} is not callable")
    return obj


def _recognise(recognizer: Recognizer, images: Tensor) -> list[str | None]:
    """Texts per image, ``None`` where the recogniser failed. A failing batch is retried image by image, so that
    one bad image costs only its own reward."""
    try:
        texts = list(recognizer(images))
        if len(texts) != len(images):
            raise ValueError(f"recogniser returned {len(texts)} texts for {len(images)} images")
        return texts
    except Exception as batch_error:
        if len(images) == 1:
            log.warning("OCR recogniser failed: %r", batch_error)
            return [None]
        return [_recognise(recognizer, images[i : i + 1])[0] for i in range(len(images))]


@REWARDS.register("ocr")
def ocr(
    recognizer: str | Recognizer = "paddleocr",
    recognizer_options: Mapping[str, Any] | None = None,
    missing_quotes: str = "error",
) -> RewardFn:
    """OCR reward. ``recognizer``: ``"paddleocr"`` or ``"module:callable"``; ``recognizer_options``: constructor
    options of a recogniser class (e.g. PaddleOCR's ``lang``); ``missing_quotes``: ``"error"`` or ``"zero"``."""
    if missing_quotes not in ("error", "zero"):
        raise ValueError(f"ocr reward: missing_quotes must be 'error' or 'zero', got {missing_quotes!r}")
    engine = build_recognizer(recognizer, recognizer_options)

    def reward(images: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        targets = [quoted_target(p) for p in prompts]
        for prompt, target in zip(prompts, targets, strict=True):
            if (target is None or not _fold(target)) and missing_quotes == "error":
                raise ValueError(
                    f"ocr reward: prompt {prompt!r} has no non-empty text in double quotes to compare the image "
                    "with (set the reward option missing_quotes='zero' to score such prompts 0)"
                )
        texts = _recognise(engine, images)
        scores = [
            0.0 if text is None or target is None or not _fold(target) else ocr_score(text, target)
            for text, target in zip(texts, targets, strict=True)
        ]
        return {"score": torch.tensor(scores), "failed": torch.tensor([float(t is None) for t in texts])}

    return reward
