"""Reads and writes safetensors files: an 8-byte header length, a JSON header, then raw little-endian tensors."""

from __future__ import annotations

import collections
import json
import math
import os
import struct

import ml_dtypes
import numpy as np

from kvjax.checkpoints.lazy import CheckpointError, LazyTensor

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_MAX_HEADER = 100 * 2**20  # the safetensors library's own bound
_MAX_NDIM = 32


def _unique_keys(pairs):
  counts = collections.Counter(k for k, _ in pairs)
  if len(counts) != len(pairs):
    twice = sorted(k for k, n in counts.items() if n > 1)
    raise CheckpointError(f"the header names {', '.join(map(repr, twice[:5]))} more than once")
  return dict(pairs)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def read_safetensors(path: str) -> dict[str, LazyTensor]:
  return read_safetensors_with_metadata(path)[0]


def read_safetensors_with_metadata(path: str) -> tuple[dict[str, LazyTensor], dict[str, str]]:
  """The tensors (mapped lazily) and the header's `__metadata__` (string to string; {} when absent)."""
  file_size = os.path.getsize(path)
  with open(path, "rb") as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise CheckpointError(f"{path}: truncated safetensors file")
    (header_size,) = struct.unpack("<Q", prefix)
    if header_size > file_size - 8:
      raise CheckpointError(f"{path}: safetensors header of {header_size} bytes does not fit in the file "
                            f"({file_size} bytes)")
    if header_size > _MAX_HEADER:
      raise CheckpointError(f"{path}: safetensors header of {header_size} bytes, more than the "
                            f"{_MAX_HEADER} accepted")
    try:
      header = json.loads(f.read(header_size), object_pairs_hook=_unique_keys)
    except CheckpointError as e:
      raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
      raise CheckpointError(f"{path}: corrupt safetensors header: {type(e).__name__}: {e}"[:500]) from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: corrupt safetensors header")
  metadata = header.pop("__metadata__", None) or {}
  if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
    raise CheckpointError(f"{path}: corrupt safetensors header: __metadata__ must map strings to strings")
  data_start = 8 + header_size
  tensors = {}
  for name, entry in header.items():
    try:
      dtype_name, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    except (KeyError, TypeError) as e:
      raise CheckpointError(f"{path}: bad header entry for {name!r}: {e!r}") from None
    if dtype_name not in _DTYPES:
      raise CheckpointError(f"{path}: tensor {name!r} has dtype {dtype_name!r:.50}, which kvjax does not read "
                            f"({', '.join(_DTYPES)})")
    if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
        or not all(_is_int(s) and s >= 0 for s in shape)):
      raise CheckpointError(f"{path}: tensor {name!r} has an invalid shape {shape!r:.200}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
      raise CheckpointError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r:.200}")
    dtype, shape = np.dtype(_DTYPES[dtype_name]), tuple(shape)
    begin, end = offsets
    size = math.prod(shape)
    if not 0 <= begin <= end or data_start + end > file_size:
      raise CheckpointError(f"{path}: tensor {name!r} lies outside the file (bytes {begin} to {end} of the "
                            f"{file_size - data_start} after the header)")
    if end - begin != size * dtype.itemsize:
      raise CheckpointError(f"{path}: tensor {name!r} has the wrong byte count: {end - begin} bytes for "
                            f"shape {shape} of {dtype_name}")
    strides = tuple(int(math.prod(shape[i + 1:])) for i in range(len(shape)))
    tensors[name] = LazyTensor(path=path, offset=data_start + begin, dtype=dtype, shape=shape,
                               strides=strides, span=size, name=name)
  return tensors, metadata


_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
                      overwrite: bool = False) -> None:
  """Writes `tensors` (numpy, any of the dtypes above) with `metadata` as one safetensors file, all or nothing
  (kvjax/atomic.py: staged, then renamed into place)."""
  from kvjax.atomic import staged
  header: dict = {"__metadata__": dict(metadata)} if metadata else {}
  offset, arrays = 0, []
  for name in sorted(tensors):
    array = np.ascontiguousarray(tensors[name])
    array = array.astype(array.dtype.newbyteorder("<"))
    header[name] = {"dtype": _NAMES[np.dtype(array.dtype.newbyteorder("="))], "shape": list(array.shape),
                    "data_offsets": [offset, offset + array.nbytes]}
    offset += array.nbytes
    arrays.append(array)
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # tensors start 8-byte aligned, as the safetensors library writes them
  with staged(path, overwrite=overwrite, folder=False) as staging:
    with open(staging, "wb") as f:
      f.write(struct.pack("<Q", len(encoded)) + encoded)
      for array in arrays:
        f.write(array.tobytes())
