"""Reads `torch.save` zip archives without PyTorch and without executing anything.

The archive holds `<prefix>/data.pkl` (the object structure) and one uncompressed entry per storage,
`<prefix>/data/<key>`. The pickle is interpreted by an unpickler whose `find_class` admits only the globals
that describe tensors and plain containers; every tensor becomes a `LazyTensor` pointing into the archive.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np

from kvjax.checkpoints.lazy import CheckpointError, LazyTensor

_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, (skipped fields), name length, extra length


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: np.dtype
  numel: int
  offset: int  # byte offset of the entry's data in the archive file


class _RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, data: bytes, storages):
    super().__init__(io.BytesIO(data))
    self._storages = storages

  def find_class(self, module: str, name: str):
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return _rebuild_parameter
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    raise CheckpointError(
        f"refused to load global '{module}.{name}': only tensors and plain containers are allowed in a "
        "checkpoint (the file may be malicious, or holds objects other than tensors)")

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise CheckpointError(f"unexpected persistent id {pid!r}")
    _, storage_type, key, _location, numel = pid
    return self._storages(str(key), storage_type.dtype, int(numel))


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, _Storage):
    raise CheckpointError("tensor rebuilt from something other than a storage")
  size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
  if len(size) != len(stride) or any(s < 0 for s in size + stride) or storage_offset < 0:
    raise CheckpointError(f"invalid tensor geometry: size {size}, stride {stride}, offset {storage_offset}")
  span = 0 if 0 in size else 1 + sum((n - 1) * s for n, s in zip(size, stride))
  if storage_offset + span > storage.numel:
    raise CheckpointError(f"tensor of size {size} reaches past the end of storage {storage.key}")
  return LazyTensor(path="", offset=storage.offset + storage_offset * storage.dtype.itemsize,
                    dtype=storage.dtype, shape=size, strides=stride, span=span)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def read_torch_zip(path: str):
  """The object saved in the archive at `path`, with `LazyTensor`s in place of tensors."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, OSError) as e:
    raise CheckpointError(f"{path}: corrupt zip archive: {e}") from None
  file_size = os.path.getsize(path)
  with archive, open(path, "rb") as raw:
    names = archive.namelist()
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise CheckpointError(f"{path}: not a torch.save archive (expected one <name>/data.pkl, "
                            f"found {len(pickles)})")
    prefix = pickles[0][: -len("data.pkl")]
    if f"{prefix}byteorder" in names and archive.read(f"{prefix}byteorder").strip() != b"little":
      raise CheckpointError(f"{path}: big-endian checkpoints are not supported")

    def storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
      entry = f"{prefix}data/{key}"
      try:
        info = archive.getinfo(entry)
      except KeyError:
        raise CheckpointError(f"{path}: storage {entry} is missing from the archive") from None
      if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"{path}: storage {entry} is compressed; torch.save never does that")
      if info.file_size != numel * dtype.itemsize:
        raise CheckpointError(f"{path}: storage {entry} holds {info.file_size} bytes, "
                              f"expected {numel} x {dtype.itemsize}")
      raw.seek(info.header_offset)
      signature, name_length, extra_length = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
      if signature != b"PK\x03\x04":
        raise CheckpointError(f"{path}: corrupt local header for {entry}")
      offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
      if offset + info.file_size > file_size:
        raise CheckpointError(f"{path}: truncated archive: storage {entry} ends past the end of the file")
      return _Storage(key, dtype, numel, offset)

    try:
      data = archive.read(pickles[0])
      obj = _RestrictedUnpickler(data, storage).load()
    except CheckpointError as e:
      raise CheckpointError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, zipfile.BadZipFile, struct.error) as e:
      raise CheckpointError(f"{path}: corrupt checkpoint pickle: {type(e).__name__}: {e}") from None
  return _attach_path(obj, path)


def _attach_path(obj, path):
  if isinstance(obj, LazyTensor):
    return dataclasses.replace(obj, path=path)
  if isinstance(obj, dict):
    return type(obj)((k, _attach_path(v, path)) for k, v in obj.items())
  if isinstance(obj, (list, tuple)):
    return type(obj)(_attach_path(v, path) for v in obj)
  return obj
