"""Logical axis names for parameters and the rule table that maps them onto a device mesh.

Every parameter of every kvjax model is created through `logical_init`, so its logical axes are recorded
in the `nn.Partitioned` box that `init` returns. One rule table then decides the sharding on any mesh
(`flax.linen.logical_to_mesh_sharding`).

Logical axes used by the models:
  conv_in / conv_out   input and output channels of convolutions (and 1x1 feed-forward convs)
  embed                channel width of the residual stream seen by attention projections
  heads                the concatenated attention heads (out side of q/k/v, in side of the output layer)
  context_embed        width of the text context (input side of cross-attention keys/values)
  time_embed           width of the time / conditioning embedding
  time_embed_in        width of the sinusoidal embedding fed to the time MLPs
  norm_modulation      2*C outputs of a conditional norm's MLP (scale and shift)
  mlp                  hidden width of the feed-forward layers (1x1 convs in the UNets, T5's gated MLP)
  vocab                rows of a token embedding table
  norm                 per-channel scale/bias of affine norms
  None                 small axes that are never sharded (kernel taps, scalars)
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn

# Default rules: fully-sharded data parallelism over the larger weight axes plus tensor parallelism of the
# output channels / heads. Unlisted names are replicated.
DEFAULT_LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("conv_out", "tensor"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("norm_modulation", "tensor"),
    ("conv_in", "fsdp"),
    ("embed", "fsdp"),
    ("context_embed", "fsdp"),
    ("time_embed", "fsdp"),
    ("time_embed_in", None),
    ("norm", None),
)


def logical_init(init, axes: Sequence[str | None]):
  """Wraps an initializer so that the parameter it makes carries `axes` as logical names."""
  return nn.with_logical_partitioning(init, tuple(axes))
