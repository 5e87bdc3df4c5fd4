"""Host-side image steps of the reference pipeline (spec §8.2, §8.3): PIL resize and crop, uint8 rounding;
and the reading of a user's first-frame image (any PIL mode and bit depth, bounded size)."""

from __future__ import annotations

import os
import re
import stat
import warnings

import numpy as np
from PIL import Image

# Larger pictures are refused before they are decoded (the header gives the size): 64 megapixels is 256 MB
# as RGBA, and a first frame is scaled down to the video size (at most 4 megapixels) anyway.
MAX_IMAGE_PIXELS = 64 * 2 ** 20


def to_uint8(images) -> np.ndarray:
  """Model output in [-1, 1] -> uint8 as the reference: (x + 1)/2 clipped to [0, 1], x 255, truncated."""
  return (np.clip((np.asarray(images, np.float32) + 1) / 2, 0, 1) * 255).astype(np.uint8)


def _to_8_bit(image: Image.Image) -> Image.Image:
  """16-bit and 32-bit greyscale (I;16*, I, F) to 8-bit L by scaling (PIL's own conversion clips at 255, so
  a mid-grey 32768 would become white): 16-bit and integer values / 257 (clipped to [0, 65535]); floats in
  [0, 1] x 255, other floats read as 8-bit values (clipped)."""
  values = np.asarray(image)
  if image.mode == "F":
    values = values.astype(np.float64)
    values = np.nan_to_num(values * 255 if values.size and np.nanmax(values) <= 1 else values)
  else:
    values = np.clip(values.astype(np.float64), 0, 65535) / 257
  return Image.fromarray(np.round(np.clip(values, 0, 255)).astype(np.uint8), "L")


# Modes the reference path (resize in the image's own mode, then RGB) handles as they are.
_KEPT_MODES = ("RGB", "RGBA", "L", "LA")


def as_rgb_compatible(image: Image.Image) -> Image.Image:
  """`image` in a mode that resizes and converts to RGB correctly: 8-bit RGB, RGBA, L and LA unchanged (the
  reference's path); high bit depths scaled to 8 bits; palette images to RGB (RGBA when transparent), so
  that they are resized by colour and not by palette index; bilevel, CMYK, YCbCr, LAB, HSV to RGB."""
  if image.mode in _KEPT_MODES:
    return image
  if image.mode.startswith("I") or image.mode == "F":
    return _to_8_bit(image)
  if image.mode in ("P", "PA"):
    return image.convert("RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB")
  try:
    return image.convert("RGB")
  except (ValueError, OSError) as e:
    raise ValueError(f"cannot convert an image of mode {image.mode} to RGB ({e})") from None


def fit_and_crop(image: Image.Image, width: int, height: int) -> np.ndarray:
  """The reference's preparation of a first frame: (height, width, 3) floats in [-1, 1].

  Scale down by rf = max(1, min(w / width, h / height)) with PIL's default (bicubic) filter, centre-crop to
  width x height (a smaller image is not enlarged; the crop pads it with black), then RGB. Images of other
  modes than RGB, RGBA, L and LA are first brought to one (`as_rgb_compatible`).
  """
  image = as_rgb_compatible(image)
  rf = max(1.0, min(image.width / width, image.height / height))
  image = image.resize((round(image.width / rf), round(image.height / rf)))
  left, top = (image.width - width) / 2, (image.height - height) / 2
  image = image.crop((left, top, left + width, top + height)).convert("RGB")
  return np.asarray(image, np.float32) / 255 * 2 - 1


def open_image(path: str, label: str = "--image", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
  """Reads a first-frame image whole (the first frame of an animation), turned upright by its EXIF
  orientation, in a mode fit_and_crop handles. Errors name `label` and the file: missing, a folder, not a
  regular file, not an image, more than `max_pixels` (read from the header, before decoding), empty."""
  from PIL import ImageOps, UnidentifiedImageError
  name = f"{label} {path}" if label else path
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    raise FileNotFoundError(f"{name}: no such file") from None
  except OSError as e:
    raise ValueError(f"{name}: cannot read it ({e.strerror or e})") from None
  if stat.S_ISDIR(mode):
    raise ValueError(f"{name}: a folder, not an image file")
  if not stat.S_ISREG(mode):
    raise ValueError(f"{name}: not a regular file (a pipe, device or socket)")
  limit = f"at most {max_pixels / 2 ** 20:.0f} megapixels are read; scale it down first"
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)  # PIL's warning: refused here
      image = Image.open(path)
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    pixels = re.search(r"\((\d+) pixels\)", str(e))  # PIL refused it from the header: its pixel count
    size = f"{int(pixels[1]) / 2 ** 20:.0f} megapixels" if pixels else "too large an image"
    raise ValueError(f"{name}: {size}; {limit}") from None
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
    raise ValueError(f"{name}: not a readable image ({e})") from None
  with image:
    width, height = image.size
    if width * height > max_pixels:
      raise ValueError(f"{name}: {width}x{height} is {width * height / 2 ** 20:.0f} megapixels; {limit}")
    if width == 0 or height == 0:
      raise ValueError(f"{name}: an empty image ({width}x{height})")
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image.load()
        upright = ImageOps.exif_transpose(image)
        loaded = as_rgb_compatible(upright if upright is not None else image)
        return loaded.copy() if loaded is image else loaded
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
      raise ValueError(f"{name}: too large an image ({limit})") from None
    except Exception as e:  # PIL raises many kinds on a corrupt file; the file is the user's input
      raise ValueError(f"{name}: not a readable image ({type(e).__name__}: {e})") from None
