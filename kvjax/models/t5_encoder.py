"""The T5 v1.1 encoder stack (spec §6.2): Flan-UL2's text encoder, returning the last hidden state.

Module paths mirror Hugging Face's `T5EncoderModel` (`shared`, `encoder/block_{i}/layer_0/SelfAttention/q`,
`encoder/block_{i}/layer_1/DenseReluDense/wi_0`, ...), so a checkpoint key is its parameter path joined with
dots (`kvjax.conversion.t5`). As there, the relative-position bias table belongs to the first block's
attention, which computes the bias once for all blocks.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kvjax.model_configs import T5EncoderConfig
from kvjax.layers.attention import dot_product_attention, implementation_of
from kvjax.layers.basic import dense
from kvjax.sharding import logical_init

Dtype = Any

_ACTIVATIONS = {
    "gated-silu": nn.silu,
    "gated-gelu": lambda x: nn.gelu(x, approximate=True),  # Hugging Face's "gelu_new"
}


def relative_position_buckets(query_length: int, key_length: int, num_buckets: int,
                              max_distance: int) -> np.ndarray:
  """(query_length, key_length) bucket of every relative position key - query (bidirectional).

  Each sign gets half the buckets; in a half, the first quarter of the buckets hold one distance each and
  the rest split the distances up to `max_distance` logarithmically (further ones share the last bucket).
  Computed on the host from static shapes; float64 logarithms give the reference's float32 buckets for
  every distance (checked in the tests).
  """
  relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  half = num_buckets // 2
  exact = half // 2
  distance = np.abs(relative)
  log_ratio = np.log(np.maximum(distance, 1) / exact) / math.log(max_distance / exact)
  far = np.minimum(exact + np.floor(log_ratio * (half - exact)).astype(np.int64), half - 1)
  return (np.where(relative > 0, half, 0) + np.where(distance < exact, distance, far)).astype(np.int32)


class RMSNorm(nn.Module):
  """T5's layer norm: divides by the root mean square (in float32), no centring and no bias."""

  eps: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", logical_init(nn.initializers.ones, ("norm",)), (x.shape[-1],),
                       self.param_dtype)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return (x * scale.astype(jnp.float32)).astype(self.dtype)


class SelfAttention(nn.Module):
  """Multi-head self-attention with unscaled logits (T5 folds the 1/sqrt(d) into the query weights)."""

  config: T5EncoderConfig
  has_relative_attention_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _relative_position_bias(self, length: int) -> jax.Array:
    """(1, heads, length, length) learned bias of each relative position."""
    cfg = self.config
    table = nn.Embed(cfg.relative_attention_num_buckets, cfg.num_heads, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="relative_attention_bias",
                     embedding_init=logical_init(nn.initializers.normal(1.0), (None, None)))
    buckets = relative_position_buckets(length, length, cfg.relative_attention_num_buckets,
                                        cfg.relative_attention_max_distance)
    return table(buckets).transpose(2, 0, 1)[None]

  @nn.compact
  def __call__(self, x, mask_bias, position_bias=None):
    """`mask_bias` (B, 1, 1, L) is added to the logits; returns the output and the position bias it used."""
    cfg = self.config
    if self.has_relative_attention_bias:
      position_bias = self._relative_position_bias(x.shape[1])
    elif position_bias is None:
      raise ValueError("only the first block owns the relative position bias; pass its bias to the others")
    inner = cfg.num_heads * cfg.d_kv
    projection = lambda name, axes, features: dense(features, axes, use_bias=False, name=name,
                                                    dtype=self.dtype, param_dtype=self.param_dtype)
    split = lambda t: t.reshape(*t.shape[:-1], cfg.num_heads, cfg.d_kv)
    query, key, value = (split(projection(name, ("embed", "heads"), inner)(x)) for name in ("q", "k", "v"))
    out = dot_product_attention(query, key, value, implementation=implementation_of(self),
                                bias=position_bias + mask_bias, scale=1.0).reshape(*x.shape[:-1], inner)
    return projection("o", ("heads", "embed"), cfg.d_model)(out), position_bias


class GatedFeedForward(nn.Module):
  """wo(act(wi_0 x) * wi_1 x), all without bias; named `DenseReluDense` after the Hugging Face module."""

  config: T5EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    projection = lambda name, axes, features: dense(features, axes, use_bias=False, name=name,
                                                    dtype=self.dtype, param_dtype=self.param_dtype)
    gate = _ACTIVATIONS[cfg.feed_forward_proj](projection("wi_0", ("embed", "mlp"), cfg.d_ff)(x))
    hidden = gate * projection("wi_1", ("embed", "mlp"), cfg.d_ff)(x)
    return projection("wo", ("mlp", "embed"), cfg.d_model)(hidden)


class AttentionLayer(nn.Module):
  """Pre-norm residual self-attention (`layer.0` of a Hugging Face T5 block)."""

  config: T5EncoderConfig
  has_relative_attention_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    normed = RMSNorm(self.config.layer_norm_epsilon, name="layer_norm", **kw)(x)
    out, position_bias = SelfAttention(self.config, self.has_relative_attention_bias, name="SelfAttention",
                                       **kw)(normed, mask_bias, position_bias)
    return x + out, position_bias


class FeedForwardLayer(nn.Module):
  """Pre-norm residual gated feed-forward (`layer.1` of a Hugging Face T5 block)."""

  config: T5EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    normed = RMSNorm(self.config.layer_norm_epsilon, name="layer_norm", **kw)(x)
    return x + GatedFeedForward(self.config, name="DenseReluDense", **kw)(normed)


class Block(nn.Module):
  config: T5EncoderConfig
  has_relative_attention_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask_bias, position_bias=None):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x, position_bias = AttentionLayer(self.config, self.has_relative_attention_bias, name="layer_0",
                                      **kw)(x, mask_bias, position_bias)
    return FeedForwardLayer(self.config, name="layer_1", **kw)(x), position_bias


class EncoderStack(nn.Module):
  """The blocks and the final norm, on embedded tokens (Hugging Face's `T5Stack`, named `encoder`)."""

  config: T5EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  scan_layers: bool = False

  @nn.compact
  def __call__(self, x, attention_mask):
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    # Padded keys get the most negative finite value, never -inf, so even an all-padding row stays finite.
    mask_bias = jnp.where(attention_mask.astype(bool), 0.0, jnp.finfo(self.dtype).min).astype(self.dtype)
    mask_bias = mask_bias[:, None, None, :]
    x, position_bias = Block(self.config, has_relative_attention_bias=True, name="block_0", **kw)(x, mask_bias)
    if self.scan_layers and self.config.num_layers > 1:
      # One compiled block for all the others (their parameters stacked, SCANNED_BLOCKS): compile time
      # stays that of two blocks whatever the depth.
      blocks = nn.scan(_ScannedBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=(nn.broadcast, nn.broadcast), length=self.config.num_layers - 1,
                       metadata_params={nn.PARTITION_NAME: None})
      x, _ = blocks(self.config, name=SCANNED_BLOCKS, **kw)(x, mask_bias, position_bias)
    else:
      for i in range(1, self.config.num_layers):
        x, _ = Block(self.config, name=f"block_{i}", **kw)(x, mask_bias, position_bias)
    return RMSNorm(self.config.layer_norm_epsilon, name="final_layer_norm", **kw)(x)


SCANNED_BLOCKS = "scanned_blocks"  # encoder/scanned_blocks: blocks 1..N-1 stacked on a leading axis


class _ScannedBlock(Block):
  """A block as the body of nn.scan: the hidden state is the carry, nothing is stacked out."""

  @nn.compact
  def __call__(self, x, mask_bias, position_bias=None):
    return super().__call__(x, mask_bias, position_bias)[0], None


def scan_layout(params, num_layers: int, stack=lambda *layers: np.stack([np.asarray(a) for a in layers])):
  """Per-block parameters (the converted layout) -> the `scan_layers=True` layout: blocks 1..N-1 stacked
  (`stack` joins one parameter's N-1 leaves: arrays by default; e.g. shardings gain a leading None axis).
  Parameters already in that layout (e.g. read so by kvjax.pipeline.pipeline_weights) are returned as they are."""
  if SCANNED_BLOCKS in params["encoder"]:
    return params
  encoder = dict(params["encoder"])
  rest = [encoder.pop(f"block_{i}") for i in range(1, num_layers)]
  if rest:
    encoder[SCANNED_BLOCKS] = jax.tree.map(stack, *rest)
  return {**params, "encoder": encoder}


class T5Encoder(nn.Module):
  """(input_ids (B, L) int, attention_mask (B, L) int or bool, 1 = real token) -> (B, L, d_model).

  The output is the last hidden state after the final norm, as the reference uses it. Embeddings are not
  scaled. Padded positions get outputs too (computed from the real tokens); callers mask them.
  """

  config: T5EncoderConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  attention_implementation: str = "xla"  # kvjax.layers.attention.ATTENTION_IMPLEMENTATIONS
  scan_layers: bool = False  # blocks 1..N-1 as one scanned block (params in `scan_layout`)

  @nn.compact
  def __call__(self, input_ids, attention_mask=None):
    cfg = self.config
    if attention_mask is None:
      attention_mask = jnp.ones(input_ids.shape, jnp.bool_)
    embed = nn.Embed(cfg.vocab_size, cfg.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
                     embedding_init=logical_init(nn.initializers.normal(1.0), ("vocab", "embed")),
                     name="shared")
    return EncoderStack(cfg, dtype=self.dtype, param_dtype=self.param_dtype, scan_layers=self.scan_layers,
                        name="encoder")(
        embed(input_ids), attention_mask)
