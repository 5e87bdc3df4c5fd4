"""Strict conversion of a flat PyTorch state dict into a Flax parameter tree of a given configuration."""

from __future__ import annotations

import re
from typing import Any, Callable

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


def _torch_shape(flax_shape: tuple[int, ...], path: FlaxPath, transposed_conv: bool) -> tuple[int, ...]:
  # A zero-strided view: permuting it costs no memory whatever the shape.
  return from_flax_layout(np.broadcast_to(np.empty((), np.int8), flax_shape), path, transposed_conv).shape


def match_state_dict(state: dict[str, LazyTensor], expected: dict[FlaxPath, Any],
                     is_transposed_conv: Callable[[FlaxPath], bool], what: str) -> dict[FlaxPath, str]:
  """Pairs every checkpoint key with a parameter path, or raises listing every problem by name."""
  by_path: dict[FlaxPath, str] = {}
  unexpected, misshaped, duplicate = [], [], []
  for key, tensor in state.items():
    modules, leaf = torch_module_path(key)
    names = ("kernel", "scale", "embedding") if leaf == "weight" else (leaf,)
    path = next((modules + (n,) for n in names if modules + (n,) in expected), None)
    if path is None:
      unexpected.append(f"{key} {tuple(tensor.shape)}")
      continue
    if path in by_path:
      duplicate.append(f"{key} and {by_path[path]}")
      continue
    by_path[path] = key
    want = _torch_shape(expected[path].shape, path, is_transposed_conv(path))
    if tuple(tensor.shape) != want:
      misshaped.append(f"{key}: checkpoint {tuple(tensor.shape)}, model expects {want}")
  missing = [f"{torch_key(p)} {_torch_shape(expected[p].shape, p, is_transposed_conv(p))}"
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
                       transposed_conv: str | None = None, what: str = "checkpoint") -> dict[str, Any]:
  """The nested Flax parameter tree (host `jax.Array`s of `dtype`) for `config`, filled from `state`.

  `transposed_conv` is a regular expression over '/'-joined Flax paths naming the kernels of transposed
  convolutions (their PyTorch layout differs from ordinary ones). Tensors are read one at a time from the
  checkpoint, so peak memory stays near the size of the output. The leaves are jax arrays on the host CPU
  device, which orbax writes a bounded number of bytes at a time (numpy leaves it stages all at once).
  """
  host = jax.devices("cpu")[0]
  pattern = re.compile(transposed_conv) if transposed_conv else None
  is_transposed = lambda path: bool(pattern and pattern.search("/".join(path)))
  expected = flax.traverse_util.flatten_dict(nn.unbox(kv_params.abstract_params(config)))
  by_path = match_state_dict(state, expected, is_transposed, what)
  flat = {}
  for path in expected:
    tensor = state[by_path[path]].numpy(np.float32)  # upcast first: layouts and casts are exact in fp32
    flat[path] = jax.device_put(
        np.ascontiguousarray(to_flax_layout(tensor, path, is_transposed(path)), dtype=dtype), host)
    del tensor
  return flax.traverse_util.unflatten_dict(flat)
