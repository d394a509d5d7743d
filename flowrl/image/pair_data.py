"""Pair datasets for offline DPO (``data.pairs``; the trainer's side is ``flowrl.image.pairs``): reading and checking
a JSONL file or a ``datasets`` folder of labelled image pairs, and preparing one image. No model is needed here, so
configs check a dataset before anything loads.

A JSONL line is ``{"prompt": ..., "chosen": "a.png", "rejected": "b.png", "label": 0.9}`` (image paths relative to
the file's folder, or absolute); a ``datasets`` folder (``Dataset.save_to_disk``) has the columns ``prompt``,
``chosen``, ``rejected`` (``Image`` features or paths) and optionally ``label``, the probability that the chosen
image is preferred (default 1; 0.5 is a tie; below 0.5 is refused).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from flowrl.core.errors import ConfigError, DataError

KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PairRecord:
    """One labelled pair: its prompt, the two images (a path or a decoded image) and the chosen's preference."""

    prompt: str
    chosen: Any
    rejected: Any
    label: float = 1.0


def read_pairs(path: str) -> list[PairRecord]:
    """The records of the pair dataset at ``path`` (JSONL file or ``datasets`` folder), checked: every key present,
    every image path a file, every label in [0.5, 1]. A ``DataError`` names the problem and its line or row."""
    if os.path.isdir(path):
        return _read_folder(path)
    if not os.path.isfile(path):
        raise DataError(f"data.pairs: {path!r} is neither a JSONL file nor a datasets folder")
    from flowrl.core.inputs import jsonl_rows

    folder, records = os.path.dirname(os.path.abspath(path)), []
    for n, row in jsonl_rows(path, f"data.pairs {path}"):
        where = f"data.pairs {path} line {n}"
        record = _record(row, where)
        for key in ("chosen", "rejected"):
            image = os.path.join(folder, getattr(record, key))
            if not os.path.isfile(image):
                raise DataError(f"{where}: {key} image {getattr(record, key)!r} does not exist")
        records.append(PairRecord(record.prompt, os.path.join(folder, record.chosen),
                                  os.path.join(folder, record.rejected), record.label))  # fmt: skip
    if not records:
        raise DataError(f"data.pairs {path} holds no pairs")
    return records


def _read_folder(path: str) -> list[PairRecord]:
    try:
        from datasets import load_from_disk

        data = load_from_disk(path)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"data.pairs: {path!r} is not a datasets folder (Dataset.save_to_disk): {e}") from None
    if hasattr(data, "keys"):  # a DatasetDict: take its train split
        if "train" not in data:
            raise DataError(f"data.pairs: {path!r} is a DatasetDict without a train split ({', '.join(data)})")
        data = data["train"]
    missing = [k for k in KEYS if k not in data.column_names]
    if missing:
        raise DataError(f"data.pairs: {path!r} lacks the column(s) {', '.join(missing)} (it has "
                        f"{', '.join(data.column_names)})")  # fmt: skip
    from datasets import Image

    for key in ("chosen", "rejected"):  # undecoded ({bytes, path}): checking the rows must not decode every image
        if isinstance(data.features[key], Image):
            data = data.cast_column(key, Image(decode=False))
    records = [_record(row, f"data.pairs {path} row {i}") for i, row in enumerate(data)]
    if not records:
        raise DataError(f"data.pairs {path} holds no pairs")
    return records


def _record(row: Any, where: str) -> PairRecord:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object with {', '.join(KEYS)}")
    missing = [k for k in KEYS if row.get(k) is None]
    if missing:
        raise DataError(f"{where}: missing {', '.join(missing)}")
    if not isinstance(row["prompt"], str):
        raise DataError(f"{where}: prompt must be a string")
    label = row.get("label", 1.0)
    label = 1.0 if label is None else label
    if isinstance(label, bool) or not isinstance(label, (int, float)) or not 0.5 <= label <= 1:
        raise DataError(f"{where}: label {label!r} must be a number in [0.5, 1], the probability that chosen is "
                        "preferred (below 0.5: swap chosen and rejected)")  # fmt: skip
    return PairRecord(row["prompt"], row["chosen"], row["rejected"], float(label))


def load_image(image: Any, size: tuple[int, int]) -> Tensor:
    """A path, PIL image or undecoded ``datasets`` image → ``[3, H, W]`` float32 in [0, 1]: resized to cover
    ``size`` (H, W), centre-cropped."""
    import io

    from PIL import Image

    if isinstance(image, dict):  # a datasets Image column, undecoded
        image = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
    if isinstance(image, (str, io.BytesIO)):
        with Image.open(image) as f:
            image = f.convert("RGB")
    image = image.convert("RGB")
    h, w = size
    scale = max(h / image.height, w / image.width)
    resized = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))),
                           Image.Resampling.BICUBIC)  # fmt: skip
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    cropped = resized.crop((left, top, left + w, top + h))
    data = torch.frombuffer(bytearray(cropped.tobytes()), dtype=torch.uint8).view(h, w, 3)
    return data.permute(2, 0, 1).float() / 255


def check_pair_data(cfg: Any, offline_losses: list[str], loss_is_offline: bool, videos: bool) -> None:
    """``data.pairs``: a loss that trains on a dataset's pairs, an image model, no rollout filter, readable data."""
    if not loss_is_offline:
        raise ConfigError(f"data.pairs trains on a pair dataset; loss.name={cfg.loss.name} needs rollouts (losses "
                          f"that train on a dataset's pairs: {', '.join(offline_losses)})")  # fmt: skip
    if videos:
        raise ConfigError(f"data.pairs holds image pairs; model.path={cfg.model.path} makes videos")
    if cfg.rollout.filter:
        raise ConfigError("rollout.filter filters rollouts; data.pairs trains on a dataset's pairs (remove it)")
    try:
        read_pairs(cfg.data.pairs)
    except DataError as e:
        raise ConfigError(str(e)) from None


__all__ = ["KEYS", "PairRecord", "check_pair_data", "load_image", "read_pairs"]
