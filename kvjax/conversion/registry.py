"""Which converter and default configuration belong to each model kind."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

from kvjax import configs
from kvjax.conversion.unet import convert_unet
from kvjax.conversion.store import ConvertedModel

# kind -> (converter, production preset, section of the official configs.json)
CONVERTERS: dict[str, tuple[Callable[..., ConvertedModel], str, str]] = {
    "keyframe_unet": (convert_unet, "keyframe-1.1", "t2v"),
    "interpolation_unet": (convert_unet, "interpolation-1.1", "interpolation"),
}

# Command-line names of the model kinds.
COMMANDS = {"keyframe": "keyframe_unet", "interpolation": "interpolation_unet"}


def resolve_config(kind: str, src: str, config: str | None = None) -> tuple[Any, str]:
  """The configuration to convert `src` with, and where it came from.

  `config` is a preset name or a JSON file (an official `configs.json`, or one section's constructor
  arguments). Without it, a `configs.json` beside `src` is used when present, else the production preset.
  """
  _, preset, section = CONVERTERS[kind]
  config_type = configs.CONFIG_TYPES[kind]
  if config is None:
    beside = os.path.join(os.path.dirname(os.path.abspath(src)), "configs.json")
    if not os.path.isfile(beside):
      return configs.get_preset(preset), f"preset {preset}"
    config = beside
  if config in configs.PRESETS:
    found = configs.PRESETS[config]
    if not isinstance(found, config_type):
      raise ValueError(f"preset {config!r} is a {type(found).__name__}, not a {config_type.__name__}")
    return found, f"preset {config}"
  if not os.path.isfile(config):
    raise FileNotFoundError(f"--config {config!r} is neither a preset ({', '.join(sorted(configs.PRESETS))}) "
                            "nor a file")
  with open(config) as f:
    values = json.load(f)
  if section in values:  # official configs.json: {"t2v": {"configs": {...}}, ...}
    values = values[section]
    values = values.get("configs", values)
  return config_type.from_dict(values), config
