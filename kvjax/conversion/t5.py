"""Hugging Face T5 checkpoints -> `T5Encoder` parameters; `t5_projections.pt` -> `TextProjections` ones.

The T5 source is a Hugging Face model folder (config.json plus model.safetensors, sharded safetensors with
their index, pytorch_model.bin or sharded .bin files with their index) or one weights file. A
`T5EncoderModel` checkpoint converts whole; from a `T5ForConditionalGeneration` one (google/flan-ul2 ships
that) the decoder and LM head are skipped and counted in the result's extras. Anything else is an error.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import flax.linen as nn
import flax.traverse_util
import numpy as np

from kvjax import params as kv_params
from kvjax.checkpoints import CheckpointError, LazyTensor, flatten_state_dict, read_checkpoint
from kvjax.model_configs import T5EncoderConfig, TextProjectionConfig
from kvjax.conversion.naming import FlaxPath, to_flax_layout
from kvjax.conversion.state_dict import (ConversionError, WeightPolicy, WeightReader, convert_state_dict,
                                        match_state_dict, read_weights)
from kvjax.conversion.store import ConvertedModel
from kvjax.models.text_projection import HEADS

# In Hugging Face's order of preference.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# The parts of a whole T5ForConditionalGeneration that the text encoder does not use.
IGNORED_PREFIXES = ("decoder.", "lm_head.")
EMBEDDING = "shared.weight"
EMBEDDING_ALIAS = "encoder.embed_tokens.weight"  # the same table, tied to `shared` by Hugging Face
IGNORED_COUNT = "ignored_decoder_tensors"  # extras entry: how many checkpoint tensors were skipped


def hf_key(path: FlaxPath) -> str:
  """('encoder', 'block_3', 'layer_1', 'DenseReluDense', 'wi_0', 'kernel') -> 'encoder.block.3...wi_0.weight'.

  Every T5 parameter is a bias-free `weight`; only the block and layer lists are indexed (`wi_0` is a name).
  """
  modules = [re.sub(r"^(block|layer)_(\d+)$", r"\1.\2", m) for m in path[:-1]]
  return ".".join(modules + ["weight"])


def hf_config_path(src: str) -> str:
  """The config.json of a Hugging Face folder, or beside a weights file."""
  src = os.path.abspath(os.fspath(src))
  return os.path.join(src if os.path.isdir(src) else os.path.dirname(src), "config.json")


def read_t5_config(values: dict[str, Any], src: str | None = None) -> T5EncoderConfig:
  """A Hugging Face `config.json` (it has `model_type`) or `T5EncoderConfig` fields (`src` is not needed)."""
  del src
  if "text_encoder" in values:
    raise ValueError("the official configs.json names the T5 encoder only by its hub id; its configuration "
                     "is the Hugging Face folder's config.json")
  if "model_type" in values:
    return T5EncoderConfig.from_hf_config(values)
  return T5EncoderConfig.from_dict(values)


def _weight_files(src: str) -> tuple[list[str], dict[str, str] | None]:
  """The weight files of `src` and, for sharded checkpoints, the index's key -> file map."""
  if not os.path.exists(src):
    raise CheckpointError(f"{src}: no such file or folder")
  if not os.path.isdir(src):
    return [src], None
  name = next((n for n in WEIGHT_FILES if os.path.isfile(os.path.join(src, n))), None)
  if name is None:
    raise CheckpointError(f"{src}: no Hugging Face weights in the folder (looked for "
                          f"{', '.join(WEIGHT_FILES)})")
  path = os.path.join(src, name)
  if not name.endswith(".index.json"):
    return [path], None
  try:
    with open(path) as f:
      weight_map = json.load(f)["weight_map"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise CheckpointError(f"{path}: not a Hugging Face shard index: {e!r}") from None
  if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
    raise CheckpointError(f"{path}: weight_map must map tensor names to shard file names")
  shards = sorted(set(weight_map.values()))
  bad = [s for s in shards if os.path.basename(s) != s or s in (".", "..")]
  if bad:
    raise CheckpointError(f"{path}: shard names must be plain file names in the folder, found {bad}")
  return [os.path.join(src, s) for s in shards], weight_map


def read_hf_state(src: str) -> dict[str, LazyTensor]:
  """Every tensor of a Hugging Face checkpoint, left on disk; shards are checked against their index."""
  files, weight_map = _weight_files(os.fspath(src))
  state: dict[str, LazyTensor] = {}
  for file in files:
    tensors = read_checkpoint(file)
    if not isinstance(tensors, dict):
      raise CheckpointError(f"{file}: expected a state dict, found a {type(tensors).__name__}")
    tensors = flatten_state_dict(tensors, source=file)
    twice = sorted(set(tensors) & set(state))
    if twice:
      raise CheckpointError(f"{file}: tensors also found in another shard: {', '.join(twice)}")
    if weight_map is not None:
      elsewhere = sorted(k for k in tensors if weight_map.get(k) != os.path.basename(file))
      if elsewhere:
        raise CheckpointError(f"{file}: holds tensors its index places elsewhere or omits: "
                              f"{', '.join(elsewhere)}")
    state.update(tensors)
  if weight_map is not None:
    absent = sorted(set(weight_map) - set(state))
    if absent:
      raise CheckpointError(f"{src}: tensors listed in the index but in no shard: {', '.join(absent)}")
  return state


def _same_bytes(a: LazyTensor, b: LazyTensor) -> bool:
  return (a.path, a.offset, a.dtype, a.shape, a.strides) == (b.path, b.offset, b.dtype, b.shape, b.strides)


def _encoder_state(state: dict[str, LazyTensor], what: str) -> tuple[dict[str, LazyTensor], int]:
  """The encoder's tensors under their `T5EncoderModel` names, and how many others were skipped."""
  ignored = [k for k in state if k.startswith(IGNORED_PREFIXES)]
  state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
  if EMBEDDING_ALIAS in state:
    alias = state.pop(EMBEDDING_ALIAS)
    shared = state.setdefault(EMBEDDING, alias)
    # Both names stored: a .bin file shares one storage, anything else must hold equal tables.
    if shared is not alias and not _same_bytes(shared, alias) and not (
        shared.shape == alias.shape and np.array_equal(shared.numpy(), alias.numpy())):
      raise ConversionError(f"{what}: {EMBEDDING} and {EMBEDDING_ALIAS} differ; T5 ties them, so the "
                            "encoder's token embedding is ambiguous")
  return state, len(ignored)


def convert_t5_encoder(src: str, config: T5EncoderConfig | None = None,
                       dtype: Any = np.float32, *, policy: WeightPolicy | None = None) -> ConvertedModel:
  """Strict conversion of a Hugging Face T5 checkpoint; `config` defaults to the folder's config.json.

  Tensors are read one at a time (upcast to float32, laid out, cast to `dtype`), so peak memory stays near
  the size of the output. Integer-stored and non-finite tensors are refused unless `policy` allows them.
  """
  src = os.fspath(src)
  if config is None:
    config_path = hf_config_path(src)
    if not os.path.isfile(config_path):
      raise FileNotFoundError(f"{src}: no config.json to read the T5 configuration from; pass a config")
    with open(config_path) as f:
      config = T5EncoderConfig.from_hf_config(json.load(f))
  state, ignored = _encoder_state(read_hf_state(src), src)
  expected = flax.traverse_util.flatten_dict(nn.unbox(kv_params.abstract_params(config)))
  # T5 keys index only the block and layer lists (`wi_0` is a name): missing ones are listed by `hf_key`.
  by_path = match_state_dict(state, expected, lambda path: False, src, key_of=hf_key)
  flat = read_weights(WeightReader(src, policy), {path: (key, state[key]) for path, key in by_path.items()},
                      lambda path, tensor: to_flax_layout(tensor, path, False), dtype)
  extras = {IGNORED_COUNT: np.asarray(ignored, np.int64)} if ignored else {}
  return ConvertedModel(config.kind, config, flax.traverse_util.unflatten_dict(flat), extras)


def read_projection_config(values: dict[str, Any], src: str | None = None) -> TextProjectionConfig:
  """An official configs.json (its `text_encoder` section) or `TextProjectionConfig` fields.

  The official section gives only `context_dim`; the input width (the T5 encoder's d_model) is read from
  the shape of the checkpoint `src` when given (spec §13.3), else Flan-UL2's.
  """
  if "text_encoder" not in values:
    return TextProjectionConfig.from_dict(values)
  in_dim = None
  if src is not None:
    container = read_checkpoint(src)
    head = container.get(HEADS[0]) if isinstance(container, dict) else None
    weight = head.get("0.weight") if isinstance(head, dict) else None
    in_dim = weight.shape[-1] if isinstance(weight, LazyTensor) and len(weight.shape) == 2 else None
  return TextProjectionConfig.from_text_encoder_section(values["text_encoder"], in_dim)


def convert_text_projections(src: str, config: TextProjectionConfig, dtype: Any = np.float32, *,
                             policy: WeightPolicy | None = None) -> ConvertedModel:
  """Strict conversion of `t5_projections.pt`: `{head: {'0.weight', '1.weight', '1.bias'}}` for both heads."""
  container = read_checkpoint(src)
  if not isinstance(container, dict) or set(container) != set(HEADS):
    found = sorted(map(str, container)) if isinstance(container, dict) else type(container).__name__
    raise ConversionError(f"{src}: expected a dict with exactly the heads {', '.join(HEADS)} (the "
                          f"t5_projections.pt layout), found {found}")
  params = convert_state_dict(flatten_state_dict(container, source=src), config, dtype, what=src, policy=policy)
  return ConvertedModel(config.kind, config, params)
