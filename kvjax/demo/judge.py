"""Judges of the demo's videos: does the named colour's shape move the named way, how far, how evenly.

Used by the demo's tests and by `bench/demo_quality.py` (which prints the pass rates); every measure reads
the pixels of the named colour (kvjax.data.shapes.centroid_track), nothing of the model.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np

from kvjax.data import shapes

# A video passes when the shape's centroid goes the named way by at least this fraction of the frame.
MIN_TRAVEL = 0.25
MIN_PIXELS = 4  # a frame "has" the shape when at least this many pixels are of its colour
# A video shows a "huge" shape (kvjax.data.shapes.SIZE_WORDS, the fine-tuning walkthrough's new word) when its
# colour covers at least this share of the frame in the median frame: drawn, the smallest huge shape covers
# 0.070 of it and the largest ordinary one 0.048.
HUGE_AREA = 0.06


def prompt_grid(shape_cycle=shapes.SHAPES) -> list[tuple[str, str, str]]:
  """(colour, shape, direction) for every colour and direction, the shapes taken in turn."""
  pairs = list(itertools.product(shapes.COLOURS, shapes.DIRECTIONS))
  return [(colour, shape_cycle[i % len(shape_cycle)], direction) for i, (colour, direction) in enumerate(pairs)]


def prompt(colour: str, shape: str, direction: str) -> str:
  return f"a {colour} {shape} moving {direction}"


@dataclasses.dataclass(frozen=True)
class Verdict:
  colour: str
  direction: str
  found: bool  # the colour shows in at least two frames
  along: float  # displacement along the named direction, fraction of the frame's side (NaN if not found)
  across: float  # displacement across it, fraction of the side

  @property
  def passed(self) -> bool:
    return self.found and self.along >= MIN_TRAVEL and abs(self.across) < self.along


def judge_motion(frames: np.ndarray, colour: str, direction: str) -> Verdict:
  """frames uint8 (T, H, W, 3): how far the colour's centroid went along `direction`."""
  track = shapes.centroid_track(frames, colour, min_pixels=MIN_PIXELS)
  dx, dy = shapes.dominant_motion(track)
  if np.isnan(dx):
    return Verdict(colour, direction, False, float("nan"), float("nan"))
  uy, ux = shapes.DIRECTIONS[direction]
  height, width = frames.shape[1:3]
  side = width if ux else height
  along = (dx * ux + dy * uy) / side
  across = (dx * uy - dy * ux) / (height if ux else width)
  return Verdict(colour, direction, True, float(along), float(across))


def colour_area(frames: np.ndarray, colour: str) -> float:
  """The median over frames of the share of the frame's pixels within the colour's tolerance (0 in frames
  without it): how large the named shape is drawn."""
  mask = shapes.colour_mask(frames, colour)
  return float(np.median(mask.mean(axis=(-2, -1))))


def step_evenness(frames: np.ndarray, colour: str) -> float:
  """How unevenly the centroid steps from frame to frame: the largest step over the median step (1 for
  perfectly even motion; large for jumps). NaN when the colour is missing from some frame."""
  track = shapes.centroid_track(frames, colour, min_pixels=MIN_PIXELS)
  if np.isnan(track).any():
    return float("nan")
  steps = np.linalg.norm(np.diff(track, axis=0), axis=1)
  median = float(np.median(steps))
  return float(steps.max() / median) if median > 0 else float("inf")


def first_frame_match(frame: np.ndarray, image: np.ndarray, colour: str) -> float:
  """IoU of the colour's pixels in a generated first frame and in the given picture (same size)."""
  a, b = shapes.colour_mask(frame, colour), shapes.colour_mask(image, colour)
  union = np.logical_or(a, b).sum()
  return float(np.logical_and(a, b).sum() / union) if union else 0.0


# Against an exact result: how far a faster setting's video (feature caching, a faster sampler) is from the
# reference setting's at the same seed and prompt. Written here (a few lines of numpy and scipy) rather than
# taking scikit-image for two functions.

def psnr(video: np.ndarray, reference: np.ndarray) -> float:
  """Peak signal-to-noise ratio in dB of uint8 `video` against `reference` (same shape), over every pixel;
  inf when they are equal."""
  mse = np.mean(np.square(video.astype(np.float64) - reference.astype(np.float64)))
  return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def ssim(video: np.ndarray, reference: np.ndarray, window: int = 7) -> float:
  """Mean structural similarity of uint8 frames (..., H, W, 3) against `reference`: Wang et al. 2004 with a
  uniform `window` x `window` window per frame and channel (scikit-image's default form), constants for
  255-level data."""
  from scipy.ndimage import uniform_filter
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  x, y = (a.astype(np.float64).reshape(-1, *a.shape[-3:]) for a in (video, reference))
  size = (1, window, window, 1)  # per frame and channel
  mean = lambda a: uniform_filter(a, size, mode="reflect")
  mx, my = mean(x), mean(y)
  unbiased = window ** 2 / (window ** 2 - 1)  # sample (co)variances over the window, as scikit-image
  vx, vy, cov = (unbiased * (mean(a * b) - ma * mb) for a, b, ma, mb in ((x, x, mx, mx), (y, y, my, my), (x, y, mx, my)))
  ratio = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  pad = window // 2  # the border, where the window leaves the frame, is left out as scikit-image does
  return float(ratio[:, pad:-pad, pad:-pad].mean())
