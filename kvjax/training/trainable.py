"""Which parameters train: the image (Kandinsky 3.0) weights stay frozen, the video parts learn.

Keyframe UNet: every temporal layer (temporal ResNet and attention blocks, the frame-index, noise-level
and motion-score embeddings) and the new 9-channel `in_layer`. Interpolation UNet: every temporal layer,
the perturbation and skip embeddings with their merge scalars, and the input/output convolutions, whose
channel counts (20 in, 12 out) differ from the image model's.

Image-mode keyframe training (a UNet trained from scratch) trains exactly the layers the video recipe
freezes; "all" trains every weight (the video UNets with train_scope="all").

MoVQ: the image recipe trains the whole autoencoder; the video recipe keeps the encoder and quant conv
frozen and trains the decoder's temporal layers ("temporal") or the whole decoder with its post-quant conv
("decoder").
"""

from __future__ import annotations

import re
from typing import Any

import flax.traverse_util
import jax

TRAINABLE_PATTERNS = {
    "keyframe_unet": r"^(temporal_|to_temporal_embed_)|/temporal_|^in_layer/",
    # Image mode: every layer the video recipe does not train (image_in_layer included).
    "keyframe_unet_image": r"^(?!temporal_|to_temporal_embed_|in_layer/)(?!.*/temporal_)",
    "all": r".",
    "interpolation_unet": r"^(temporal_|perturbation_to_time_embed_|skip_|time_embed_merge)|/temporal_"
                          r"|^in_layer/|^out_layer_2/",
    "image_movq": r".",
    "video_movq_temporal": r"^decoder/.*temporal_",
    "video_movq_decoder": r"^(decoder|post_quant_conv)/",
}


def training_recipe(config) -> str:
  """The `TRAINABLE_PATTERNS` key of a TrainConfig."""
  if config.model == "video_movq":
    return f"video_movq_{config.movq.train_scope}"
  if config.model == "image_movq":
    return "image_movq"
  if config.model == "keyframe" and config.keyframe.mode == "image":
    return "keyframe_unet_image"
  return "all" if getattr(config, config.model).train_scope == "all" else config.model_config.kind


def trainable_mask(params, recipe: str) -> Any:
  """A tree of bools like `params`: True where the parameter trains (`recipe`: a TRAINABLE_PATTERNS key)."""
  if recipe not in TRAINABLE_PATTERNS:
    raise ValueError(f"no training recipe {recipe!r}; known: {', '.join(TRAINABLE_PATTERNS)}")
  pattern = re.compile(TRAINABLE_PATTERNS[recipe])
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({path: bool(pattern.search("/".join(path))) for path in flat})


def count_trainable(params, mask) -> int:
  return sum(leaf.size for leaf, on in zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if on)
