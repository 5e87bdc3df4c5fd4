"""Group normalisation: plain, affine and conditioned on an embedding."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kvjax.layers.basic import dense
from kvjax.sharding import logical_init

Dtype = Any


def group_norm(x: jax.Array, groups: int, eps: float) -> jax.Array:
  """Normalises each sample of a channels-last array over (spatial positions x channels of a group).

  Statistics are in float32 with the two-pass variance (E[x^2] - E[x]^2 loses precision on activations with
  a large mean). The leading axis is the sample axis: a flattened `(b t)` video is normalised per frame.
  """
  if x.shape[-1] % groups:
    raise ValueError(f"{x.shape[-1]} channels do not split into {groups} groups")
  dtype = x.dtype
  grouped = x.astype(jnp.float32).reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
  axes = tuple(range(1, x.ndim - 1)) + (x.ndim,)
  mean = grouped.mean(axis=axes, keepdims=True)
  centred = grouped - mean
  variance = jnp.square(centred).mean(axis=axes, keepdims=True)
  return (centred * jax.lax.rsqrt(variance + eps)).reshape(x.shape).astype(dtype)


class GroupNorm(nn.Module):
  """Affine GroupNorm (PyTorch `nn.GroupNorm`): parameters `scale` and `bias`."""

  groups: int
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    channels = x.shape[-1]
    scale = self.param("scale", logical_init(nn.initializers.ones, ("norm",)), (channels,), self.param_dtype)
    bias = self.param("bias", logical_init(nn.initializers.zeros, ("norm",)), (channels,), self.param_dtype)
    y = group_norm(x, self.groups, self.eps).astype(jnp.float32)
    return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


class ConditionalGroupNorm(nn.Module):
  """GroupNorm without affine parameters, modulated per sample: y = GN(x) * (1 + scale) + shift.

  (scale, shift) = Dense(SiLU(cond)). The Dense is zero-initialised as in the reference, so a fresh layer
  is a plain GroupNorm. Its name `context_mlp_1` mirrors the reference's `context_mlp.1`.
  """

  groups: int
  eps: float = 1e-5
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, cond):
    channels = x.shape[-1]
    modulation = dense(2 * channels, ("time_embed", "norm_modulation"), use_bias=True, name="context_mlp_1",
                       dtype=self.dtype, param_dtype=self.param_dtype, zero_init=True)(nn.silu(cond))
    modulation = modulation.reshape(modulation.shape[0], *(1,) * (x.ndim - 2), 2 * channels)
    scale, shift = jnp.split(modulation, 2, axis=-1)
    return (group_norm(x, self.groups, self.eps) * (1.0 + scale) + shift).astype(self.dtype)
