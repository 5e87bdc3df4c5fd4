"""Strict conversion of a flat PyTorch state dict into a Flax parameter tree of a given configuration."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np

from kvjax import params as kv_params
from kvjax.checkpoints import LazyTensor
from kvjax.conversion.naming import (FlaxPath, from_flax_layout, to_flax_layout, torch_key,
                                     torch_module_path)


class ConversionError(ValueError):
  """The checkpoint does not fit the model: every missing, unexpected and mis-shaped key is listed."""


@dataclasses.dataclass
class WeightPolicy:
  """What conversion accepts besides finite floating-point weights; `warnings` collects what it let through.

  Every model parameter is floating point, so by default a tensor stored as an integer or bool is refused
  (`allow_integer` casts it), and so is a tensor holding NaN or Inf, or a finite value the output dtype
  cannot hold (`allow_nonfinite` converts it as it is).
  """

  allow_nonfinite: bool = False
  allow_integer: bool = False
  warnings: list[str] = dataclasses.field(default_factory=list)


_SHOWN = 5  # names quoted in a message; the rest are counted
_CHECK_CHUNK = 2**22  # elements checked for finiteness at a time (a few MB of temporaries)


def _listing(items: list[str]) -> str:
  more = f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
  return ", ".join(items[:_SHOWN]) + more


def _nonfinite(array: np.ndarray) -> str | None:
  """None if every value of `array` is finite, else what it holds ('NaN', 'Inf' or 'NaN and Inf').

  Checked in chunks, so the temporaries stay small whatever the tensor's size."""
  flat = array.reshape(-1)
  for start in range(0, flat.size, _CHECK_CHUNK):
    if not np.isfinite(flat[start:start + _CHECK_CHUNK]).all():
      break
  else:
    return None
  nan = any(np.isnan(flat[i:i + _CHECK_CHUNK]).any() for i in range(0, flat.size, _CHECK_CHUNK))
  inf = any(np.isinf(flat[i:i + _CHECK_CHUNK]).any() for i in range(0, flat.size, _CHECK_CHUNK))
  return " and ".join(name for name, found in (("NaN", nan), ("Inf", inf)) if found)


class WeightReader:
  """The one place converted tensors are read: each is read once (as float32), laid out, cast, and checked.

  `check_dtypes` refuses integer-stored tensors by name before anything is read; `convert` reads one tensor
  and records whether it holds NaN or Inf (before the cast, or after it when the cast overflows); `finish`
  refuses the conversion listing them, or with `policy.allow_nonfinite` adds a warning. After a refusal is
  certain, tensors are still checked (to count them) but no longer kept.
  """

  def __init__(self, what: str, policy: WeightPolicy | None = None):
    self.what = what
    self.policy = policy or WeightPolicy()
    self._checked: set[str] = set()
    self._nonfinite: list[str] = []

  def check_dtypes(self, tensors: Iterable[tuple[str, LazyTensor]]) -> None:
    integer = []
    for key, tensor in tensors:
      self._checked.add(key)
      if np.dtype(tensor.dtype).kind in "iub":
        integer.append((key, np.dtype(tensor.dtype).name))
    if not integer:
      return
    if len(integer) == 1:
      stored = f"{integer[0][0]} is stored as {integer[0][1]}; the model's parameter is floating point"
    else:
      stored = (f"{len(integer)} tensors are stored as integers; the model's parameters are floating point: "
                + _listing([f"{key} ({dtype})" for key, dtype in integer]))
    if not self.policy.allow_integer:
      raise ConversionError(f"{self.what}: {stored} (pass --allow-integer-weights to cast such tensors to floats)")
    self.policy.warnings.append(f"{self.what}: {stored}; cast to floats (--allow-integer-weights)")

  def convert(self, key: str, tensor: LazyTensor, layout: Callable[[np.ndarray], np.ndarray],
              dtype: Any) -> np.ndarray | None:
    """`tensor` read as float32, through `layout`, cast to `dtype` (a contiguous numpy array)."""
    if key not in self._checked:
      self.check_dtypes([(key, tensor)])
    with np.errstate(over="ignore"):  # float64 beyond float32's range: found just below
      values = tensor.numpy(np.float32)  # upcast first: layouts and casts are exact in fp32
    found = _nonfinite(values)
    if found and np.dtype(tensor.dtype).itemsize > 4:
      found += f" as float32 (stored as {np.dtype(tensor.dtype).name})"
    with np.errstate(over="ignore", invalid="ignore"):
      out = np.ascontiguousarray(layout(values), dtype=dtype)
    del values
    if found is None and out.dtype != np.float32 and _nonfinite(out) is not None:
      found = f"values beyond the range of {out.dtype.name}"
    if found:
      self._nonfinite.append(f"{key} ({found})")
    if self._nonfinite and not self.policy.allow_nonfinite:
      return None  # refused in finish(); only counting from here on
    return out

  def finish(self) -> None:
    if not self._nonfinite:
      return
    count = len(self._nonfinite)
    held = f"{count} tensor{'s' if count > 1 else ''} with non-finite values: {_listing(self._nonfinite)}"
    if not self.policy.allow_nonfinite:
      raise ConversionError(f"{self.what}: {held}; refused (pass --allow-nonfinite to convert them as they are)")
    self.policy.warnings.append(f"{self.what}: {held}; converted as they are (--allow-nonfinite)")


def _torch_shape(flax_shape: tuple[int, ...], path: FlaxPath, transposed_conv: bool) -> tuple[int, ...]:
  # A zero-strided view: permuting it costs no memory whatever the shape.
  return from_flax_layout(np.broadcast_to(np.empty((), np.int8), flax_shape), path, transposed_conv).shape


def match_state_dict(state: dict[str, LazyTensor], expected: dict[FlaxPath, Any],
                     is_transposed_conv: Callable[[FlaxPath], bool], what: str,
                     key_of: Callable[[FlaxPath], str] = torch_key) -> dict[FlaxPath, str]:
  """Pairs every checkpoint key with a parameter path, or raises listing every problem by name (a missing
  parameter by `key_of`, its checkpoint key: list indices joined by '.' unless the model says otherwise)."""
  by_path: dict[FlaxPath, str] = {}
  unexpected, misshaped, duplicate = [], [], []
  for key, tensor in state.items():
    modules, leaf = torch_module_path(key)
    names = ("kernel", "scale", "embedding") if leaf == "weight" else (leaf,)
    path = next((modules + (n,) for n in names if modules + (n,) in expected), None)
    if path is None or key_of(path) != key:  # exact names only: `wi.0` is not `wi_0`'s key
      unexpected.append(f"{key} {tuple(tensor.shape)}")
      continue
    if path in by_path:
      duplicate.append(f"{key} and {by_path[path]}")
      continue
    by_path[path] = key
    want = _torch_shape(expected[path].shape, path, is_transposed_conv(path))
    if tuple(tensor.shape) != want:
      misshaped.append(f"{key}: checkpoint {tuple(tensor.shape)}, model expects {want}")
  missing = [f"{key_of(p)} {_torch_shape(expected[p].shape, p, is_transposed_conv(p))}"
             for p in expected if p not in by_path]
  if unexpected or missing or misshaped or duplicate:
    lines = [f"{what}: the checkpoint does not match the model configuration"]
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("mis-shaped keys", misshaped), ("keys mapping to the same parameter", duplicate)):
      if items:
        lines.append(f"{len(items)} {title}:")
        lines.extend(f"  {item}" for item in sorted(items))
    raise ConversionError("\n".join(lines))
  return by_path


def convert_state_dict(state: dict[str, LazyTensor], config, dtype: Any,
                       transposed_conv: str | None = None, what: str = "checkpoint",
                       policy: WeightPolicy | None = None) -> dict[str, Any]:
  """The nested Flax parameter tree (host `jax.Array`s of `dtype`) for `config`, filled from `state`.

  `transposed_conv` is a regular expression over '/'-joined Flax paths naming the kernels of transposed
  convolutions (their PyTorch layout differs from ordinary ones). Tensors are read one at a time from the
  checkpoint, so peak memory stays near the size of the output. The leaves are jax arrays on the host CPU
  device, which orbax writes a bounded number of bytes at a time (numpy leaves it stages all at once).
  Integer-stored and non-finite tensors are refused by name unless `policy` allows them (`WeightReader`).
  """
  pattern = re.compile(transposed_conv) if transposed_conv else None
  is_transposed = lambda path: bool(pattern and pattern.search("/".join(path)))
  expected = flax.traverse_util.flatten_dict(nn.unbox(kv_params.abstract_params(config)))
  by_path = match_state_dict(state, expected, is_transposed, what)
  reader = WeightReader(what, policy)
  flat = read_weights(reader, {path: (by_path[path], state[by_path[path]]) for path in expected},
                      lambda path, tensor: to_flax_layout(tensor, path, is_transposed(path)), dtype)
  return flax.traverse_util.unflatten_dict(flat)


def read_weights(reader: WeightReader, sources: dict[FlaxPath, tuple[str, LazyTensor]],
                 layout: Callable[[FlaxPath, np.ndarray], np.ndarray], dtype: Any) -> dict[FlaxPath, Any]:
  """{path: host jax.Array} from {path: (checkpoint key, tensor)}, one tensor at a time through `reader`
  (which refuses integer-stored tensors before any is read, and non-finite ones once all are read)."""
  host = jax.devices("cpu")[0]
  reader.check_dtypes(sources.values())
  flat = {}
  for path, (key, tensor) in sources.items():
    array = reader.convert(key, tensor, lambda values, path=path: layout(path, values), dtype)
    if array is not None:
      flat[path] = jax.device_put(array, host)
    del array
  reader.finish()
  return flat
