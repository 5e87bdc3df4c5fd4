"""Writes `torch.save`-compatible zip archives without PyTorch, streaming one tensor at a time.

Used to export kvjax weights in the official container formats and to make production-shaped
checkpoints for benchmarks. The pickle is emitted opcode by opcode, so it references exactly the globals
that `torch.load(weights_only=True)` and kvjax's restricted reader accept.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import struct
import zipfile
from typing import Any, Callable

import ml_dtypes
import numpy as np

_STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage", np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
    np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
    np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}


@dataclasses.dataclass(frozen=True)
class TensorSource:
  """A tensor to be produced only when its bytes are written (keeps memory at one tensor)."""

  shape: tuple[int, ...]
  dtype: Any
  make: Callable[[], np.ndarray]


class _PickleWriter:
  """Just enough of pickle protocol 2 for nested dicts of tensors."""

  def __init__(self):
    self.out = io.BytesIO()
    self.out.write(b"\x80\x02")

  def string(self, s: str):
    data = s.encode()
    self.out.write(b"X" + struct.pack("<I", len(data)) + data)

  def integer(self, n: int):
    if -(2**31) <= n < 2**31:
      self.out.write(b"J" + struct.pack("<i", n))
    else:
      data = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
      self.out.write(b"\x8a" + bytes([len(data)]) + data)

  def global_(self, module: str, name: str):
    self.out.write(b"c" + f"{module}\n{name}\n".encode())

  def int_tuple(self, values):
    self.out.write(b"(")
    for v in values:
      self.integer(int(v))
    self.out.write(b"t")

  def tensor(self, key: str, dtype: np.dtype, shape: tuple[int, ...]):
    self.global_("torch._utils", "_rebuild_tensor_v2")
    self.out.write(b"(")
    self.out.write(b"(")  # persistent id: ('storage', storage type, key, location, numel)
    self.string("storage")
    self.global_("torch", _STORAGE_NAMES[np.dtype(dtype)])
    self.string(key)
    self.string("cpu")
    self.integer(math.prod(shape))
    self.out.write(b"tQ")
    self.integer(0)
    self.int_tuple(shape)
    self.int_tuple(tuple(int(math.prod(shape[i + 1:])) for i in range(len(shape))))
    self.out.write(b"\x89")  # requires_grad False
    self.global_("collections", "OrderedDict")
    self.out.write(b")R")  # backward hooks: OrderedDict()
    self.out.write(b"tR")

  def finish(self) -> bytes:
    self.out.write(b".")
    return self.out.getvalue()


def write_torch_zip(path: str | os.PathLike, tree: dict[str, Any], archive_name: str = "archive") -> None:
  """Writes `tree` (nested str-keyed dicts of arrays or `TensorSource`s) as a torch.save archive.

  Written to a temporary name and renamed, so a failure leaves no partial file.
  """
  path = os.fspath(path)
  pickler = _PickleWriter()
  sources: list[tuple[str, Any]] = []

  def emit(node):
    if isinstance(node, dict):
      pickler.out.write(b"}(")
      for key, value in node.items():
        pickler.string(str(key))
        emit(value)
      pickler.out.write(b"u")
      return
    shape = tuple(node.shape)
    dtype = np.dtype(node.dtype)
    key = str(len(sources))
    pickler.tensor(key, dtype, shape)
    sources.append((key, node))

  emit(tree)
  data_pkl = pickler.finish()
  partial = f"{path}.partial"
  try:
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
      archive.writestr(f"{archive_name}/data.pkl", data_pkl)
      archive.writestr(f"{archive_name}/byteorder", b"little")
      for key, source in sources:
        array = source.make() if isinstance(source, TensorSource) else source
        array = np.ascontiguousarray(array, dtype=source.dtype)
        with archive.open(f"{archive_name}/data/{key}", "w", force_zip64=True) as entry:
          entry.write(memoryview(array.reshape(-1).view(np.uint8)))
        del array
      archive.writestr(f"{archive_name}/version", b"3\n")
    os.replace(partial, path)
  except BaseException:
    if os.path.exists(partial):
      os.remove(partial)
    raise
