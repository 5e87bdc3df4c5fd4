"""Reads `torch.save` zip archives without PyTorch and without executing anything.

The archive holds `<prefix>/data.pkl` (the object structure) and one uncompressed entry per storage,
`<prefix>/data/<key>`. The pickle is interpreted by an unpickler whose `find_class` admits only the globals
that describe tensors and plain containers; every tensor becomes a `LazyTensor` pointing into the archive.

Nothing in the archive is trusted: every member is read through `_read_member`, which inflates at most the
size its header declares (and never more than a fixed bound), in chunks, and checks the result against the
header; storages are mapped only after their sizes and positions are checked against the pickle and the file.
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
import zlib

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

# Bounds on what is read into memory (storages are mapped, not read). A production data.pkl is well under
# a megabyte; the small members (byteorder, version) are a few bytes.
MAX_PICKLE_BYTES = 256 * 2**20
_MAX_SMALL_MEMBER = 4096
_CHUNK = 2**20
# Bounds on the structure the pickle describes: nesting, objects (a few thousand in a real state dict;
# a pickle can reference one container many times, which would expand exponentially when walked), and
# tensor geometry.
_MAX_DEPTH = 100
_MAX_OBJECTS = 2**20
_MAX_NDIM = 32
_MAX_ELEMENTS = 2**48
# A tensor that views stored elements more than once (an expanded view) may be at most this large, so that
# reading it cannot take far more memory than the file holds.
_MAX_REPEATED_VIEW_BYTES = 64 * 2**20


@dataclasses.dataclass(frozen=True)
class _StorageType:
  dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
  key: str
  dtype: np.dtype
  numel: int
  offset: int  # byte offset of the entry's data in the archive file


def _load_build(unpickler):
  # BUILD sets an object's attributes. torch.save uses it only for a state dict's `_metadata` (on an
  # OrderedDict); on anything else (a tensor, a storage, one of our functions) it could rewrite offsets
  # and shapes that were checked, so it is refused.
  if not isinstance(unpickler.stack[-2], dict):
    raise CheckpointError(f"refused to set the attributes of a {type(unpickler.stack[-2]).__name__} "
                          "(BUILD): a checkpoint sets them only on a state dict")
  pickle._Unpickler.load_build(unpickler)  # pylint: disable=protected-access


# The pure-Python unpickler: its memo is a dict, where the C one allocates an array as large as the largest
# memo index a pickle names (a 9-byte pickle can ask for 2**32 slots, tens of GB).
class _RestrictedUnpickler(pickle._Unpickler):  # pylint: disable=protected-access
  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access
  dispatch[pickle.BUILD[0]] = _load_build

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
            and isinstance(pid[1], _StorageType) and _is_int(pid[4])):
      raise CheckpointError(f"unexpected persistent id {pid!r:.200}")
    _, storage_type, key, _location, numel = pid
    return self._storages(str(key), storage_type.dtype, numel)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _int_tuple(values, what: str) -> tuple[int, ...]:
  if not isinstance(values, (tuple, list)) or len(values) > _MAX_NDIM or not all(_is_int(v) for v in values):
    raise CheckpointError(f"invalid tensor {what} {values!r:.200}: expected at most {_MAX_NDIM} integers")
  return tuple(values)


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, _Storage):
    raise CheckpointError("tensor rebuilt from something other than a storage")
  size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
  if (len(size) != len(stride) or any(s < 0 for s in size + stride) or not _is_int(storage_offset)
      or storage_offset < 0):
    raise CheckpointError(f"invalid tensor geometry: size {size}, stride {stride}, offset {storage_offset!r}")
  if math.prod(s for s in size if s) > _MAX_ELEMENTS:
    raise CheckpointError(f"absurd tensor size {size} in storage {storage.key}")
  span = 0 if 0 in size else 1 + sum((n - 1) * s for n, s in zip(size, stride))
  if storage_offset + span > storage.numel:
    raise CheckpointError(f"tensor of size {size} reaches past the end of storage {storage.key}")
  elements = math.prod(size)
  if elements > span and elements * storage.dtype.itemsize > _MAX_REPEATED_VIEW_BYTES:
    raise CheckpointError(f"tensor of size {size}, stride {stride} repeats the {span} elements it views in "
                          f"storage {storage.key} over {elements} (an expanded view): refused, reading it would "
                          f"take {elements * storage.dtype.itemsize} bytes")
  return LazyTensor(path="", offset=storage.offset + storage_offset * storage.dtype.itemsize,
                    dtype=storage.dtype, shape=size, strides=stride, span=span)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
  del requires_grad, backward_hooks
  return data


def _data_offset(raw, info: zipfile.ZipInfo, file_size: int) -> int:
  """Where the bytes of member `info` start, from its local header (checked against the central one)."""
  if info.flag_bits & 0x1:
    raise CheckpointError(f"member {info.filename} is encrypted")
  if info.header_offset + _LOCAL_HEADER.size > file_size:
    raise CheckpointError(f"truncated archive: member {info.filename} starts past the end of the file")
  raw.seek(info.header_offset)
  signature, name_length, extra_length = _LOCAL_HEADER.unpack(raw.read(_LOCAL_HEADER.size))
  if signature != b"PK\x03\x04":
    raise CheckpointError(f"corrupt local header for {info.filename}")
  name = raw.read(name_length)
  if name.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace") != info.orig_filename:
    raise CheckpointError(f"member {info.filename}: its local header names it {name!r:.100}")
  offset = info.header_offset + _LOCAL_HEADER.size + name_length + extra_length
  if offset + info.compress_size > file_size:
    raise CheckpointError(f"truncated archive: member {info.filename} ends past the end of the file")
  return offset


def _read_member(raw, info: zipfile.ZipInfo, file_size: int, limit: int) -> bytes:
  """The bytes of member `info`, read with a bound: every member read into memory goes through here.

  At most `limit` bytes and at most the size the header declares are ever produced: data that inflates
  past its declared size (a header that lies, or a zip bomb) is refused as soon as it does, and data that
  falls short of it, or fails its CRC, is refused too.
  """
  name, declared = info.filename, info.file_size
  if declared > limit:
    raise CheckpointError(f"member {name} declares {declared} bytes, more than the {limit} this reader "
                          "accepts for it (a zip bomb or not a checkpoint)")
  raw.seek(_data_offset(raw, info, file_size))
  left = info.compress_size
  out = bytearray()
  if info.compress_type == zipfile.ZIP_STORED:
    if left != declared:
      raise CheckpointError(f"member {name}: its header declares {declared} bytes but stores {left}")
    while left:
      chunk = raw.read(min(_CHUNK, left))
      if not chunk:
        raise CheckpointError(f"truncated archive: member {name} ends early")
      out += chunk
      left -= len(chunk)
  elif info.compress_type == zipfile.ZIP_DEFLATED:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
      while not inflater.eof:
        pending = inflater.unconsumed_tail
        if not pending and left:
          pending = raw.read(min(_CHUNK, left))
          if not pending:
            raise CheckpointError(f"truncated archive: member {name} ends early")
          left -= len(pending)
        produced = inflater.decompress(pending, _CHUNK)
        if len(out) + len(produced) > declared:
          raise CheckpointError(f"member {name} inflates to more than the {declared} bytes its header "
                                "declares (a zip bomb or a corrupt archive)")
        out += produced
        if not produced and not left and not inflater.unconsumed_tail:
          break  # input exhausted before the end of the stream
    except zlib.error as e:
      raise CheckpointError(f"member {name}: corrupt deflate data: {e}") from None
    if not inflater.eof:
      raise CheckpointError(f"truncated archive: member {name}'s deflate stream ends early")
  else:
    raise CheckpointError(f"member {name} is compressed with zip method {info.compress_type}; only stored "
                          "and deflated members are read")
  if len(out) != declared:
    raise CheckpointError(f"member {name} holds {len(out)} bytes, its header declares {declared}")
  if zlib.crc32(out) != info.CRC:
    raise CheckpointError(f"member {name} fails its CRC check (corrupt archive)")
  return bytes(out)


def read_torch_zip(path: str):
  """The object saved in the archive at `path`, with `LazyTensor`s in place of tensors."""
  try:
    archive = zipfile.ZipFile(path)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, struct.error,
          NotImplementedError) as e:
    raise CheckpointError(f"{path}: corrupt zip archive: {e}") from None
  file_size = os.path.getsize(path)
  with archive, open(path, "rb") as raw:
    names = archive.namelist()
    twice = sorted(n for n, count in collections.Counter(names).items() if count > 1)
    if twice:
      raise CheckpointError(f"{path}: the archive holds more than one member named {', '.join(twice[:5])}; "
                            "refused, as readers disagree on which one counts")
    pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pickles) != 1:
      raise CheckpointError(f"{path}: not a torch.save archive (expected one <name>/data.pkl, "
                            f"found {len(pickles)})")
    prefix = pickles[0][: -len("data.pkl")]

    def storage(key: str, dtype: np.dtype, numel: int) -> _Storage:
      entry = f"{prefix}data/{key}"
      try:
        info = archive.getinfo(entry)
      except KeyError:
        raise CheckpointError(f"storage {entry} is missing from the archive") from None
      if info.compress_type != zipfile.ZIP_STORED:
        raise CheckpointError(f"storage {entry} is compressed; torch.save never does that")
      if info.file_size != numel * dtype.itemsize or info.compress_size != info.file_size:
        raise CheckpointError(f"storage {entry} holds {info.file_size} bytes (stores {info.compress_size}), "
                              f"expected {numel} x {dtype.itemsize}")
      return _Storage(key, dtype, numel, _data_offset(raw, info, file_size))

    try:
      byteorder = f"{prefix}byteorder"
      if byteorder in names and _read_member(raw, archive.getinfo(byteorder), file_size,
                                             _MAX_SMALL_MEMBER).strip() != b"little":
        raise CheckpointError("big-endian checkpoints are not supported")
      data = _read_member(raw, archive.getinfo(pickles[0]), file_size, MAX_PICKLE_BYTES)
      obj = _RestrictedUnpickler(data, storage).load()
      return _attach_path(obj, path)
    except CheckpointError as e:
      raise CheckpointError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
            AttributeError, zipfile.BadZipFile, struct.error, OverflowError, MemoryError,
            RecursionError) as e:
      raise CheckpointError(f"{path}: corrupt checkpoint pickle: {type(e).__name__}: {e}"[:500]) from None


def _attach_path(obj, path):
  """`obj` with the file's path in its tensors; refuses cycles, deep nesting and structures that expand
  (one container referenced many times) beyond `_MAX_OBJECTS`."""
  visited = 0
  active: set[int] = set()

  def walk(node, depth):
    nonlocal visited
    visited += 1
    if visited > _MAX_OBJECTS:
      raise CheckpointError(f"the pickle describes more than {_MAX_OBJECTS} objects (containers referenced "
                            "many times over); not a state dict")
    if isinstance(node, LazyTensor):
      return dataclasses.replace(node, path=path)
    if not isinstance(node, (dict, list, tuple)):
      return node
    if depth > _MAX_DEPTH:
      raise CheckpointError(f"containers nested more than {_MAX_DEPTH} deep; not a state dict")
    if id(node) in active:
      raise CheckpointError("a container holds itself (a cyclic structure); not a state dict")
    active.add(id(node))
    try:
      if isinstance(node, dict):
        return type(node)((k, walk(v, depth + 1)) for k, v in node.items())
      return type(node)(walk(v, depth + 1) for v in node)
    finally:
      active.discard(id(node))

  return walk(obj, 0)
