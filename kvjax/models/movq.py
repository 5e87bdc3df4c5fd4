"""MoVQ: the image autoencoder and its temporal video decoder (spec §5, `movq.pt` / `video_movq.pt`).

Images are channels-last in [-1, 1]; latents are (N, H/8, W/8, 4) with no quantiser and no scaling. The
decoder's norms are modulated by the raw latent (`zq`, nearest-upsampled), and the video decoder blends
3x3x3 convolutions over time into every ResnetBlock and attends across frames at its lowest resolution.

Frames are a flattened `(b t)` batch. The reference decodes one clip per call (T = N); here `num_frames`
splits the batch into clips of T frames, each decoded as the reference decodes one call.

Reference quirk (spec §5.6), kept by default: the spatial attention blocks of the decoder normalise every
frame with the latent of the FIRST frame of its clip (the reference passes the whole zq batch to a
per-frame norm, which then pairs the frame with zq[0]). `attention_norm_latent="own"` uses each frame's
own latent instead, which is what the architecture intends; it changes every frame but the first.
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from kvjax.model_configs import MoVQConfig
from kvjax.layers.attention import dot_product_attention, implementation_of
from kvjax.layers.basic import conv
from kvjax.layers.norms import GroupNorm
from kvjax.models.unet_layers import merge_scalar, rematerialised, to_video

Dtype = Any
AttentionNormLatent = Literal["first_of_clip", "own"]

_EPS = 1e-6


def nearest_resize(x: jax.Array, height: int, width: int) -> jax.Array:
  """PyTorch `interpolate(mode="nearest")` of a channels-last batch: source index floor(i * in / out)."""
  rows = (jnp.arange(height) * x.shape[1]) // height
  cols = (jnp.arange(width) * x.shape[2]) // width
  return x[:, rows][:, :, cols]


class SpatialNorm(nn.Module):
  """GroupNorm(32, eps 1e-6), then, given a latent zq: GN(x) * conv_y(zq) + conv_b(zq) (no "+1")."""

  groups: int
  conditioned: bool = False  # whether conv_y / conv_b exist (decoder norms)
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, zq=None):
    normed = GroupNorm(self.groups, _EPS, name="norm_layer", dtype=self.dtype,
                       param_dtype=self.param_dtype)(x)
    if not self.conditioned or zq is None:
      return normed
    channels = x.shape[-1]
    project = lambda name: conv(channels, (1, 1), name=name, in_axis=None, dtype=self.dtype,
                                param_dtype=self.param_dtype)
    # A 1x1 conv commutes with nearest up-sampling: project at the latent's resolution, then repeat.
    scale, shift = (nearest_resize(project(name)(zq), *x.shape[1:3]) for name in ("conv_y", "conv_b"))
    return normed * scale + shift


class Upsample(nn.Module):
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return conv(x.shape[-1], (3, 3), name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Downsample(nn.Module):
  """Zero padding on the right and bottom only, then a stride-2 3x3 convolution (spec §5.2)."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    return conv(x.shape[-1], (3, 3), strides=2, padding=((0, 1), (0, 1)), name="conv", dtype=self.dtype,
                param_dtype=self.param_dtype)(x)


class ResnetBlock(nn.Module):
  """norm -> SiLU -> conv, twice, each optionally blended with a 3x3x3 temporal conv; plus the shortcut."""

  features: int
  groups: int
  conditioned: bool = False
  temporal: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, zq=None, num_frames: int | None = None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = x
    for i in (1, 2):
      h = SpatialNorm(self.groups, self.conditioned, name=f"norm{i}", **kw)(h, zq)
      h = conv(self.features, (3, 3), name=f"conv{i}", **kw)(nn.silu(h))
      if self.temporal and num_frames is not None:
        # Zero padding in time, so the first and last frames of a clip see one neighbour.
        out = conv(self.features, (3, 3, 3), name=f"temporal_projection{i}", zero_init=True,
                   **kw)(to_video(h, num_frames)).reshape(h.shape)
        merge = merge_scalar(self, f"temporal_merge{i}").astype(h.dtype)
        h = (1 - merge) * h + merge * out
    if x.shape[-1] != self.features:
      x = conv(self.features, (1, 1), name="nin_shortcut", **kw)(x)
    return x + h


class _SingleHeadAttention(nn.Module):
  """q, k, v and proj_out 1x1 convolutions around one head as wide as the channels."""

  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def project(self, name: str, x):
    return conv(x.shape[-1], (1, 1), name=name, dtype=self.dtype, param_dtype=self.param_dtype)(x)


class AttnBlock(_SingleHeadAttention):
  """Self-attention over the pixels of each frame: x + proj_out(attention(norm(x, zq)))."""

  groups: int = 32
  conditioned: bool = False

  @nn.compact
  def __call__(self, x, zq=None):
    n, height, width, c = x.shape
    h = SpatialNorm(self.groups, self.conditioned, name="norm", dtype=self.dtype,
                    param_dtype=self.param_dtype)(x, zq)
    tokens = lambda t: t.reshape(n, height * width, 1, c)
    out = dot_product_attention(*(tokens(self.project(name, h)) for name in ("q", "k", "v")),
                                implementation=implementation_of(self))
    return x + self.project("proj_out", out.reshape(x.shape))


class TemporalAttnBlock(_SingleHeadAttention):
  """Self-attention across the frames of a clip at every pixel, after a plain GroupNorm.

  The reference builds this norm with latent-conditioning convs but never passes it a latent: the
  `norm.conv_y` / `norm.conv_b` weights exist (so checkpoints convert strictly) and are never used.
  """

  groups: int = 32

  @nn.compact
  def __call__(self, x, num_frames: int, zq_for_init=None):
    norm = SpatialNorm(self.groups, conditioned=True, name="norm", dtype=self.dtype,
                       param_dtype=self.param_dtype)
    if self.is_initializing() and zq_for_init is not None:
      norm(x, zq_for_init)  # creates the dead conv_y / conv_b weights
    h = norm(x)
    n, height, width, c = x.shape
    b = n // num_frames

    def pixels_as_batch(t):  # (b t) h w c -> (b h w) t 1 c
      t = t.reshape(b, num_frames, height * width, c).transpose(0, 2, 1, 3)
      return t.reshape(b * height * width, num_frames, 1, c)

    out = dot_product_attention(*(pixels_as_batch(self.project(name, h)) for name in ("q", "k", "v")),
                                implementation=implementation_of(self))
    out = out.reshape(b, height * width, num_frames, c).transpose(0, 2, 1, 3).reshape(x.shape)
    return x + self.project("proj_out", out)


def _attention_levels(config: MoVQConfig) -> tuple[bool, ...]:
  """Whether each level (0 = full resolution) has attention, from its nominal resolution."""
  return tuple(config.resolution // 2 ** i in config.attn_resolutions for i in range(config.num_levels))


class EncoderLevel(nn.Module):
  """`down.{i}`: ResnetBlocks (each followed by attention on attention levels), then a down-sampling."""

  config: MoVQConfig
  level: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for b in range(cfg.num_res_blocks):
      h = ResnetBlock(cfg.ch * cfg.ch_mult[self.level], cfg.num_groups, name=f"block_{b}", **kw)(h)
      if _attention_levels(cfg)[self.level]:
        h = AttnBlock(groups=cfg.num_groups, name=f"attn_{b}", **kw)(h)
    if self.level != cfg.num_levels - 1:
      h = Downsample(name="downsample", **kw)(h)
    return h


class DecoderLevel(nn.Module):
  """`up.{i}`: ResnetBlocks, each followed on attention levels by spatial then temporal attention;
  then an up-sampling. Also the decoder's `mid` (`is_mid`): block_1, attn_1, temporal_attn_1, block_2."""

  config: MoVQConfig
  level: int
  is_mid: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h, zq, attention_zq, num_frames: int):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    frames = num_frames if cfg.temporal else None

    def block(name, temporal):
      return ResnetBlock(cfg.ch * cfg.ch_mult[self.level], cfg.num_groups, conditioned=True,
                         temporal=temporal, name=name, **kw)(h, zq, frames)

    def attention(suffix):
      out = AttnBlock(groups=cfg.num_groups, conditioned=True, name=f"attn{suffix}", **kw)(h, attention_zq)
      if cfg.temporal_attention_block:
        out = TemporalAttnBlock(groups=cfg.num_groups, name=f"temporal_attn{suffix}", **kw)(out, num_frames, zq)
      return out

    if self.is_mid:
      temporal = cfg.temporal and cfg.temporal_mid_blocks
      h = block("block_1", temporal)
      h = attention("_1")
      return block("block_2", temporal)
    for b in range(cfg.num_res_blocks + 1):
      h = block(f"block_{b}", cfg.temporal)
      if _attention_levels(cfg)[self.level]:
        h = attention(f"_{b}")
    if self.level != 0:
      h = Upsample(name="upsample", **kw)(h)
    return h


class EncoderMid(nn.Module):
  """`mid`: ResnetBlock, attention, ResnetBlock at the lowest resolution."""

  config: MoVQConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    groups = self.config.num_groups
    h = ResnetBlock(h.shape[-1], groups, name="block_1", **kw)(h)
    h = AttnBlock(groups=groups, name="attn_1", **kw)(h)
    return ResnetBlock(h.shape[-1], groups, name="block_2", **kw)(h)


class Encoder(nn.Module):
  config: MoVQConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # unet_layers.REMAT_POLICIES: recompute each level in the backward pass

  @nn.compact
  def __call__(self, x):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    level = rematerialised(EncoderLevel, self.remat, ())
    h = conv(cfg.ch, (3, 3), name="conv_in", **kw)(x)
    for i in range(cfg.num_levels):
      h = level(cfg, i, name=f"down_{i}", **kw)(h)
    h = EncoderMid(cfg, name="mid", **kw)(h)
    h = SpatialNorm(cfg.num_groups, name="norm_out", **kw)(h)
    return conv(cfg.z_channels, (3, 3), name="conv_out", **kw)(nn.silu(h))


class Decoder(nn.Module):
  """The (temporal) MoVQ decoder: z (N, h, w, 4) and its raw latent zq -> images (N, 8h, 8w, 3).

  `features_only` stops before `conv_out` and returns its input (the trainer's adaptive GAN weight needs
  the gradients of the output layer alone)."""

  config: MoVQConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # unet_layers.REMAT_POLICIES: recompute each level in the backward pass

  @nn.compact
  def __call__(self, z, zq, num_frames: int, attention_norm_latent: AttentionNormLatent = "first_of_clip",
               features_only: bool = False):
    cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    level = rematerialised(DecoderLevel, self.remat, (4,))  # self, h, zq, attention_zq, num_frames
    if attention_norm_latent == "first_of_clip":  # spec §5.6: frame 0 of each clip, repeated over the clip
      attention_zq = jnp.repeat(to_video(zq, num_frames)[:, 0], num_frames, axis=0)
    elif attention_norm_latent == "own":
      attention_zq = zq
    else:
      raise ValueError(f"attention_norm_latent must be 'first_of_clip' or 'own', got {attention_norm_latent!r}")
    lowest = cfg.num_levels - 1
    h = conv(cfg.ch * cfg.ch_mult[lowest], (3, 3), name="conv_in", **kw)(z)
    h = level(cfg, lowest, is_mid=True, name="mid", **kw)(h, zq, attention_zq, num_frames)
    for i in reversed(range(cfg.num_levels)):  # `up.{n-1}` is the lowest resolution and runs first
      h = level(cfg, i, name=f"up_{i}", **kw)(h, zq, attention_zq, num_frames)
    h = nn.silu(SpatialNorm(cfg.num_groups, conditioned=True, name="norm_out", **kw)(h, zq))
    return h if features_only else output_layer(cfg, **kw)(h)


def output_layer(config: MoVQConfig, **kw) -> nn.Module:
  """The decoder's `conv_out` (its parameters are `params["decoder"]["conv_out"]`)."""
  return conv(config.out_ch, (3, 3), name="conv_out", **kw)


class MoVQ(nn.Module):
  """`encode(images) -> latents`, `decode(latents, num_frames) -> images`; `__call__` does both (for init)."""

  config: MoVQConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  remat: str = "none"  # unet_layers.REMAT_POLICIES, for training: encoder and decoder levels recomputed
  attention_implementation: str = "xla"  # kvjax.layers.attention.ATTENTION_IMPLEMENTATIONS

  def setup(self):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    z = self.config.z_channels
    self.encoder = Encoder(self.config, remat=self.remat, **kw)
    self.quant_conv = conv(z, (1, 1), name="quant_conv", **kw)
    self.post_quant_conv = conv(z, (1, 1), name="post_quant_conv", **kw)
    self.decoder = Decoder(self.config, remat=self.remat, **kw)

  def encode(self, images):
    """(N, H, W, 3) in [-1, 1] -> latents (N, H/8, W/8, 4); H and W must divide by the down-sampling."""
    factor = self.config.downsampling_factor
    if images.ndim != 4 or images.shape[-1] != self.config.in_channels:
      raise ValueError(f"images must be (N, H, W, {self.config.in_channels}), got {images.shape}")
    if images.shape[1] % factor or images.shape[2] % factor:
      raise ValueError(f"image size {images.shape[1]}x{images.shape[2]} is not a multiple of {factor}")
    return self.quant_conv(self.encoder(images))

  def decode(self, latents, num_frames: int | None = None,
             attention_norm_latent: AttentionNormLatent = "first_of_clip", features_only: bool = False):
    """(N, h, w, 4) -> (N, 8h, 8w, 3), in clips of `num_frames` (default: the whole batch, as the reference);
    `features_only`: the input of the output layer instead (`Decoder`)."""
    if latents.ndim != 4 or latents.shape[-1] != self.config.z_channels:
      raise ValueError(f"latents must be (N, h, w, {self.config.z_channels}), got {latents.shape}")
    num_frames = num_frames or latents.shape[0]
    if latents.shape[0] % num_frames:
      raise ValueError(f"{latents.shape[0]} latents do not split into clips of {num_frames} frames")
    return self.decoder(self.post_quant_conv(latents), latents, num_frames, attention_norm_latent, features_only)

  def __call__(self, images, num_frames: int | None = None):
    return self.decode(self.encode(images), num_frames)


def reference_chunk_sizes(num_frames: int) -> list[int]:
  """Clip lengths of the reference video decode (spec §8.6): `torch.chunk` into num_frames // 4 chunks."""
  if num_frames < 4:
    raise ValueError(f"the reference decodes at least 4 frames, got {num_frames}")
  size = -(-num_frames // (num_frames // 4))
  return [min(size, num_frames - start) for start in range(0, num_frames, size)]
