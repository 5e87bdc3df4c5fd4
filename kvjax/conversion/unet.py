"""`t2v.pt` / `interpolation.pt` -> UNet parameters and the null embedding (spec §3.12, §4.10, §9.1)."""

from __future__ import annotations

from typing import Any

import numpy as np

from kvjax.checkpoints import CheckpointError, LazyTensor, flatten_state_dict, read_checkpoint
from kvjax.model_configs import UNetConfig
from kvjax.conversion.state_dict import (ConversionError, WeightPolicy, WeightReader, convert_state_dict,
                                        read_weights)
from kvjax.conversion.store import ConvertedModel

# Kernels of the 2x2 stride-2 transposed convolutions (PyTorch stores them (in, out, kh, kw)).
TRANSPOSED_CONVS = r"(^|/)(shortcut_)?up_sample/kernel$"


def convert_unet(src: str, config: UNetConfig, dtype: Any = np.float32, *,
                 policy: WeightPolicy | None = None) -> ConvertedModel:
  """Reads the official container `{'unet': state_dict, 'null_embedding': tensor}` strictly.

  The model (keyframe or interpolation UNet) is the one `config` describes.
  """
  container = read_checkpoint(src)
  if not isinstance(container, dict) or "unet" not in container or "null_embedding" not in container:
    found = sorted(map(str, container)) if isinstance(container, dict) else type(container).__name__
    raise CheckpointError(f"{src}: expected a dict with 'unet' and 'null_embedding' (the t2v.pt / interpolation.pt layout), "
                          f"found {found}")
  extra = sorted(map(str, set(container) - {"unet", "null_embedding"}))
  if extra:
    raise ConversionError(f"{src}: unexpected top-level entries {extra}; refusing to drop them silently")
  params = convert_state_dict(flatten_state_dict(container["unet"], source=f"{src} ['unet']"), config, dtype,
                              TRANSPOSED_CONVS, what=f"{src} ['unet']", policy=policy)
  null_embedding = container["null_embedding"]
  if not isinstance(null_embedding, LazyTensor) or null_embedding.size != config.context_dim:
    raise ConversionError(f"{src}: null_embedding must be a tensor of {config.context_dim} values, found "
                          f"{getattr(null_embedding, 'shape', type(null_embedding).__name__)}")
  null = read_weights(WeightReader(src, policy), {("null",): ("null_embedding", null_embedding)},
                      lambda _, values: values.reshape(config.context_dim), dtype)[("null",)]
  return ConvertedModel(config.kind, config, params, {"null_embedding": null})
