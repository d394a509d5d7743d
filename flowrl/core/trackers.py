"""Experiment trackers through accelerate's tracker API: ``output.trackers: [tensorboard, wandb, ...]``.

``Trackers`` is what the training loop writes to, on the main process only: scalars (the metric names the loop has
always logged), the resolved config (once, at the start), image grids with their captions (the prompt and the
reward components of each image) and tables (the text backend's completions). Each backend gets them in its own
form: tensorboard scalars, images (one grid per tag) and markdown text; wandb numbers, ``wandb.Image`` lists with
captions and ``wandb.Table``. Any other name accelerate knows (``comet_ml``, ``mlflow``, ``aim``, ...) gets the
scalars and the config. A resumed run's tensorboard drops what was logged after its checkpoint; wandb runs are kept
in ``<run>/wandb`` (``WANDB_MODE=offline`` for machines without network).
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor

from flowrl.core.options import to_dict


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Config values as ``{"section.key": scalar}`` (lists as text), what every tracker accepts."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (bool, int, float, str)) or v is None else str(v)
    return out


class Trackers:
    """The run's trackers (``output.trackers``); every method is a no-op without any."""

    def __init__(self, cfg: Any, run_dir: str, iteration: int = 0) -> None:
        from accelerate.tracking import filter_trackers

        names = list(dict.fromkeys(cfg.output.trackers))
        if not cfg.output.tensorboard and "tensorboard" in names:  # the older switch still turns it off
            names.remove("tensorboard")
        self.trackers = []
        for name in filter_trackers(names, run_dir):
            self.trackers.append(_make(str(getattr(name, "value", name)), run_dir, iteration))
        for tracker in self.trackers:
            tracker.start()
        self.log_config(cfg)

    def log_config(self, cfg: Any) -> None:
        values = _flat(to_dict(cfg))
        for tracker in self.trackers:
            if tracker.name == "wandb":
                tracker.run.config.update(to_dict(cfg), allow_val_change=True)
            elif tracker.name == "tensorboard":
                tracker.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in values.items()), 0)
            else:
                tracker.store_init_configuration(values)

    def add_scalar(self, key: str, value: float, step: int) -> None:
        self.log({key: value}, step)

    def log(self, values: dict[str, float], step: int) -> None:
        values = {k: float(v) for k, v in values.items() if not isinstance(v, bool) and math.isfinite(float(v))}
        for tracker in self.trackers:
            tracker.log(values, step=step)

    def log_images(self, tag: str, images: Tensor, captions: list[str], step: int, fps: int = 16) -> None:
        """``images`` ``[N, 3, H, W]`` in [0, 1] with one caption each; videos ``[N, F, 3, H, W]`` go to
        ``log_videos``."""
        images = images.detach().float().clamp(0, 1).cpu()
        if images.ndim == 5:
            return self.log_videos(tag, images, captions, step, fps)
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                from torchvision.utils import make_grid

                tracker.writer.add_image(tag, make_grid(images, nrow=min(8, len(images)), padding=2), step)
                tracker.writer.add_text(f"{tag}/captions", "\n".join(f"{i}. {c}" for i, c in enumerate(captions)),
                                        step)  # fmt: skip
            elif tracker.name == "wandb":
                import wandb

                pixels = (images.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
                tracker.run.log({tag: [wandb.Image(p, caption=c) for p, c in zip(pixels, captions, strict=True)]},
                                step=step)  # fmt: skip

    def log_videos(self, tag: str, videos: Tensor, captions: list[str], step: int, fps: int) -> None:
        """``videos`` ``[N, F, 3, H, W]`` in [0, 1]: tensorboard shows one animated grid (a GIF in its images tab, as
        its own ``add_video`` writes it, without the moviepy it needs), wandb one ``wandb.Video`` per clip."""
        from flowrl.core.video import animated_gif, write_webm

        pixels = (videos.permute(0, 1, 3, 4, 2) * 255).round().to(torch.uint8).numpy()  # [N, F, H, W, 3]
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                from tensorboard.compat.proto.summary_pb2 import Summary
                from torchvision.utils import make_grid

                grid = torch.stack([make_grid(videos[:, f], nrow=min(8, len(videos)), padding=2)
                                    for f in range(videos.shape[1])])  # fmt: skip
                frames = (grid.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
                image = Summary.Image(height=frames.shape[1], width=frames.shape[2], colorspace=3,
                                      encoded_image_string=animated_gif(frames, fps))  # fmt: skip
                tracker.writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]),
                                                              step)  # fmt: skip
                tracker.writer.add_text(f"{tag}/captions", "\n".join(f"{i}. {c}" for i, c in enumerate(captions)),
                                        step)  # fmt: skip
            elif tracker.name == "wandb":
                import tempfile

                import wandb

                with tempfile.TemporaryDirectory() as tmp:
                    clips = []
                    for i, (clip, caption) in enumerate(zip(pixels, captions, strict=True)):
                        path = os.path.join(tmp, f"{i}.webm")
                        write_webm(clip, path, fps)
                        clips.append(wandb.Video(path, caption=caption, format="webm"))
                    tracker.run.log({tag: clips}, step=step)

    def log_table(self, tag: str, columns: list[str], rows: list[list[Any]], step: int) -> None:
        for tracker in self.trackers:
            if tracker.name == "tensorboard":
                cells = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                cells += ["| " + " | ".join(str(v).replace("|", "\\|").replace("\n", " ") for v in r) + " |"
                          for r in rows]  # fmt: skip
                tracker.writer.add_text(tag, "\n".join(cells), step)
            elif tracker.name == "wandb":
                import wandb

                tracker.run.log({tag: wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []


def _make(name: str, run_dir: str, iteration: int) -> Any:
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    cls = LOGGER_TYPE_TO_CLASS[name]
    if name == "tensorboard":
        return cls("tb", run_dir, purge_step=iteration + 1 if iteration else None)
    if name == "wandb":
        os.makedirs(os.path.join(run_dir, "wandb"), exist_ok=True)
        return cls("flowrl", name=os.path.basename(os.path.normpath(run_dir)), dir=run_dir, resume="allow",
                   id=os.path.basename(os.path.normpath(run_dir)))  # fmt: skip
    return cls("flowrl", run_dir) if getattr(cls, "requires_logging_directory", False) else cls("flowrl")


def image_captions(prompts: list[str], scores: dict[str, Tensor]) -> list[str]:
    """One caption per image: its prompt and every score, e.g. ``two red circles | reward 0.52 | toy-geneval 0.5``."""
    return [" | ".join([p, *(f"{k} {float(v[i]):.3g}" for k, v in scores.items())]) for i, p in enumerate(prompts)]


__all__ = ["Trackers", "image_captions"]
