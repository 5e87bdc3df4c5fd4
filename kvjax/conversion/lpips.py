"""LPIPS weights (the `lpips` package, net='vgg', v0.1) -> `kvjax.models.lpips.LPIPS` parameters.

Two sources, both PyTorch state dicts that the user supplies (nothing is downloaded):
  - the state dict of a whole `lpips.LPIPS(net='vgg')`: `net.slice{s}.{i}.weight/bias`, the heads
    `lin{k}.model.1.weight` (which the package's module list also holds as `lins.{k}.model.1.weight`, the same
    tensors), and the ScalingLayer's constant buffers `scaling_layer.shift/scale`; or
  - the package's linear heads (`lpips/weights/v0.1/vgg.pth`: `lin{k}.model.1.weight`) plus torchvision's
    VGG16 ImageNet state dict (`features.{i}.weight/bias`; its `classifier.*` is not part of LPIPS: counted in
    the result's extras and left out).
Files are read with kvjax's restricted reader (never unpickled). Conversion is strict: every missing,
unexpected and mis-shaped key is named by the generic matcher, and the caller writes nothing on an error.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from kvjax.checkpoints import CheckpointError, LazyTensor, flatten_state_dict, read_checkpoint
from kvjax.model_configs import LPIPSConfig
from kvjax.conversion.state_dict import ConversionError, WeightPolicy, convert_state_dict
from kvjax.conversion.store import ConvertedModel
from kvjax.models.lpips import SCALE, SHIFT, vgg_feature_indices

IGNORED_COUNT = "ignored_classifier_tensors"  # extras entry: torchvision's classifier tensors left out
_HEAD_ALIAS = re.compile(r"lins\.(\d+)\.(.+)")
_VGG_FEATURE = re.compile(r"features\.(\d+)\.(weight|bias)")


def _read_state(path: str) -> dict[str, LazyTensor]:
  state = read_checkpoint(path)
  if not isinstance(state, dict):
    raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
  return flatten_state_dict(state, source=path)


def _check_scaling(state: dict[str, LazyTensor], src: str) -> None:
  """The ScalingLayer's buffers are constants of the model: dropped once they are seen to hold them."""
  for name, expected in (("shift", SHIFT), ("scale", SCALE)):
    key = f"scaling_layer.{name}"
    if key in state:
      tensor = state.pop(key)
      if tensor.size != 3:  # checked before reading: a crafted shape could be huge
        raise ConversionError(f"{src}: {key} has shape {tuple(tensor.shape)}, LPIPS uses {list(expected)}")
      value = tensor.numpy(np.float32).reshape(-1)
      if not np.allclose(value, expected, rtol=0, atol=1e-6):
        raise ConversionError(f"{src}: {key} is {value.tolist()}, LPIPS uses {list(expected)}")


def _merge_head_aliases(state: dict[str, LazyTensor], src: str) -> None:
  """`lins.{k}.*` is the package's second name for `lin{k}.*`: dropped when equal, used when alone."""
  for key in [k for k in state if _HEAD_ALIAS.fullmatch(k)]:
    index, rest = _HEAD_ALIAS.fullmatch(key).groups()
    alias, name = state.pop(key), f"lin{index}.{rest}"
    if name not in state:
      state[name] = alias
    elif (tuple(alias.shape) != tuple(state[name].shape) or
          not np.array_equal(alias.numpy(np.float32), state[name].numpy(np.float32))):
      raise ConversionError(f"{src}: {key} {tuple(alias.shape)} differs from {name} "
                            f"{tuple(state[name].shape)}; the package holds one tensor under both names")


def _vgg_backbone(vgg: str, config: LPIPSConfig) -> tuple[dict[str, LazyTensor], int]:
  """torchvision's `features.{i}.*` renamed `net.slice{s}.{i}.*`, and how many `classifier.*` tensors
  were left out. Any other key keeps its name, prefixed by the file, for the matcher to report."""
  slice_of = {index: stage + 1 for stage, indices in enumerate(vgg_feature_indices(config)) for index in indices}
  state, ignored = {}, 0
  for key, tensor in _read_state(vgg).items():
    match = _VGG_FEATURE.fullmatch(key)
    if key.startswith("classifier."):
      ignored += 1
    elif match and int(match[1]) in slice_of:
      state[f"net.slice{slice_of[int(match[1])]}.{match[1]}.{match[2]}"] = tensor
    else:
      state[f"{vgg}: {key}"] = tensor
  return state, ignored


def convert_lpips(src: str, config: LPIPSConfig, dtype: Any = np.float32, vgg: str | None = None, *,
                  policy: WeightPolicy | None = None) -> ConvertedModel:
  """`src`: a whole `lpips.LPIPS(net='vgg')` state dict, or with `vgg` (torchvision's VGG16 state dict)
  the package's heads file. Heads must be non-negative, as the package's training keeps them."""
  state = _read_state(src)
  _check_scaling(state, src)
  _merge_head_aliases(state, src)
  what, extras = src, {}
  if vgg is not None:
    if any(key.startswith("net.") for key in state):
      raise ConversionError(f"{src} holds the VGG weights already (net.*); leave out --vgg {vgg}")
    backbone, ignored = _vgg_backbone(vgg, config)
    state.update(backbone)
    what = f"{src} + {vgg}"
    if ignored:
      extras[IGNORED_COUNT] = np.asarray(ignored, np.int64)
  params = convert_state_dict(state, config, dtype, what=what, policy=policy)
  negative = [f"lin{k}" for k in range(len(config.widths))
              if np.any(np.asarray(params[f"lin{k}"]["model_1"]["kernel"], np.float32) < 0)]
  if negative:
    raise ConversionError(f"{what}: LPIPS heads {', '.join(negative)} have negative weights; the package's "
                          "trained heads are non-negative (it clamps them), so these are not LPIPS weights")
  return ConvertedModel(config.kind, config, params, extras)
