"""PyTorch state-dict keys <-> Flax parameter paths, and the layout transform of each tensor.

kvjax modules mirror the reference attribute paths, joining list indices onto the preceding name
(`down_samples.1.resnet_attn_blocks.0.3.temporal_resnet_blocks.2.0.context_mlp.1.weight` becomes
`down_samples_1/resnet_attn_blocks_0_3/temporal_resnet_blocks_2_0/context_mlp_1/kernel`). So the mapping is
one rule, plus the name of the leaf, which depends on the layer kind and is read from the Flax side.
"""

from __future__ import annotations

import re

import numpy as np

FlaxPath = tuple[str, ...]

# Flax leaf names that PyTorch calls `weight`.
_WEIGHT_NAMES = ("kernel", "scale", "embedding")


def torch_module_path(key: str) -> tuple[FlaxPath, str]:
  """'a.0.b.1.weight' -> (('a_0', 'b_1'), 'weight'): the Flax module path and the PyTorch leaf name."""
  segments = key.split(".")
  merged: list[str] = []
  for segment in segments[:-1]:
    if segment.isdigit() and merged:
      merged[-1] = f"{merged[-1]}_{segment}"
    else:
      merged.append(segment)
  return tuple(merged), segments[-1]


def torch_key(path: FlaxPath) -> str:
  """The PyTorch key a Flax parameter path corresponds to (inverse of the rule above)."""
  *modules, leaf = path
  parts = []
  for i, module in enumerate(modules):
    # The MoVQ's `mid` names its children `block_1`, `attn_1`, ...: attribute names, not list indices.
    literal = i > 0 and modules[i - 1] == "mid"
    parts.append(module if literal else re.sub(r"_(\d+)", r".\1", module))
  parts.append("weight" if leaf in _WEIGHT_NAMES else leaf)
  return ".".join(parts)


def to_flax_layout(tensor: np.ndarray, path: FlaxPath, transposed_conv: bool) -> np.ndarray:
  """PyTorch layout -> Flax layout for the parameter at `path`.

  Linear (out, in) -> (in, out); Conv (out, in, *k) -> (*k, in, out); ConvTranspose (in, out, *k) ->
  (*k, in, out) in the direct (unflipped) orientation of `ConvTranspose2x2`; vectors, scalars and
  embedding tables unchanged.
  """
  leaf = path[-1]
  if leaf != "kernel" or tensor.ndim < 2:
    return tensor
  if tensor.ndim == 2:
    return tensor.T
  taps = tuple(range(2, tensor.ndim))
  if transposed_conv:
    return tensor.transpose(*taps, 0, 1)
  return tensor.transpose(*taps, 1, 0)


def from_flax_layout(array: np.ndarray, path: FlaxPath, transposed_conv: bool) -> np.ndarray:
  """Inverse of `to_flax_layout` (used to write reference-format checkpoints in tests and exports)."""
  leaf = path[-1]
  if leaf != "kernel" or array.ndim < 2:
    return array
  if array.ndim == 2:
    return array.T
  k = array.ndim - 2
  if transposed_conv:
    return array.transpose(k, k + 1, *range(k))
  return array.transpose(k + 1, k, *range(k))
