"""Device meshes from strings such as "data=2,fsdp=2,tensor=2"."""

from __future__ import annotations

import math

import jax
from jax.sharding import AxisType, Mesh

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
