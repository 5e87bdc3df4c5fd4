"""Writes frames as .mp4, .gif or a folder of PNGs, atomically (a failure leaves no partial output)."""

from __future__ import annotations

import contextlib
import os
import re
from typing import Sequence

import numpy as np
from PIL import Image

from kvjax.atomic import OutputError, check_writable, staged
# The reference README shows every video over 5.5 s, whatever its frame count (a longer video of several
# windows keeps that frame rate: GenerationOptions.seconds).
from kvjax.pipeline.pipeline_config import WINDOW_SECONDS as CLIP_SECONDS


_FRAME = re.compile(r"^\d{4}\.png$")


def output_kind(path: str) -> str | None:
  """"mp4", "gif", "png" (a folder of frames: no suffix, or a trailing slash), or None."""
  lower = path.lower()
  return "mp4" if lower.endswith(".mp4") else "gif" if lower.endswith(".gif") else "png" if (
      path.endswith("/") or not os.path.splitext(path)[1]) else None


def check_output_path(path: str, overwrite: bool) -> str:
  """The kind of output ("mp4", "gif", "png"), or an error naming the problem, before any work: a bad suffix,
  a taken path (without `overwrite`), a folder an output would wrongly replace, a parent that is missing, a
  file or not writable."""
  if not path.strip():
    raise ValueError("--out is empty: give a .mp4 or .gif file, or a folder for PNG frames")
  kind = output_kind(path)
  if kind is None:
    raise ValueError(f"--out {path!r}: use a .mp4 or .gif file, or a folder (no suffix) for PNG frames")
  target = os.path.abspath(path.rstrip("/") or "/")
  if os.path.exists(target) and not overwrite:
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
  if target == os.path.dirname(target):
    raise ValueError(f"--out {path!r} is the root folder; give a new folder for PNG frames")
  cwd = os.getcwd()
  if cwd == target or cwd.startswith(target + os.sep):
    raise ValueError(f"--out {path!r} is the current folder or one above it; give a new folder for PNG frames")
  if os.path.isdir(target) and not os.path.islink(target):
    if kind != "png":
      raise ValueError(f"--out {path}: a folder of that name exists; it is not replaced by a .{kind} file "
                       "(remove it or choose another name)")
    try:
      others = sorted(name for name in os.listdir(target) if not _FRAME.match(name))
    except OSError as e:
      raise OutputError(f"--out {path}: cannot read the folder ({e.strerror or e})") from None
    if others:
      raise ValueError(f"--out {path}: the folder holds other files than PNG frames ({', '.join(others[:3])}"
                       f"{', ...' if len(others) > 3 else ''}); it is not replaced: choose another --out")
  parent = os.path.dirname(target)
  try:
    check_writable(parent)
  except OutputError as e:
    raise OutputError(f"--out {path!r}: {e}") from None
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"--out {path!r}: the folder {parent} does not exist")
  return kind


def write_frames(frames: np.ndarray, path: str, overwrite: bool = False, seconds: float = CLIP_SECONDS) -> str:
  """frames: uint8 (T, H, W, 3), shown over `seconds` (.gif and .mp4)."""
  with contextlib.ExitStack() as stack:
    return _write(stack, frames, path, overwrite, seconds)


def write_videos(videos: Sequence[np.ndarray], paths: Sequence[str], overwrite: bool = False,
                 seconds: float = CLIP_SECONDS) -> list[str]:
  """Writes every video (uint8 (T, H, W, 3)) to its path, all or none: each is staged, and they are moved
  into place only once all are written."""
  with contextlib.ExitStack() as stack:
    return [_write(stack, frames, path, overwrite, seconds) for frames, path in zip(videos, paths)]


def _write(stack: contextlib.ExitStack, frames: np.ndarray, path: str, overwrite: bool, seconds: float) -> str:
  """Writes the staging of `path`; it is moved into place when `stack` closes without an error."""
  kind = check_output_path(path, overwrite)
  staging = stack.enter_context(staged(path.rstrip("/"), overwrite=overwrite, folder=kind == "png"))
  if kind == "png":
    for i, frame in enumerate(frames):
      Image.fromarray(frame).save(os.path.join(staging, f"{i:04d}.png"))
  elif kind == "gif":
    images = (Image.fromarray(frame) for frame in frames)  # made as PIL writes them
    next(images).save(staging, format="GIF", save_all=True, append_images=images, loop=0,
                      duration=int(seconds * 1000 / len(frames)))
  else:
    import imageio_ffmpeg
    import warnings
    warnings.filterwarnings("ignore", message="os.fork", category=RuntimeWarning)  # ffmpeg runs as a child
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(staging, (width, height), fps=len(frames) / seconds,
                                         codec="libx264", pix_fmt_out="yuv420p", quality=8,
                                         macro_block_size=1, output_params=["-f", "mp4"])
    writer.send(None)
    for frame in frames:
      writer.send(np.ascontiguousarray(frame))
    writer.close()
  return path.rstrip("/")
