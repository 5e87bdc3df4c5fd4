"""Parameter trees: abstract construction, counting and logical axes, without materialising weights."""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from kvjax import model_configs
from kvjax.layers.attention import check_attention_implementation
from kvjax.models.discriminators import build_discriminator
from kvjax.models.interpolation_unet import InterpolationUNet
from kvjax.models.keyframe_unet import KeyframeUNet
from kvjax.models.lpips import LPIPS
from kvjax.models.movq import MoVQ
from kvjax.models.t5_encoder import T5Encoder
from kvjax.models.text_projection import TextProjections

Inputs = dict[str, jax.ShapeDtypeStruct]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """How the models of one config type are made."""

  build: Callable[..., nn.Module]  # (config, dtype=, param_dtype=, [attention_implementation=], [remat=])
  example_inputs: Callable[[Any, int, int | None], Inputs]  # (config, batch, size): see `example_inputs`
  attends: bool = True  # takes an attention implementation
  remat: bool = False  # takes a rematerialisation policy


def _unet_inputs(config: model_configs.UNetConfig, batch: int, size: int | None) -> Inputs:
  size = size or 2 ** (config.num_levels - 1)
  f32 = jnp.float32
  return dict(
      x=jax.ShapeDtypeStruct((batch, size, size, config.num_channels), f32),
      time=jax.ShapeDtypeStruct((batch,), f32),
      context=jax.ShapeDtypeStruct((batch, 2, config.context_dim), f32),
      context_mask=jax.ShapeDtypeStruct((batch, 2), jnp.bool_))


def _movq_inputs(config: model_configs.MoVQConfig, batch: int, size: int | None) -> Inputs:
  size = size or 2 * config.downsampling_factor
  return dict(images=jax.ShapeDtypeStruct((batch, size, size, config.in_channels), jnp.float32))


def _t5_inputs(config: model_configs.T5EncoderConfig, batch: int, size: int | None) -> Inputs:
  return dict(input_ids=jax.ShapeDtypeStruct((batch, 2), jnp.int32),
              attention_mask=jax.ShapeDtypeStruct((batch, 2), jnp.int32))


def _projection_inputs(config: model_configs.TextProjectionConfig, batch: int, size: int | None) -> Inputs:
  return dict(hidden_states=jax.ShapeDtypeStruct((batch, 2, config.in_dim), jnp.float32))


def _discriminator_inputs(config: model_configs.DiscriminatorConfig, batch: int, size: int | None) -> Inputs:
  size = size or config.min_spatial_size
  if config.architecture == "video":
    return dict(x=jax.ShapeDtypeStruct((batch, 2, size, size, config.in_channels), jnp.float32))
  return dict(x=jax.ShapeDtypeStruct((batch, size, size, config.in_channels), jnp.float32))


def _lpips_inputs(config: model_configs.LPIPSConfig, batch: int, size: int | None) -> Inputs:
  image = jax.ShapeDtypeStruct((batch, 16, 16, 3), jnp.float32)
  return dict(x=image, y=image)


# Config type -> how its model is made: a new model is one entry here.
MODELS: dict[type, ModelEntry] = {
    model_configs.KeyframeUNetConfig: ModelEntry(KeyframeUNet, _unet_inputs, remat=True),
    model_configs.InterpolationUNetConfig: ModelEntry(InterpolationUNet, _unet_inputs, remat=True),
    model_configs.MoVQConfig: ModelEntry(MoVQ, _movq_inputs, remat=True),
    model_configs.T5EncoderConfig: ModelEntry(T5Encoder, _t5_inputs),
    model_configs.TextProjectionConfig: ModelEntry(TextProjections, _projection_inputs, attends=False),
    model_configs.DiscriminatorConfig: ModelEntry(build_discriminator, _discriminator_inputs, attends=False),
    model_configs.LPIPSConfig: ModelEntry(LPIPS, _lpips_inputs, attends=False),
}


def model_entry(config) -> ModelEntry:
  """The entry of `config`'s type (or of the nearest base type that has one)."""
  for config_type in type(config).__mro__:
    if config_type in MODELS:
      return MODELS[config_type]
  raise TypeError(f"no model for config type {type(config).__name__}")


def build_model(config, dtype=jnp.float32, param_dtype=jnp.float32, remat: str = "none",
                attention: str = "xla") -> nn.Module:
  """The module of `config`; `remat` (UNets and MoVQs) names a rematerialisation policy, `attention` the
  attention implementation of the models that attend (kvjax.layers.attention.ATTENTION_IMPLEMENTATIONS)."""
  attention = check_attention_implementation(attention)
  entry = model_entry(config)
  options = dict(dtype=dtype, param_dtype=param_dtype)
  if entry.attends:
    options.update(attention_implementation=attention)
  if entry.remat:
    options.update(remat=remat)
  elif remat != "none":
    raise ValueError(f"remat applies to the UNets and MoVQs, not to {type(config).__name__}")
  return entry.build(config, **options)


def example_inputs(config, batch: int = 3, size: int | None = None) -> Inputs:
  """Abstract inputs that reach every parameter of the model (used for init and eval_shape)."""
  return model_entry(config).example_inputs(config, batch, size)


def init_params(config, rng: jax.Array, param_dtype=jnp.float32) -> dict[str, Any]:
  """Randomly initialised parameters (boxed with their logical axes)."""
  model = build_model(config, param_dtype=param_dtype)
  inputs = {k: jnp.zeros(v.shape, v.dtype) for k, v in example_inputs(config).items()}
  return model.init(rng, **inputs)["params"]


def random_params(config, seed: int = 0, param_dtype=jnp.float32) -> dict[str, Any]:
  """Random weights without running the model (seconds, where `init_params` compiles a whole forward).

  Kernels and embeddings ~ N(0, 1/fan_in), norm scales 1, biases and blend scalars 0: a model that
  computes something non-trivial, for smoke runs and benchmarks. Not the reference initialisation. Drawn
  with numpy: per-leaf jax draws would compile once per distinct shape.
  """
  flat = flax.traverse_util.flatten_dict(nn.unbox(abstract_params(config, param_dtype)))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    if path[-1] in ("kernel", "embedding"):
      fan_in = math.prod(leaf.shape[:-1]) if path[-1] == "kernel" else leaf.shape[-1]
      values = rng.standard_normal(leaf.shape, np.float32) / np.float32(math.sqrt(fan_in))
    else:
      values = (np.ones if path[-1] == "scale" else np.zeros)(leaf.shape, np.float32)
    return jnp.asarray(values, leaf.dtype)

  return flax.traverse_util.unflatten_dict({path: draw(path, leaf) for path, leaf in flat.items()})


@functools.lru_cache(maxsize=32)
def abstract_params(config, param_dtype=jnp.float32) -> dict[str, Any]:
  """Shapes and dtypes of every parameter (boxed with logical axes), computed with `jax.eval_shape`.

  Cached per (config, dtype): tracing a production UNet takes seconds, and the result is immutable
  (ShapeDtypeStructs), so sharing it is safe.
  """
  model = build_model(config, param_dtype=param_dtype)
  return jax.eval_shape(lambda rng, inputs: model.init(rng, **inputs)["params"],
                        jax.random.key(0), example_inputs(config))


def count_params(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(nn.unbox(tree)))
