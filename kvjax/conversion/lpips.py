"""LPIPS weights (the `lpips` package, net='vgg') -> `kvjax.models.lpips.LPIPS` parameters.

Two sources, both PyTorch state dicts the user supplies (nothing is downloaded):
  - the state dict of a whole `lpips.LPIPS(net='vgg')` (`net.slice{s}.{i}.*`, `lin{k}.model.1.weight` and
    the ScalingLayer's constant buffers), or
  - the package's linear heads (`lpips/weights/v0.1/vgg.pth`: `lin{k}.model.1.weight`) plus torchvision's
    VGG16 state dict (`features.{i}.*`; its `classifier.*` is not part of LPIPS and is left out).
Conversion is strict: every missing, unexpected or mis-shaped key is named, and nothing is written.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kvjax.checkpoints import CheckpointError, flatten_state_dict, read_checkpoint
from kvjax.configs import LPIPSConfig
from kvjax.conversion.state_dict import ConversionError, convert_state_dict
from kvjax.conversion.store import ConvertedModel
from kvjax.models.lpips import SCALE, SHIFT, vgg_feature_indices


def _state(path: str) -> dict[str, Any]:
  state = read_checkpoint(path)
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
  return flatten_state_dict(state)


def _check_scaling(state: dict[str, Any], src: str) -> None:
  """The ScalingLayer's buffers are constants of the model: drop them once they hold the constants."""
  for name, expected in (("shift", SHIFT), ("scale", SCALE)):
    key = f"scaling_layer.{name}"
    if key in state:
      value = state.pop(key).numpy(np.float32).reshape(-1)
      if value.shape != (3,) or not np.allclose(value, expected, atol=1e-6):
        raise ConversionError(f"{src}: {key} is {value.tolist()}, LPIPS uses {list(expected)}")


def convert_lpips(src: str, config: LPIPSConfig, dtype: Any = np.float32, vgg: str | None = None) -> ConvertedModel:
  state = _state(src)
  _check_scaling(state, src)
  what = src
  if vgg is not None:
    if any(key.startswith("net.") for key in state):
      raise ConversionError(f"{src} holds the VGG weights already (net.*); leave out --vgg {vgg}")
    stage_of = {index: stage for stage, indices in enumerate(vgg_feature_indices(config)) for index in indices}
    backbone = _state(vgg)
    ignored = [key for key in backbone if key.startswith("classifier.")]
    for key, tensor in backbone.items():
      if key in ignored:
        continue
      _, index, leaf = key.split(".", 2) if key.startswith("features.") and key.count(".") == 2 else (key, "", "")
      if index.isdigit() and int(index) in stage_of:
        state[f"net.slice{stage_of[int(index)] + 1}.{index}.{leaf}"] = tensor
      else:
        state[f"{vgg}:{key}"] = tensor  # named as unexpected by the matcher
    what = f"{src} + {vgg} ({len(ignored)} classifier tensors left out)"
  params = convert_state_dict(state, config, dtype, what=what)
  if any(np.any(np.asarray(leaf) < 0) for name, leaf in _heads(params)):
    raise ConversionError(f"{src}: LPIPS linear heads must be non-negative (the package clamps them when "
                          "training); these are not trained LPIPS weights")
  return ConvertedModel(config.kind, config, params)


def _heads(params):
  return [(name, tree["model_1"]["kernel"]) for name, tree in params.items() if name.startswith("lin")]
