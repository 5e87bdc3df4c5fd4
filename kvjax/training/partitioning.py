"""Shardings of parameters (from their logical axes and one rule table) and of batches."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from kvjax.sharding import DEFAULT_LOGICAL_AXIS_RULES

BATCH_AXES = ("data", "fsdp")  # the batch is split over both data-parallel axes


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
