"""A seeded synthetic world of moving shapes, to train and judge small models end to end: one antialiased
shape (circle, square or triangle) of a named colour moves in a straight line (left, right, up or down) at
a constant speed over a dark background, and its caption says so ("a red circle moving right").

Units. Lengths are in reference pixels: pixels of the frame scaled so that its short side is
REFERENCE_SIDE = 128 px, the size at which kvjax.data.motion measures motion scores. A spec therefore draws
the same picture at any resolution, and `speed` (reference pixels per frame at 24 fps) is roughly the flow
that the motion score sees on the shape. Positions are the shape's centre, (y, x) from the top-left corner.

Speed classes are named by how far the shape travels over the clip (SPEED_TRAVEL, fractions of the frame's
side along the motion): slow about 0.15, medium about 0.4, fast about 0.6. The per-frame `speed` follows
from the clip length (`sample_spec(rng, num_frames)`), so that a medium or fast shape always crosses at
least a third of the frame and no shape leaves it, for clips of any length; for one clip length, speeds
(and motion scores) order slow < medium < fast. A window of a longer clip sees proportionally less motion
(a 4-frame window of a 3 s medium video: 2% of the frame); read such data with a frame stride.

Colours (COLOURS, RGB) are saturated and far apart (at least 190 apart in RGB, and at least 120 from any
background, whose channels stay in 28..80), so the pixels of a colour are found by their distance to its
RGB (`centroid_track`, within 80) after video compression, resizing and JPEG. Backgrounds: "dark"
(near-black grey), "plain" (one dark colour) and "textured" (a dark colour with a low-contrast smooth noise
and gradient).

`ShapeClips` is a training input with SyntheticClips' interface. Its motion score is analytic,
MOTION_PER_SPEED * speed, not measured: kvjax.data.motion's Farneback meter costs about 4 ms per frame pair
at 64x64 (0.4 s for a batch of 8 clips of 12 frames) and, on the short clips small models train on (4
frames crossing 0.6 of the frame: 25 px per frame), it saturates and no longer orders fast above medium.
MOTION_PER_SPEED is the mean of Farneback score / speed over rendered clips where the flow is reliable (up
to ~7 px per frame; shapes, sizes, colours and backgrounds mixed): single clips measure 0.04 to 0.17 times
their speed (more for large squares and bright colours, less for small blue triangles on texture), so the
analytic score matches what data preparation gives such a clip to within a factor of about two, and is
strictly ordered by speed. `motion_score(frames)` measures a clip as data preparation does (OpenCV, from
the `data` extra). `centroid_track` and `dominant_motion` are the judges: where a colour is, frame by
frame, and how far it went.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

REFERENCE_SIDE = 128  # reference pixels on the frame's short side (= MotionConfig.analysis_short_side)
FPS = 24.0  # speeds are per frame at this rate

SHAPES = ("circle", "square", "triangle")
# Saturated, distinct hues: pairwise RGB distances >= 190, and >= 120 from any background colour.
COLOURS = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (240, 220, 30),
    "white": (240, 240, 240),
}
# Unit (dy, dx) of each direction, image coordinates (y grows downwards).
DIRECTIONS = {"left": (0.0, -1.0), "right": (0.0, 1.0), "up": (-1.0, 0.0), "down": (1.0, 0.0)}
SPEED_CLASSES = ("slow", "medium", "fast")
# Fraction of the frame's side (along the motion) that the shape's centre travels over the clip: a range
# per class, drawn uniformly.
SPEED_TRAVEL = {"slow": (0.12, 0.18), "medium": (0.36, 0.44), "fast": (0.56, 0.64)}
# Caption words for the speed classes ("" for none): the extremes only.
SPEED_WORDS = {"slow": "slowly", "medium": "", "fast": "quickly"}
BACKGROUNDS = ("dark", "plain", "textured")
DARK_RGB = (30, 30, 34)
# Every background channel lies in BACKGROUND_MIN..BACKGROUND_MAX: dark enough for every shape colour to
# stand out, and never so dark that data preparation's black-border detection (rows or columns with a mean
# under 24, kvjax.data.transforms) would crop the frame.
BACKGROUND_MIN, BACKGROUND_MAX = 28, 80
# Size: radius (circle), half-side (square) or inradius-like half-height (triangle), reference pixels.
SIZE_RANGE = (10.0, 14.0)
# The triangle (equilateral, pointing up) has this circumradius per unit of size, so its area is close
# to the circle's and the square's.
TRIANGLE_CIRCUMRADIUS = 1.35
# Margin between the shape's extent and the frame edge at the start and the end of the motion, reference px.
EDGE_MARGIN = 2.0
# Analytic motion score per reference pixel per frame of speed (see the module docstring).
MOTION_PER_SPEED = 0.1
COLOUR_TOLERANCE = 80.0  # RGB distance within which a pixel counts as a colour (centroid_track)
# Words outside the demo's world, to teach it by fine-tuning (docs/fine_tuning.md): a size word goes before the
# colour in the caption ("a huge red circle moving right") and draws the shape at its size range (reference
# pixels). Never drawn unless asked for (sample_spec's size_word), so the world of COLOURS, SHAPES and
# DIRECTIONS, the demo's prompt grid, its tests and judges stay as they are. At "huge" (22..26) the smallest
# huge shape (a triangle of 22) covers 0.07 of the frame, the largest ordinary one (a square of 14) 0.048.
SIZE_WORDS = {"huge": (22.0, 26.0)}


class ShapeSpecError(ValueError):
  """A ShapeSpec or sampling option that names an unknown shape, colour, direction, class or background,
  or an impossible number."""


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
  shape: str  # SHAPES
  colour: str  # COLOURS
  direction: str  # DIRECTIONS
  speed_class: str  # SPEED_CLASSES
  speed: float  # reference pixels per frame at 24 fps
  size: float  # radius / half-side, reference pixels
  start: tuple[float, float]  # (y, x) of the centre at frame 0, reference pixels
  background: str = "dark"  # BACKGROUNDS
  background_rgb: tuple[int, int, int] = DARK_RGB  # the plain colour, and the texture's base
  texture_seed: int = 0  # the "textured" background's noise
  size_word: str = ""  # "" or a SIZE_WORDS word, which the caption says

  def __post_init__(self):
    for name, value, choices in (("shape", self.shape, SHAPES), ("colour", self.colour, COLOURS),
                                 ("direction", self.direction, DIRECTIONS),
                                 ("speed_class", self.speed_class, SPEED_CLASSES),
                                 ("background", self.background, BACKGROUNDS)):
      if value not in choices:
        raise ShapeSpecError(f"ShapeSpec.{name} {value!r} is not one of {', '.join(choices)}")
    if self.size_word and self.size_word not in SIZE_WORDS:
      raise ShapeSpecError(f"ShapeSpec.size_word {self.size_word!r} is not one of {', '.join(SIZE_WORDS)}")
    if not (self.speed >= 0 and math.isfinite(self.speed)) or not (self.size > 0 and math.isfinite(self.size)):
      raise ShapeSpecError(f"ShapeSpec: speed ({self.speed}) must be >= 0 and size ({self.size}) > 0")
    if len(self.start) != 2 or len(self.background_rgb) != 3:
      raise ShapeSpecError(f"ShapeSpec: start {self.start} must be (y, x), background_rgb "
                           f"{self.background_rgb} (r, g, b)")
    if max(self.background_rgb) > BACKGROUND_MAX or min(self.background_rgb) < BACKGROUND_MIN:
      raise ShapeSpecError(f"ShapeSpec.background_rgb {self.background_rgb} must lie in "
                           f"{BACKGROUND_MIN}..{BACKGROUND_MAX}")

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, fields: dict[str, Any]) -> "ShapeSpec":
    return cls(**{**fields, "start": tuple(fields["start"]), "background_rgb": tuple(fields["background_rgb"])})


def frame_extent(height: int, width: int) -> tuple[float, float]:
  """(height, width) of a height x width frame in reference pixels."""
  scale = REFERENCE_SIDE / min(height, width)
  return height * scale, width * scale


def half_extent(shape: str, size: float) -> float:
  """Half the shape's extent along either axis (the most it reaches from its centre), reference pixels."""
  return size * TRIANGLE_CIRCUMRADIUS if shape == "triangle" else size


def position(spec: ShapeSpec, frame: float) -> tuple[float, float]:
  """(y, x) of the centre at `frame` (24 fps frames since the start; fractional for other rates)."""
  dy, dx = DIRECTIONS[spec.direction]
  return spec.start[0] + dy * spec.speed * frame, spec.start[1] + dx * spec.speed * frame


def _choice(rng: np.random.Generator, name: str, value: str | None, choices) -> str:
  if value is None:
    return str(choices[int(rng.integers(len(choices)))])
  if value not in choices:
    raise ShapeSpecError(f"{name} {value!r} is not one of {', '.join(choices)}")
  return value


def sample_spec(rng: np.random.Generator, num_frames: float, *, resolution: tuple[int, int] = (128, 128),
                shape: str | None = None, colour: str | None = None, direction: str | None = None,
                speed_class: str | None = None, background: str | None = None,
                size_word: str = "") -> ShapeSpec:
  """A random spec for a clip of `num_frames` frames at 24 fps (a fraction for clips at other rates: 1 +
  seconds from the first frame to the last * 24) on frames of `resolution` (height, width; only its aspect
  matters). The shape starts on the side opposite its direction and travels SPEED_TRAVEL
  of the frame, so it stays wholly inside the frame (EDGE_MARGIN from the edges) for the whole clip.
  Attributes given are kept; the others are drawn uniformly. `size_word` (a SIZE_WORDS word) draws the size
  from its range; such a large shape travels at most as far as the frame leaves it room for."""
  if num_frames < 2:
    raise ShapeSpecError(f"sample_spec: num_frames ({num_frames}) must be at least 2 for a shape to move")
  shape = _choice(rng, "shape", shape, SHAPES)
  colour = _choice(rng, "colour", colour, tuple(COLOURS))
  direction = _choice(rng, "direction", direction, tuple(DIRECTIONS))
  speed_class = _choice(rng, "speed_class", speed_class, SPEED_CLASSES)
  background = _choice(rng, "background", background, BACKGROUNDS)
  if size_word:
    _choice(rng, "size_word", size_word, tuple(SIZE_WORDS))
  size = float(rng.uniform(*SIZE_WORDS.get(size_word, SIZE_RANGE)))
  reach = half_extent(shape, size) + EDGE_MARGIN
  extent = frame_extent(*resolution)
  dy, dx = DIRECTIONS[direction]
  axis = 0 if dy else 1  # the coordinate that moves
  side = extent[axis]
  travel = float(rng.uniform(*SPEED_TRAVEL[speed_class])) * side
  room = side - 2 * reach  # where the centre may be along the motion
  if size_word and room > 0:
    travel = min(travel, room)
  if travel > room:
    raise ShapeSpecError(f"sample_spec: frames {resolution} leave no room for a {speed_class} {shape}")
  forward = dy + dx  # +1 (right, down) or -1 (left, up)
  lowest = reach + float(rng.uniform(0, 0.25)) * (room - travel)  # near the side opposite the direction
  along = lowest if forward > 0 else side - lowest
  across_side = extent[1 - axis]
  across = float(rng.uniform(reach, across_side - reach))
  start = (along, across) if axis == 0 else (across, along)
  rgb, texture_seed = DARK_RGB, int(rng.integers(2**31))
  if background != "dark":
    base = rng.integers(BACKGROUND_MIN + 4, 56)  # dark, low saturation: never close to a shape colour
    rgb = tuple(int(np.clip(base + rng.integers(-8, 9), BACKGROUND_MIN, 60)) for _ in range(3))
  return ShapeSpec(shape=shape, colour=colour, direction=direction, speed_class=speed_class,
                   speed=travel / (num_frames - 1), size=size, start=start, background=background,
                   background_rgb=rgb, texture_seed=texture_seed, size_word=size_word)


def caption(spec: ShapeSpec, speed_words: bool = True) -> str:
  """"a <colour> <shape> moving <direction>", then " slowly" or " quickly" for the slow and fast classes
  (with speed_words). Every caption starts with the speed-free form: "a red circle moving right quickly".
  A spec with a size word says it before the colour: "a huge red circle moving right"."""
  text = f"a {spec.size_word + ' ' if spec.size_word else ''}{spec.colour} {spec.shape} moving {spec.direction}"
  word = SPEED_WORDS[spec.speed_class] if speed_words else ""
  return f"{text} {word}" if word else text


def parse_caption(text: str) -> dict[str, str]:
  """caption()'s inverse: {"colour", "shape", "direction", "speed_class"} of a caption in its grammar."""
  words = text.strip().split()
  speeds = {word: name for name, word in SPEED_WORDS.items() if word}
  if (len(words) not in (5, 6) or words[0] != "a" or words[1] not in COLOURS or words[2] not in SHAPES
      or words[3] != "moving" or words[4] not in DIRECTIONS or (len(words) == 6 and words[5] not in speeds)):
    raise ShapeSpecError(f"caption {text!r} is not 'a <colour> <shape> moving <direction>[ slowly|quickly]'")
  return {"colour": words[1], "shape": words[2], "direction": words[4],
          "speed_class": speeds[words[5]] if len(words) == 6 else "medium"}


def render_background(spec: ShapeSpec, height: int, width: int) -> np.ndarray:
  """float32 (H, W, 3) in 0..255: the plain colour, or for "textured" the colour with a smooth noise
  (+-12) and a gradient (up to +16), clipped to BACKGROUND_MIN..BACKGROUND_MAX."""
  base = np.broadcast_to(np.asarray(spec.background_rgb, np.float32), (height, width, 3))
  if spec.background != "textured":
    return base.copy()
  rng = np.random.default_rng(spec.texture_seed)
  cells = rng.uniform(-12, 12, (7, 7, 3)).astype(np.float32)
  y = np.linspace(0, 6, height, dtype=np.float32)
  x = np.linspace(0, 6, width, dtype=np.float32)
  y0, x0 = np.minimum(y.astype(int), 5), np.minimum(x.astype(int), 5)
  fy, fx = (y - y0)[:, None, None], (x - x0)[None, :, None]
  noise = ((1 - fy) * (1 - fx) * cells[y0][:, x0] + (1 - fy) * fx * cells[y0][:, x0 + 1]
           + fy * (1 - fx) * cells[y0 + 1][:, x0] + fy * fx * cells[y0 + 1][:, x0 + 1])
  angle = rng.uniform(0, 2 * np.pi)
  ramp = (np.cos(angle) * y[:, None] + np.sin(angle) * x[None, :]) / 6
  gradient = 16 * (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
  return np.clip(base + noise + gradient[..., None], BACKGROUND_MIN, BACKGROUND_MAX).astype(np.float32)


def _signed_distance(shape: str, size: float, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
  """Distance (frame pixels) outside the shape's edge, negative inside, of offsets (dy, dx) from its centre."""
  if shape == "circle":
    return np.hypot(dy, dx) - size
  if shape == "square":
    return np.maximum(np.abs(dy), np.abs(dx)) - size
  radius = size * TRIANGLE_CIRCUMRADIUS  # equilateral, pointing up, centred on its centroid
  half = radius / 2  # the inradius
  # Outward normals (y, x) of the base and the two slanted edges.
  slant = -0.5 * dy + (math.sqrt(3) / 2) * np.abs(dx) - half  # the two slanted edges, by symmetry
  return np.maximum(dy - half, slant)


def coverage(spec: ShapeSpec, frame: float, height: int, width: int) -> np.ndarray:
  """float32 (H, W): how much of each pixel the shape covers at `frame` (24 fps frames), antialiased by
  the signed distance from each pixel centre (a one-pixel ramp across the edge; sub-pixel positions)."""
  scale = min(height, width) / REFERENCE_SIDE
  cy, cx = (c * scale for c in position(spec, frame))
  dy = (np.arange(height, dtype=np.float32) + 0.5 - cy)[:, None]
  dx = (np.arange(width, dtype=np.float32) + 0.5 - cx)[None, :]
  distance = _signed_distance(spec.shape, spec.size * scale, dy, dx)
  return np.clip(0.5 - distance, 0, 1).astype(np.float32)


def render_clip(spec: ShapeSpec, num_frames: int, height: int, width: int, fps: float = FPS) -> np.ndarray:
  """uint8 (T, H, W, 3): `num_frames` frames at `fps` (the motion is the same in seconds at any rate)."""
  if num_frames < 1 or height < 1 or width < 1 or fps <= 0:
    raise ShapeSpecError(f"render_clip: num_frames ({num_frames}), height ({height}), width ({width}) and "
                         f"fps ({fps}) must be positive")
  background = render_background(spec, height, width)
  colour = np.asarray(COLOURS[spec.colour], np.float32)
  frames = np.empty((num_frames, height, width, 3), np.uint8)
  for t in range(num_frames):
    alpha = coverage(spec, t * FPS / fps, height, width)[..., None]
    frames[t] = np.rint(background + alpha * (colour - background))
  return frames


def colour_mask(frames: np.ndarray, colour: str, tolerance: float = COLOUR_TOLERANCE) -> np.ndarray:
  """bool (..., H, W): pixels within `tolerance` (RGB distance) of the colour's RGB."""
  if colour not in COLOURS:
    raise ShapeSpecError(f"colour {colour!r} is not one of {', '.join(COLOURS)}")
  difference = np.asarray(frames, np.float32) - np.asarray(COLOURS[colour], np.float32)
  return np.einsum("...c,...c->...", difference, difference) <= tolerance ** 2


def centroid_track(frames: np.ndarray, colour: str, tolerance: float = COLOUR_TOLERANCE,
                   min_pixels: int = 1) -> np.ndarray:
  """float64 (T, 2): per frame the centroid (y, x), in pixels of `frames` (pixel centres at +0.5), of the
  pixels within `tolerance` of the colour; NaN where fewer than `min_pixels` match."""
  mask = colour_mask(frames, colour, tolerance)
  height, width = mask.shape[1:]
  counts = mask.sum(axis=(1, 2)).astype(np.float64)
  ys = (mask.sum(axis=2) * (np.arange(height) + 0.5)).sum(axis=1)
  xs = (mask.sum(axis=1) * (np.arange(width) + 0.5)).sum(axis=1)
  with np.errstate(invalid="ignore", divide="ignore"):
    track = np.stack([ys / counts, xs / counts], axis=1)
  track[counts < max(min_pixels, 1)] = np.nan
  return track


def dominant_motion(track: np.ndarray) -> tuple[float, float]:
  """(dx, dy): the net displacement (pixels, x right, y down) between the first and last frames with a
  centroid, from a least-squares line through every frame that has one (exact for straight constant
  motion, steadier than two end points for a model's frames). NaN with fewer than two such frames."""
  track = np.asarray(track, np.float64)
  times = np.flatnonzero(~np.isnan(track).any(axis=1))
  if len(times) < 2:
    return float("nan"), float("nan")
  slopes = np.polyfit(times.astype(np.float64), track[times], 1)[0]  # (2,): dy/dt, dx/dt
  span = times[-1] - times[0]
  return float(slopes[1] * span), float(slopes[0] * span)


def expected_motion_score(spec: ShapeSpec) -> float:
  """The analytic motion score of a spec's clip: MOTION_PER_SPEED * speed (see the module docstring)."""
  return MOTION_PER_SPEED * spec.speed


def motion_score(frames: np.ndarray) -> float:
  """kvjax.data.motion's Farneback score of a clip (uint8 (T, H, W, 3)), as data preparation measures it."""
  from kvjax.data import motion
  config = motion.MotionConfig()
  meter = motion.MotionMeter(motion.FarnebackFlow(), config.analysis_short_side)
  for frame in frames:
    meter.update(frame)
  return meter.score


class ShapeClips:
  """Batches of moving-shape clips: {"frames": uint8 (B, T, H, W, 3), "caption": str (B,), "motion_score":
  float32 (B,) (expected_motion_score: analytic, see the module docstring)}, with SyntheticClips' interface.

  Example i of global batch n (batch_size * shard_count clips) comes from (seed, n, i) alone; shard k
  takes the rows `rows` (default the block [k * batch_size, (k + 1) * batch_size)), as hosts' rows make up
  a global batch.
  So the global batch does not depend on how many shards read it. With num_frames=1 (still images) each
  example is the first frame of a 2-frame clip's spec, with motion score 0."""

  def __init__(self, batch_size: int, num_frames: int, resolution: tuple[int, int], seed: int,
               shard_index: int = 0, shard_count: int = 1, speed_words: bool = True, rows=None,
               start_batch: int = 0):
    if batch_size < 1 or num_frames < 1 or not 0 <= shard_index < shard_count:
      raise ShapeSpecError(f"ShapeClips: batch_size ({batch_size}) and num_frames ({num_frames}) must be >= 1 "
                           f"and shard_index ({shard_index}) in 0..shard_count-1 ({shard_count})")
    self.batch_size, self.num_frames, self.resolution = batch_size, num_frames, tuple(resolution)
    self.seed, self.shard_index, self.shard_count, self.position = seed, shard_index, shard_count, start_batch
    self.speed_words = speed_words
    # This host's rows of each global batch (`kvjax.sharding.host_batch_rows`); default: block shard_index.
    self.rows = tuple(range(shard_index * batch_size, (shard_index + 1) * batch_size) if rows is None else rows)
    if len(self.rows) != batch_size:
      raise ShapeSpecError(f"ShapeClips: {len(self.rows)} rows for a batch of {batch_size}")

  def spec(self, batch: int, index: int) -> ShapeSpec:
    """The spec of example `index` of global batch `batch`."""
    rng = np.random.default_rng([self.seed, batch, index])
    return sample_spec(rng, max(self.num_frames, 2), resolution=self.resolution)

  def example(self, batch: int, index: int) -> dict[str, Any]:
    spec = self.spec(batch, index)
    frames = render_clip(spec, self.num_frames, *self.resolution)
    score = expected_motion_score(spec) if self.num_frames > 1 else 0.0
    return {"frames": frames, "caption": caption(spec, self.speed_words), "motion_score": score}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, Any]:
    examples = [self.example(self.position, i) for i in self.rows]
    self.position += 1
    return {"frames": np.stack([e["frames"] for e in examples]),
            "caption": np.array([e["caption"] for e in examples]),
            "motion_score": np.array([e["motion_score"] for e in examples], np.float32)}
