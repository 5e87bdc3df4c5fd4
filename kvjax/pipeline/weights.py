"""Loads a pipeline from the output of `python -m convert all` (one converted folder per model)."""

from __future__ import annotations

import os

from kvjax.conversion.store import load_converted
from kvjax.pipeline.config import PipelineConfig
from kvjax.pipeline.text_to_video import PipelineWeights

# Sub-folders written by `convert all`.
FOLDERS = {"keyframe": "keyframe", "interpolation": "interpolation", "image_movq": "movq",
           "video_movq": "video_movq", "text_encoder": "t5", "projections": "projections"}


def load_pipeline_weights(folder: str, tokens_length: int = 128) -> tuple[PipelineConfig, PipelineWeights]:
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{folder}: no such weights folder (make one with `python -m convert all`)")
  missing = [name for name in FOLDERS.values() if not os.path.isfile(os.path.join(folder, name, "config.json"))]
  if missing:
    raise FileNotFoundError(f"{folder}: missing converted models: {', '.join(missing)} (expected the output "
                            "of `python -m convert all`)")
  loaded = {field: load_converted(os.path.join(folder, name)) for field, name in FOLDERS.items()}
  config = PipelineConfig(**{field: model.config for field, model in loaded.items()}, tokens_length=tokens_length)
  weights = PipelineWeights(
      keyframe=loaded["keyframe"].params, keyframe_null=loaded["keyframe"].extras["null_embedding"],
      interpolation=loaded["interpolation"].params,
      interpolation_null=loaded["interpolation"].extras["null_embedding"],
      image_movq=loaded["image_movq"].params, video_movq=loaded["video_movq"].params,
      text_encoder=loaded["text_encoder"].params, projections=loaded["projections"].params)
  return config, weights
