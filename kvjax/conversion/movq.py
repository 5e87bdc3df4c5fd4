"""`movq.pt` / `video_movq.pt` -> MoVQ parameters (spec §5.11, §9.1): plain state dicts of the whole model."""

from __future__ import annotations

from typing import Any

import numpy as np

from kvjax.checkpoints import CheckpointError, flatten_state_dict, read_checkpoint
from kvjax.model_configs import MoVQConfig
from kvjax.conversion.state_dict import WeightPolicy, convert_state_dict
from kvjax.conversion.store import ConvertedModel


def convert_movq(src: str, config: MoVQConfig, dtype: Any = np.float32, *,
                 policy: WeightPolicy | None = None) -> ConvertedModel:
  """Strict: the video file's encoder and quant convs (unused by the pipeline) are converted too."""
  state = read_checkpoint(src)
  if not isinstance(state, dict) or "encoder.conv_in.weight" not in flatten_state_dict(state, source=src):
    raise CheckpointError(f"{src}: expected a MoVQ state dict (encoder.*, decoder.*, quant_conv.*, "
                          f"post_quant_conv.*), found {sorted(map(str, state))[:5] if isinstance(state, dict) else type(state).__name__}")
  params = convert_state_dict(flatten_state_dict(state, source=src), config, dtype, what=src, policy=policy)
  return ConvertedModel(config.kind, config, params)
