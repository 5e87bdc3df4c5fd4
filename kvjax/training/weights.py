"""The weights a training run starts from: converted official weights (`python -m convert all`) with the
FLAN-UL2 tokenizer, or random weights with a stand-in tokenizer for smoke runs."""

from __future__ import annotations

import os

from kvjax.pipeline.text_to_video import random_weights
from kvjax.training.config import TrainConfig


def training_weights(config: TrainConfig, weights_dir: str | None, tokenizer_path: str | None = None):
  """(PipelineWeights, tokenizer); `weights_dir` None gives random weights (the caller should say so)."""
  pipeline = config.pipeline_config
  if weights_dir is None:
    from kvjax.text.hashed_tokenizer import HashedWordTokenizer
    return (random_weights(pipeline, config.seed),
            HashedWordTokenizer(pipeline.text_encoder.vocab_size, pipeline.tokens_length))
  from kvjax.pipeline.weights import load_pipeline_weights
  from kvjax.text.tokenizer import T5Tokenizer
  tokenizer_path = tokenizer_path or os.path.join(weights_dir, "spiece.model")
  if not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f"{tokenizer_path}: no tokenizer; pass the path to FLAN-UL2's spiece.model")
  loaded, weights = load_pipeline_weights(weights_dir, pipeline.tokens_length)
  if loaded != pipeline:
    raise ValueError(f"{weights_dir}: the converted models differ from the {config.pipeline!r} pipeline")
  return weights, T5Tokenizer(tokenizer_path, pipeline.tokens_length)


