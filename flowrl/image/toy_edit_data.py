"""The toy edit world's splits as files a user's edit data would be: per split a ``.jsonl`` of rows
``{"prompt": instruction, "image": source png, "target": caption, "source_caption": the source's caption, "edit":
kind, "edited": ground-truth png}`` with the PNGs beside it (the images are drawn by ``flowrl.image.toy_edit``,
deterministically per row).

    python -m flowrl.image.toy_edit_data --out data/toy-edit [--size 32]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from PIL import Image
from torch import Tensor

from flowrl.core.atomic import atomic_dir
from flowrl.image.toy_edit import SPLITS, render_edit, split_edits


def _png(image: Tensor, path: str) -> None:
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def write_splits(out: str, size: int = 32) -> dict[str, int]:
    """Write every split's rows and images under ``out`` (built beside it and moved in place: no half-written
    folder); the rows per split. Row ``i`` of a split draws its layout from seed ``i``."""
    counts = {}
    with atomic_dir(out) as tmp:
        for split in SPLITS:
            os.makedirs(os.path.join(tmp, split))
            rows = []
            for i, edit in enumerate(split_edits(split)):
                source, edited = render_edit(edit, size, seed=i)
                _png(source, os.path.join(tmp, split, f"{i:04d}-source.png"))
                _png(edited, os.path.join(tmp, split, f"{i:04d}-edited.png"))
                name = f"{split}/{i:04d}"
                rows.append({"prompt": edit.instruction, "image": f"{name}-source.png", "target": edit.target.text,
                             "source_caption": edit.source.text, "edit": edit.kind,
                             "edited": f"{name}-edited.png"})  # fmt: skip
            with open(os.path.join(tmp, f"{split}.jsonl"), "w", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
            counts[split] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder to write (replaced if it exists)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args(argv)
    counts = write_splits(args.out, args.size)
    print(", ".join(f"{split}: {n} rows" for split, n in counts.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
