"""LPIPS, the learned perceptual distance (Zhang et al. 2018), as the `lpips` package computes it for
net='vgg' (v0.1): the MoVQ-GAN trainer's perceptual loss.

Images are channels-last in [-1, 1]. They are shifted and scaled per channel (the package's ScalingLayer),
run through VGG16's convolutions (3x3, ReLU, 2x2 max-pool between stages), and at the end of each stage
the features are unit-normalised over channels, their squared difference weighted per channel by a 1x1
linear head, averaged over the pixels and summed over the stages.

Parameter names follow the package's state dict (`net.slice{s}.{i}` with i the VGG `features` index,
`lin{k}.model.1`), so `kvjax.conversion.lpips` converts it with the generic strict matcher.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kvjax.configs import LPIPS_TINY, LPIPS_VGG, LPIPSConfig
from kvjax.layers.basic import conv

Dtype = Any

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10

LPIPS_PRESETS = {"lpips-vgg": LPIPS_VGG, "lpips-tiny": LPIPS_TINY}


def vgg_feature_indices(config: LPIPSConfig) -> list[list[int]]:
  """Per stage, the index in VGG16's `features` Sequential of each convolution (ReLUs and max-pools
  take the indices in between): [[0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]] for VGG16."""
  stages, index = [], 0
  for stage, convs in enumerate(config.convs_per_stage):
    index += stage > 0  # the max-pool that opens every stage but the first
    stages.append([index + 2 * i for i in range(convs)])
    index += 2 * convs
  return stages


def _unit_channels(x):
  # The package's x / (||x|| + eps), with a norm whose gradient is 0 (not NaN) where every channel is 0:
  # ReLU features often are, and the trainer differentiates through this.
  squares = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  norm = jnp.where(squares > 0, jnp.sqrt(jnp.where(squares > 0, squares, 1.0)), 0.0)
  return x / (norm + _EPS)


class VGGFeatures(nn.Module):
  """The VGG16 convolutions (`net`): the features at the end of each stage."""

  config: LPIPSConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    taps = []
    for stage, (width, indices) in enumerate(zip(self.config.widths, vgg_feature_indices(self.config))):
      if stage > 0:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
      for index in indices:
        h = nn.relu(conv(width, (3, 3), padding=((1, 1), (1, 1)), name=f"slice{stage + 1}_{index}",
                         dtype=self.dtype, param_dtype=self.param_dtype)(h))
      taps.append(h)
    return taps


class LinearHead(nn.Module):
  """`lin{k}`: a bias-free 1x1 convolution to one channel (the package's dropout is off at evaluation)."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return conv(1, (1, 1), use_bias=False, out_axis=None, name="model_1", dtype=self.dtype,
                param_dtype=self.param_dtype)(x)


class LPIPS(nn.Module):
  """`lpips(x, y) -> (N,)` distances between two batches of images (N, H, W, 3) in [-1, 1]."""

  config: LPIPSConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, y):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n = x.shape[0]
    h = jnp.concatenate([x, y]).astype(self.dtype)  # one pass through VGG for both
    h = (h - jnp.asarray(SHIFT, self.dtype)) / jnp.asarray(SCALE, self.dtype)
    distance = jnp.zeros((n,), jnp.float32)
    for k, tap in enumerate(VGGFeatures(self.config, name="net", **kw)(h)):
      features = _unit_channels(tap.astype(jnp.float32))
      weighted = LinearHead(name=f"lin{k}", **kw)(jnp.square(features[:n] - features[n:]))
      distance = distance + jnp.mean(weighted.astype(jnp.float32), axis=(1, 2, 3))
    return distance
