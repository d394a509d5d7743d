"""The user's inputs as every recipe reads them: text files that must be UTF-8 (an error names the file, the line
and the byte), prompts longer than a tokenizer reads (a warning, once per tokenizer and limit, on the logger
``flowrl.models``), and the rows of a prompt file that repeat a text with other inputs (``PromptRow``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from flowrl.core.errors import DataError

log = logging.getLogger("flowrl.models")
_TRUNCATION_WARNED: set[tuple[str, int]] = set()


class PromptRow(str):
    """A prompt that is one row of a prompt file whose text other rows repeat with other inputs (one edit
    instruction on several source images). It is its text everywhere the text matters (encoding, rewards, galleries);
    ``key`` tells the rows apart where a row is meant: its inputs, its evaluation group and its evaluation noise."""

    key: str

    def __new__(cls, text: str, key: str) -> PromptRow:
        row = super().__new__(cls, text)
        row.key = key
        return row

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:  # pickled with its key (processes gather prompts)
        return PromptRow, (str(self), self.key)


def row_key(prompt: str) -> str:
    """The key of a prompt's row: a ``PromptRow``'s own key, else the text (unique in its file)."""
    return getattr(prompt, "key", prompt)


def row_inputs(inputs: Mapping[str, Mapping[str, Any]] | None, prompts: Sequence[str]) -> list[dict[str, Any]]:
    """Each prompt's row inputs (``{}`` for a prompt without any) from ``inputs`` keyed by ``row_key``."""
    return [dict((inputs or {}).get(row_key(p), {})) for p in prompts]


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


def jsonl_rows(path: str, name: str) -> Iterator[tuple[int, Any]]:
    """Each non-blank line of the UTF-8 JSONL file ``path`` as (line number, parsed value); a ``DataError`` naming
    ``name`` and the line when one is not JSON."""
    for n, line in enumerate(read_utf8(path, name).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{name} line {n}: not JSON ({e.msg})") from None


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
