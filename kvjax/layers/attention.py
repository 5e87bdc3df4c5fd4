"""Multi-head attention in the reference parameterisation: four bias-free projections."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kvjax.layers.basic import dense

Dtype = Any


# How attention is computed: "xla" is ours below (the reference's arithmetic, every platform); "jax" is
# jax.nn.dot_product_attention letting JAX pick its implementation; "cudnn" forces cuDNN's fused kernel
# (NVIDIA GPUs, bf16/fp16). A model's `attention_implementation` field chooses for all its layers.
ATTENTION_IMPLEMENTATIONS = ("xla", "jax", "cudnn")


def check_attention_implementation(name: str) -> str:
  if name not in ATTENTION_IMPLEMENTATIONS:
    raise ValueError(f"attention implementation must be one of {', '.join(ATTENTION_IMPLEMENTATIONS)}, "
                     f"got {name!r}")
  return name


def implementation_of(module: nn.Module) -> str:
  """The `attention_implementation` of the nearest enclosing model that has one (the UNets, MoVQs and T5
  carry it), so the choice reaches every attention layer without threading it through each level."""
  while isinstance(module, nn.Module):
    name = getattr(module, "attention_implementation", None)
    if isinstance(name, str):
      return name
    module = module.parent
  return "xla"


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None,
                          implementation: str = "xla", bias: jax.Array | None = None,
                          scale: float | None = None) -> jax.Array:
  """(B, Tq, H, D) x (B, Tk, H, D) -> (B, Tq, H, D), softmax over keys in float32.

  `mask` (B, Tk) is True where a key may be attended to. Masked logits take the most negative finite value
  of the logits dtype, as the reference does (never -inf, so a fully masked row stays finite). `bias`
  (broadcastable to (B, H, Tq, Tk)) is added to the logits; `scale` defaults to 1/sqrt(D).
  """
  scale = query.shape[-1] ** -0.5 if scale is None else scale
  if implementation != "xla":
    return jax.nn.dot_product_attention(
        query, key, value, bias=bias, mask=None if mask is None else mask[:, None, None, :], scale=scale,
        implementation=None if implementation == "jax" else check_attention_implementation(implementation))
  logits = jnp.einsum("bqhd,bkhd->bhqk", query, key) * scale
  if bias is not None:
    logits = logits + bias
  if mask is not None:
    logits = jnp.where(mask[:, None, None, :], logits, -jnp.finfo(logits.dtype).max)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(value.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, value)


class Attention(nn.Module):
  """Attention from `x` (B, N, C_in) to `context` (B, M, C_ctx), heads of `head_dim` channels.

  Self-attention when `context` is None. Projections are named as the reference's (`to_query`, `to_key`,
  `to_value`, `output_layer`).
  """

  features: int
  head_dim: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  context_axis: str = "embed"

  @nn.compact
  def __call__(self, x, context=None, mask=None):
    if self.features % self.head_dim:
      raise ValueError(f"{self.features} channels do not split into heads of {self.head_dim}")
    heads = self.features // self.head_dim
    context_axis = self.context_axis if context is not None else "embed"
    context = x if context is None else context
    projection = lambda name, axes: dense(self.features, axes, use_bias=False, name=name, dtype=self.dtype,
                                          param_dtype=self.param_dtype)
    split = lambda t: t.reshape(*t.shape[:-1], heads, self.head_dim)
    query = split(projection("to_query", ("embed", "heads"))(x))
    key = split(projection("to_key", (context_axis, "heads"))(context))
    value = split(projection("to_value", (context_axis, "heads"))(context))
    out = dot_product_attention(query, key, value, mask, implementation_of(self))
    out = out.reshape(*out.shape[:-2], self.features)
    return projection("output_layer", ("heads", "embed"))(out)


class TemporalAttention(nn.Module):
  """Self-attention across frames, separately at every spatial position: x is (b, T, n, C)."""

  features: int
  head_dim: int = 64
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, t, n, c = x.shape
    heads = self.features // self.head_dim
    projection = lambda name, zero_init=False: dense(
        self.features, ("embed", "heads") if name != "output_layer" else ("heads", "embed"), use_bias=False,
        name=name, dtype=self.dtype, param_dtype=self.param_dtype, zero_init=zero_init)
    split = lambda y: y.reshape(b, t, n, heads, self.head_dim)
    query, key, value = (split(projection(name)(x)) for name in ("to_query", "to_key", "to_value"))
    implementation = implementation_of(self)
    if implementation == "xla":
      # Frames attend to frames at the same position: the einsums index around the (b, n) axes, no transposes.
      logits = jnp.einsum("btnhd,bsnhd->bnhts", query, key) * self.head_dim ** -0.5
      weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(value.dtype)
      out = jnp.einsum("bnhts,bsnhd->btnhd", weights, value).reshape(b, t, n, self.features)
    else:  # the fused kernels want (batch, frames, heads, dim): positions join the batch
      as_batch = lambda y: y.transpose(0, 2, 1, 3, 4).reshape(b * n, t, heads, self.head_dim)
      out = dot_product_attention(*(as_batch(y) for y in (query, key, value)), implementation=implementation)
      out = out.reshape(b, n, t, self.features).transpose(0, 2, 1, 3)
    # The reference zero-initialises this projection so that a fresh block is an identity.
    return projection("output_layer", zero_init=True)(out)
