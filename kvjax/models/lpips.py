"""LPIPS, the learned perceptual distance (Zhang et al. 2018), as the `lpips` package computes it for
net='vgg', version 0.1: the MoVQ-GAN trainer's perceptual loss.

Images are channels-last in [-1, 1] (the package's `normalize=False` convention). Both batches are shifted
and scaled per channel (the package's ScalingLayer) and run through VGG16's `features` up to relu5_3 (3x3
convolutions with ReLU, a 2x2 max-pool opening every stage but the first); at the end of each stage (relu1_2,
relu2_2, relu3_3, relu4_3, relu5_3) the features are unit-normalised over channels, their squared
difference is weighted per channel by a bias-free 1x1 head (`lin{k}`; its dropout is off at evaluation),
averaged over the pixels and summed over the stages.

Parameter names follow the package's state dict (`net.slice{s}.{i}` with i the index in VGG16's
`features`, `lin{k}.model.1`), so `kvjax.conversion.lpips` converts it with the generic strict matcher.
The configuration, `kvjax.model_configs.LPIPSConfig`, lives with the other model configurations so that
converted folders name it; its presets are re-exported here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kvjax.model_configs import LPIPS_TINY, LPIPS_VGG, LPIPSConfig
from kvjax.layers.basic import conv

__all__ = ["LPIPS", "LPIPSConfig", "LPIPS_PRESETS", "SCALE", "SHIFT", "unit_normalize", "vgg_feature_indices"]

Dtype = Any

# The ScalingLayer: ImageNet's mean and std, mapped to [-1, 1] inputs.
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10  # the package's normalize_tensor

# "lpips-vgg" is the package's network (weights from `python -m convert lpips`); "lpips-tiny" a CPU-sized
# stand-in with the same structure, for tests and tiny training runs (no pretrained weights exist for it).
LPIPS_PRESETS = {"lpips-vgg": LPIPS_VGG, "lpips-tiny": LPIPS_TINY}


def vgg_feature_indices(config: LPIPSConfig) -> list[list[int]]:
  """Per stage, the index in VGG16's `features` Sequential of each convolution (ReLUs and max-pools take
  the indices in between): [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]] for VGG16."""
  stages, index = [], 0
  for stage, convs in enumerate(config.convs_per_stage):
    index += stage > 0  # the max-pool that opens every stage but the first
    stages.append([index + 2 * i for i in range(convs)])
    index += 2 * convs
  return stages


def unit_normalize(x, eps: float = EPS):
  """x / (||x|| + eps) over the channels (the package's normalize_tensor).

  The norm's gradient is 0, not NaN, where every channel is 0: ReLU features often are, and the trainer
  differentiates through this.
  """
  squares = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  positive = squares > 0
  norm = jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)
  return x / (norm + eps)


class VGGFeatures(nn.Module):
  """The VGG16 convolutions (the package's `net`): the features at the end of each stage."""

  config: LPIPSConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h) -> list[Any]:
    taps = []
    for stage, (width, indices) in enumerate(zip(self.config.widths, vgg_feature_indices(self.config))):
      if stage > 0:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))  # floors odd sizes, as PyTorch's MaxPool2d(2, 2)
      for index in indices:
        h = nn.relu(conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"slice{stage + 1}_{index}",
                         dtype=self.dtype, param_dtype=self.param_dtype)(h))
      taps.append(h)
    return taps


class LinearHead(nn.Module):
  """`lin{k}`: a bias-free 1x1 convolution to one channel (`model.1`; `model.0` is the inactive dropout)."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return conv(1, (1, 1), use_bias=False, out_axis=None, name="model_1", dtype=self.dtype,
                param_dtype=self.param_dtype)(x)


class LPIPS(nn.Module):
  """`LPIPS(config)(x, y) -> (N,)` float32 distances between two batches of images (N, H, W, 3) in [-1, 1].

  `dtype` is the compute dtype of the convolutions (bfloat16 for training); the normalisation, the squared
  differences' averages and the sum are float32. Parameters are `param_dtype` (float32).
  """

  config: LPIPSConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y):
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"LPIPS compares two batches of RGB images (N, H, W, 3) of one shape; got {x.shape} "
                       f"and {y.shape}")
    smallest = 2 ** (len(self.config.widths) - 1)
    if min(x.shape[1:3]) < smallest:
      raise ValueError(f"LPIPS needs images of at least {smallest}x{smallest} (one pixel at the last stage); "
                       f"got {x.shape[1]}x{x.shape[2]}")
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n = x.shape[0]
    h = jnp.concatenate([x, y]).astype(jnp.float32)  # one pass through VGG for both batches
    h = ((h - jnp.asarray(SHIFT, jnp.float32)) / jnp.asarray(SCALE, jnp.float32)).astype(self.dtype)
    distance = jnp.zeros((n,), jnp.float32)
    for k, tap in enumerate(VGGFeatures(self.config, name="net", **kw)(h)):
      features = unit_normalize(tap.astype(jnp.float32))
      weighted = LinearHead(name=f"lin{k}", **kw)(jnp.square(features[:n] - features[n:]))
      distance = distance + jnp.mean(weighted.astype(jnp.float32), axis=(1, 2, 3))
    return distance
