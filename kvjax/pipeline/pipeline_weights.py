"""Every model's weights of a pipeline: random ones, or the output of `python -m convert all` (one converted
folder per model), where any model may be replaced by another converted folder (a decoder a user trained).
A folder may also hold `latents.json`, the map between the MoVQ's latents and the UNets'
(kvjax.models.latent_normalization; none for the official weights)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import flax.struct
import jax.numpy as jnp
import numpy as np

from kvjax.conversion.store import load_converted
from kvjax.models import latent_normalization
from kvjax.params import random_params
from kvjax.pipeline.pipeline_config import PipelineConfig

# Sub-folders written by `convert all`.
FOLDERS = {"keyframe": "keyframe", "interpolation": "interpolation", "image_movq": "movq",
           "video_movq": "video_movq", "text_encoder": "t5", "projections": "projections"}


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


def with_models(config: PipelineConfig, weights: PipelineWeights,
                overrides: Mapping[str, str]) -> tuple[PipelineConfig, PipelineWeights]:
  """Replaces models by converted folders: {"video_movq": "my_decoder/", ...} (fields of PipelineConfig).
  A replacement must have the configuration of the model it replaces (the other models are built for it)."""
  for field, path in overrides.items():
    if field not in FOLDERS or field.endswith("_null"):
      raise ValueError(f"no pipeline model {field!r}; one of {', '.join(FOLDERS)}")
    model = load_converted(path)
    if model.config != getattr(config, field):
      raise ValueError(f"{path}: its {model.kind} configuration differs from the pipeline's {field}")
    weights = weights.replace(**{field: model.params})
  return config, weights


def load_pipeline_weights(folder: str, tokens_length: int = 128,
                          overrides: Mapping[str, str] | None = None) -> tuple[PipelineConfig, PipelineWeights]:
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such weights folder (make one with `python -m convert all`)")
  wanted = {field: name for field, name in FOLDERS.items() if field not in (overrides or {})}
  missing = [name for name in wanted.values() if not os.path.isfile(os.path.join(folder, name, "config.json"))]
  if missing:
    raise FileNotFoundError(f"{folder}: missing converted models: {', '.join(missing)} (expected the output "
                            "of `python -m convert all`)")
  paths = {**{field: os.path.join(folder, name) for field, name in wanted.items()}, **(overrides or {})}
  loaded = {field: load_converted(path) for field, path in paths.items()}
  config = PipelineConfig(**{field: model.config for field, model in loaded.items()}, tokens_length=tokens_length)
  weights = PipelineWeights(
      keyframe=loaded["keyframe"].params, keyframe_null=loaded["keyframe"].extras["null_embedding"],
      interpolation=loaded["interpolation"].params,
      interpolation_null=loaded["interpolation"].extras["null_embedding"],
      image_movq=loaded["image_movq"].params, video_movq=loaded["video_movq"].params,
      text_encoder=loaded["text_encoder"].params, projections=loaded["projections"].params,
      latent_normalization=latent_normalization.load(os.path.join(folder, latent_normalization.LATENTS_FILE),
                                                     config.image_movq.z_channels))
  return config, weights
