"""Small synthetic videos with known properties (size, rate, length, borders, cuts, motion) for the data
preparation tests, written with the ffmpeg binary that imageio-ffmpeg ships."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def texture(height: int, width: int, seed: int, cells: int = 8) -> np.ndarray:
  """A smooth random colour field (bilinear-upsampled noise): rich enough for optical flow and cuts."""
  rng = np.random.default_rng(seed)
  small = rng.integers(40, 255, (cells, cells, 3), dtype=np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def moving_frames(height: int, width: int, num_frames: int, *, seed: int = 0,
                  pixels_per_frame: float = 0.0) -> np.ndarray:
  """A texture panned horizontally by `pixels_per_frame` (0: a still picture)."""
  big = texture(height, width * 3, seed, cells=12)
  frames = []
  for t in range(num_frames):
    x = int(round(t * pixels_per_frame)) % (width * 2)
    frames.append(big[:, x:x + width])
  return np.stack(frames)


def with_borders(frames: np.ndarray, *, top: int = 0, bottom: int = 0, left: int = 0,
                 right: int = 0) -> np.ndarray:
  """Frames padded with black bars (letterbox: top/bottom, pillarbox: left/right)."""
  return np.pad(frames, ((0, 0), (top, bottom), (left, right), (0, 0)))


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float,
                metadata_title: str | None = None) -> str:
  import imageio_ffmpeg
  path = os.fspath(path)
  height, width = frames.shape[1:3]
  output_params = ["-metadata", f"title={metadata_title}"] if metadata_title else None
  writer = imageio_ffmpeg.write_frames(path, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                       quality=8, macro_block_size=1, output_params=output_params)
  writer.send(None)
  for frame in frames:
    writer.send(np.ascontiguousarray(frame))
  writer.close()
  return path
