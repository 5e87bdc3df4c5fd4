"""The converter, default configuration and release file of each `python -m convert` command."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from kvjax import model_configs
from kvjax.conversion.movq import convert_movq
from kvjax.conversion.store import ConvertedModel
from kvjax.conversion.t5 import (convert_t5_encoder, convert_text_projections, hf_config_path,
                                 read_projection_config, read_t5_config)
from kvjax.conversion.unet import convert_unet


@dataclasses.dataclass(frozen=True)
class Converter:
  kind: str  # model kind, as written in converted checkpoints and fixture manifests
  convert: Callable[..., ConvertedModel]  # (src, config, dtype, *, policy=None) -> ConvertedModel
  preset: str  # production preset used when no configuration is given
  section: str  # section of the official model_configs.json
  release_file: str  # name of the checkpoint in the official release
  # Makes the config from a JSON file's values and the source, when the values are not the constructor
  # arguments (or a model_configs.json section of them), e.g. a Hugging Face config.json.
  read_config: Callable[[dict[str, Any], str], Any] | None = None
  # The config file that belongs to a source when none is given, instead of a model_configs.json beside it.
  own_config_file: Callable[[str], str] | None = None


COMMANDS: dict[str, Converter] = {
    "keyframe": Converter("keyframe_unet", convert_unet, "keyframe-1.1", "t2v", "t2v.pt"),
    "interpolation": Converter("interpolation_unet", convert_unet, "interpolation-1.1", "interpolation",
                               "interpolation.pt"),
    "movq": Converter("movq", convert_movq, "image-movq-1.1", "image_movq", "movq.pt"),
    "video-movq": Converter("movq", convert_movq, "video-movq-1.1", "video_movq", "video_movq.pt"),
    # A Hugging Face folder (google/flan-ul2), configured by its own config.json.
    "t5": Converter("t5_encoder", convert_t5_encoder, "flan-ul2-encoder", "text_encoder", "google/flan-ul2",
                    read_config=read_t5_config, own_config_file=hf_config_path),
    "projections": Converter("t5_projections", convert_text_projections, "t5-projections-1.1", "text_encoder",
                             "t5_projections.pt", read_config=read_projection_config),
}

# Model kind -> its converter (commands of one kind share one).
CONVERTERS: dict[str, Callable[..., ConvertedModel]] = {c.kind: c.convert for c in COMMANDS.values()}


def resolve_config(command: str, src: str, config: str | None = None) -> tuple[Any, str]:
  """The configuration to convert `src` with, and where it came from.

  `config` is a preset name or a JSON file (an official `model_configs.json`, or one section's constructor
  arguments). Without it, a `model_configs.json` beside `src` is used when present, else the production preset.
  """
  converter = COMMANDS[command]
  config_type = model_configs.CONFIG_TYPES[converter.kind]
  if config is None and converter.own_config_file is not None:
    if not os.path.exists(src):
      raise FileNotFoundError(f"{src}: no such file or folder")
    config = converter.own_config_file(src)
    if not os.path.isfile(config):
      raise FileNotFoundError(f"{src}: no {config} to configure the {command} conversion; pass --config")
  if config is None:
    beside = os.path.join(os.path.dirname(os.path.abspath(src)), "model_configs.json")
    if not (os.path.isfile(beside) and converter.section in _read_json(beside)):
      return model_configs.get_preset(converter.preset), f"preset {converter.preset}"
    config = beside
  if config in model_configs.PRESETS:
    found = model_configs.PRESETS[config]
    if not isinstance(found, config_type):
      raise ValueError(f"preset {config!r} is a {type(found).__name__}, not a {config_type.__name__}")
    return found, f"preset {config}"
  if not os.path.isfile(config):
    raise FileNotFoundError(f"--config {config!r} is neither a preset ({', '.join(sorted(model_configs.PRESETS))}) "
                            "nor a file")
  values = _read_json(config)
  if converter.read_config is not None:
    return converter.read_config(values, src), config
  if converter.section in values:  # official model_configs.json: {"t2v": {"configs": {...}}, ...}
    values = values[converter.section]
    values = values.get("configs", values)
    return config_type.from_dict(values), f"{config} [{converter.section}]"
  if set(values) & OFFICIAL_SECTIONS:
    raise ValueError(f"{config}: an official model_configs.json without a {converter.section!r} section")
  return config_type.from_dict(values), config


# Sections of the official model_configs.json (spec §9.2).
OFFICIAL_SECTIONS = {"text_encoder", "image_movq", "video_movq", "t2v", "interpolation"}


def _read_json(path: str) -> dict[str, Any]:
  with open(path) as f:
    try:
      values = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(values, dict):
    raise ValueError(f"{path}: expected a JSON object")
  return values
