"""Geometry and timing of the output clips: black-border (letterbox/pillarbox) detection, the resize that
caps the short side, and the ffmpeg filter chain that applies crop, frame-rate conversion and resize."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TransformConfig:
  target_short_side: int = 1080  # larger frames are scaled down to this; smaller ones are kept
  target_fps: float = 24.0
  # A row/column is border when its mean brightness stays under this in every frame (ffmpeg cropdetect's
  # default limit, 24 of 255): compression noise in a black bar stays well below it.
  border_threshold: float = 24.0
  # Never crop away more than this fraction of a side: a dark scene is not a border.
  max_border_fraction: float = 0.4
  jpeg_quality: int = 95


@dataclasses.dataclass(frozen=True)
class CropBox:
  x: int
  y: int
  width: int
  height: int

  def is_full(self, width: int, height: int) -> bool:
    return (self.x, self.y, self.width, self.height) == (0, 0, width, height)


class BorderProfile:
  """Brightest mean of each row and each column over the frames seen, kept per block of frames so that a
  clip's borders come from that clip's frames alone (to within one block) without storing every frame."""

  def __init__(self, block_frames: int = 8):
    self.block_frames = block_frames
    self.rows: list[np.ndarray] = []  # per block: uint8 (H,)
    self.columns: list[np.ndarray] = []  # per block: uint8 (W,)
    self.num_frames = 0

  def update(self, frame: np.ndarray) -> None:
    luma = frame.mean(axis=2, dtype=np.float32)
    row = np.minimum(luma.mean(axis=1), 255).astype(np.uint8)
    column = np.minimum(luma.mean(axis=0), 255).astype(np.uint8)
    if self.num_frames % self.block_frames == 0:
      self.rows.append(row)
      self.columns.append(column)
    else:
      np.maximum(self.rows[-1], row, out=self.rows[-1])
      np.maximum(self.columns[-1], column, out=self.columns[-1])
    self.num_frames += 1

  def span(self, start_frame: int, end_frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column maxima over the blocks touching frames [start_frame, end_frame)."""
    first = start_frame // self.block_frames
    last = max(first + 1, -(-end_frame // self.block_frames))
    return np.max(self.rows[first:last], axis=0), np.max(self.columns[first:last], axis=0)


def _content_range(profile: np.ndarray, threshold: float, max_fraction: float) -> tuple[int, int]:
  bright = np.flatnonzero(profile >= threshold)
  size = len(profile)
  if len(bright) == 0:
    return 0, size  # an all-dark span: nothing to tell a border from
  start, end = int(bright[0]), int(bright[-1]) + 1
  if (size - (end - start)) > max_fraction * size:
    return 0, size
  # Even offsets and sizes keep chroma-subsampled re-encodes exact.
  start += start % 2
  end -= (end - start) % 2
  return start, end


def detect_borders(rows: np.ndarray, columns: np.ndarray, config: TransformConfig) -> CropBox:
  """The box inside the black bars, from BorderProfile maxima (rows: (H,), columns: (W,))."""
  top, bottom = _content_range(rows, config.border_threshold, config.max_border_fraction)
  left, right = _content_range(columns, config.border_threshold, config.max_border_fraction)
  return CropBox(x=left, y=top, width=right - left, height=bottom - top)


def resized_size(width: int, height: int, target_short_side: int) -> tuple[int, int]:
  """(width, height) with the short side scaled down to target_short_side (never up), both even."""
  short = min(width, height)
  if short <= target_short_side:
    return width - width % 2, height - height % 2
  scale = target_short_side / short
  even = lambda n: max(2, int(round(n * scale / 2)) * 2)
  return even(width), even(height)


def ffmpeg_filter(crop: CropBox, size: tuple[int, int], fps: float) -> str:
  """-vf chain: crop, then resample to `fps` (drop/duplicate frames), then resize (area filter: no
  aliasing when shrinking)."""
  return (f"crop={crop.width}:{crop.height}:{crop.x}:{crop.y},fps={fps:g},"
          f"scale={size[0]}:{size[1]}:flags=area")
