"""Model configurations as frozen dataclasses, with named presets.

Field names follow the reference constructors (spec §3.1) so that a `configs.json` section or a parity
manifest can be splatted in directly; the presets are the production values (spec §3.11) and tiny ones
for tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The Kandinsky 3.0 UNet skeleton shared by both video UNets."""

  kind: ClassVar[str] = ""

  model_channels: int
  init_channels: int | None = None
  num_channels: int = 3
  out_channels: int | None = None
  time_embed_dim: int | None = None
  context_dim: int | None = None
  groups: int = 32
  head_dim: int = 64
  expansion_ratio: int = 4
  compression_ratio: int = 2
  dim_mult: tuple[int, ...] = (1, 2, 4, 8)
  num_blocks: tuple[int, ...] = (3, 3, 3, 3)
  add_cross_attention: tuple[bool, ...] = (False, True, True, True)
  add_self_attention: tuple[bool, ...] = (False, True, True, True)

  def _default_out_channels(self) -> int:
    return self.num_channels

  def __post_init__(self):
    # Reference defaults that depend on other fields.
    if self.init_channels is None:
      object.__setattr__(self, "init_channels", self.model_channels)
    if self.out_channels is None:
      object.__setattr__(self, "out_channels", self._default_out_channels())
    for name in ("dim_mult", "num_blocks", "add_cross_attention", "add_self_attention"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    levels = len(self.dim_mult)
    for name in ("num_blocks", "add_cross_attention", "add_self_attention"):
      if len(getattr(self, name)) != levels:
        raise ValueError(f"{name} has {len(getattr(self, name))} entries, dim_mult has {levels}")
    if self.time_embed_dim is None or self.context_dim is None:
      raise ValueError("time_embed_dim and context_dim are required")
    if min(self.num_blocks) < 2:
      raise ValueError("every level needs num_blocks >= 2 (the up path has a first and a last entry)")

  @property
  def hidden_dims(self) -> tuple[int, ...]:
    return (self.init_channels, *(self.model_channels * m for m in self.dim_mult))

  @property
  def num_levels(self) -> int:
    return len(self.dim_mult)

  @classmethod
  def from_dict(cls, values: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
    return cls(**values)

  def to_dict(self) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True)
class KeyframeUNetConfig(UNetConfig):
  """The keyframe UNet3D (`t2v.pt`): a Kandinsky 3.0 UNet plus temporal layers (spec §3)."""

  kind: ClassVar[str] = "keyframe_unet"

  noise_augmentation: bool = False
  motion_score: bool = False


@dataclasses.dataclass(frozen=True)
class InterpolationUNetConfig(UNetConfig):
  """The interpolation UNet (`interpolation.pt`, spec §4): predicts 3 frames between two.

  Variants of the reference that no released checkpoint uses (temporal down-sampling, the extra temporal
  convolutions of `add_new_temporal_params`, merging the perturbation time into the context) are refused.
  """

  kind: ClassVar[str] = "interpolation_unet"

  time_downsample: tuple[bool, ...] = (False, False, False, False)
  temporal: bool = True
  use_perturbation_time_embed: bool = True
  merge_perturbation_time_with_diffusion_time: bool = True
  merge_perturbation_time_with_context: bool = False
  pass_skip_frames: bool = True
  temporal_type: str = "conv3D"  # passed around by the reference, never read
  add_new_temporal_params: bool = False
  add_temporal_attention: bool = True

  def _default_out_channels(self) -> int:
    return 3

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "time_downsample", tuple(self.time_downsample))
    unsupported = [name for name, on in (
        ("time_downsample", any(self.time_downsample)),
        ("add_new_temporal_params", self.add_new_temporal_params),
        ("merge_perturbation_time_with_context", self.merge_perturbation_time_with_context)) if on]
    if unsupported:
      raise ValueError(f"interpolation UNet options not supported (no released checkpoint uses them): "
                       f"{', '.join(unsupported)}")

  @property
  def perturbation_embedding(self) -> bool:
    return self.use_perturbation_time_embed and self.merge_perturbation_time_with_diffusion_time


KEYFRAME_1_1 = KeyframeUNetConfig(
    model_channels=384, init_channels=192, num_channels=9, out_channels=4, time_embed_dim=1536,
    context_dim=4096, groups=32, head_dim=64, expansion_ratio=4, compression_ratio=2,
    dim_mult=(1, 2, 4, 8), num_blocks=(3, 3, 3, 3),
    add_cross_attention=(False, True, True, True), add_self_attention=(False, True, True, True),
    noise_augmentation=True, motion_score=True)

# The configuration of the parity fixtures in tests/fixtures/keyframe_unet.
KEYFRAME_TINY = KeyframeUNetConfig(
    model_channels=16, init_channels=8, num_channels=9, out_channels=4, time_embed_dim=32,
    context_dim=48, groups=4, head_dim=16, expansion_ratio=2, compression_ratio=2,
    dim_mult=(1, 2, 2, 4), num_blocks=(2, 3, 2, 2),
    add_cross_attention=(False, True, True, True), add_self_attention=(False, True, True, True),
    noise_augmentation=True, motion_score=True)

# Inferred in spec §4.9: the keyframe kwargs without its two flags, 20 channels in, 12 out.
INTERPOLATION_1_1 = InterpolationUNetConfig(
    model_channels=384, init_channels=192, num_channels=20, out_channels=12, time_embed_dim=1536,
    context_dim=4096, groups=32, head_dim=64, expansion_ratio=4, compression_ratio=2,
    dim_mult=(1, 2, 4, 8), num_blocks=(3, 3, 3, 3),
    add_cross_attention=(False, True, True, True), add_self_attention=(False, True, True, True))

INTERPOLATION_TINY = InterpolationUNetConfig(
    model_channels=8, init_channels=8, num_channels=20, out_channels=12, time_embed_dim=24,
    context_dim=20, groups=2, head_dim=8, expansion_ratio=2, compression_ratio=2,
    dim_mult=(1, 2, 3), num_blocks=(2, 3, 2), time_downsample=(False, False, False),
    add_cross_attention=(False, True, True), add_self_attention=(False, True, True))

PRODUCTION_PRESETS = {
    "keyframe-1.1": KEYFRAME_1_1,
    "interpolation-1.1": INTERPOLATION_1_1,
}

TINY_PRESETS = {
    "keyframe-tiny": KEYFRAME_TINY,
    "interpolation-tiny": INTERPOLATION_TINY,
}

PRESETS = {**PRODUCTION_PRESETS, **TINY_PRESETS}

# Published parameter counts of the released checkpoints (spec §10).
PUBLISHED_PARAMETER_COUNTS = {
    "keyframe-1.1": 4_149_077_956,
    "interpolation-1.1": 3_979_941_530,
}


def get_preset(name: str):
  try:
    return PRESETS[name]
  except KeyError:
    raise KeyError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}") from None


# Model kind (as written in converted checkpoints and fixture manifests) -> its config type.
CONFIG_TYPES = {
    KeyframeUNetConfig.kind: KeyframeUNetConfig,
    InterpolationUNetConfig.kind: InterpolationUNetConfig,
}
