"""Preservation for editing, from each prompt row's source ``image`` (the first, for a row with several).

``image-similarity``: the cosine between image embeddings of the edited image and of the source; ``score`` in
[-1, 1], 1 when the embeddings agree. The checkpoint is the user's (``path``: a local folder or hub id) and its
``config.json`` says which embedding:

- a ``CLIPModel`` (``openai/clip-vit-large-patch14``): the projected image features, CLIP's transform; the
  image-image term that flow_grpo adds to its editing rewards (``image_similarity_score``, weighted 0.5 for Kontext
  and 0.2 for Qwen-Image-Edit next to GenEval's check);
- a ``Dinov2Model`` (``facebook/dinov2-base``): the normalised class token (``pooler_output``) after DINOv2's
  transform (shortest side to 256 bicubic, centre crop 224, ImageNet mean and std; the sizes from the folder's
  ``preprocessor_config.json`` when it has one). DINO features keep layout and identity, where CLIP's keep meaning
  (the DINO score of DreamBooth-style subject fidelity).

``lpips``: 1 − the LPIPS distance (Zhang et al. 2018, the ``lpips`` package: ``pip install lpips``) between the edit
and its source in [-1, 1] at the edit's size (smaller than 64 px: both upsampled bilinearly to 64, AlexNet's
pooling needs it); ``distance`` is logged too. The package's linear heads ship with it; the backbone (AlexNet, VGG
or SqueezeNet) comes from torchvision's cache (``TORCH_HOME``), which a machine without internet must hold.

``pixel-similarity``: model-free, 1 − the RMS pixel difference of the two at a small size; a watch reward that shows
an edit policy ignoring its source (the typical hack of editing RL).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import REWARDS, RewardFn
from .clip_similarity import ClipSimilarity
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, clip_preprocess, load_sources


@REWARDS.register("image-similarity", inputs=("image",))
def image_similarity(path: str, device: str = "cpu", batch_size: int = 32) -> RewardFn:
    """Factory: the image-image cosine (CLIP or DINOv2, by the checkpoint) of each edit with its source image."""
    from transformers import AutoConfig

    kind = AutoConfig.from_pretrained(path).model_type
    if kind not in EMBEDDINGS:
        raise ValueError(f"image-similarity: {path!r} holds a {kind!r} model; valid: {', '.join(EMBEDDINGS)}")
    embed = EMBEDDINGS[kind](path, device, batch_size)

    def reward(images: Tensor, prompts: list[str], image: list[list[str]]) -> dict[str, Tensor]:
        sources, index = load_sources(image, tuple(images.shape[-2:]))  # each source embedded once
        return {"score": (embed(images) * embed(sources)[index]).sum(-1)}

    reward.inputs = ("image",)
    return reward


def clip_features(path: str, device: str, batch_size: int) -> Callable[[Tensor], Tensor]:
    """``f(images [B, 3, H, W] in [0, 1]) -> [B, D]`` (unit length, float32, CPU): a ``CLIPModel``'s projected image
    features, in batches of ``batch_size``."""
    return ClipSimilarity(path, device, batch_size, text=False).images


def dino_features(path: str, device: str, batch_size: int) -> Callable[[Tensor], Tensor]:
    """``f(images [B, 3, H, W] in [0, 1]) -> [B, D]`` (unit length, float32, CPU): a ``Dinov2Model``'s class token
    after its transform, in batches of ``batch_size``."""
    from transformers import Dinov2Model

    model = Dinov2Model.from_pretrained(path).to(device).eval()
    resize, crop = 256, 224  # the published preprocessor_config.json's shortest_edge and crop_size
    config = os.path.join(path, "preprocessor_config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            spec = json.load(f)
        resize, crop = spec.get("size", {}).get("shortest_edge", resize), spec.get("crop_size", {}).get("height", crop)

    @torch.no_grad()
    def features(images: Tensor) -> Tensor:
        parts = [model(pixel_values=clip_preprocess(images[i : i + batch_size].to(device), resize, IMAGENET_MEAN,
                                                    IMAGENET_STD, crop)).pooler_output
                 for i in range(0, len(images), batch_size)]  # fmt: skip
        feats = torch.cat(parts).float().cpu()
        return feats / feats.norm(dim=-1, keepdim=True)

    return features


#: config.json model_type -> the image embedding image-similarity computes with it
EMBEDDINGS = {"clip": clip_features, "dinov2": dino_features}


@REWARDS.register("lpips", inputs=("image",))
def lpips_similarity(net: str = "alex", device: str = "cpu", batch_size: int = 32) -> RewardFn:
    """Factory: ``score`` = 1 − LPIPS distance of each edit to its source (module docstring); ``net`` is the
    package's backbone, ``alex`` (its recommended metric), ``vgg`` or ``squeeze``."""
    try:
        import lpips
    except ImportError:
        raise ImportError("the lpips reward needs the lpips package: pip install lpips") from None
    if net not in ("alex", "vgg", "squeeze"):
        raise ValueError(f"lpips: net must be alex, vgg or squeeze, got {net!r}")
    metric = lpips.LPIPS(net=net, verbose=False).to(device).eval()

    @torch.no_grad()
    def reward(images: Tensor, prompts: list[str], image: list[list[str]]) -> dict[str, Tensor]:
        sources, index = load_sources(image, tuple(images.shape[-2:]))
        a, b = images.float(), sources[index]
        if min(a.shape[-2:]) < 64:  # AlexNet's three poolings leave nothing of a smaller image
            scale = 64 / min(a.shape[-2:])
            a, b = (F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False) for x in (a, b))
        distance = torch.cat([
            metric(a[i : i + batch_size].to(device) * 2 - 1, b[i : i + batch_size].to(device) * 2 - 1).flatten()
            for i in range(0, len(a), batch_size)
        ]).cpu()  # fmt: skip
        return {"score": 1 - distance, "distance": distance}

    reward.inputs = ("image",)
    return reward


@REWARDS.register("pixel-similarity", inputs=("image",))
def pixel_similarity(size: int = 32) -> RewardFn:
    """Factory: a model-free preservation score, 1 − the RMS difference in [0, 1] between the edit and its source
    image, both area-downsampled to at most ``size`` pixels a side (1: unchanged; the hack of an edit policy that
    ignores its source shows as a fall, so it serves as a watch reward: ``eval.watch_rewards``)."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")

    from flowrl.image.evaluation import thumbnails

    def reward(images: Tensor, prompts: list[str], image: list[list[str]]) -> dict[str, Tensor]:
        sources, index = load_sources(image, tuple(images.shape[-2:]))
        rms = (thumbnails(images, size) - thumbnails(sources, size)[index]).square().flatten(1).mean(1).sqrt()
        return {"score": 1 - rms}

    reward.inputs = ("image",)
    return reward
