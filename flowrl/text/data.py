"""Prompt rows for the text trainer, in TRL's dataset formats, read offline.

A row is a mapping with a ``"prompt"``: a string (TRL's *standard* prompt-only format) or a list of messages
``{"role": ..., "content": ...}`` (*conversational*). Its other keys are columns that reward functions receive as
keyword lists. One dataset is all standard or all conversational, as TRL assumes from its first row.

Sources (``data.train`` / ``data.eval``):
- ``toy-text:<split>``, the toy addition task (``flowrl.text.world``);
- a ``.jsonl`` file (one object per line) or a ``.json`` file (a list of objects);
- a folder written by ``datasets``' ``save_to_disk`` (a dataset, or a dataset dict: ``data.*_split`` picks one);
- a hub-format folder, as ``huggingface-cli download`` leaves a dataset repository (parquet / jsonl / json / csv
  files, split by their names), read with ``datasets.load_dataset(folder, split=...)``;
- in Python, a ``datasets.Dataset`` or a list of dicts given to ``flowrl.text.trainer.setup``.

Conversational prompts reach the model through the tokenizer's chat template as TRL's GRPOTrainer tokenizes them:
``apply_chat_template(messages, add_generation_prompt=True, **chat_template_kwargs)``, no special tokens added on
top (the template writes its own). One deliberate difference: a conversation that ends with an assistant message
(a started answer) is continued (``continue_final_message=True``, as TRL's ``apply_chat_template`` in its
data utilities does; the completion is what follows it), where TRL's trainer would open a new assistant turn.
``data.system_prompt`` (a flowrl convenience, TRL has none) puts a system message first in every conversation that
has none. Rewards receive the prompts as given (message lists) and each completion as
``[{"role": "assistant", "content": text}]``, as in TRL.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from flowrl.core.errors import DataError

DATA_FILES = (".parquet", ".jsonl", ".json", ".csv", ".arrow")


def is_conversational(prompt: Any) -> bool:
    """A prompt is conversational when it is a list of messages (TRL: its first element a dict with a "role")."""
    return isinstance(prompt, list) and bool(prompt) and isinstance(prompt[0], dict) and "role" in prompt[0]


def prompt_key(prompt: str | list[dict[str, Any]]) -> str:
    """A hashable key of a prompt (groups, standard errors over prompts): the string, or the messages as JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def prompt_label(prompt: str | list[dict[str, Any]]) -> str:
    """What tables and ``samples.md`` show of a prompt: the string, or the last message's content."""
    if isinstance(prompt, str):
        return prompt
    content = prompt[-1].get("content", "")
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def check_rows(rows: list[Any], where: str, lines: list[int] | None = None) -> list[dict[str, Any]]:
    """``rows`` if every one is a mapping with a non-empty prompt, all of one format; else a ``DataError`` naming
    ``where`` and the row (``where:line`` when ``lines`` gives each row's line, else "row n", 1-based)."""
    if not rows:
        raise DataError(f"{where} has no rows (each needs a 'prompt')")
    kinds = ("a string", "a list of messages")
    first = None
    for n, row in enumerate(rows, 1):
        at = f"{where}:{lines[n - 1]}" if lines else f"{where}: row {n}"
        if not isinstance(row, dict) or "prompt" not in row:
            raise DataError(f"{at}: expected an object with a 'prompt' (a string or a list of messages)")
        prompt = row["prompt"]
        if isinstance(prompt, str):
            if not prompt.strip():
                raise DataError(f"{at}: empty 'prompt'")
        elif is_conversational(prompt):
            _check_messages(prompt, at)
        else:
            raise DataError(f"{at}: 'prompt' must be a string or a list of messages {{'role': ..., 'content': ...}}, "
                            f"got {type(prompt).__name__}")  # fmt: skip
        kind = is_conversational(prompt)
        first = kind if first is None else first
        if kind != first:
            raise DataError(f"{at}: the prompt is {kinds[kind]} but the first row's is {kinds[first]}; one dataset "
                            "is all standard or all conversational")  # fmt: skip
    return rows


def _check_messages(messages: list[Any], where: str) -> None:
    for k, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise DataError(f"{where}: message {k} must be an object with a string 'role' and a 'content'")


_READ: dict[tuple[str, str], tuple[tuple, list[dict[str, Any]]]] = {}  # (path, split) -> (file stamps, rows)


def _stamps(source: str) -> tuple:
    """What changes when a file or a folder's files change: (path, size, mtime) of each."""
    paths = [source] if not os.path.isdir(source) else sorted(
        os.path.join(d, f) for d, _, files in os.walk(source) for f in files)  # fmt: skip
    return tuple((p, s.st_size, s.st_mtime_ns) for p in paths for s in [os.stat(p)])


def load_rows(source: str, split: str = "train") -> list[dict[str, Any]]:
    """The rows of ``source`` (module docstring), checked (``DataError`` naming the file, folder or row).

    A file or folder is parsed once per process while it is unchanged (the config check and the run's setup both
    read it): later calls get a new list of the same row objects."""
    from flowrl.text import world as text_world

    if source.startswith(text_world.SOURCE_PREFIX):
        return text_world.problems(source[len(text_world.SOURCE_PREFIX) :])
    if not os.path.exists(source):
        return _parse_rows(source, split)  # its DataError names the source
    key, stamps = (os.path.realpath(source), split), _stamps(source)
    if key not in _READ or _READ[key][0] != stamps:
        _READ.pop(key, None)
        while len(_READ) >= 4:  # a run's train and eval sets, with room for another run's
            _READ.pop(next(iter(_READ)))
        _READ[key] = (stamps, _parse_rows(source, split))
    return list(_READ[key][1])


def _parse_rows(source: str, split: str) -> list[dict[str, Any]]:
    if os.path.isdir(source):
        return check_rows(_folder_rows(source, split), f"{source} (split {split!r})")
    if source.endswith(".jsonl"):
        rows, lines = _jsonl_rows(source)
        if not rows:
            raise DataError(f"data file {source!r} has no rows (one JSON object with a 'prompt' per line)")
        return check_rows(rows, source, lines)
    if source.endswith(".json"):
        from flowrl.core.inputs import read_utf8

        try:
            rows = json.loads(read_utf8(source, f"data file {source!r}"))
        except json.JSONDecodeError as e:
            raise DataError(f"{source}:{e.lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(rows, list):
            raise DataError(f"{source}: expected a JSON list of objects, got {type(rows).__name__}")
        return check_rows(rows, source)
    raise DataError(f"unknown data source {source!r}: expected toy-text:<split>, a .jsonl or .json file or a "
                    "dataset folder")  # fmt: skip


def _jsonl_rows(source: str) -> tuple[list[Any], list[int]]:
    """The objects of a JSON-lines file and their line numbers (blank lines skipped)."""
    from flowrl.core.inputs import read_utf8

    rows, lines = [], []
    for n, line in enumerate(read_utf8(source, f"data file {source!r}").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{source}:{n}: not valid JSON ({e.msg})") from None
        lines.append(n)
    return rows, lines


def _folder_rows(folder: str, split: str) -> list[Any]:
    """Rows of a ``save_to_disk`` folder or of a hub-format dataset folder (``split`` of it)."""
    import datasets

    if _saved_to_disk(folder):
        data = datasets.load_from_disk(folder)
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise DataError(f"{folder}: no split {split!r}; it has {', '.join(data)}")
            data = data[split]
        return data.to_list()
    if not any(name.endswith(DATA_FILES) for _, _, names in os.walk(folder) for name in names):
        raise DataError(f"{folder}: no dataset here (neither save_to_disk's dataset_info.json / dataset_dict.json "
                        f"nor data files: {', '.join(DATA_FILES)})")  # fmt: skip
    try:
        return datasets.load_dataset(folder, split=split).to_list()
    except ValueError as e:  # an unknown split names the ones there are
        raise DataError(f"{folder}: {str(e).splitlines()[0]}") from None


def _saved_to_disk(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("dataset_dict.json", "state.json"))


def as_rows(dataset: Any, where: str = "the dataset") -> list[dict[str, Any]]:
    """A ``datasets.Dataset`` (or any sequence of mappings) as checked rows."""
    rows = dataset.to_list() if hasattr(dataset, "to_list") else [dict(r) for r in dataset]
    return check_rows(rows, where)


def has_chat_template(path: str) -> bool:
    """Whether the tokenizer saved in folder ``path`` has a chat template (``chat_template.jinja``, a
    ``chat_templates/`` folder or ``tokenizer_config.json``'s ``chat_template``), read without loading it."""
    if os.path.isfile(os.path.join(path, "chat_template.jinja")) or os.path.isdir(f"{path}/chat_templates"):
        return True
    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            return bool(json.load(f).get("chat_template"))
    except (OSError, ValueError):
        return False


@dataclass
class PromptFormat:
    """How a dataset's prompts become the model's input text (module docstring)."""

    conversational: bool = False
    system_prompt: str = ""
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # TRL's chat_template_kwargs

    @property
    def add_special_tokens(self) -> bool:
        """Standard prompts are tokenized as the tokenizer does by default; a chat template writes its own."""
        return not self.conversational

    def messages(self, prompt: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.system_prompt and prompt[0].get("role") != "system":
            return [{"role": "system", "content": self.system_prompt}, *prompt]
        return prompt

    def render(self, tokenizer: Any, prompt: str | list[dict[str, Any]]) -> str:
        """The text the model is prompted with."""
        if isinstance(prompt, str):
            return prompt
        messages = self.messages(prompt)
        prefill = messages[-1]["role"] == "assistant"  # the model continues a started answer
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=not prefill,
                                             continue_final_message=prefill, **self.template_kwargs)  # fmt: skip

    def completions(self, texts: list[str]) -> list[Any]:
        """What rewards receive as completions: the texts, or one assistant message each (conversational)."""
        if not self.conversational:
            return texts
        return [[{"role": "assistant", "content": t}] for t in texts]


__all__ = [
    "PromptFormat",
    "as_rows",
    "check_rows",
    "has_chat_template",
    "is_conversational",
    "load_rows",
    "prompt_key",
    "prompt_label",
]
