"""A reward computed by a reward server (``flowrl serve-reward``), and the wire format both sides share.

Heavy reward models (VLM judges, detectors) run in their own process or node; the trainer's reward is
then ``make_reward("remote", url="http://127.0.0.1:8000")``. The wire format is JSON, never pickle:

    POST /score   {"prompts": ["a cat", ...],
                   "images": {"format": "png", "data": ["<base64 PNG>", ...]}}            one RGB PNG per image
              or   "images": {"format": "safetensors", "data": "<base64 safetensors file>"}
                   whose tensor "images" is float [B, 3, H, W] in [0, 1]
    200           {"outputs": {"score": [B floats], "<other key>": [B floats], ...}}
    4xx / 5xx     {"error": "<message>"}         400: malformed request; 500: the reward raised
    GET /health   {"status": "ok", "reward": "<name>"}

Videos travel the same way: in ``png``, each item of ``data`` is a list of the video's frames as PNGs (every video
the same number of frames and size); in ``safetensors``, the tensor ``images`` is ``[B, F, 3, H, W]``. The served
reward then gets videos ``[B, F, 3, H, W]``; on the trainer's side the client is ``remote-video`` (the same client,
declared as a video reward so that a video family's config takes it).

Rewards that read columns of the prompt rows (an edit reward's source ``image``, a ``target`` caption) get them in an
optional ``"inputs"`` object, one value per image (a row's value repeated for each of its images):

                   "inputs": {"image": [["<base64 PNG>", ...], ...],    the row's source images, as PNGs
                              "target": ["two red squares", ...]}       any other column: its JSON value

The client reads a row's image files and sends their pixels (the server cannot read the trainer's paths); the server
writes them to temporary PNG files for the reward, which reads paths as it does in training. The client sends the
columns named by its ``inputs`` option; a server whose reward reads a column the request lacks answers 400.

PNG is 8-bit, so the server scores ``quantize_8bit(images)`` (``round(x·255)/255``); it is small and
what a third-party client can produce easily. safetensors carries the float tensor bit-exactly (in
its own dtype), so remote scores equal local ones. Scores travel as JSON numbers: float32 values
survive the round trip exactly, and ``NaN`` is allowed (Python's ``json`` extension).
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.parse
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from flowrl.core.errors import RewardError

from .base import REWARDS, RewardFn, Scores
from .http import post_json
from .preprocess import load_image

WIRE_FORMATS = ("png", "safetensors")

#: Default cap on pixels (summed over the batch) a server decodes per request: 32 images of 1024², and
#: a guard against PNGs that decompress to far more memory than their size on the wire suggests.
MAX_PIXELS = 2**25


class WireError(RewardError):
    """A malformed request or response; the message names the field and what was expected (and, for a response,
    the server's URL). A ``RewardError``, so a bad reply from the reward server stops training with exit code 2."""


def quantize_8bit(images: Tensor) -> Tensor:
    """``[B, 3, H, W]`` → the float32 values a PNG round trip gives: ``round(clamp(x, 0, 1)·255) / 255``."""
    return (images.detach().float().cpu().clamp(0, 1) * 255).round() / 255


def _png_strings(images: Tensor) -> list[str]:
    """``[N, 3, H, W]`` → one base64 PNG per image (8-bit)."""
    data = []
    for image in quantize_8bit(images):
        array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        data.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return data


def encode_images(images: Tensor, fmt: str = "png") -> dict[str, Any]:
    """``[B, 3, H, W]`` images (or videos ``[B, F, 3, H, W]``) → the request's ``"images"`` object in ``fmt``."""
    if images.ndim not in (4, 5) or images.shape[-3] != 3:
        raise ValueError(f"expected images [B, 3, H, W] or videos [B, F, 3, H, W], got shape {tuple(images.shape)}")
    if fmt == "png":
        if images.ndim == 5:
            return {"format": "png", "data": [_png_strings(video) for video in images]}
        return {"format": "png", "data": _png_strings(images)}
    if fmt == "safetensors":
        tensor = images.detach().cpu().contiguous()
        if not tensor.is_floating_point():
            raise ValueError(f"safetensors images must be floating point, got {tensor.dtype}")
        return {
            "format": "safetensors",
            "data": base64.b64encode(save_safetensors({"images": tensor})).decode("ascii"),
        }
    raise ValueError(f"unknown image format {fmt!r}; valid: {', '.join(WIRE_FORMATS)}")


def _b64(text: Any, where: str) -> bytes:
    if not isinstance(text, str):
        raise WireError(f"{where}: expected a base64 string, got {type(text).__name__}")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise WireError(f"{where}: invalid base64 ({e})") from e


def _check_pixels(count: int, max_pixels: int) -> None:
    if count > max_pixels:
        raise WireError(f"images: {count} pixels in the batch exceed this server's limit of {max_pixels}")


#: PNG colour modes a request may use: grey, palette and alpha images are converted to RGB (alpha is dropped)
PNG_MODES = ("RGB", "RGBA", "L", "LA", "P", "PA", "1")


def _decode_png(data: Any, max_pixels: int) -> Tensor:
    """``[B, 3, H, W]``, or ``[B, F, 3, H, W]`` when every item is a list of frames."""
    if not isinstance(data, list) or not data:
        raise WireError("images.data: expected a non-empty list of base64 PNG strings for format 'png'")
    if all(isinstance(item, list) for item in data):  # videos: each item a list of its frames
        counts = {len(item) for item in data}
        if len(counts) != 1 or 0 in counts:
            raise WireError(f"images.data: every video needs the same number of frames (> 0), got {sorted(counts)}")
        frames = _decode_png([frame for item in data for frame in item], max_pixels)
        return frames.view(len(data), counts.pop(), *frames.shape[1:])
    arrays: list[np.ndarray] = []
    total = 0
    for i, text in enumerate(data):
        image = _open_png(text, f"images.data[{i}]")
        total += image.width * image.height
        _check_pixels(total, max_pixels)
        if arrays and (image.height, image.width) != tuple(arrays[0].shape[:2]):
            height, width = arrays[0].shape[:2]
            raise WireError(
                f"images.data[{i}]: size {image.width}x{image.height} differs from image 0's {width}x{height}"
            )
        arrays.append(_pixels(image, f"images.data[{i}]"))
    # contiguous: reductions over a channels-last view sum in another order, so scores would differ in the last bit
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous().float() / 255


def _open_png(text: Any, where: str) -> Image.Image:
    """The PNG of a base64 string, header read (pixels not yet decoded); ``WireError`` naming ``where``."""
    raw = _b64(text, where)
    try:
        image = Image.open(io.BytesIO(raw))  # reads the header only; pixels are decoded by _pixels
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise WireError(f"{where}: not a readable PNG ({e})") from e
    if image.format != "PNG" or image.mode not in PNG_MODES:
        raise WireError(f"{where}: expected a PNG in mode {', '.join(PNG_MODES)}, got {image.format} in mode "
                        f"{image.mode!r}")  # fmt: skip
    return image


def _pixels(image: Image.Image, where: str) -> np.ndarray:
    try:
        return np.array(image if image.mode == "RGB" else image.convert("RGB"))  # a writable copy for torch
    except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt pixel data
        raise WireError(f"{where}: not a readable PNG ({e})") from e


def _decode_safetensors(data: Any, max_pixels: int) -> Tensor:
    raw = _b64(data, "images.data")
    try:
        tensors = load_safetensors(raw)
    except (SafetensorError, ValueError) as e:
        raise WireError(f"images.data: not a readable safetensors file ({e})") from e
    if "images" not in tensors:
        raise WireError(f"images.data: the safetensors file has no tensor 'images' (found: {sorted(tensors)})")
    images = tensors["images"]
    if images.ndim not in (4, 5) or images.shape[-3] != 3 or 0 in images.shape:
        raise WireError(f"images.data: tensor 'images' must be [B, 3, H, W] (videos [B, F, 3, H, W]), got shape "
                        f"{list(images.shape)}")  # fmt: skip
    if not images.is_floating_point():
        raise WireError(f"images.data: tensor 'images' must be floating point, got {images.dtype}")
    _check_pixels(images[..., 0, :, :].numel(), max_pixels)
    return images


def encode_request(
    images: Tensor, prompts: list[str], fmt: str = "png", columns: Mapping[str, list[Any]] | None = None
) -> dict[str, Any]:
    """The ``POST /score`` body for a batch; ``columns`` (name → one value per image, the ``image`` column's a list
    of file paths) go into ``"inputs"`` (module docstring)."""
    if images.shape[0] != len(prompts):
        raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
    body: dict[str, Any] = {"prompts": list(prompts), "images": encode_images(images, fmt)}
    if columns:
        files: dict[str, str] = {}  # a group's rows share their sources: read and encode each file once
        for paths in columns.get("image", []):
            for path in paths:
                if path not in files:
                    files[path] = encode_images(load_image(path)[None])["data"][0]
        body["inputs"] = {
            name: [[files[p] for p in paths] for paths in values] if name == "image" else list(values)
            for name, values in columns.items()
        }
    return body


def decode_inputs(body: Mapping[str, Any], needed: tuple[str, ...], batch: int, max_pixels: int = MAX_PIXELS) -> dict:
    """The request's ``"inputs"`` columns that a reward reads (``needed``), one value per image: the ``image``
    column's as lists of ``[3, H, W]`` tensors (each its own size; each distinct one decoded once, the same tensor
    where it repeats; ``max_pixels`` bounds their sum), any other's as
    JSON scalars or lists of them. Raises ``WireError`` naming a missing or malformed column or value."""
    inputs = body.get("inputs", {})
    if not isinstance(inputs, Mapping):
        raise WireError("inputs: expected an object of columns")
    out: dict[str, list[Any]] = {}
    total = 0
    for name in needed:
        values = inputs.get(name)
        if not isinstance(values, list) or len(values) != batch:
            got = "none" if values is None else f"{len(values) if isinstance(values, list) else type(values).__name__}"
            raise WireError(f"inputs.{name}: the reward reads this column of each prompt row; expected a list of "
                            f"{batch} values (one per image), got {got}")  # fmt: skip
        if name != "image":
            for k, value in enumerate(values):
                if not _json_value(value):
                    raise WireError(f"inputs.{name}[{k}]: expected a string, number or a list of them")
            out[name] = values
            continue
        decoded, seen = [], {}  # a group's images repeat their row's sources: each distinct one decoded once
        for k, sources in enumerate(values):
            if not isinstance(sources, list) or not sources:
                raise WireError(f"inputs.image[{k}]: expected a non-empty list of base64 PNGs")
            for j, text in enumerate(sources):
                if not isinstance(text, str) or text not in seen:
                    image = _open_png(text, f"inputs.image[{k}][{j}]")
                    total += image.width * image.height
                    _check_pixels(total, max_pixels)
                    pixels = _pixels(image, f"inputs.image[{k}][{j}]")
                    seen[text] = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255
            decoded.append([seen[text] for text in sources])
        out[name] = decoded
    return out


def _json_value(value: Any) -> bool:
    """A column value the wire carries: a string, a number or a boolean, or a list of them (no null)."""
    scalar = (str, int, float, bool)
    return isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))


def decode_request(body: Any, max_pixels: int = MAX_PIXELS) -> tuple[Tensor, list[str]]:
    """A parsed ``POST /score`` body → (images ``[B, 3, H, W]``, prompts). Raises ``WireError``."""
    if not isinstance(body, Mapping):
        raise WireError(f"request: expected a JSON object, got {type(body).__name__}")
    missing = [key for key in ("prompts", "images") if key not in body]
    if missing:
        raise WireError(f"request: missing key(s) {', '.join(map(repr, missing))}")
    prompts, spec = body["prompts"], body["images"]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise WireError("prompts: expected a list of strings")
    if not isinstance(spec, Mapping) or "format" not in spec or "data" not in spec:
        raise WireError("images: expected an object with keys 'format' and 'data'")
    if spec["format"] == "png":
        images = _decode_png(spec["data"], max_pixels)
    elif spec["format"] == "safetensors":
        images = _decode_safetensors(spec["data"], max_pixels)
    else:
        raise WireError(f"images.format: {spec['format']!r} is not one of {', '.join(WIRE_FORMATS)}")
    if images.shape[0] != len(prompts):
        raise WireError(f"request: {images.shape[0]} images but {len(prompts)} prompts")
    return images, prompts


def encode_outputs(outputs: Mapping[str, Tensor]) -> dict[str, Any]:
    """A checked reward output (``[B]`` float32 tensors) → the response body."""
    return {"outputs": {key: value.tolist() for key, value in outputs.items()}}


def decode_outputs(body: Any, batch: int, source: str = "server") -> dict[str, Tensor]:
    """A response body → ``{key: float32 Tensor[B]}`` with a ``"score"``; ``WireError`` names ``source`` (the
    server's URL) and what is wrong with the reply."""
    outputs = body.get("outputs") if isinstance(body, Mapping) else None
    if not isinstance(outputs, Mapping):
        raise WireError(f"{source}: response has no 'outputs' object")
    if "score" not in outputs:
        raise WireError(f"{source}: response outputs have no 'score' (keys: {', '.join(map(str, outputs)) or 'none'})")
    for key, values in outputs.items():
        if not isinstance(values, list) or not all(type(v) in (int, float) for v in values):  # bool is no score
            raise WireError(f"{source}: outputs[{key!r}] is not a list of numbers")
        if len(values) != batch:
            raise WireError(f"{source}: outputs[{key!r}] has {len(values)} values for {batch} images")
    return {key: torch.tensor(values, dtype=torch.float32) for key, values in outputs.items()}


def score_url(url: str) -> str:
    """The ``/score`` endpoint of a server given by its base address (or by the endpoint itself)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"remote reward: url must look like http://host:port, got {url!r}")
    path = parts.path.rstrip("/")
    return urllib.parse.urlunsplit(parts._replace(path=path if path.endswith("/score") else path + "/score"))


@REWARDS.register("remote")
def remote(
    url: str,
    format: str = "png",
    timeout: float = 120.0,
    retries: int = 3,
    backoff: float = 1.0,
    batch_size: int = 0,
    inputs: tuple[str, ...] | list[str] = (),
) -> RewardFn:
    """A reward served by ``flowrl serve-reward`` at ``url``.

    ``inputs``: the columns of the prompt rows to send with the images (what the served reward reads, e.g.
    ``[image]`` for an edit reward; module docstring).

    ``format``: ``"png"`` (8-bit, small) or ``"safetensors"`` (exact floats). ``timeout`` seconds per
    request; ``retries`` extra attempts with back-off ``backoff · 2^k`` s on connection errors, timeouts
    and 5xx; ``batch_size`` > 0 splits larger batches into several requests (0: one request).
    """
    endpoint = score_url(url)
    if format not in WIRE_FORMATS:
        raise ValueError(f"remote reward: format {format!r} is not one of {', '.join(WIRE_FORMATS)}")
    if timeout <= 0 or retries < 0 or backoff < 0 or batch_size < 0:
        raise ValueError(
            f"remote reward: need timeout > 0, retries >= 0, backoff >= 0, batch_size >= 0; "
            f"got {timeout}, {retries}, {backoff}, {batch_size}"
        )

    def reward(images: Tensor, prompts: list[str], **columns: list[Any]) -> dict[str, Tensor]:
        if images.shape[0] != len(prompts):
            raise ValueError(f"remote reward: {images.shape[0]} images but {len(prompts)} prompts")
        if not prompts:  # nothing to send; the server rejects empty batches
            return {"score": torch.zeros(0)}
        step = batch_size or len(prompts)
        parts: list[dict[str, Tensor]] = []
        for start in range(0, len(prompts), step):
            chunk = prompts[start : start + step]
            chunk_columns = {name: values[start : start + step] for name, values in columns.items()}
            body = encode_request(images[start : start + step], chunk, format, chunk_columns)
            answer = post_json(endpoint, body, timeout=timeout, retries=retries, backoff=backoff)
            parts.append(decode_outputs(answer, len(chunk), source=endpoint))
            if set(parts[-1]) != set(parts[0]):
                raise WireError(
                    f"{endpoint}: output keys changed between chunks: {sorted(parts[0])} vs {sorted(parts[-1])}"
                )
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    reward.inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)  # the columns RewardSet hands it
    return reward


# the same client, declared as scoring videos: a video family's config takes it (its server scores [B, F, 3, H, W])
REWARDS.register("remote-video", scores=Scores.VIDEOS)(remote)


__all__ = [
    "MAX_PIXELS",
    "WIRE_FORMATS",
    "WireError",
    "decode_outputs",
    "decode_request",
    "encode_images",
    "encode_outputs",
    "encode_request",
    "quantize_8bit",
    "remote",
    "score_url",
]
