"""A tensor described by where it lies in a file; read on demand through a memory map."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np


class CheckpointError(ValueError):
  """A checkpoint that cannot be read safely: corrupt, truncated, of an unknown format, or malicious."""


@dataclasses.dataclass(frozen=True)
class LazyTensor:
  """`shape`/`strides` in elements, `offset` in bytes from the start of `path`, `span` elements mapped."""

  path: str
  offset: int
  dtype: np.dtype
  shape: tuple[int, ...]
  strides: tuple[int, ...]
  span: int
  name: str = ""

  @property
  def size(self) -> int:
    return math.prod(self.shape)

  @property
  def nbytes(self) -> int:
    return self.size * self.dtype.itemsize

  def numpy(self, dtype: Any = None) -> np.ndarray:
    """Reads the tensor into a fresh contiguous array (optionally cast), unmapping the file right after.

    The map covers only this tensor's bytes and is dropped on return, so reading a large checkpoint tensor
    by tensor keeps about one tensor's worth of file pages resident.
    """
    if self.span == 0 or self.size == 0:
      return np.zeros(self.shape, dtype or self.dtype)
    try:
      mapped = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset, shape=(self.span,))
    except (OSError, ValueError) as e:  # e.g. the file was cut short or replaced after it was read
      raise CheckpointError(f"{self.path}: cannot read tensor {self.name or f'at byte {self.offset}'}: "
                            f"{e}") from None
    try:
      itemsize = self.dtype.itemsize
      view = np.lib.stride_tricks.as_strided(mapped, self.shape, tuple(s * itemsize for s in self.strides),
                                             writeable=False)
      return np.array(view, dtype=dtype or self.dtype, order="C")
    finally:
      mapped._mmap.close()  # release the mapping now rather than at garbage collection
      del mapped


def flatten_state_dict(tree: Any, prefix: str = "", *, source: str = "") -> dict[str, LazyTensor]:
  """Nested dicts of tensors -> {'a.b.c': tensor}; anything that is neither is an error (naming `source`,
  the file, when given)."""
  if isinstance(tree, LazyTensor):
    return {prefix: tree}
  where = f"{source}: " if source else ""
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      if not isinstance(key, str):
        raise CheckpointError(f"{where}non-string key {key!r:.100} under {prefix or 'the root'}")
      flat.update(flatten_state_dict(value, f"{prefix}.{key}" if prefix else key, source=source))
    return flat
  raise CheckpointError(f"{where}{prefix or 'the root'} holds a {type(tree).__name__}, not a tensor or a dict")
