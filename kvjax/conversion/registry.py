"""The converter, default configuration and release file of each `python -m convert` command."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

from kvjax import configs
from kvjax.conversion.movq import convert_movq
from kvjax.conversion.store import ConvertedModel
from kvjax.conversion.unet import convert_unet


@dataclasses.dataclass(frozen=True)
class Converter:
  kind: str  # model kind, as written in converted checkpoints and fixture manifests
  convert: Callable[..., ConvertedModel]  # (src, config, dtype) -> ConvertedModel
  preset: str  # production preset used when no configuration is given
  section: str  # section of the official configs.json
  release_file: str  # name of the checkpoint in the official release


COMMANDS: dict[str, Converter] = {
    "keyframe": Converter("keyframe_unet", convert_unet, "keyframe-1.1", "t2v", "t2v.pt"),
    "interpolation": Converter("interpolation_unet", convert_unet, "interpolation-1.1", "interpolation",
                               "interpolation.pt"),
    "movq": Converter("movq", convert_movq, "image-movq-1.1", "image_movq", "movq.pt"),
    "video-movq": Converter("movq", convert_movq, "video-movq-1.1", "video_movq", "video_movq.pt"),
}

# Model kind -> its converter (commands of one kind share one).
CONVERTERS: dict[str, Callable[..., ConvertedModel]] = {c.kind: c.convert for c in COMMANDS.values()}


def resolve_config(command: str, src: str, config: str | None = None) -> tuple[Any, str]:
  """The configuration to convert `src` with, and where it came from.

  `config` is a preset name or a JSON file (an official `configs.json`, or one section's constructor
  arguments). Without it, a `configs.json` beside `src` is used when present, else the production preset.
  """
  converter = COMMANDS[command]
  config_type = configs.CONFIG_TYPES[converter.kind]
  if config is None:
    beside = os.path.join(os.path.dirname(os.path.abspath(src)), "configs.json")
    if not os.path.isfile(beside):
      return configs.get_preset(converter.preset), f"preset {converter.preset}"
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
  if converter.section in values:  # official configs.json: {"t2v": {"configs": {...}}, ...}
    values = values[converter.section]
    values = values.get("configs", values)
  return config_type.from_dict(values), config
