"""Shardings of parameters (from their logical axes and one rule table) and of batches."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kvjax.sharding import DEFAULT_LOGICAL_AXIS_RULES

# The batch is split over both data-parallel axes, fsdp-major. Not ("data", "fsdp"): XLA's SPMD partitioner
# (jax/jaxlib 0.10.2, Shardy and GSPMD alike) miscompiles a dot whose lhs batch is split over (X, Y), with its
# contraction and the result's features on a third axis, when the weight's output dimension is split over Y,
# the minor batch axis: it permutes the lhs shards to Y-major and never permutes the result back, so rows of
# different batch shards trade places (data=2,fsdp=2,tensor=2: ~50% error in the UNet forward at the first
# ("heads", "embed") or ("mlp", "embed") weight). Weights are never split over "data", so with "data" minor
# no weight can meet that pattern. Each host still loads its own (now strided) rows of the global batch.
BATCH_AXES = ("fsdp", "data")


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=DEFAULT_LOGICAL_AXIS_RULES) -> PartitionSpec:
  """Maps logical names to mesh axes by the rules; an axis stays whole (replicated) when its mesh axis is
  of size 1, does not divide it, or is already used by an earlier dimension of the same parameter."""
  table = dict(rules)
  used, spec = set(), []
  for name, size in zip(names, shape):
    axis = table.get(name) if name is not None else None
    if axis is None or axis in used or mesh.shape[axis] == 1 or size % mesh.shape[axis]:
      spec.append(None)
    else:
      spec.append(axis)
      used.add(axis)
  return PartitionSpec(*spec)


def param_shardings(boxed_params, mesh: Mesh, rules=DEFAULT_LOGICAL_AXIS_RULES) -> Any:
  """NamedShardings for a tree of `nn.Partitioned` leaves (e.g. `kvjax.params.abstract_params`)."""
  def one(leaf):
    if isinstance(leaf, nn.Partitioned):
      return NamedSharding(mesh, logical_to_spec(leaf.names, leaf.value.shape, mesh, rules))
    return NamedSharding(mesh, PartitionSpec())
  return jax.tree.map(one, boxed_params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())
