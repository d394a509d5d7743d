"""Offline preference pairs (``data.pairs``): Diffusion-DPO from a dataset of labelled image pairs instead of rollouts.

A pair dataset is either

- a JSONL file, one pair a line: ``{"prompt": ..., "chosen": "a.png", "rejected": "b.png", "label": 0.9}`` (image
  paths relative to the file's folder, or absolute), or
- a ``datasets`` folder (``Dataset.save_to_disk``) with the columns ``prompt``, ``chosen``, ``rejected`` (``Image``
  features or paths) and optionally ``label``.

``label`` is the probability that the chosen image is the preferred one (default 1: a hard label). A pair labelled
0.5 is a tie and trains nothing (Diffusion-DPO drops Pick-a-Pic's ties); a label below 0.5 is refused (swap the two
images instead). The DPO loss takes the label as its soft target, −[p·log σ(z) + (1 − p)·log σ(−z)] (label-smoothed
DPO, as TRL's ``label_smoothing`` with ε = 1 − p per pair).

Every image is resized to cover ``model.resolution``, centre-cropped to it and encoded once by the model family's
VAE (the posterior's mode, as the families encode reference images); the latents are cached in one safetensors file
under ``data.pairs_cache`` (default ``$XDG_CACHE_HOME/flowrl/pair-latents``), named by a hash of the dataset's files
(names, sizes, modification times), the model, its weight dtype and the resolution, so a second run, or a change of
anything but those, reads them back without the VAE. The cache file is read lazily: a training step loads only its
pairs.

Each iteration draws ``train.prompts_per_step`` pairs (without replacement within the iteration, from the run's
seeded prompt generator, so a resumed run draws what an uninterrupted one would); the processes share them pair by
pair, so a pair never spans two processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from flowrl.image.models.common import pixel_size
from flowrl.image.pair_data import PairRecord, load_image, read_pairs

if TYPE_CHECKING:
    from flowrl.image.models import FlowModel
    from flowrl.image.state import Batch, Run

CACHE_VERSION = 1  # bump when the encoding (resize, crop, VAE call) changes


def fingerprint(path: str, records: list[PairRecord]) -> str:
    """A hash of the dataset's files: each file's name (relative), size and modification time; a JSONL file's
    images (``records``, read from it) too."""
    if os.path.isdir(path):
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs)
    else:
        files = [path, *sorted({p for r in records for p in (r.chosen, r.rejected)})]
    h = hashlib.sha256()
    for f in files:
        st = os.stat(f)
        h.update(f"{os.path.relpath(f, path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cache_path(cfg: Any, policy: FlowModel, records: list[PairRecord]) -> str:
    """The cache file of ``cfg.data.pairs`` (its ``records``) encoded by ``policy`` at ``cfg.model.resolution``."""
    folder = cfg.data.pairs_cache or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "flowrl", "pair-latents"
    )
    source = [fingerprint(cfg.data.pairs, records), os.path.abspath(cfg.data.pairs)]
    model = [cfg.model.path, type(policy).__name__, str(policy.dtype), pixel_size(cfg.model.resolution)]
    key = json.dumps([CACHE_VERSION, *source, *model])
    return os.path.join(folder, hashlib.sha256(key.encode()).hexdigest()[:24] + ".safetensors")


def _chunks(n: int, size: int) -> Iterator[range]:
    for lo in range(0, n, size):
        yield range(lo, min(n, lo + size))


@torch.no_grad()
def encode_pairs(records: list[PairRecord], policy: FlowModel, size: tuple[int, int], path: str, chunk: int) -> None:
    """Encode every record's two images with ``policy``'s VAE, ``chunk`` images per call, into the safetensors file
    ``path`` (written whole, then renamed: a stopped encoding leaves nothing behind)."""
    from safetensors.torch import save_file

    latents: dict[str, list[Tensor]] = {"chosen": [], "rejected": []}
    for rows in _chunks(len(records), max(1, chunk)):
        for key in latents:
            images = torch.stack([load_image(getattr(records[i], key), size) for i in rows])
            latents[key].append(policy.encode_images(images).cpu())
    tensors = {k: torch.cat(v).contiguous() for k, v in latents.items()}
    tensors["label"] = torch.tensor([r.label for r in records], dtype=torch.float32)
    meta = {"prompts": json.dumps([r.prompt for r in records], ensure_ascii=False)}
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, path)


class PairLatents:
    """The encoded pairs of a cache file, read lazily: ``prompts`` ``[B]``, ``labels`` ``[B]``, and each pair's two
    latents on demand."""

    def __init__(self, path: str) -> None:
        from safetensors import safe_open

        self.path = path
        self._file = safe_open(path, framework="pt")
        self.prompts: list[str] = json.loads(self._file.metadata()["prompts"])
        self.labels: Tensor = self._file.get_tensor("label")

    def __len__(self) -> int:
        return len(self.prompts)

    def latents(self, key: str, index: list[int]) -> Tensor:
        """``[len(index), *S]`` the ``key`` (chosen or rejected) latents of pairs ``index``."""
        view = self._file.get_slice(key)
        return torch.cat([view[i : i + 1] for i in index])


def load_pair_latents(cfg: Any, policy: FlowModel, accelerator: Any) -> PairLatents:
    """The dataset's latents, encoded now (by the main process, the others waiting) unless cached."""
    records = read_pairs(cfg.data.pairs)
    path = cache_path(cfg, policy, records)
    with accelerator.main_process_first():
        if not os.path.isfile(path) and accelerator.is_main_process:
            encode_pairs(records, policy, pixel_size(cfg.model.resolution), path, cfg.train.sample_batch or 8)
    return PairLatents(path)


def pair_batch(run: Run) -> Batch:
    """This process's share of the iteration's pairs as a ``Batch``: samples chosen, rejected, chosen, ... ; group
    ids the pair's position in the whole iteration; one reward column, the per-sample preference (p for the chosen,
    1 − p for the rejected), which ranks each pair as its label does; ``labels`` the same."""
    from flowrl.core.inputs import row_inputs
    from flowrl.core.share import deal
    from flowrl.image.state import Batch
    from flowrl.samplers import Rollout, Transitions

    pairs, policy, acc, t = run.pairs, run.policy, run.accelerator, run.cfg.train
    drawn = run.rng.sample(range(len(pairs)), min(t.prompts_per_step, len(pairs)))
    first, count = deal(len(drawn), acc.num_processes, acc.process_index)
    mine = drawn[first : first + count]
    labels = pairs.labels[mine]
    preference = torch.stack([labels, 1 - labels], dim=1).flatten()  # [2·count] in sample order
    prompts = [pairs.prompts[i] for i in mine]
    x0 = torch.stack([pairs.latents("chosen", mine), pairs.latents("rejected", mine)], dim=1).flatten(0, 1)
    x0 = x0.to(policy.device, torch.float32)
    local = torch.arange(count).repeat_interleave(2)
    rollout = Rollout(x0, local + first, local, torch.arange(2 * count), Transitions.empty(x0), nfe=0)
    cond = policy.condition(prompts, row_inputs(run.inputs, prompts)).as_dict()
    return Batch(rollout, cond, [p for p in prompts for _ in range(2)], preference[:, None], {}, labels=preference)


__all__ = [
    "PairLatents",
    "cache_path",
    "encode_pairs",
    "fingerprint",
    "load_pair_latents",
    "pair_batch",
]
