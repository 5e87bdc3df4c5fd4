"""The UNets' text context: projected T5 states, masked and cut (spec §6.4); the unconditional one (§6.5).

Projection and masking run jitted on the full padded length, so one compilation serves every prompt; the
cut to the data-dependent length L happens on the host afterwards.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kvjax.model_configs import TextProjectionConfig
from kvjax.models.text_projection import TextProjections


@functools.partial(jax.jit, static_argnames=("config", "head"))
def project_context(params, hidden_states: jax.Array, attention_mask: jax.Array, *,
                    config: TextProjectionConfig, head: str = "projection_base") -> jax.Array:
  """One projection head applied to T5 states (B, T, in_dim), then zeros at padded positions (mask 0).

  The 1.1 pipeline uses "projection_base" in every stage, interpolation included.
  """
  context = TextProjections(config).apply({"params": params}, hidden_states, head=head)
  return jnp.where(attention_mask.astype(bool)[..., None], context, 0).astype(context.dtype)


def context_length(attention_mask) -> int:
  """L = the longest prompt's token count (EOS included) + 1, at most the padded length.

  So the context keeps one padded (zero, masked) position after the longest prompt, and none when a prompt
  fills every position.
  """
  mask = np.asarray(attention_mask).astype(bool)
  return int(min(mask.sum(axis=-1).max(initial=0) + 1, mask.shape[-1]))


def prompt_lengths(attention_mask) -> jax.Array:
  """(B,) int32: each prompt's own L (context_length of that prompt alone), traced: what the trainers pool
  with, so that a model learns the pooling it is sampled with."""
  mask = jnp.asarray(attention_mask).astype(bool)
  return jnp.minimum(mask.sum(axis=-1) + 1, mask.shape[-1]).astype(jnp.int32)


def text_context(params, hidden_states, attention_mask, config: TextProjectionConfig,
                 head: str = "projection_base") -> tuple[jax.Array, jax.Array]:
  """(context (B, L, context_dim), mask (B, L) bool) for the UNets, from T5 states and the prompt mask."""
  length = context_length(attention_mask)
  context = project_context(params, hidden_states, attention_mask, config=config, head=head)
  return context[:, :length], jnp.asarray(attention_mask)[:, :length].astype(bool)


def unconditional_context(null_embedding, batch: int, length: int,
                          dtype: Any = jnp.float32) -> tuple[jax.Array, jax.Array]:
  """All-zero context except the null embedding at position 0, where alone the mask is True.

  `null_embedding` is the UNet checkpoint's (context_dim,) or (1, context_dim) vector, cast to `dtype`.
  """
  null = jnp.asarray(null_embedding, dtype).reshape(-1)
  context = jnp.zeros((batch, length, null.shape[0]), dtype).at[:, 0].set(null)
  mask = jnp.zeros((batch, length), jnp.bool_).at[:, 0].set(True)
  return context, mask
