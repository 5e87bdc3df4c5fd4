"""The interpolation UNet of Kandinsky Video 1.1 (`interpolation.pt`, spec §4).

Predicts (v-prediction) the three latent frames between a left and a right key frame: input channels are
[left 4 | three noisy frames 12 | right 4], output the three frames (12 channels, frame-major).

Its "temporal" axis is the axis of interpolation groups: the batch is `(b t)` with t = num_groups groups per
clip (in the pipeline b = 2: the conditional and the unconditional half). Temporal layers are convex blends
x <- (1 - g) x + g f(x) with learned g times a per-sample `temporal_mask`, so mask 0 turns them off.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kvjax.model_configs import InterpolationUNetConfig
from kvjax.layers.basic import conv
from kvjax.layers.embeddings import scalar_embedding_mlp
from kvjax.models.unet_layers import (AttentionBlock, AttentionPooling, ResNetBlock, UNetLevel, check_unet_input,
                                      down_up_and_out, merge_scalar)
from kvjax.sharding import logical_init

Dtype = Any

# Latent frames predicted between each pair of key frames (the output is FRAMES_PER_GROUP x 4 channels).
FRAMES_PER_GROUP = 3


class _InterpolationLevel(UNetLevel):
  """The shared level with the interpolation UNet's temporal layers: ResNets with temporal convolutions
  (where the config has them) and the blended temporal attention after the self-attention, in down and up
  levels alike (spec §4.3)."""

  def resnet(self, x, features, name, pattern, cond, temporal):
    temporal_mask, num_groups = temporal
    return ResNetBlock(features, self.config.groups, self.config.compression_ratio, pattern,
                       temporal_conv=self.config.temporal, name=name, **self._kw())(x, cond, (num_groups, temporal_mask))

  def temporal(self, x, point, prefix, cond, temporal):
    if point != "after self-attention" or not self.config.add_temporal_attention:
      return x
    temporal_mask, num_groups = temporal
    cfg = self.config
    return AttentionBlock(cfg.groups, cfg.head_dim, cfg.expansion_ratio, over="groups", gated=True,
                          name="temporal_attention_block", **self._kw())(x, cond, num_frames=num_groups,
                                                                         mask=temporal_mask)


class DownLevel(_InterpolationLevel):
  """[self-attention, temporal attention], then num_blocks x (ResNet, cross-attention, ResNet)."""


class UpLevel(_InterpolationLevel):
  """num_blocks x (ResNet, cross-attention, ResNet), then self-attention, THEN temporal attention."""

  up = True


class InterpolationUNet(nn.Module):
  """(N, H, W, num_channels) -> (N, H, W, out_channels), N = clips x num_groups.

  Arguments of `__call__`:
    x: channels-last input; time: (N,) diffusion timesteps; context (N, L, context_dim) and
      context_mask (N, L) bool.
    num_groups: interpolation groups per clip (static; the reference's `num_predicted_groups`).
    perturbation_time: (N,) — the pipeline passes 0; the reference's own default when absent is 25.
    skip_frames: (N,) int indices into the 20-entry skip embedding — the reference's default is 1.
    temporal_mask: (N,) in [0, 1]; 0 turns every temporal layer off for that sample. Default: all ones.
    context_length: the reference's context length L (traced) when `context` is zero-padded beyond it;
      ignored where the config's text_pooling is "padded".
    deep_features, keep_deep_features: feature caching, as the keyframe UNet's.
  """

  config: InterpolationUNetConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # unet_layers.REMAT_POLICIES: recompute levels in the backward pass
  attention_implementation: str = "xla"  # kvjax.layers.attention.ATTENTION_IMPLEMENTATIONS

  @nn.compact
  def __call__(self, x, time, context, context_mask=None, num_groups: int = 1, perturbation_time=None,
               skip_frames=None, temporal_mask=None, context_length=None, deep_features=None,
               keep_deep_features: bool = False):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch = x.shape[0]
    check_unet_input(x, cfg)
    if batch % num_groups:
      raise ValueError(f"num_groups {num_groups} does not divide the batch {batch}")
    if context_mask is None:
      context_mask = jnp.ones(context.shape[:2], bool)
    perturbation_time = jnp.full((batch,), 25.0) if perturbation_time is None else perturbation_time
    skip_frames = jnp.ones((batch,), jnp.int32) if skip_frames is None else skip_frames
    temporal_mask = jnp.ones((batch,), jnp.float32) if temporal_mask is None else temporal_mask
    temporal_mask = jnp.asarray(temporal_mask, jnp.float32)

    embed = lambda values, name: scalar_embedding_mlp(values, name=name, sinusoidal_dim=cfg.init_channels,
                                                      features=cfg.time_embed_dim, **kw)
    cond = embed(time, "to_time_embed")
    if cfg.perturbation_embedding:
      merge = merge_scalar(self, "time_embed_merge")
      cond = merge * embed(perturbation_time, "perturbation_to_time_embed") + (1 - merge) * cond
    if cfg.pass_skip_frames:
      table = nn.Embed(20, cfg.time_embed_dim, name="skip_embeddings", param_dtype=self.param_dtype,
                       dtype=self.dtype, embedding_init=logical_init(nn.initializers.normal(1.0),
                                                                     (None, "time_embed")))
      cond = merge_scalar(self, "skip_merge") * table(skip_frames) + cond
    cond = AttentionPooling(cfg.head_dim, name="feature_pooling", **kw)(
        cond, context, context_mask.astype(bool), context_length if cfg.text_pooling == "prompt" else None)

    x = conv(cfg.init_channels, (3, 3), padding=((1, 1), (1, 1)), name="in_layer", **kw)(x.astype(self.dtype))
    return down_up_and_out(x, cfg, DownLevel, UpLevel, (cond, context, context_mask, temporal_mask, num_groups),
                           remat=self.remat, deep_features=deep_features, keep_deep_features=keep_deep_features,
                           **kw)
