"""Spatial building blocks of the Kandinsky 3.0 UNet, shared by the kvjax UNets (spec §3.2-§3.7).

Activations are channels-last. Videos are flattened to `(b t) h w c`, so every spatial layer treats a frame
as an image. Module names mirror the reference attribute paths, with list indices joined by `_`
(`resnet_blocks.2` -> `resnet_blocks_2`), which keeps the checkpoint converter a renaming.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from kvjax.layers.attention import Attention, TemporalAttention
from kvjax.layers.basic import ConvTranspose2x2, conv
from kvjax.layers.norms import ConditionalGroupNorm, GroupNorm

Dtype = Any

# Resampling patterns of the four Blocks of a ResNetBlock (spec §3.3): None keeps the resolution, True
# up-samples before the projection, False down-samples after it.
NO_RESAMPLING = (None, None, None, None)
DOWN_SAMPLING = (None, None, False, None)
UP_SAMPLING = (None, True, None, None)


def to_video(x, num_frames: int):
  """(b t) h w c -> b t h w c."""
  return x.reshape(x.shape[0] // num_frames, num_frames, *x.shape[1:])


def merge_scalar(module: nn.Module, name: str):
  """A learned blend weight of shape (1,), zero-initialised as in the reference."""
  return module.param(name, nn.with_logical_partitioning(nn.initializers.zeros, (None,)), (1,),
                      module.param_dtype)


class TemporalConv3D(nn.Module):
  """Convex blend of x with a (3, 1, 1) convolution over time: x <- (1 - g) x + g conv(x), g = merge * mask.

  `mask` (N,) switches the blend per sample of the `(b t)` batch (the interpolation UNet turns temporal
  layers off for its unconditional half). Used by the interpolation UNet after every Block projection.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, num_frames: int, mask):
    out = conv(self.features, (3, 1, 1), padding=((1, 1), (0, 0), (0, 0)), name="temporal_projection",
               zero_init=True, dtype=self.dtype, param_dtype=self.param_dtype)(to_video(x, num_frames))
    gate = (merge_scalar(self, "temporal_merge") * mask[:, None, None, None]).astype(x.dtype)
    return (1 - gate) * x + gate * out.reshape(x.shape[:-1] + (self.features,))


class Block(nn.Module):
  """ConditionalGroupNorm -> SiLU -> [2x up-sample] -> k x k projection -> [temporal blend] -> [2x down-sample].

  The temporal blend (`temporal_projection_new`) exists only in the interpolation UNet (`temporal_conv`);
  it then needs `temporal` = (frames per clip, per-sample mask).
  """

  features: int
  kernel_size: int
  groups: int
  up_resolution: bool | None = None
  temporal_conv: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond, temporal=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.silu(ConditionalGroupNorm(self.groups, name="group_norm", **kw)(x, cond))
    if self.up_resolution is True:
      x = ConvTranspose2x2(x.shape[-1], name="up_sample", **kw)(x)
    pad = self.kernel_size // 2
    x = conv(self.features, (self.kernel_size,) * 2, padding=((pad, pad), (pad, pad)), name="projection",
             **kw)(x)
    if self.temporal_conv:
      x = TemporalConv3D(self.features, name="temporal_projection_new", **kw)(x, *temporal)
    if self.up_resolution is False:
      x = conv(self.features, (2, 2), strides=2, padding="VALID", name="down_sample", **kw)(x)
    return x


class ResNetBlock(nn.Module):
  """Four Blocks (1x1, 3x3, 3x3, 1x1 at max(in, out) / compression_ratio channels) plus a shortcut."""

  features: int
  groups: int
  compression_ratio: int
  up_resolutions: tuple[bool | None, ...] = NO_RESAMPLING
  temporal_conv: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond, temporal=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    in_features = x.shape[-1]
    hidden = max(in_features, self.features) // self.compression_ratio
    widths = (hidden, hidden, hidden, self.features)
    kernels = (1, 3, 3, 1)
    out = x
    for k in range(4):
      out = Block(widths[k], kernels[k], self.groups, self.up_resolutions[k], self.temporal_conv,
                  name=f"resnet_blocks_{k}", **kw)(out, cond, temporal)
    shortcut = x
    if True in self.up_resolutions:
      shortcut = ConvTranspose2x2(in_features, name="shortcut_up_sample", **kw)(shortcut)
    if in_features != self.features:
      shortcut = conv(self.features, (1, 1), padding="VALID", name="shortcut_projection", **kw)(shortcut)
    if False in self.up_resolutions:
      shortcut = conv(self.features, (2, 2), strides=2, padding="VALID", name="shortcut_down_sample",
                      **kw)(shortcut)
    return shortcut + out


def feed_forward(x, expansion_ratio: int, *, dtype: Dtype, param_dtype: Dtype):
  """1x1 conv (C -> expansion C) -> SiLU -> 1x1 conv (-> C), no biases: children `feed_forward_{0,2}`.

  Called inside a parent's compact method, whose children the two convolutions become.
  """
  features = x.shape[-1]
  kw = dict(use_bias=False, padding="VALID", dtype=dtype, param_dtype=param_dtype)
  h = conv(features * expansion_ratio, (1, 1), name="feed_forward_0", in_axis="embed", out_axis="mlp", **kw)(x)
  return conv(features, (1, 1), name="feed_forward_2", in_axis="mlp", out_axis="embed", **kw)(nn.silu(h))


class AttentionBlock(nn.Module):
  """Pre-norm attention plus a 1x1-conv feed-forward, each residual: x + attend(norm(x)), then
  x + ff(norm(x)), the norms conditioned on `cond`. Written once for the three places the UNets use it:

  - `over="space"`: every frame's positions attend to the text (`context` given: cross-attention) or to each
    other (self-attention); spec §3.5.
  - `over="frames"`: every position attends across the frames of its clip (`num_frames` per clip of the
    `(b t)` batch), the keyframe UNet's temporal attention (spec §3.6).
  - `over="groups"`: the same across the interpolation UNet's groups, with the attention of the spatial
    block; `gated` blends each residual in by a zero-initialised scalar times the per-sample `mask`,
    x <- (1 - g) x + g y (`temporal_merge1`, `temporal_merge2`; spec §4.3).

  `names`: the (pre-attention norm, attention, pre-feed-forward norm) children, as the reference names them.
  """

  groups: int
  head_dim: int
  expansion_ratio: int
  over: Literal["space", "frames", "groups"] = "space"
  gated: bool = False
  names: tuple[str, str, str] = ("in_norm", "attention", "out_norm")
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _attend(self, a, context, context_mask, num_frames):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    n, h, w, c = a.shape
    name = self.names[1]
    if self.over == "space":
      return Attention(c, self.head_dim, context_axis="context_embed", name=name, **kw)(
          a.reshape(n, h * w, c), context, context_mask).reshape(n, h, w, c)
    if self.over == "frames":
      return TemporalAttention(c, self.head_dim, name=name, **kw)(
          a.reshape(n // num_frames, num_frames, h * w, c)).reshape(n, h, w, c)
    a = to_video(a, num_frames).transpose(0, 2, 3, 1, 4).reshape(-1, num_frames, c)  # (b h w) t c
    a = Attention(c, self.head_dim, name=name, **kw)(a)
    return a.reshape(n // num_frames, h, w, num_frames, c).transpose(0, 3, 1, 2, 4).reshape(n, h, w, c)

  def _residual(self, x, y, merge: str, mask):
    if not self.gated:
      return x + y
    gate = (merge_scalar(self, merge) * mask[:, None, None, None]).astype(x.dtype)
    return (1 - gate) * x + gate * y

  @nn.compact
  def __call__(self, x, cond, context=None, context_mask=None, *, num_frames: int | None = None, mask=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    in_norm, _, out_norm = self.names
    a = self._attend(ConditionalGroupNorm(self.groups, name=in_norm, **kw)(x, cond), context, context_mask,
                     num_frames)
    x = self._residual(x, a, "temporal_merge1", mask)
    f = feed_forward(ConditionalGroupNorm(self.groups, name=out_norm, **kw)(x, cond), self.expansion_ratio, **kw)
    return self._residual(x, f, "temporal_merge2", mask)


class AttentionPooling(nn.Module):
  """Adds to the time embedding an attention read-out of the text (the reference's `AttentionPolling`).

  The query is the mean of the context over all positions, masked ones included (they hold zeros). A context
  padded beyond the reference's length L (so that every prompt length shares one compiled program) gives
  the same mean when `context_length` (L, traced) is passed: the padding holds zeros too.
  """

  head_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, time_embed, context, context_mask, context_length=None):
    if context_length is None:
      query = context.mean(axis=1, keepdims=True)
    else:
      length = jnp.broadcast_to(jnp.asarray(context_length, jnp.float32), context.shape[:1])
      query = context.sum(axis=1, keepdims=True) / length[:, None, None].astype(context.dtype)
    pooled = Attention(time_embed.shape[-1], self.head_dim, context_axis="context_embed", name="attention",
                       dtype=self.dtype, param_dtype=self.param_dtype)(query, context, context_mask)
    return time_embed + pooled[:, 0]


def check_unet_input(x, config) -> None:
  """Names the problem when `x` is not a channels-last batch the UNet can down-sample."""
  if x.ndim != 4 or x.shape[-1] != config.num_channels:
    raise ValueError(f"x must be (N, H, W, {config.num_channels}) channels-last, got {x.shape}")
  downsampling = 2 ** (config.num_levels - 1)
  if x.shape[1] % downsampling or x.shape[2] % downsampling:
    raise ValueError(f"height and width must be multiples of {downsampling}, got {x.shape[1:3]}")


# Rematerialisation: each UNet level's activations are recomputed in the backward pass, keeping only the
# level outputs (and, with "levels_save_dots", the results of its matmuls and convolutions).
REMAT_POLICIES = {
    "none": None,
    "levels": jax.checkpoint_policies.nothing_saveable,
    "levels_save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class UNetLevel(nn.Module):
  """One down or up level of either video UNet (spec §3.8-§3.9, §4.3): per block a ResNet, cross-attention
  where the level has it, and a second ResNet, with the resampling in a down level's last block and in an
  up level's first; self-attention before a down level's blocks and after an up level's.

  The models add their temporal layers at named hook points (`temporal`: "before self-attention", "after
  self-attention", "block start", "after first resnet", "after cross-attention", "block end") and say how
  their ResNets take the temporal inputs (`resnet`). `__call__(x, cond, context, context_mask, *temporal)`:
  `temporal` is the model's own level inputs, the last one static (frames or groups per clip).
  `features` is the level's output width; an up level's input width (before the skip concatenation) is
  `in_features`.
  """

  config: Any
  features: int
  num_blocks: int
  cross_attention: bool
  self_attention: bool
  resample: bool
  in_features: int = 0
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  up: ClassVar[bool] = False

  def _kw(self):
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)

  def resnet(self, x, features: int, name: str, pattern, cond, temporal):
    raise NotImplementedError

  def temporal(self, x, point: str, prefix: str, cond, temporal):
    return x

  def _self_attention(self, x, cond, temporal):
    if not self.self_attention:
      return x
    x = self.temporal(x, "before self-attention", "", cond, temporal)
    x = AttentionBlock(self.config.groups, self.config.head_dim, self.config.expansion_ratio,
                       name="self_attention_block", **self._kw())(x, cond)
    return self.temporal(x, "after self-attention", "", cond, temporal)

  @nn.compact
  def __call__(self, x, cond, context, context_mask, *temporal):
    if not self.up:
      x = self._self_attention(x, cond, temporal)
    for j in range(self.num_blocks):
      prefix, last = f"resnet_attn_blocks_{j}", j == self.num_blocks - 1
      if self.up:
        widths = (x.shape[-1], self.features if last else self.in_features)
        patterns = (UP_SAMPLING if j == 0 and self.resample else NO_RESAMPLING, NO_RESAMPLING)
      else:
        widths = (self.features, self.features)
        patterns = (NO_RESAMPLING, DOWN_SAMPLING if last and self.resample else NO_RESAMPLING)
      x = self.temporal(x, "block start", prefix, cond, temporal)
      x = self.resnet(x, widths[0], f"{prefix}_0", patterns[0], cond, temporal)
      x = self.temporal(x, "after first resnet", prefix, cond, temporal)
      if self.cross_attention:
        x = AttentionBlock(self.config.groups, self.config.head_dim, self.config.expansion_ratio,
                           name=f"{prefix}_1", **self._kw())(x, cond, context, context_mask)
      x = self.temporal(x, "after cross-attention", prefix, cond, temporal)
      x = self.resnet(x, widths[1], f"{prefix}_2", patterns[1], cond, temporal)
      x = self.temporal(x, "block end", prefix, cond, temporal)
    if self.up:
      x = self._self_attention(x, cond, temporal)
    return x


def rematerialised(level, remat: str, static_argnums: tuple[int, ...]):
  """The module class `level`, recomputed in the backward pass as the policy `remat` says (as is for
  "none"); `static_argnums` count `self` as 0."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f"remat must be one of {', '.join(REMAT_POLICIES)}, got {remat!r}")
  policy = REMAT_POLICIES[remat]
  return level if policy is None else nn.remat(level, policy=policy, static_argnums=static_argnums)


def down_up_and_out(x, config, down_level, up_level, level_inputs: tuple, *, dtype: Dtype, param_dtype: Dtype,
                    remat: str = "none", deep_features=None, keep_deep_features: bool = False):
  """The UNet trunk after the input layer (spec §3.10 steps 4-6), shared by both video UNets.

  Down levels save their outputs as skips (all but the last); up levels concatenate them back, current
  features first; then GroupNorm -> SiLU -> 3x3 conv. `down_level` / `up_level` are the model's level
  module classes, called with `level_inputs`. Call inside a parent's compact method: the levels become its
  children `down_samples_{L}` / `up_samples_{U}`. The last of `level_inputs` is static (frames or
  groups per clip); `remat` names a policy of `REMAT_POLICIES`.

  Feature caching (kvjax.diffusion.feature_cache): `keep_deep_features` returns (output, deep features), the
  features entering the shallowest up level before its skip is concatenated; given `deep_features` (kept by
  an earlier call), only the shallowest down and up levels run, on them, and the output is (output, the same
  deep features).
  """
  kw = dict(dtype=dtype, param_dtype=param_dtype)
  static = (1 + 1 + len(level_inputs) - 1,)  # self, x, then the level inputs
  down_level, up_level = (rematerialised(level, remat, static) for level in (down_level, up_level))
  dims = config.hidden_dims
  levels = config.num_levels
  if (deep_features is not None or keep_deep_features) and levels < 2:
    raise ValueError(f"feature caching needs a UNet of at least 2 levels, this one has {levels}")
  down = lambda level, x: down_level(
      config, dims[level + 1], config.num_blocks[level], config.add_cross_attention[level],
      config.add_self_attention[level], level != levels - 1, name=f"down_samples_{level}", **kw)(x, *level_inputs)
  up = lambda u, x: up_level(
      config, dims[levels - 1 - u], config.num_blocks[levels - 1 - u], config.add_cross_attention[levels - 1 - u],
      config.add_self_attention[levels - 1 - u], u != 0, in_features=dims[levels - u],
      name=f"up_samples_{u}", **kw)(x, *level_inputs)
  skips = []
  for level in range(1 if deep_features is not None else levels):
    x = down(level, x)
    if level != levels - 1:
      skips.append(x)
  if deep_features is not None:
    x = deep_features
  else:
    for u in range(levels - 1):
      if u != 0:
        x = jnp.concatenate([x, skips.pop()], axis=-1)
      x = up(u, x)
  deep = x
  x = up(levels - 1, jnp.concatenate([x, skips.pop()], axis=-1) if levels > 1 else x)
  x = nn.silu(GroupNorm(config.groups, 1e-5, name="out_layer_0", **kw)(x))
  out = conv(config.out_channels, (3, 3), padding=((1, 1), (1, 1)), name="out_layer_2", **kw)(x)
  return (out, deep) if deep_features is not None or keep_deep_features else out
