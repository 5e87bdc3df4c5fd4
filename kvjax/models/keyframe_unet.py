"""The keyframe UNet3D of Kandinsky Video 1.1 (`t2v.pt`, spec §3).

One network, two modes:
* video mode: `frame_index` is given; every temporal block runs, conditioned on the time embedding plus
  per-frame embeddings of the frame index, the noise-augmentation level and the motion score;
* image mode: no `frame_index`; every temporal block is skipped and the network is the Kandinsky 3.0 UNet.

Videos are flattened to a `(b t)` batch (frame index minor), as the reference lays them out.

The input convolution is chosen separately (`input_layer`): `in_layer` or `image_in_layer`. The reference
picks by batch size alone (`image_in_layer` iff the batch has at most 2 items, see `reference_input_layer`);
pass the layer explicitly when running guidance branches separately or with other batch sizes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax.numpy as jnp

from kvjax.model_configs import KeyframeUNetConfig
from kvjax.layers.basic import conv
from kvjax.layers.embeddings import scalar_embedding_mlp
from kvjax.layers.norms import ConditionalGroupNorm
from kvjax.models.unet_layers import (AttentionBlock, AttentionPooling, ResNetBlock, UNetLevel, check_unet_input,
                                      down_up_and_out, to_video)

Dtype = Any
InputLayer = Literal["video", "image"]


def reference_input_layer(batch_size: int) -> InputLayer:
  """The reference's rule: `in_layer` ('video') when the batch has more than 2 items, else `image_in_layer`."""
  return "video" if batch_size > 2 else "image"


class TemporalResNetBlock(nn.Module):
  """Residual stack of four (ConditionalGroupNorm, SiLU, Conv3d over time) triples (spec §3.4).

  The convolutions have kernels (1, 3, 3, 1) in time and 1x1 in space, zero-padded in time; the last one is
  zero-initialised as in the reference.
  """

  groups: int
  compression_ratio: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond, num_frames: int):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    channels = x.shape[-1]
    hidden = channels // self.compression_ratio
    widths = (hidden, hidden, hidden, channels)
    taps = (1, 3, 3, 1)
    out = x
    for k in range(4):
      out = nn.silu(ConditionalGroupNorm(self.groups, name=f"temporal_resnet_blocks_{k}_0", **kw)(out, cond))
      pad = taps[k] // 2
      out = conv(widths[k], (taps[k], 1, 1), padding=((pad, pad), (0, 0), (0, 0)),
                 name=f"temporal_resnet_blocks_{k}_2", zero_init=k == 3, **kw)(to_video(out, num_frames))
      out = out.reshape(x.shape[:-1] + (widths[k],))
    return x + out


class _KeyframeLevel(UNetLevel):
  """The shared level with the keyframe UNet's temporal layers, run in video mode only: `TEMPORAL_LAYERS`
  maps hook points to the temporal attention or the suffix of a temporal ResNet's name."""

  TEMPORAL_LAYERS: ClassVar[dict[str, str]] = {}

  def resnet(self, x, features, name, pattern, cond, temporal):
    return ResNetBlock(features, self.config.groups, self.config.compression_ratio, pattern, name=name,
                       **self._kw())(x, cond)

  def temporal(self, x, point, prefix, cond, temporal):
    temporal_cond, num_frames = temporal
    layer = self.TEMPORAL_LAYERS.get(point)
    if temporal_cond is None or layer is None:
      return x
    cfg = self.config
    if layer == "attention":
      return AttentionBlock(cfg.groups, cfg.head_dim, cfg.expansion_ratio, over="frames",
                            names=("temporal_norm", "temporal_attention", "ff_norm"), name="temporal_attention_block",
                            **self._kw())(x, temporal_cond, num_frames=num_frames)
    return TemporalResNetBlock(cfg.groups, cfg.compression_ratio, name=f"{prefix}_{layer}", **self._kw())(
        x, temporal_cond, num_frames)


class DownLevel(_KeyframeLevel):
  """[self-attention, temporal attention] then num_blocks x (ResNet, temporal ResNet, cross-attention,
  ResNet (down-sampling in the last entry), temporal ResNet): spatial before temporal (spec §3.8)."""

  TEMPORAL_LAYERS = {"after self-attention": "attention", "after first resnet": "3", "block end": "4"}


class UpLevel(_KeyframeLevel):
  """num_blocks x (temporal ResNet, ResNet (up-sampling in the first entry), cross-attention, temporal
  ResNet, ResNet), then [temporal attention, self-attention]: temporal before spatial (spec §3.9)."""

  up = True
  TEMPORAL_LAYERS = {"before self-attention": "attention", "block start": "3", "after cross-attention": "4"}


class KeyframeUNet(nn.Module):
  """Predicts the noise of `x` (N, H, W, num_channels) -> (N, H, W, out_channels).

  Arguments of `__call__`:
    x: noisy latents, channels-last; in video mode N = b * num_frames, frame index minor. In the reference
      pipeline the 9 channels are 4 noisy latent + 4 condition latent + 1 mask.
    time: (N,) diffusion timesteps (float or int).
    context: (N, L, context_dim) text embeddings; context_mask: (N, L) bool, True for real tokens.
    frame_index: (N,) frame positions (the reference's `temporal_embed`); None selects image mode.
    num_frames: frames per video (static); required in video mode.
    noise_aug_time: (N,) noise-augmentation level of the condition frame, or None.
    motion_score: (N,) motion score, or None.
    input_layer: 'video' (`in_layer`) or 'image' (`image_in_layer`); None applies the reference rule
      `reference_input_layer(N)`.
    context_length: the reference's context length L (traced) when `context` is zero-padded beyond it;
      None: L is the context's own length. Ignored where the config's text_pooling is "padded".
    deep_features, keep_deep_features: feature caching (unet_layers.down_up_and_out): keep returns (output,
      deep features); given deep features, only the shallowest levels run and the output is (output, them).
  """

  config: KeyframeUNetConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # unet_layers.REMAT_POLICIES: recompute levels in the backward pass
  attention_implementation: str = "xla"  # kvjax.layers.attention.ATTENTION_IMPLEMENTATIONS

  @nn.compact
  def __call__(self, x, time, context, context_mask=None, frame_index=None, num_frames: int | None = None,
               noise_aug_time=None, motion_score=None, input_layer: InputLayer | None = None, context_length=None,
               deep_features=None, keep_deep_features: bool = False):
    cfg = self.config
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    batch = x.shape[0]
    check_unet_input(x, cfg)
    if context_mask is None:
      context_mask = jnp.ones(context.shape[:2], bool)
    context_mask = context_mask.astype(bool)

    embed = lambda values, name: scalar_embedding_mlp(values, name=name, sinusoidal_dim=cfg.init_channels,
                                                      features=cfg.time_embed_dim, **kw)
    cond = embed(time, "to_time_embed")
    cond = AttentionPooling(cfg.head_dim, name="feature_pooling", **kw)(
        cond, context, context_mask, context_length if cfg.text_pooling == "prompt" else None)

    if self.is_initializing():
      # Create every parameter whatever the mode of the example call: run the full video path.
      zeros = jnp.zeros((batch,), jnp.float32)
      frame_index = zeros if frame_index is None else frame_index
      num_frames = num_frames or 1
      noise_aug_time = zeros if noise_aug_time is None else noise_aug_time
      motion_score = zeros if motion_score is None else motion_score

    temporal_cond = None
    if frame_index is not None:
      if num_frames is None or batch % num_frames:
        raise ValueError(f"video mode needs num_frames dividing the batch {batch}, got {num_frames}")
      frame_embed = embed(frame_index, "to_temporal_embed")
      if cfg.noise_augmentation and noise_aug_time is not None:
        frame_embed = frame_embed + embed(noise_aug_time, "temporal_noise_aug_time_encoding")
      if cfg.motion_score and motion_score is not None:
        frame_embed = frame_embed + embed(motion_score, "temporal_motion_score_encoding")
      temporal_cond = cond + frame_embed

    input_layer = input_layer or reference_input_layer(batch)
    if input_layer not in ("video", "image"):
      raise ValueError(f"input_layer must be 'video' or 'image', got {input_layer!r}")
    in_layers = {mode: conv(cfg.init_channels, (3, 3), padding=((1, 1), (1, 1)), name=name, **kw)
                 for mode, name in (("video", "in_layer"), ("image", "image_in_layer"))}
    if self.is_initializing():
      in_layers["video" if input_layer == "image" else "image"](x)
    x = in_layers[input_layer](x.astype(self.dtype))

    level_inputs = (cond, context, context_mask, temporal_cond, num_frames)
    return down_up_and_out(x, cfg, DownLevel, UpLevel, level_inputs, remat=self.remat, deep_features=deep_features,
                           keep_deep_features=keep_deep_features, **kw)
