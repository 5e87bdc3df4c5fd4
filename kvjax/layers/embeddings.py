"""Sinusoidal embeddings of scalars (timesteps, frame indices, noise levels, motion scores)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from kvjax.layers.basic import dense

Dtype = Any


def sinusoidal_embedding(values: jax.Array, dim: int) -> jax.Array:
  """(N,) -> (N, dim) float32: all sines, then all cosines, frequencies exp(-j ln(1e4) / (dim/2 - 1)).

  Always float32, whatever the input dtype: arguments reach ~1000 rad, where bf16 would be useless.
  """
  half = dim // 2
  frequencies = jnp.exp(jnp.arange(half, dtype=jnp.float32) * (-math.log(10000.0) / (half - 1)))
  angles = values.astype(jnp.float32)[:, None] * frequencies[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def scalar_embedding_mlp(values: jax.Array, *, name: str, sinusoidal_dim: int, features: int,
                         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32) -> jax.Array:
  """Sinusoidal embedding -> Linear -> SiLU -> Linear, the reference's 4-element Sequential.

  Call it inside a parent's compact method: the two Dense layers become the parent's children
  `<name>_1` and `<name>_3`, the reference's `<name>.1` and `<name>.3`.
  """
  h = sinusoidal_embedding(values, sinusoidal_dim)
  h = dense(features, ("time_embed_in", "time_embed"), use_bias=True, name=f"{name}_1",
            dtype=dtype, param_dtype=param_dtype)(h)
  return dense(features, ("time_embed", "time_embed"), use_bias=True, name=f"{name}_3",
               dtype=dtype, param_dtype=param_dtype)(nn.silu(h))
