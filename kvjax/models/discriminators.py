"""MoVQ-GAN discriminators: pix2pix's PatchGAN (NLayerDiscriminator) on frames, and its 3D version on clips.

Both are the taming-transformers / MoVQGAN layout, channels-last:

  4x4 conv, stride 2                               -> LeakyReLU(0.2)
  (num_layers - 1) x [4x4 conv, stride 2 -> norm   -> LeakyReLU(0.2)]   widths double, at most 8x
  4x4 conv, stride 1                     -> norm   -> LeakyReLU(0.2)
  4x4 conv, stride 1, to 1 logit channel

with padding 1 on every side as in PyTorch, so a strided layer halves the size (rounding down) and a
stride-1 layer takes one off: 256x256 -> 30x30 logits with 3 layers. Every convolution has a bias (taming
drops it only before BatchNorm, which is not offered here: see `DiscriminatorConfig`).

`VideoDiscriminator` replaces every convolution by a (temporal_kernel, 4, 4) one padded by
(temporal_kernel - 1) / 2 frames each side in time, so it judges motion across frames (the temporal
discriminator of the Kandinsky Video paper). Temporal strides: 1 in the first layer (the full frame rate
reaches the second layer, where the features are richer) and 2 in the later strided layers; with that
padding a stride-2 layer maps T frames to ceil(T / 2), so any T >= 1 works and a clip that is down to one
frame stays one frame (its one output window is centred on it, exactly what a stride 1 would give). The two
stride-1 layers keep T. T=2 -> 1 logit frame with 3 layers, T=4 -> 1, T=12 -> 3. Its GroupNorm normalises
each clip over (frames x positions x channels of a group).

Inputs are in [-1, 1]; logits come back in float32 whatever the compute dtype (they feed the GAN losses).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kvjax.model_configs import DiscriminatorConfig
from kvjax.layers.basic import conv
from kvjax.layers.norms import GroupNorm

Dtype = Any

_SLOPE = 0.2


class _NLayerDiscriminator(nn.Module):
  """The shared layer stack; `spatial_dims` 2 (frames) or 3 (clips, time first)."""

  config: DiscriminatorConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  spatial_dims = 2

  def _conv(self, features: int, name: str, strided: bool, time_stride: int = 1):
    cfg = self.config
    spatial_stride = 2 if strided else 1
    if self.spatial_dims == 2:
      kernel, strides, padding = (4, 4), (spatial_stride,) * 2, ((1, 1), (1, 1))
    else:
      pad = (cfg.temporal_kernel - 1) // 2
      kernel = (cfg.temporal_kernel, 4, 4)
      strides = (time_stride, spatial_stride, spatial_stride)
      padding = ((pad, pad), (1, 1), (1, 1))
    return conv(features, kernel, strides=strides, padding=padding, name=name, dtype=self.dtype,
                param_dtype=self.param_dtype)

  def _norm(self, x, name: str):
    if self.config.norm == "none":
      return x
    return GroupNorm(self.config.norm_groups, name=name, dtype=self.dtype, param_dtype=self.param_dtype)(x)

  def _check(self, x):
    cfg = self.config
    rank = 2 + self.spatial_dims
    if x.ndim != rank:
      layout = "(N, H, W, C)" if self.spatial_dims == 2 else "(B, T, H, W, C)"
      raise ValueError(f"{type(self).__name__} takes {layout} inputs, got shape {x.shape}")
    if x.shape[-1] != cfg.in_channels:
      raise ValueError(f"{type(self).__name__} expects {cfg.in_channels} channels, got shape {x.shape}")
    if min(x.shape[-3:-1]) < cfg.min_spatial_size:
      raise ValueError(f"{type(self).__name__} with {cfg.num_layers} layers needs height and width >= "
                       f"{cfg.min_spatial_size}, got shape {x.shape}")

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    self._check(x)
    cfg = self.config
    widths = cfg.widths
    h = x.astype(self.dtype)
    h = nn.leaky_relu(self._conv(widths[0], "conv_0", strided=True)(h), _SLOPE)
    for i in range(1, cfg.num_layers):
      h = self._conv(widths[i], f"conv_{i}", strided=True, time_stride=2)(h)
      h = nn.leaky_relu(self._norm(h, f"norm_{i}"), _SLOPE)
    n = cfg.num_layers
    h = self._conv(widths[n], f"conv_{n}", strided=False)(h)
    h = nn.leaky_relu(self._norm(h, f"norm_{n}"), _SLOPE)
    return self._conv(1, "logits", strided=False)(h).astype(jnp.float32)


class PatchDiscriminator(_NLayerDiscriminator):
  """Images (N, H, W, C) in [-1, 1] -> patch logits (N, h, w, 1), h = floor(H / 2^num_layers) - 2.

  Judges each image (frame) on its own: a video flattened to (B*T, H, W, C) gets per-frame logits.
  """

  spatial_dims = 2


class VideoDiscriminator(_NLayerDiscriminator):
  """Clips (B, T, H, W, C) in [-1, 1] -> logits (B, t, h, w, 1): 3D convolutions, so it sees motion.

  h as for `PatchDiscriminator`; t = T halved (rounding up) by each of the num_layers - 1 strided layers
  after the first.
  """

  spatial_dims = 3


def build_discriminator(config: DiscriminatorConfig, dtype: Dtype = jnp.float32,
                        param_dtype: Dtype = jnp.float32) -> nn.Module:
  """The module `config.architecture` names (the modules themselves read only the widths and kernels)."""
  module = {"patch": PatchDiscriminator, "video": VideoDiscriminator}[config.architecture]
  return module(config, dtype=dtype, param_dtype=param_dtype)


def logit_shape(config: DiscriminatorConfig, input_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The logit shape of `build_discriminator(config)` on an input of `input_shape` (no tracing)."""
  spatial = [s // 2 ** config.num_layers - 2 for s in input_shape[-3:-1]]
  if config.architecture == "patch":
    return (*input_shape[:-3], *spatial, 1)
  frames = input_shape[1]
  for _ in range(config.num_layers - 1):
    frames = -(-frames // 2)
  return (input_shape[0], frames, *spatial, 1)
