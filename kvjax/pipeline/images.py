"""Host-side image steps of the reference pipeline (spec §8.2, §8.3): PIL resize and crop, uint8 rounding."""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_uint8(images) -> np.ndarray:
  """Model output in [-1, 1] -> uint8 as the reference: (x + 1)/2 clipped to [0, 1], x 255, truncated."""
  return (np.clip((np.asarray(images, np.float32) + 1) / 2, 0, 1) * 255).astype(np.uint8)


def fit_and_crop(image: Image.Image, width: int, height: int) -> np.ndarray:
  """The reference's preparation of a first frame: (height, width, 3) floats in [-1, 1].

  Scale down by rf = max(1, min(w / width, h / height)) with PIL's default (bicubic) filter, centre-crop to
  width x height (a smaller image is not enlarged; the crop pads it with black), then RGB.
  """
  rf = max(1.0, min(image.width / width, image.height / height))
  image = image.resize((round(image.width / rf), round(image.height / rf)))
  left, top = (image.width - width) / 2, (image.height - height) / 2
  image = image.crop((left, top, left + width, top + height)).convert("RGB")
  return np.asarray(image, np.float32) / 255 * 2 - 1
