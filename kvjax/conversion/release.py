"""Converts a whole official release folder (spec §9.1) in one go, all or nothing.

  SRC_DIR/  t2v.pt  interpolation.pt  movq.pt  video_movq.pt  t5_projections.pt  configs.json  <T5 folder>/
  OUT_DIR/  keyframe/  interpolation/  movq/  video_movq/  projections/  t5/   (each a converted folder)

Models are converted one at a time (peak memory is that of the largest one) into a staging folder that is
renamed to OUT_DIR only when every model has converted.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping

from kvjax.atomic import staged
from kvjax.conversion.registry import COMMANDS, resolve_config
from kvjax.conversion.state_dict import WeightPolicy
from kvjax.conversion.store import save_converted
from kvjax.params import count_params
from kvjax.quantization import quantize_params

T5_COMMAND = "t5"


def find_t5_folder(src_dir: str) -> str:
  """The one sub-folder of `src_dir` holding a Hugging Face T5 `config.json`."""
  found = []
  for name in sorted(os.listdir(src_dir)):
    config = os.path.join(src_dir, name, "config.json")
    if os.path.isfile(config):
      try:
        with open(config) as f:
          if json.load(f).get("model_type") == "t5":
            found.append(os.path.join(src_dir, name))
      except (json.JSONDecodeError, AttributeError):
        continue
  if len(found) != 1:
    what = "no sub-folder" if not found else f"{len(found)} sub-folders ({', '.join(found)})"
    raise FileNotFoundError(f"{src_dir}: {what} with a T5 config.json (model_type 't5'); pass --t5 DIR")
  return found[0]


def release_sources(src_dir: str, t5_dir: str | None = None) -> dict[str, str]:
  """command -> source path, checked to exist before anything is converted."""
  if not os.path.isdir(src_dir):
    raise FileNotFoundError(f"{src_dir}: no such release folder")
  sources, missing = {}, []
  for command, converter in COMMANDS.items():
    if command == T5_COMMAND:
      path = t5_dir or find_t5_folder(src_dir)
      if not os.path.isdir(path):
        missing.append(f"{path} (T5 folder)")
    else:
      path = os.path.join(src_dir, converter.release_file)
      if not os.path.isfile(path):
        missing.append(path)
    sources[command] = path
  if missing:
    raise FileNotFoundError(f"{src_dir}: not a complete release, missing {', '.join(missing)}")
  return sources


def output_name(command: str) -> str:
  return command.replace("-", "_")


def convert_release(src_dir: str, out_dir: str, dtype: Any, *, t5_dir: str | None = None,
                    overwrite: bool = False, log: Callable[[str], None] = print,
                    policy: WeightPolicy | None = None, quantize: Mapping[str, str] | None = None) -> str:
  """`quantize`: {pipeline model field: "int8" | "int8-all"} (kvjax.quantization.parse_quantize): those models
  are written with int8 kernels."""
  from kvjax.pipeline.pipeline_weights import FOLDERS, check_quantize
  int8_folders = {FOLDERS[field]: how for field, how in check_quantize(quantize).items()}
  sources = release_sources(src_dir, t5_dir)
  with staged(out_dir, overwrite=overwrite) as staging:
    for command, src in sources.items():
      start = time.perf_counter()
      config, origin = resolve_config(command, src)  # configs.json beside src when it has the section
      converted = COMMANDS[command].convert(src, config, dtype, policy=policy)
      count = count_params(converted.params)
      how = int8_folders.get(output_name(command))
      if how:
        converted.params = quantize_params(converted.params, COMMANDS[command].kind, how=how)
      save_converted(converted, os.path.join(staging, output_name(command)), source=src)
      log(f"{command}: {src} ({count:,} parameters, config from {origin}"
          f"{', kernels in int8' if how else ''}) "
          f"in {time.perf_counter() - start:.1f} s")
      del converted
  out_dir = os.path.abspath(out_dir)
  return out_dir
