"""Reads safetensors files: an 8-byte header length, a JSON header, then raw little-endian tensors."""

from __future__ import annotations

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
_MAX_HEADER = 100 * 2**20


def read_safetensors(path: str) -> dict[str, LazyTensor]:
  file_size = os.path.getsize(path)
  with open(path, "rb") as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise CheckpointError(f"{path}: truncated safetensors file")
    (header_size,) = struct.unpack("<Q", prefix)
    if header_size > min(_MAX_HEADER, file_size - 8):
      raise CheckpointError(f"{path}: safetensors header of {header_size} bytes does not fit in the file")
    try:
      header = json.loads(f.read(header_size))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: corrupt safetensors header")
  header.pop("__metadata__", None)
  data_start = 8 + header_size
  tensors = {}
  for name, entry in header.items():
    try:
      dtype = np.dtype(_DTYPES[entry["dtype"]])
      shape = tuple(int(s) for s in entry["shape"])
      begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError) as e:
      raise CheckpointError(f"{path}: bad header entry for {name!r}: {e!r}") from None
    size = math.prod(shape)
    if end - begin != size * dtype.itemsize or begin < 0 or data_start + end > file_size:
      raise CheckpointError(f"{path}: tensor {name!r} lies outside the file or has the wrong byte count")
    strides = tuple(int(math.prod(shape[i + 1:])) for i in range(len(shape)))
    tensors[name] = LazyTensor(path=path, offset=data_start + begin, dtype=dtype, shape=shape,
                               strides=strides, span=size, name=name)
  return tensors
