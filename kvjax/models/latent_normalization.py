"""The affine map between the MoVQ's latents and the latents the UNets denoise (diffusers' `scaling_factor`
and `shift_factor`, here per channel): `normalize(z) = (z - shift) * scale` after encoding, its inverse before
decoding.

The reference has none (its MoVQ's latents fit the samplers as they are), so a weights folder without
`latents.json` maps nothing and the official weights' numerics are untouched. A MoVQ trained by kvjax needs
one: the key-frame and base-frame schedulers clamp the predicted x0 to [-1, 1] every step (the reference's
`thresholding`), and latents outside that box are clipped at every step. `calibrate` maps each channel's
range on real frames into it.

The file (`latents.json` in a weights folder) is JSON: {"shift": [C floats], "scale": [C floats], "source": ...}.
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
# Each channel's range on the calibration frames maps to [-MARGIN, MARGIN]: room for latents of frames
# the calibration did not see, inside the samplers' clamp to [-1, 1].
MARGIN = 0.9
TAIL = 1e-4  # the range is the [TAIL, 1 - TAIL] quantiles: a handful of outlying latents do not set it


@flax.struct.dataclass
class LatentNormalization:
  """Per-channel shift and scale (C,) float32 arrays; a pytree (traced, placed with the weights)."""

  shift: jax.Array
  scale: jax.Array

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


def calibrate(latents: np.ndarray, margin: float = MARGIN, tail: float = TAIL) -> LatentNormalization:
  """Latents (..., C) of real frames -> the normalization that maps each channel's [tail, 1 - tail] quantile
  range to [-margin, margin]."""
  flat = np.asarray(latents, np.float64).reshape(-1, np.shape(latents)[-1])
  if not np.all(np.isfinite(flat)):
    raise ValueError("the latents to calibrate on are not all finite")
  low, high = np.quantile(flat, tail, axis=0), np.quantile(flat, 1 - tail, axis=0)
  half_range = np.maximum((high - low) / 2, 1e-6)  # a constant channel: any scale maps it to 0
  return LatentNormalization(np.asarray((low + high) / 2, np.float32), np.asarray(margin / half_range, np.float32))


def as_json(normalization: LatentNormalization | None) -> dict | None:
  """{"shift": [...], "scale": [...]} (None for none): what the file holds, and what pre-computed inputs
  record of the latents they hold."""
  if normalization is None:
    return None
  return {name: [float(v) for v in np.asarray(getattr(normalization, name))] for name in ("shift", "scale")}


def save(normalization: LatentNormalization, path: str, source: str = "") -> None:
  """Writes the file whole or not at all (kvjax.atomic)."""
  from kvjax.atomic import staged
  with staged(path, overwrite=True, folder=False) as staging:
    with open(staging, "w") as f:
      json.dump({**as_json(normalization), "source": source}, f, indent=1)


def load(path: str, channels: int) -> LatentNormalization | None:
  """The normalization in `path`, or None where there is no such file; a malformed file raises ValueError
  naming it (sizes bounded: at most MAX_FILE_BYTES, exactly `channels` finite numbers, scales positive)."""
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
  return LatentNormalization(values["shift"], values["scale"])
