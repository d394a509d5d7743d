"""Videos on disk: WebM (VP9) clips through PyAV, which browsers play without proprietary codecs (Debian's
Chromium has no H.264), a filmstrip of frames for static sheets, and the frames a poster shows."""

from __future__ import annotations

import numpy as np


def write_webm(frames: np.ndarray, path: str, fps: int) -> None:
    """Write ``frames`` (uint8 ``[F, H, W, 3]``) as a VP9 WebM clip at ``fps``, lossless in yuv420p (exact brightness,
    colour at half resolution: the format every browser plays); an odd side is padded by one repeated row or
    column."""
    import av

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    h, w = frames.shape[1:3]
    with av.open(path, "w", format="webm") as out:
        stream = out.add_stream("libvpx-vp9", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"lossless": "1", "deadline": "realtime", "cpu-used": "8"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def animated_gif(frames: np.ndarray, fps: int) -> bytes:
    """uint8 ``[F, H, W, 3]`` frames as the bytes of a looping GIF at ``fps`` (what TensorBoard's images tab plays)."""
    import io

    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    return buffer.getvalue()


def read_frames(path: str) -> np.ndarray:
    """The frames of a video file, uint8 ``[F, H, W, 3]`` (what tests read back)."""
    import av

    with av.open(path) as clip:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in clip.decode(video=0)])


def evenly_spaced(frames: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``frames``, the first and (when ``count`` > 1) the last included."""
    if count <= 1:
        return [0]
    return sorted({round(i * (frames - 1) / (count - 1)) for i in range(count)})


def filmstrip(frames: np.ndarray, count: int = 4, gap: int = 2) -> np.ndarray:
    """``count`` evenly spaced frames of ``[F, H, W, 3]`` side by side (white gaps): a clip's motion in one image."""
    picked = evenly_spaced(frames.shape[0], count)
    h, w = frames.shape[1:3]
    strip = np.full((h, len(picked) * (w + gap) - gap, 3), 255, dtype=np.uint8)
    for k, i in enumerate(picked):
        strip[:, k * (w + gap) : k * (w + gap) + w] = frames[i]
    return strip


__all__ = ["animated_gif", "evenly_spaced", "filmstrip", "read_frames", "write_webm"]
