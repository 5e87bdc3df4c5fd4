"""Logical axis names for parameters, the rule table that maps them onto a device mesh, and the meshes.

The one owner of shardings: training and sampling both resolve parameters, batches and meshes here.

Every parameter of every kvjax model is created through `logical_init`, so its logical axes are recorded
in the `nn.Partitioned` box that `init` returns. One rule table then decides the sharding on any mesh
(`param_shardings`, `logical_to_spec`).

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

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

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

# Meshes from strings such as "data=2,fsdp=2,tensor=2".
MESH_AXES = ("data", "fsdp", "tensor")


def parse_mesh(spec: str) -> dict[str, int]:
  """"data=2,fsdp=4" -> {"data": 2, "fsdp": 4, "tensor": 1}; every axis named at most once."""
  sizes = dict.fromkeys(MESH_AXES, 1)
  seen = set()
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, value = part.partition("=")
    if not sep or name not in MESH_AXES or name in seen:
      raise ValueError(f"mesh {spec!r}: expected comma-separated AXIS=SIZE with AXIS one of {MESH_AXES}, "
                       f"each at most once; got {part!r}")
    if not value.isdigit() or int(value) < 1:
      raise ValueError(f"mesh {spec!r}: size of {name} must be a positive integer, got {value!r}")
    sizes[name] = int(value)
    seen.add(name)
  return sizes


def make_mesh(spec: str = "", devices=None) -> Mesh:
  """A mesh over `devices` (default: all); an axis left out has size 1, and "" puts every device on data."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = parse_mesh(spec) if spec else {"data": len(devices), "fsdp": 1, "tensor": 1}
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"mesh {spec!r} has {math.prod(sizes.values())} devices, but {len(devices)} are available")
  # Auto axes: shardings are given at the jit boundary and XLA propagates them through the model.
  return jax.make_mesh(tuple(sizes[a] for a in MESH_AXES), MESH_AXES, devices=devices,
                       axis_types=(AxisType.Auto,) * len(MESH_AXES))


# The batch is split over both data-parallel axes, fsdp-major. Not ("data", "fsdp"): XLA's SPMD partitioner
# (jax/jaxlib 0.10.2, Shardy and GSPMD alike) miscompiles a dot whose lhs batch is split over (X, Y), with its
# contraction and the result's features on a third axis, when the weight's output dimension is split over Y,
# the minor batch axis: it permutes the lhs shards to Y-major and never permutes the result back, so rows of
# different batch shards trade places (data=2,fsdp=2,tensor=2: ~50% error in the UNet forward at the first
# ("heads", "embed") or ("mlp", "embed") weight). Weights are never split over "data", so with "data" minor
# no weight can meet that pattern. Each host still loads its own (now strided) rows of the global batch (`host_batch_rows`).
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


def host_batch_rows(sharding: NamedSharding, global_batch: int) -> tuple[int, ...]:
  """The rows of a batch-major global array of `global_batch` rows that this process's devices hold,
  ascending: the order in which `jax.make_array_from_process_local_data` places a host's local rows. With
  the batch split fsdp-major (BATCH_AXES) a host's rows are strided, not one block."""
  rows = set()
  for index in sharding.addressable_devices_indices_map((global_batch,)).values():
    rows.update(range(global_batch)[index[0]])
  return tuple(sorted(rows))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def constrain_batch(x: jax.Array, sharding: NamedSharding | None) -> jax.Array:
  """`x` (batch-major) split over the batch sharding's axes inside a jit; left to XLA where there is no
  sharding or the batch does not divide evenly (guidance x prompts x frames need not fit the mesh)."""
  if sharding is None:
    return x
  axes = sharding.spec[0] if len(sharding.spec) else None
  axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  if x.shape[0] % math.prod(sharding.mesh.shape[a] for a in axes):
    return x
  return jax.lax.with_sharding_constraint(x, sharding)

