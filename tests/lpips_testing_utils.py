"""The random VGG16 weights of the LPIPS fixture (tests/fixtures/lpips), regenerated from their seed: the
fixture stores the `lpips` package's outputs for them, not the 59 MB of weights."""

import numpy as np

VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def vgg_weights(seed: int) -> dict[str, np.ndarray]:
  """torchvision's `features.{i}.weight/bias` names and (out, in, 3, 3) layout; He-scaled so the features
  keep their magnitude through 13 layers."""
  rng = np.random.default_rng(seed)
  weights, channels, index = {}, 3, 0
  for v in VGG16_LAYOUT:
    if v == "M":
      index += 1
      continue
    weights[f"features.{index}.weight"] = (rng.standard_normal((v, channels, 3, 3)) *
                                           np.sqrt(2 / (9 * channels))).astype(np.float32)
    weights[f"features.{index}.bias"] = (0.01 * rng.standard_normal(v)).astype(np.float32)
    channels, index = v, index + 2
  return weights
