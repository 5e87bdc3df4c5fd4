"""Every model's weights of a pipeline: random ones, or the output of `python -m convert all` (one converted
folder per model), where any model may be replaced by another converted folder (a decoder a user trained).
A folder may also hold `latents.json`, the map between the MoVQ's latents and the UNets'
(kvjax.models.latent_normalization; none for the official weights). Any model may be stored in int8
(`convert --quantize int8`) or quantized as it loads (`quantize`; kvjax.quantization)."""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kvjax import quantization
from kvjax.conversion.store import ConvertedModel, WeightsError, check_converted, restore_checked
from kvjax.models import latent_normalization
from kvjax.params import random_params
from kvjax.pipeline.pipeline_config import PipelineConfig

# Sub-folders written by `convert all`.
FOLDERS = {"keyframe": "keyframe", "interpolation": "interpolation", "image_movq": "movq",
           "video_movq": "video_movq", "text_encoder": "t5", "projections": "projections"}
# The kind of converted folder each model takes (config.json's "kind").
KINDS = {"keyframe": "keyframe_unet", "interpolation": "interpolation_unet", "image_movq": "movq",
         "video_movq": "movq", "text_encoder": "t5_encoder", "projections": "t5_projections"}


@flax.struct.dataclass
class PipelineWeights:
  """Every model's parameters (a pytree: `jax.device_put` places them all at once)."""

  keyframe: Any
  keyframe_null: Any
  interpolation: Any
  interpolation_null: Any
  image_movq: Any
  video_movq: Any
  text_encoder: Any
  projections: Any
  # The UNets' latents from the MoVQ's: a LatentNormalization, or None (the reference: none).
  latent_normalization: Any = None


def random_weights(config: PipelineConfig, seed: int = 0) -> PipelineWeights:
  """Random weights for every model (`kvjax.params.random_params`), null embeddings drawn at random."""
  rng = np.random.default_rng(seed)
  seeds = rng.integers(0, 2 ** 31, 6)
  null = lambda: jnp.asarray(0.5 * rng.standard_normal(config.keyframe.context_dim, np.float32))
  return PipelineWeights(
      random_params(config.keyframe, seeds[0]), null(), random_params(config.interpolation, seeds[1]), null(),
      random_params(config.image_movq, seeds[2]), random_params(config.video_movq, seeds[3]),
      random_params(config.text_encoder, seeds[4]), random_params(config.projections, seeds[5]))


def check_quantize(quantize: Mapping[str, str] | None) -> dict[str, str]:
  """{PipelineConfig field: "int8" | "int8-all"} (kvjax.quantization.parse_quantize), each field one that takes
  int8."""
  quantize = dict(quantize or {})
  for field, kind in quantize.items():
    if field not in quantization.MODEL_NAMES.values() or kind not in quantization.QUANTIZATIONS:
      raise ValueError(f"cannot quantize {field!r} to {kind!r}: {' or '.join(quantization.QUANTIZATIONS)} is "
                       f"for {', '.join(quantization.MODEL_NAMES.values())}")
  return quantize


def quantize_weights(weights: PipelineWeights, quantize: Mapping[str, str] | None) -> PipelineWeights:
  """The models named in `quantize` ({field: "int8" | "int8-all"}) with int8 kernels (on the host;
  kvjax.quantization)."""
  return weights.replace(**{field: quantization.quantize_params(getattr(weights, field), KINDS[field], how=how)
                            for field, how in check_quantize(quantize).items()})


def _role(field: str) -> str:
  return f"--{field.replace('_', '-')}"


def with_models(config: PipelineConfig, weights: PipelineWeights,
                overrides: Mapping[str, str]) -> tuple[PipelineConfig, PipelineWeights]:
  """Replaces models by converted folders: {"video_movq": "my_decoder/", ...} (fields of PipelineConfig).
  A replacement must be of the kind and have the configuration of the model it replaces (the other models are
  built for it); every folder is checked before any is read."""
  for field in overrides:
    if field not in FOLDERS or field.endswith("_null"):
      raise ValueError(f"no pipeline model {field!r}; one of {', '.join(FOLDERS)}")
  checked = {field: check_converted(path, KINDS[field], getattr(config, field), _role(field))
             for field, path in overrides.items()}
  for field, folder in checked.items():
    model = restore_checked(folder, _role(field))
    weights = weights.replace(**{field: model.params})
  return config, weights


def _set_layer(stacked, layer, index):
  """`stacked` with `layer` at `index` of its leading axis."""
  return jax.lax.dynamic_update_index_in_dim(stacked, layer.astype(stacked.dtype), index, 0)


# `stacked` donated: written in place (one program per shape and sharding, the index traced).
_set_layer_in_place = jax.jit(_set_layer, donate_argnums=0)


def _scanned_text_encoder(checked, role: str, mesh):
  """A checked T5 encoder folder read onto the devices in the pipeline's scanned layout
  (kvjax.models.t5_encoder.scan_layout): the stacked arrays of blocks 1..N-1 made first (zeros, on their
  shardings), then each block read alone, written into its slot and freed. Memory holds the model once plus one
  block; stacking blocks read whole would hold a second copy of them."""
  from kvjax.models.t5_encoder import SCANNED_BLOCKS
  from kvjax.params import abstract_params
  from kvjax.sharding import param_shardings
  config = checked.config
  stored = checked.stored["params"]
  blocks = [f"block_{i}" for i in range(1, config.num_layers)]
  is_leaf = lambda x: hasattr(x, "shape")
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shardings = jax.tree.map(lambda _: device, stored, is_leaf=is_leaf)
    stacked_shardings = jax.tree.map(lambda _: device, stored["encoder"].get("block_1", {}), is_leaf=is_leaf)
  else:  # int8 kernels in the stored layout, each part sharded as its float kernel
    shardings = quantization.to_stored(param_shardings(quantization.boxed_like(abstract_params(config), stored), mesh))
    stacked_shardings = jax.tree.map(
        lambda s: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, *s.spec)),
        shardings["encoder"].get("block_1", {}))
  without_blocks = lambda tree: {**tree, "encoder": {k: v for k, v in tree["encoder"].items() if k not in blocks}}
  params = restore_checked(checked, role, without_blocks(shardings), part={"params": without_blocks(stored)}).params
  if not blocks:
    return params
  stacked = jax.tree.map(lambda leaf, sharding: jnp.zeros((len(blocks), *leaf.shape), leaf.dtype, device=sharding),
                         stored["encoder"][blocks[0]], stacked_shardings, is_leaf=is_leaf)
  for index, name in enumerate(blocks):
    block = restore_checked(checked, role, {"encoder": {name: shardings["encoder"][name]}},
                            part={"params": {"encoder": {name: stored["encoder"][name]}}}).params["encoder"][name]
    stacked = jax.tree.map(lambda s, b: _set_layer_in_place(s, b, index), stacked, quantization.to_stored(block))
    del block
  params["encoder"][SCANNED_BLOCKS] = quantization.from_stored(stacked)
  return params


def load_pipeline_weights(folder: str, tokens_length: int = 128, overrides: Mapping[str, str] | None = None,
                          mesh=None, offload: bool = False, expected: PipelineConfig | None = None,
                          scan_text_encoder: bool = False,
                          quantize: Mapping[str, str] | None = None) -> tuple[PipelineConfig, PipelineWeights]:
  """A `convert all` folder's models (any replaced by `overrides`' folders). Every folder is checked first (kind,
  configuration, stored shapes and dtypes, store; kvjax.conversion.store.check_converted), then the arrays are
  placed as they are read: on the default device, sharded on `mesh` by the rule table, or kept in host memory
  with `offload`. The text encoder: with `scan_text_encoder` (what TextToVideo runs) read onto the devices
  block by block into its scanned layout; without, in host memory in its per-block layout (TextToVideo stacks
  it, training encodes captions with it). `expected`: the pipeline the models must make (e.g. a training
  run's), each refused by name if not. `quantize` ({field: "int8"}, kvjax.quantization.parse_quantize): models
  quantized as they load (read into host memory, quantized, then placed; T5 then in its per-block layout); a
  folder stored in int8 loads as it is stored."""
  quantize = check_quantize(quantize)
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such weights folder (make one with `python -m convert all`)")
  wanted = {field: name for field, name in FOLDERS.items() if field not in (overrides or {})}
  missing = [name for name in wanted.values() if not os.path.isfile(os.path.join(folder, name, "config.json"))]
  if missing:
    raise FileNotFoundError(f"{folder}: missing converted models: {', '.join(missing)} (expected the output "
                            "of `python -m convert all`)")
  paths = {**{field: os.path.join(folder, name) for field, name in wanted.items()}, **(overrides or {})}
  roles = {field: _role(field) if field in (overrides or {}) else "" for field in paths}

  def joins(field):  # what the model must be: the run's, else the folder's own model that an override replaces
    if expected is not None:
      return getattr(expected, field)
    replaced = os.path.join(folder, FOLDERS[field])
    if field in (overrides or {}) and os.path.isfile(os.path.join(replaced, "config.json")):
      return check_converted(replaced, KINDS[field], check_arrays=False).config
    return None

  checked = {field: check_converted(path, KINDS[field], joins(field), roles[field]) for field, path in paths.items()}
  config = PipelineConfig(**{field: c.config for field, c in checked.items()}, tokens_length=tokens_length)

  def placement(field, params):  # `params`: the tree to place, or its stored metadata
    if offload or (field == "text_encoder" and not scan_text_encoder):
      return "host"
    if mesh is None:
      return None
    from kvjax.params import abstract_params
    from kvjax.sharding import param_shardings
    return param_shardings(quantization.boxed_like(abstract_params(getattr(config, field)), params), mesh)

  def restore(field):
    stored = checked[field].stored["params"]
    if field in quantize and not quantization.is_quantized(quantization.from_stored(stored)):
      model = restore_checked(checked[field], roles[field], "host")
      model.params = quantization.quantize_params(model.params, KINDS[field], how=quantize[field])
      where = "host" if field == "text_encoder" else placement(field, model.params)  # T5: stacked by TextToVideo
      if where != "host":
        model.params = jax.device_put(model.params, where)
      return model
    if field == "text_encoder" and scan_text_encoder and not offload:
      return ConvertedModel(checked[field].kind, checked[field].config,
                            _scanned_text_encoder(checked[field], roles[field], mesh))
    return restore_checked(checked[field], roles[field], placement(field, stored))

  loaded = {field: restore(field) for field in paths}
  for field in ("keyframe", "interpolation"):
    if "null_embedding" not in loaded[field].extras:
      raise WeightsError(f"{paths[field]}: no null embedding (a UNet folder of `convert all` or `train.export` "
                         "has one)")
  weights = PipelineWeights(
      keyframe=loaded["keyframe"].params, keyframe_null=loaded["keyframe"].extras["null_embedding"],
      interpolation=loaded["interpolation"].params,
      interpolation_null=loaded["interpolation"].extras["null_embedding"],
      image_movq=loaded["image_movq"].params, video_movq=loaded["video_movq"].params,
      text_encoder=loaded["text_encoder"].params, projections=loaded["projections"].params,
      latent_normalization=latent_normalization.load(os.path.join(folder, latent_normalization.LATENTS_FILE),
                                                     config.image_movq.z_channels))
  return config, weights


# The pipeline field of each UNet kind an adapter is made for.
ADAPTED_FIELDS = {"keyframe_unet": "keyframe", "interpolation_unet": "interpolation"}


ADAPTER_MODES = ("merged", "runtime")


def with_adapters(config: PipelineConfig, weights: PipelineWeights, adapters: Sequence[tuple[Any, float]],
                  role: str = "--lora", mode: str = "merged") -> PipelineWeights:
  """LoRA adapters on the UNets they were made for. `adapters`: (adapter file path or
  `kvjax.conversion.adapters.Adapter`, scale) pairs, applied in order (several may adapt the same UNet); every
  file is read and checked against its UNet (kind, configuration, keys, shapes) before any is applied.

  mode "merged" (the default): merged once, here: each adapted kernel becomes kernel + scale x alpha / rank x
  A @ B, added in float32 and cast back to the kernel's type (an int8 kernel is quantized again), so sampling
  costs what it costs without them. The merged UNets are host (numpy) arrays: merge before placing the weights
  (TextToVideo places them on its mesh, or keeps them in host memory with offload).

  mode "runtime": each adapted UNet becomes a `kvjax.models.lora.RuntimeAdapters` (the base as it is, the
  adapters and their scales), merged by the same arithmetic inside each compiled stage, once per call; a new
  scale (`TextToVideo.set_lora_scales`) or another adapter of the same rank and targets (`replace_weights`)
  compiles nothing. It costs the merge per stage call and, while a stage runs, a copy of the adapted kernels
  (float32 where the base is int8)."""
  from kvjax.conversion.adapters import check_base, read_adapter
  from kvjax.models.lora import LoraConfig, RuntimeAdapters, merge
  if mode not in ADAPTER_MODES:
    raise ValueError(f"LoRA mode {mode!r}: one of {', '.join(ADAPTER_MODES)}")
  read = [(read_adapter(a, role) if isinstance(a, (str, os.PathLike)) else a, scale) for a, scale in adapters]
  for adapter, _ in read:
    check_base(adapter, getattr(config, ADAPTED_FIELDS[adapter.kind]), role)
  if mode == "runtime":
    fields = {}
    for adapter, scale in read:
      fields.setdefault(ADAPTED_FIELDS[adapter.kind], []).append((adapter, scale))
    return weights.replace(**{field: RuntimeAdapters(
        base=getattr(weights, field), adapters=tuple(a.adapters for a, _ in pairs),
        factors=tuple(np.float32(a.scale) for a, _ in pairs), strengths=tuple(np.float32(s) for _, s in pairs),
        configs=tuple(LoraConfig(rank=a.rank, targets=a.targets) for a, _ in pairs))
        for field, pairs in fields.items()})
  for adapter, scale in read:
    field = ADAPTED_FIELDS[adapter.kind]
    weights = weights.replace(**{field: merge(getattr(weights, field), adapter.adapters, adapter.scale * scale)})
  return weights
