"""The weights a training run starts from: converted official weights (`python -m convert all`) with the
FLAN-UL2 tokenizer, or random weights with a stand-in tokenizer for smoke runs; for the MoVQ recipes, one
MoVQ (and the perceptual network's weights)."""

from __future__ import annotations

import os

import numpy as np

from kvjax.conversion.store import load_converted
from kvjax.params import abstract_params, random_params
from kvjax.pipeline.pipeline_weights import FOLDERS, KINDS, random_weights
from kvjax.training.train_config import TrainConfig
from kvjax.training.movq_gan import identity_temporal_layers
from kvjax.training.trainer import discriminator_config


def training_weights(config: TrainConfig, weights_dir: str | None, tokenizer_path: str | None = None):
  """(PipelineWeights, tokenizer) for a UNet run; `weights_dir` None gives random weights (the caller
  should say so). A LoRA run's trigger words are read as their sentinels (`kvjax.text.tokenizer.trigger_tokens`,
  what its adapter file records); the stand-in tokenizer of random weights gives every word an id already."""
  pipeline = config.pipeline_config
  if weights_dir is None:
    from kvjax.text.hashed_tokenizer import HashedWordTokenizer
    return (random_weights(pipeline, config.seed),
            HashedWordTokenizer(pipeline.text_encoder.vocab_size, pipeline.tokens_length))
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.text.tokenizer import T5Tokenizer, trigger_tokens
  tokenizer_path = tokenizer_path or os.path.join(weights_dir, "spiece.model")
  if not os.path.isfile(tokenizer_path):
    raise FileNotFoundError(f"{tokenizer_path}: no tokenizer; pass the path to FLAN-UL2's spiece.model")
  loaded, weights = load_pipeline_weights(weights_dir, pipeline.tokens_length, expected=pipeline)
  if loaded != pipeline:
    raise ValueError(f"{weights_dir}: the converted models differ from the {config.pipeline!r} pipeline")
  words = trigger_tokens(config.lora.trigger_words) if config.lora.enabled else {}
  return weights, T5Tokenizer(tokenizer_path, pipeline.tokens_length, words=words)


def unet_start(config: TrainConfig, weights, path: str, mesh=None):
  """`weights` with the training UNet and its null embedding replaced by a converted folder's (checked by the one
  loader: kind, configuration, stored shapes and dtypes, store; WeightsError in one line). With `mesh` the UNet's
  arrays go straight to their shards as they are read, in float32 with the shardings of the train state's
  parameters (what `_Trainer.init_state` takes without a host copy); without, numpy in host memory."""
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"--init {path}: not a converted model folder (no config.json)")
  if mesh is None:
    model = load_converted(path, KINDS[config.model], config.model_config, "--init")
  else:
    from kvjax.sharding import param_shardings
    model = load_converted(path, KINDS[config.model], config.model_config, "--init",
                           placement=param_shardings(abstract_params(config.model_config), mesh), dtype=np.float32)
  if "null_embedding" not in model.extras:
    raise ValueError(f"--init {path}: no null embedding (a UNet folder of `convert all` or `train.export` has one)")
  return weights.replace(**{config.model: model.params, f"{config.model}_null": model.extras["null_embedding"]})


def _converted(path: str, expected, what: str):
  return load_converted(path, expected.kind, expected, f"the {what}").params


def movq_start(config: TrainConfig, weights_dir: str | None) -> tuple[dict, str]:
  """The initial parameters of a MoVQ run, {"generator", "discriminator"}, and a sentence saying what they
  are. `weights_dir`: a converted MoVQ folder or a `convert all` output (its movq/ or video_movq/); None for
  random weights. The video recipe with `init_from="image"` starts from the image MoVQ with identity
  temporal layers."""
  pipeline, movq = config.pipeline_config, config.movq
  source = "video_movq" if config.model == "video_movq" and movq.init_from == "video" else "image_movq"
  source_config = getattr(pipeline, source)
  if weights_dir is None:
    params, said = random_params(source_config, config.seed), f"RANDOM {source.replace('_', ' ')} weights"
  else:
    single = os.path.isfile(os.path.join(weights_dir, "config.json"))
    path = weights_dir if single else os.path.join(weights_dir, FOLDERS[source])
    if not os.path.isfile(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"{weights_dir}: neither a converted MoVQ nor a `convert all` folder with {FOLDERS[source]}/")
    params, said = _converted(path, source_config, source.replace("_", " ")), f"the {source.replace('_', ' ')} of {path}"
  if source != config.model:
    params = identity_temporal_layers(params, abstract_params(config.model_config), config.seed)
    said += ", temporal layers added at identity"
  disc = random_params(discriminator_config(config), config.seed + 1)
  return {"generator": params, "discriminator": disc}, said


def lpips_weights(config: TrainConfig, path: str | None):
  """The perceptual network's parameters: a converted folder (`python -m convert lpips`), "random" (for
  smoke runs and tests), or None (the perceptual term is off)."""
  if path is None:
    return None
  from kvjax.models.lpips import LPIPS_PRESETS
  lpips_config = LPIPS_PRESETS[config.movq.lpips]
  if path == "random":  # linear heads non-negative, as trained ones are: a distance, not a signed score
    params = random_params(lpips_config, config.seed + 2)
    return {name: ({"model_1": {"kernel": abs(tree["model_1"]["kernel"])}} if name.startswith("lin") else tree)
            for name, tree in params.items()}
  return _converted(path, lpips_config, f"{config.movq.lpips} network")
