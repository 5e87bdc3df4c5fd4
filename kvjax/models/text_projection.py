"""The two projection heads of `t5_projections.pt` (spec §6.3): T5 hidden states -> UNet context.

Each head is Linear (no bias) then LayerNorm, named as the checkpoint's `<head>.0` and `<head>.1`
(`projection_base_0/kernel`, `projection_base_1/scale`, ...).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kvjax.model_configs import TextProjectionConfig
from kvjax.layers.basic import dense
from kvjax.sharding import logical_init

Dtype = Any

# The 1.1 pipeline selects "projection_base" in every stage; "projection_interpolation" is loaded, never used.
HEADS = ("projection_base", "projection_interpolation")


class TextProjections(nn.Module):
  """`(hidden_states (B, L, in_dim))` -> {head: (B, L, context_dim)} for both heads, or one head's output."""

  config: TextProjectionConfig
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _head(self, name: str, hidden_states):
    cfg = self.config
    x = dense(cfg.context_dim, ("embed", "context_embed"), use_bias=False, name=f"{name}_0", dtype=self.dtype,
              param_dtype=self.param_dtype)(hidden_states)
    # Statistics in float32 with the two-pass variance, as PyTorch's LayerNorm computes them.
    norm = nn.LayerNorm(epsilon=cfg.layer_norm_epsilon, use_fast_variance=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"{name}_1",
                        scale_init=logical_init(nn.initializers.ones, ("norm",)),
                        bias_init=logical_init(nn.initializers.zeros, ("norm",)))
    return norm(x.astype(jnp.float32)).astype(self.dtype)

  @nn.compact
  def __call__(self, hidden_states, head: str | None = None):
    """Both heads (what `init` needs) when `head` is None, else only the named head's output."""
    if head is None:
      return {name: self._head(name, hidden_states) for name in HEADS}
    if head not in HEADS:
      raise ValueError(f"unknown projection head {head!r}; the heads are {', '.join(HEADS)}")
    return self._head(head, hidden_states)
