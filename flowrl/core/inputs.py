"""The user's inputs as every recipe reads them: text files that must be UTF-8 (an error names the file, the line
and the byte), and prompts longer than a tokenizer reads (a warning, once per tokenizer and limit, on the logger
``flowrl.models``).
"""

from __future__ import annotations

import logging
from typing import Any

from flowrl.core.errors import DataError

log = logging.getLogger("flowrl.models")
_TRUNCATION_WARNED: set[tuple[str, int]] = set()


def read_utf8(path: str, name: str) -> str:
    """The text of ``path`` (a byte-order mark is fine); a ``DataError`` naming it (``name``), the line and the byte
    when it is not UTF-8."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(f"{name} is not UTF-8 text (line {line}, byte {e.start}); re-save it as UTF-8") from None


_TRUNCATION_WARNED: set[tuple[str, int]] = set()


def warn_truncation(tokenizer: Any, prompts: list[str], limit: int, reader: str = "", how: str = "truncated") -> None:
    """Log once per (tokenizer, limit) that a prompt has more than ``limit`` tokens and is ``how`` (``reader``
    says what has the limit; default: the text encoder)."""
    key = (str(getattr(tokenizer, "name_or_path", "")) or type(tokenizer).__name__, int(limit))
    if key in _TRUNCATION_WARNED or not prompts:
        return
    lengths = [len(ids) for ids in tokenizer(prompts, truncation=False, verbose=False)["input_ids"]]
    longest = max(range(len(prompts)), key=lengths.__getitem__)
    if lengths[longest] <= limit:
        return
    _TRUNCATION_WARNED.add(key)
    words = prompts[longest].split()
    start = " ".join(words[:8]) + (" …" if len(words) > 8 else "")
    reader = reader or f"the text encoder ({type(tokenizer).__name__})"
    log.warning(
        "prompt %r is %d tokens; %s reads at most %d, so it is %s (reported once per tokenizer)",
        start, lengths[longest], reader, limit, how,
    )  # fmt: skip
