"""Converted checkpoints on disk: an orbax PyTree checkpoint plus `config.json`, written atomically.

Layout of a converted folder:
  config.json   {"format": "kvjax-converted", "kind": ..., "config": {...}, "dtype": ..., "source": ...,
                 ["quantization": "int8"]}
  state/        orbax checkpoint of {"params": <Flax tree>, <extras such as "null_embedding">}

In an int8 folder (`python -m convert ... --quantize int8`) a quantized kernel is stored as {"int8": values,
"scale": scales} (kvjax.quantization); loaded, it is an Int8Weight, which the layers read as they are.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from kvjax import model_configs, quantization
from kvjax.atomic import staged

FORMAT = "kvjax-converted"

# Bytes orbax may hold in flight while writing or reading. Its defaults (tens of GB) let it stage a copy of
# the whole model, doubling peak memory; with a small bound, jax-array leaves and no compression (weights
# barely compress) the extra memory of a save is about one tensor.
_CONCURRENT_GB = 1


# Reads in flight while loading: a quarter GB, or the largest array where that is larger (orbax reads an array
# whole within the bound). On a CPU host they are the excess of a load over the model's size.
_READ_GB = 0.25


def _checkpointer(restore_gb: float = _CONCURRENT_GB) -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.PyTreeCheckpointHandler(
      save_concurrent_gb=_CONCURRENT_GB, restore_concurrent_gb=restore_gb,
      save_device_host_concurrent_gb=_CONCURRENT_GB, use_compression=False))


@dataclasses.dataclass
class ConvertedModel:
  kind: str
  config: Any
  params: dict[str, Any]
  extras: dict[str, Any] = dataclasses.field(default_factory=dict)


def _dtype_name(tree) -> str:
  dtypes = sorted({np.dtype(leaf.dtype).name for leaf in jax.tree.leaves(tree)})
  return dtypes[0] if len(dtypes) == 1 else ",".join(dtypes)


def save_converted(model: ConvertedModel, out_dir: str | os.PathLike, *, source: str = "",
                   overwrite: bool = False) -> str:
  """Writes `model` to `out_dir`; on any failure nothing is left behind (the folder appears whole or not)."""
  with staged(out_dir, overwrite=overwrite) as staging:
    params = quantization.to_stored(model.params)
    with _checkpointer() as checkpointer:
      checkpointer.save(os.path.join(staging, "state"), {"params": params, **model.extras})
    meta = {"format": FORMAT, "kind": model.kind, "config": model.config.to_dict(),
            "dtype": _dtype_name(params), "extras": sorted(model.extras), "source": source}
    if quantization.is_quantized(model.params):
      meta["quantization"] = quantization.INT8
    with open(os.path.join(staging, "config.json"), "w") as f:
      json.dump(meta, f, indent=1)
  out_dir = os.path.abspath(os.fspath(out_dir))
  return out_dir


class WeightsError(ValueError):
  """A converted folder that cannot serve where it is given: one line naming the folder, the model and the first
  problem (another kind, another configuration, a parameter of another shape or dtype, a damaged store)."""


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
  config_path = os.path.join(os.fspath(path), "config.json")
  if not os.path.isfile(config_path):
    raise WeightsError(f"{path}: not a converted kvjax model folder (no config.json)")
  try:
    with open(config_path) as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise WeightsError(f"{config_path}: unreadable ({e})") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") not in model_configs.CONFIG_TYPES:
    raise WeightsError(f"{config_path}: not a kvjax converted-checkpoint description")
  return meta


def _key(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _first_difference(found, wanted) -> str:
  """The first configuration field that differs, as `name found (expected wanted)`."""
  for f in dataclasses.fields(wanted):
    a, b = getattr(found, f.name, None), getattr(wanted, f.name)
    if a != b:
      return f"{f.name} {a!r} (expected {b!r})"
  return "another configuration type"


@dataclasses.dataclass(frozen=True)
class CheckedFolder:
  """A converted folder that passed `check_converted`: its description, model configuration and stored tree (orbax
  metadata: shapes and dtypes, no arrays)."""
  path: str
  kind: str
  config: Any
  stored: dict[str, Any]


def _stored_tree(path: str, state_path: str):
  for name in ("_METADATA", "manifest.ocdbt"):
    if not os.path.isfile(os.path.join(state_path, name)):
      raise WeightsError(f"{path}: damaged store: state/{name} is missing")
  from kvjax.training.checkpointing import _quiet_abandoned_reads, error_reason
  _quiet_abandoned_reads()  # a failed read leaves no "Event loop is closed" tracebacks after the one line
  try:
    with _checkpointer() as checkpointer:
      metadata = checkpointer.metadata(state_path)
    tree = metadata.item_metadata.tree if hasattr(metadata, "item_metadata") else metadata
  except Exception as e:  # orbax raises bare Exceptions, ValueErrors, OSErrors...
    raise WeightsError(f"{path}: damaged store: its orbax metadata cannot be read ({error_reason(e)})") from None
  if not isinstance(tree, dict) or "params" not in tree:
    raise WeightsError(f"{path}: damaged store: state/ holds no params")
  return tree


@functools.lru_cache(maxsize=64)
def _parameter_shapes(config) -> dict[str, jax.ShapeDtypeStruct]:
  """A model's parameters by name, as shapes (tracing the model's init takes seconds: once per configuration)."""
  import flax.linen as nn
  from kvjax.params import abstract_params
  abstract = nn.unbox(abstract_params(config))
  leaves = jax.tree_util.tree_leaves_with_path(abstract, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  return {_key(k): v for k, v in leaves}


def check_converted(path: str | os.PathLike, expected_kind: str | tuple[str, ...] | None = None,
                    expected_config: Any = None, role: str = "", check_arrays: bool = True) -> CheckedFolder:
  """Checks a converted folder without reading its arrays: its kind against `expected_kind`, its configuration
  against `expected_config` (where it joins a pipeline or a run), every stored parameter's shape and dtype against
  the model's abstract parameters (a floating dtype its config.json declares), and the store's completeness
  (orbax metadata and manifest; a data file missing or cut short fails the arrays' read in `load_converted`:
  OCDBT may compress the data files, so their size does not bound the arrays'). `role` names where it is given (e.g.
  "--video-movq"). `check_arrays` False checks config.json alone (`stored` is then None). Raises WeightsError in
  one line."""
  path = os.fspath(path)
  where = f"{role} {path}" if role else path
  meta = read_metadata(path)
  kind = meta["kind"]
  kinds = (expected_kind,) if isinstance(expected_kind, str) else expected_kind
  if kinds is not None and kind not in kinds:
    raise WeightsError(f"{where}: a {kind} folder, not a {' or '.join(kinds)}")
  try:
    config = model_configs.CONFIG_TYPES[kind].from_dict(meta.get("config") or {})
  except (TypeError, ValueError) as e:
    raise WeightsError(f"{where}: config.json: {e}") from None
  if expected_config is not None and config != expected_config:
    raise WeightsError(f"{where}: this {kind} has another configuration than the one it joins: "
                       f"{_first_difference(config, expected_config)}")
  if not check_arrays:
    return CheckedFolder(path, kind, config, None)
  state_path = os.path.join(os.path.abspath(path), "state")
  if not os.path.isdir(state_path):
    raise WeightsError(f"{where}: damaged store: no state/ folder")
  stored = _stored_tree(where, state_path)
  declared = {d for d in str(meta.get("dtype", "")).split(",") if d}
  try:
    wanted = _parameter_shapes(config)
  except (TypeError, ValueError) as e:  # a configuration no model can be built from
    raise WeightsError(f"{where}: config.json: its {kind} configuration makes no model ({e})") from None
  found = dict(jax.tree_util.tree_leaves_with_path(stored["params"], is_leaf=lambda x: hasattr(x, "shape")))
  found = {_key(k): v for k, v in found.items()}
  quantized = meta.get("quantization")
  if quantized not in (None, *quantization.QUANTIZATIONS) or (quantized and kind not in quantization.KINDS):
    raise WeightsError(f"{where}: config.json: unknown quantization {quantized!r} for a {kind}")
  parts: dict[str, dict] = {}  # float parameter -> {None: stored as float} or {"int8": ..., "scale": ...}
  for key, leaf in found.items():
    base, part = quantization.stored_key_base(key) if quantized else (key, None)
    parts.setdefault(base, {})[part] = leaf
  for key in sorted(set(wanted) | set(parts)):
    if key not in parts:
      raise WeightsError(f"{where}: {kind} parameter {key} is missing from the store")
    if key not in wanted:
      raise WeightsError(f"{where}: {kind} parameter {key} is not a parameter of this model")
    if set(parts[key]) not in ({None}, {"int8", "scale"}):
      raise WeightsError(f"{where}: {kind} parameter {key} is stored as {', '.join(map(str, parts[key]))}, "
                         "expected an array or int8 values and their scales")
    for part, leaf in parts[key].items():
      name = key if part is None else f"{key}/{part}"
      expected = wanted[key].shape if part != "scale" else quantization.scale_shape(wanted[key].shape)
      shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
      if shape != tuple(expected):
        raise WeightsError(f"{where}: {kind} parameter {name} is stored as {shape}, the configuration makes it "
                           f"{tuple(expected)}")
      floating = jax.numpy.issubdtype(dtype, jax.numpy.floating)  # bfloat16 too
      if (not floating if part != "int8" else dtype != np.int8) or (declared and dtype.name not in declared):
        raise WeightsError(f"{where}: {kind} parameter {name} is stored as {dtype.name}, config.json declares "
                           f"{meta.get('dtype')}")
  return CheckedFolder(path, kind, config, stored)


def _restore_args(stored, placement, dtype=None):
  """Per-leaf restore arguments: numpy in host memory (`placement` "host"), else jax arrays placed as they are read
  (`placement` None: the default device; a Sharding; or a tree of Shardings matching the parameters). `dtype`
  (e.g. np.float32): the parameters cast to it as they are read; the extras keep their stored dtype."""
  is_leaf = lambda x: hasattr(x, "shape")
  if placement == "host":
    one = lambda dtype: lambda leaf: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)
    return {name: jax.tree.map(one(dtype if name == "params" else None), tree, is_leaf=is_leaf)
            for name, tree in stored.items()}
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  one = lambda sharding, dtype=None: lambda leaf: ocp.ArrayRestoreArgs(
      sharding=sharding, global_shape=tuple(leaf.shape), dtype=dtype)
  if placement is None or isinstance(placement, jax.sharding.Sharding):
    return {name: jax.tree.map(one(placement or default, dtype if name == "params" else None), tree, is_leaf=is_leaf)
            for name, tree in stored.items()}
  args = {name: jax.tree.map(one(default), tree, is_leaf=is_leaf) for name, tree in stored.items() if name != "params"}
  args["params"] = jax.tree.map(lambda leaf, sharding: one(sharding, dtype)(leaf), stored["params"],
                                quantization.to_stored(placement), is_leaf=is_leaf)
  return args


# glibc's mallopt: M_MMAP_THRESHOLD, its starting value and the ceiling its dynamic raise stops at (64-bit).
_M_MMAP_THRESHOLD, _MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX = -3, 128 << 10, 32 << 20


@contextlib.contextmanager
def _freed_reads_returned():
  """Host buffers of 128 KiB and more mapped one by one while arrays are read, so that each read buffer goes
  back to the OS when it is freed. By default glibc raises its mmap threshold to the size of any mapped buffer
  freed (up to 32 MiB): after the first freed read every smaller read lands in the heap, between the arrays kept,
  and the holes the freed reads leave stay resident, about 0.3x the model's size in host memory on top of it
  (docs/benchmarks.md, bench/load_memory.py). Afterwards the threshold stays at the ceiling that raise reaches.
  Not glibc (no mallopt): nothing changes."""
  mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
  if mallopt is None:
    yield
    return
  mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
  try:
    yield
  finally:
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)


def load_converted(path: str | os.PathLike, expected_kind: str | tuple[str, ...] | None = None,
                   expected_config: Any = None, role: str = "", placement: Any = "host",
                   dtype: Any = None) -> ConvertedModel:
  """The one loader of converted folders: `check_converted` first (nothing read or allocated before it passes),
  then the arrays restored one bounded group at a time, each placed as it is read: `placement` "host" gives numpy
  arrays (host memory, e.g. for --offload), None jax arrays on the default device, a Sharding or a tree of them
  (matching the parameters) jax arrays placed so: orbax reads each array's shards into host buffers of its own,
  places them and frees them (at most `_READ_GB` in flight, or the largest array), so no host copy of the model
  is made on the way. `dtype`: the parameters cast to it as they are read (None: as stored). A store that fails
  to read raises WeightsError naming the folder and the first problem."""
  return restore_checked(check_converted(path, expected_kind, expected_config, role), role, placement, dtype)


def restore_checked(checked: CheckedFolder, role: str = "", placement: Any = "host",
                    dtype: Any = None, part: dict[str, Any] | None = None) -> ConvertedModel:
  """`load_converted`'s second half, for a folder `check_converted` has passed (callers that check every folder
  before reading any, as the pipeline does, read each store's metadata once). `part`: a subtree of
  `checked.stored` ({"params": {...}}) to read alone, the rest left on disk (`placement` a tree then matches
  its params)."""
  where = f"{role} {checked.path}" if role else checked.path
  from kvjax.training.checkpointing import _quiet_abandoned_reads, error_reason
  _quiet_abandoned_reads()
  state_path = os.path.join(os.path.abspath(checked.path), "state")
  try:
    largest = max((int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize for leaf in
                   jax.tree.leaves(checked.stored if part is None else part, is_leaf=lambda x: hasattr(x, "shape"))),
                  default=0)
    with _checkpointer(max(_READ_GB, largest / 1e9)) as checkpointer, _freed_reads_returned():
      if part is None:
        state = checkpointer.restore(state_path, restore_args=_restore_args(checked.stored, placement, dtype))
      else:
        item = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), part,
                            is_leaf=lambda x: hasattr(x, "shape"))
        state = checkpointer.restore(state_path, args=ocp.args.PyTreeRestore(
            item=item, restore_args=_restore_args(part, placement, dtype), partial_restore=True))
  except Exception as e:  # orbax and tensorstore raise bare Exceptions, ValueErrors, OSErrors...
    raise WeightsError(f"{where}: damaged store: its {checked.kind} arrays cannot be read ({error_reason(e)})") \
        from None
  params = quantization.from_stored(state.pop("params"))
  return ConvertedModel(checked.kind, checked.config, params, state)
