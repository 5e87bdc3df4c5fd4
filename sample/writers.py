"""Writes frames as .mp4, .gif or a folder of PNGs, atomically (a failure leaves no partial output)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from kvjax.atomic import staged

# The reference README shows every video over 5.5 s, whatever its frame count.
CLIP_SECONDS = 5.5


def check_output_path(path: str, overwrite: bool) -> str:
  """The kind of output ("mp4", "gif", "png"), or a ValueError naming the problem, before any work."""
  kind = "mp4" if path.endswith(".mp4") else "gif" if path.endswith(".gif") else "png" if (
      path.endswith("/") or not os.path.splitext(path)[1]) else None
  if kind is None:
    raise ValueError(f"--out {path!r}: use a .mp4 or .gif file, or a folder (no suffix) for PNG frames")
  if os.path.exists(path.rstrip("/")) and not overwrite:
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
  parent = os.path.dirname(os.path.abspath(path.rstrip("/")))
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"--out {path!r}: the folder {parent} does not exist")
  return kind


def write_frames(frames: np.ndarray, path: str, overwrite: bool = False) -> str:
  """frames: uint8 (T, H, W, 3)."""
  kind = check_output_path(path, overwrite)
  with staged(path.rstrip("/"), overwrite=overwrite, folder=kind == "png") as staging:
    if kind == "png":
      for i, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(staging, f"{i:04d}.png"))
    elif kind == "gif":
      images = [Image.fromarray(frame) for frame in frames]
      images[0].save(staging, format="GIF", save_all=True, append_images=images[1:], loop=0,
                     duration=int(CLIP_SECONDS * 1000 / len(frames)))
    else:
      import imageio_ffmpeg
      import warnings
      warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)  # ffmpeg runs as a child
      height, width = frames.shape[1:3]
      writer = imageio_ffmpeg.write_frames(staging, (width, height), fps=len(frames) / CLIP_SECONDS,
                                           codec="libx264", pix_fmt_out="yuv420p", quality=8,
                                           macro_block_size=1, output_params=["-f", "mp4"])
      writer.send(None)
      for frame in frames:
        writer.send(np.ascontiguousarray(frame))
      writer.close()
  return path.rstrip("/")
