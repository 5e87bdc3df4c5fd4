"""Weight-only int8: kernels stored as int8 with one float32 scale per output channel, dequantized where each
layer reads them, inside the compiled forward (activations stay in the compute dtype, float32 or bfloat16).

A quantized kernel is an `Int8Weight` in the parameter tree, in place of the float array; the layers that own
kernels (`kvjax.layers.basic`: dense, conv, the 2x2 transposed conv) read it through `Int8Aware`. The tree keeps
every other leaf (norms, embeddings, biases, the layers `KEEP_FLOAT` names) as it was. Its int8 values carry
the float kernel's logical axes and its scales the same names over size-1 axes (`boxed_like`), so the rule table
of kvjax.sharding shards both, and `--mesh` and `--offload` work unchanged.

On disk (kvjax.conversion.store) a quantized kernel is the dict {"int8": values, "scale": scales}
(`to_stored`, `from_stored`).

Why our own and not qwix (Google's JAX quantization library): qwix 0.1.8's post-training provider quantizes a
convolution only with its activations in the same type (`conv_general_dilated requires same act_qtype and
weight_qtype`): it has no weight-only int8 convolution, and the UNets and MoVQs are mostly convolutions.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

INT8 = "int8"
# Every kernel in int8, KEEP_FLOAT's too (opt-in per model: `--quantize t5=int8-all` puts FLAN-T5's `wo` in int8,
# 8.25 GiB instead of 10.25 at production; for the UNets and MoVQs it adds their few-thousand-parameter input and
# output convolutions). A folder written so is an int8 folder like any other: its keys say which kernels are int8.
INT8_ALL = "int8-all"
QUANTIZATIONS = (INT8, INT8_ALL)

# The pipeline models that take int8 weights: the name `--quantize` gives each -> its PipelineConfig field.
MODEL_NAMES = {"t5": "text_encoder", "keyframe": "keyframe", "interpolation": "interpolation",
               "image-movq": "image_movq", "video-movq": "video_movq"}
# `--quantize int8` alone: the large models (T5 8.7B, the UNets 4.2B and 4.0B parameters). The MoVQs are named
# one by one (bench/int8_error.py measures them too).
DEFAULT_MODELS = ("text_encoder", "keyframe", "interpolation")

# Kernels kept in their float type, by layer name, per converted-folder kind: FLAN-T5's feed-forward output
# projections (known to break in 8 bits), and each UNet's and MoVQ's input and output convolutions (a few
# thousand parameters, whose error reaches the noise prediction or the pixels directly).
KEEP_FLOAT = {
    "t5_encoder": ("wo",),
    "keyframe_unet": ("in_layer", "image_in_layer", "out_layer_2"),
    "interpolation_unet": ("in_layer", "out_layer_2"),
    "movq": ("conv_in", "conv_out", "quant_conv", "post_quant_conv"),
}
KINDS = tuple(KEEP_FLOAT)

_STORED_VALUES, _STORED_SCALE = "int8", "scale"


@flax.struct.dataclass
class Int8Weight:
  """A kernel as int8 `values` (the float kernel's shape) and float32 `scale` (that shape with every axis but
  the last, the output channels, of size 1): kernel ~= values * scale."""

  values: Any
  scale: Any

  def dequantize(self, dtype=jnp.float32):
    return self.values.astype(dtype) * self.scale.astype(dtype)


def is_int8(x) -> bool:
  return isinstance(x, Int8Weight)


class Int8Aware:
  """Mixin of a flax layer whose parameters may be `Int8Weight`s: each is dequantized to the layer's compute
  dtype where it is read (in a scanned T5 block, one block's kernels at a time)."""

  def param(self, name, init_fn, *init_args, **init_kwargs):
    value = super().param(name, init_fn, *init_args, **init_kwargs)
    if is_int8(value):
      return value.dequantize(getattr(self, "dtype", None) or self.param_dtype)
    return value


def quantize_array(kernel) -> Int8Weight:
  """Symmetric per-output-channel int8 of a float kernel (..., out), on the host: scale = max |w| / 127."""
  w = np.asarray(kernel, np.float32)
  amax = np.max(np.abs(w), axis=tuple(range(w.ndim - 1)), keepdims=True)
  scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
  values = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
  return Int8Weight(values, scale)


def _quantized(kind: str, path: tuple[str, ...], leaf, keep: Iterable[str] | None = None) -> bool:
  keep = KEEP_FLOAT[kind] if keep is None else keep
  return path[-1] == "kernel" and not is_int8(leaf) and len(leaf.shape) >= 2 and not set(path[:-1]) & set(keep)


def check_kind(kind: str, where: str = "") -> None:
  if kind not in KEEP_FLOAT:
    raise ValueError(f"{where}int8 weights are for {', '.join(KINDS)}, not a {kind}")


def kept_float(quantization: str, kind: str) -> tuple[str, ...]:
  """The layers whose kernels `quantization` (one of QUANTIZATIONS) keeps in float for a model of `kind`."""
  return () if quantization == INT8_ALL else KEEP_FLOAT[kind]


def quantize_params(params, kind: str, keep: Iterable[str] | None = None, *, how: str = INT8) -> dict[str, Any]:
  """A converted model's parameters (`kind`: its converted-folder kind) with its kernels as Int8Weights
  (numpy, on the host), those `how` (one of QUANTIZATIONS) keeps in float (`kept_float`; or the layers named in
  `keep`, for measuring) and every other leaf as they were. Quantizing a quantized tree changes nothing."""
  check_kind(kind)
  keep = kept_float(how, kind) if keep is None else keep
  flat = flax.traverse_util.flatten_dict(dict(params))
  return flax.traverse_util.unflatten_dict(
      {path: quantize_array(leaf) if _quantized(kind, path, leaf, keep) else leaf for path, leaf in flat.items()})


def dequantize_params(params, dtype=jnp.float32):
  """Every Int8Weight of `params` back to a float array (for measuring the error against float)."""
  return jax.tree.map(lambda x: x.dequantize(dtype) if is_int8(x) else x, params, is_leaf=is_int8)


def is_quantized(params) -> bool:
  return any(is_int8(x) for x in jax.tree.leaves(params, is_leaf=is_int8))


def to_stored(params):
  """The on-disk layout: each Int8Weight as {"int8": values, "scale": scale}."""
  return jax.tree.map(lambda x: {_STORED_VALUES: x.values, _STORED_SCALE: x.scale} if is_int8(x) else x, params,
                      is_leaf=is_int8)


def from_stored(tree, name: str = ""):
  """`to_stored`'s inverse (any leaves: arrays, shardings, metadata): a "kernel" holding exactly "int8" and
  "scale" is an Int8Weight."""
  if isinstance(tree, Mapping):
    if name == "kernel" and set(tree) == {_STORED_VALUES, _STORED_SCALE}:
      return Int8Weight(tree[_STORED_VALUES], tree[_STORED_SCALE])
    return {k: from_stored(v, k) for k, v in tree.items()}
  return tree


def stored_key_base(key: str) -> tuple[str, str | None]:
  """A stored parameter's '/'-joined key -> (the float parameter it stands for, "int8" / "scale" / None): the
  parts of a quantized kernel are ".../kernel/int8" and ".../kernel/scale"."""
  base, _, last = key.rpartition("/")
  quantized = last in (_STORED_VALUES, _STORED_SCALE) and base.rpartition("/")[2] == "kernel"
  return (base, last) if quantized else (key, None)


def scale_shape(shape: Iterable[int]) -> tuple[int, ...]:
  shape = tuple(shape)
  return (1,) * (len(shape) - 1) + shape[-1:]


def boxed_like(boxed_abstract, params):
  """The abstract parameters (`kvjax.params.abstract_params`: boxed with logical axes) with the structure of
  `params`: where it holds an Int8Weight, an Int8Weight of boxed int8 values and float32 scales under the float
  kernel's logical names (size-1 scale axes stay whole under the rule table). `params` may be stored-layout
  dicts or Int8Weight trees, of arrays or of their metadata."""
  abstract = flax.traverse_util.flatten_dict(dict(boxed_abstract))
  flat = flax.traverse_util.flatten_dict(dict(to_stored(params)))
  out = {}
  for path, leaf in flat.items():
    if path in abstract:  # a float leaf, in its own dtype
      box = abstract[path]
      out[path] = box.replace_boxed(jax.ShapeDtypeStruct(box.value.shape, getattr(leaf, "dtype", box.value.dtype)))
      continue
    box = abstract[path[:-1]]  # a quantized kernel's part
    shape = box.value.shape if path[-1] == _STORED_VALUES else scale_shape(box.value.shape)
    dtype = jnp.int8 if path[-1] == _STORED_VALUES else jnp.float32
    out[path] = box.replace_boxed(jax.ShapeDtypeStruct(shape, dtype))
  return from_stored(flax.traverse_util.unflatten_dict(out))


def quantized_abstract(config, kind: str, dtype=jnp.float32, keep: Iterable[str] | None = None, *, how: str = INT8):
  """The abstract parameters of `config`'s model (boxed, float leaves in `dtype`) with the kernels
  `quantize_params` makes int8 (for compiling or measuring a quantized model without weights)."""
  keep = kept_float(how, kind) if keep is None else keep
  from kvjax.params import abstract_params
  boxed = abstract_params(config)
  flat = flax.traverse_util.flatten_dict(dict(nn.unbox(boxed)))
  shapes = {path: (Int8Weight(jax.ShapeDtypeStruct(leaf.shape, jnp.int8),
                              jax.ShapeDtypeStruct(scale_shape(leaf.shape), jnp.float32))
                   if _quantized(kind, path, leaf, keep) else jax.ShapeDtypeStruct(leaf.shape, dtype))
            for path, leaf in flat.items()}
  return boxed_like(boxed, flax.traverse_util.unflatten_dict(shapes))


def parse_quantize(spec: str, option: str = "--quantize") -> dict[str, str]:
  """`int8` or `int8-all` (the models of DEFAULT_MODELS) or `t5=int8-all,keyframe=int8,...` -> {PipelineConfig
  field: "int8" | "int8-all"}; refused in one line naming `option`."""
  spec = spec.strip()
  if spec in QUANTIZATIONS:
    return dict.fromkeys(DEFAULT_MODELS, spec)
  out = {}
  for part in filter(None, (p.strip() for p in spec.split(","))):
    name, sep, value = part.partition("=")
    if not sep or name not in MODEL_NAMES or value not in QUANTIZATIONS or MODEL_NAMES[name] in out:
      raise ValueError(f"{option} {spec!r}: expected {' or '.join(QUANTIZATIONS)} (T5 and both UNets), or "
                       f"MODEL=VALUE pairs separated by commas, each model at most once, MODEL one of "
                       f"{', '.join(MODEL_NAMES)}, VALUE {' or '.join(QUANTIZATIONS)}")
    out[MODEL_NAMES[name]] = value
  if not out:
    raise ValueError(f"{option}: empty; give {' or '.join(QUANTIZATIONS)} or MODEL=VALUE pairs")
  return out


def weight_bytes(params) -> int:
  """Bytes of a parameter tree (arrays or ShapeDtypeStructs; boxed or not)."""
  leaves = jax.tree.leaves(nn.unbox(params), is_leaf=is_int8)
  total = 0
  for leaf in leaves:
    for a in ((leaf.values, leaf.scale) if is_int8(leaf) else (leaf,)):
      total += int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
  return total
