"""The affine map between the MoVQ's latents and the latents the UNets denoise (diffusers' `scaling_factor`
and `shift_factor`, here per channel): `normalize(z) = (z - shift) * scale` after encoding, its inverse before
decoding.

The reference has none (its MoVQ's latents fit the samplers as they are), so a weights folder without
`latents.json` maps nothing and the official weights' numerics are untouched. A MoVQ trained by kvjax needs
one, for two reasons:
- The diffusion's signal-to-noise ratio at each timestep is the latents' variance over the noise's. Latents of
  a small spread (a shapes-world MoVQ's have per-channel std 0.14-0.29 around offsets up to 0.5) are drowned
  early: the loss then rewards little beyond the last steps' denoising, and nothing for carrying the first
  frame or the prompt's motion into the layout the early steps decide. `calibrate` makes each channel zero
  mean and unit variance, as Stable Diffusion's scaling factor does.
- The reference's samplers clamp the predicted x0 to [-1, 1] every step (its `thresholding`). Unit-variance
  latents reach past that, so a normalization also carries `sample_range`, the box its latents occupy, and
  the samplers clamp to that box instead (`kvjax.pipeline.programs.StagePrograms.sampler`).

The file (`latents.json` in a weights folder) is JSON:
{"shift": [C floats], "scale": [C floats], "sample_range": float, "source": ...}.
"""

from __future__ import annotations

import json
import math
import os

import flax.struct
import jax
import numpy as np

LATENTS_FILE = "latents.json"
MAX_FILE_BYTES = 1 << 16  # a few dozen numbers: anything larger is not this file
# The box the samplers clamp to is the calibration frames' range divided by MARGIN: room for latents of
# frames the calibration did not see.
MARGIN = 0.9
TAIL = 1e-4  # the range is the [TAIL, 1 - TAIL] quantiles: a handful of outlying latents do not set it
MAX_SAMPLE_RANGE = 1e4  # a clamp wider than this clamps nothing: a file asking for it is not a calibration
MAX_STD = 100.0


def check_std(std: float) -> None:
  """Refuses a target standard deviation no calibration should ask for (ValueError)."""
  if not 0 < std <= MAX_STD:
    raise ValueError(f"the normalized latents' std {std} must be in (0, {MAX_STD:g}]")


@flax.struct.dataclass
class LatentNormalization:
  """Per-channel shift and scale (C,) float32 arrays (traced, placed with the weights), and the box
  [-sample_range, sample_range] the normalized latents occupy (static: the samplers' clamp)."""

  shift: jax.Array
  scale: jax.Array
  sample_range: float = flax.struct.field(pytree_node=False, default=1.0)

  def normalize(self, latents):
    return (latents - self.shift) * self.scale

  def denormalize(self, latents):
    return latents / self.scale + self.shift


def normalize(normalization: LatentNormalization | None, latents):
  """MoVQ latents -> the UNets' (unchanged without a normalization: the reference)."""
  return latents if normalization is None else normalization.normalize(latents)


def denormalize(normalization: LatentNormalization | None, latents):
  """The UNets' latents -> the MoVQ's (unchanged without a normalization)."""
  return latents if normalization is None else normalization.denormalize(latents)


def calibrate(latents: np.ndarray, std: float = 1.0, margin: float = MARGIN, tail: float = TAIL) -> LatentNormalization:
  """Latents (..., C) of real frames -> the normalization that gives each channel zero mean and standard
  deviation `std`, with the sample range the largest |[tail, 1 - tail] quantile| of any channel / margin."""
  flat = np.asarray(latents, np.float64).reshape(-1, np.shape(latents)[-1])
  if not np.all(np.isfinite(flat)):
    raise ValueError("the latents to calibrate on are not all finite")
  check_std(std)
  mean = flat.mean(0)
  scale = std / np.maximum(flat.std(0), 1e-6)  # a constant channel: any scale maps it to 0
  normalized = (flat - mean) * scale
  extent = np.abs(np.quantile(normalized, [tail, 1 - tail], axis=0)).max()
  return LatentNormalization(np.asarray(mean, np.float32), np.asarray(scale, np.float32),
                             float(np.float32(max(extent / margin, 1e-3))))


def as_json(normalization: LatentNormalization | None) -> dict | None:
  """{"shift": [...], "scale": [...], "sample_range": r} (None for none): what the file holds, and what
  pre-computed inputs record of the latents they hold."""
  if normalization is None:
    return None
  return {**{name: [float(v) for v in np.asarray(getattr(normalization, name))] for name in ("shift", "scale")},
          "sample_range": float(normalization.sample_range)}


def save(normalization: LatentNormalization, path: str, source: str = "") -> None:
  """Writes the file whole or not at all (kvjax.atomic)."""
  from kvjax.atomic import staged
  with staged(path, overwrite=True, folder=False) as staging:
    with open(staging, "w") as f:
      json.dump({**as_json(normalization), "source": source}, f, indent=1)


def load(path: str, channels: int) -> LatentNormalization | None:
  """The normalization in `path`, or None where there is no such file; a malformed file raises ValueError
  naming it (sizes bounded: at most MAX_FILE_BYTES, exactly `channels` finite numbers, scales positive, a
  sample range in (0, MAX_SAMPLE_RANGE])."""
  if not os.path.lexists(path):
    return None
  if not os.path.isfile(path):
    raise ValueError(f"{path}: not a regular file")
  if os.path.getsize(path) > MAX_FILE_BYTES:
    raise ValueError(f"{path}: {os.path.getsize(path)} bytes, more than a latent normalization's {MAX_FILE_BYTES}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f"{path}: not a latent normalization file ({e})") from e
  if not isinstance(data, dict):
    raise ValueError(f"{path}: expected an object with 'shift' and 'scale'")
  values = {}
  for name in ("shift", "scale"):
    value = data.get(name)
    if (not isinstance(value, list) or len(value) != channels
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
      raise ValueError(f"{path}: '{name}' must be a list of {channels} finite numbers (one per latent channel)")
    with np.errstate(over="ignore"):  # overflow is refused just below
      values[name] = np.asarray(value, np.float32)
    if not np.all(np.isfinite(values[name])):
      raise ValueError(f"{path}: '{name}' overflows float32: {value}")
  if not np.all(values["scale"] > 0):
    raise ValueError(f"{path}: every 'scale' must be positive, got {data['scale']}")
  sample_range = data.get("sample_range")
  if (not isinstance(sample_range, (int, float)) or isinstance(sample_range, bool)
      or not 0 < sample_range <= MAX_SAMPLE_RANGE):
    raise ValueError(f"{path}: 'sample_range' must be a number in (0, {MAX_SAMPLE_RANGE:g}] (the box the "
                     f"samplers clamp to), got {sample_range!r}")
  return LatentNormalization(values["shift"], values["scale"], float(np.float32(sample_range)))
