"""Model configurations as frozen dataclasses, with named presets.

Field names follow the reference constructors (spec §3.1) so that a `configs.json` section or a parity
manifest can be splatted in directly; the presets are the production values (spec §3.11) and tiny ones
for tests.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar


class ConfigBase:
  """`from_dict` (strict: unknown fields are an error) and `to_dict` (JSON-ready) for config dataclasses."""

  kind: ClassVar[str] = ""

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


TEXT_POOLING = ("prompt", "padded")


@dataclasses.dataclass(frozen=True)
class UNetConfig(ConfigBase):
  """The Kandinsky 3.0 UNet skeleton shared by both video UNets."""

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
  # The pooled text query (AttentionPooling) is the context's sum over L: "prompt" divides by the reference's
  # L (the longest prompt's tokens + 1, as the reference samples); "padded" by the padded length, which is
  # how the embedded demo was trained (kvjax's trainers pooled that way before they took "prompt").
  text_pooling: str = "prompt"

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
    if self.text_pooling not in TEXT_POOLING:
      raise ValueError(f"text_pooling must be one of {', '.join(TEXT_POOLING)}, got {self.text_pooling!r}")

  @property
  def hidden_dims(self) -> tuple[int, ...]:
    return (self.init_channels, *(self.model_channels * m for m in self.dim_mult))

  @property
  def num_levels(self) -> int:
    return len(self.dim_mult)



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


@dataclasses.dataclass(frozen=True)
class MoVQConfig(ConfigBase):
  """The MoVQ autoencoder (spec §5): image (`movq.pt`) or with the temporal video decoder (`video_movq.pt`).

  Field names are the reference's generator parameters (a `configs.json` `image_movq`/`video_movq`
  section). `resolution` is nominal: it only places the attention levels, inputs may be of any size that
  the down-samplings divide.
  """

  kind: ClassVar[str] = "movq"

  ch: int = 256
  ch_mult: tuple[int, ...] = (1, 2, 2, 4)
  num_res_blocks: int = 2
  attn_resolutions: tuple[int, ...] = (32,)
  resolution: int = 256
  in_channels: int = 3
  out_ch: int = 3
  z_channels: int = 4
  double_z: bool = False
  dropout: float = 0.0
  resamp_with_conv: bool = True
  temporal: bool = False
  temporal_attention_block: bool = False
  temporal_mid_blocks: bool = True
  temporal_kernel_size: tuple[int, ...] = (3, 3, 3)
  temporal_conv_padding: tuple[int, ...] = (1, 1, 1)
  temporal_blocks: bool = False
  build_3D_decoder: bool = False
  flicker_augmentation: bool = False
  add_conv: bool = False
  num_groups: int = 32  # hard-coded in the reference's Normalize

  def __post_init__(self):
    for name in ("ch_mult", "attn_resolutions", "temporal_kernel_size", "temporal_conv_padding"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    unsupported = [name for name, on in (
        ("double_z", self.double_z), ("resamp_with_conv=False", not self.resamp_with_conv),
        ("temporal_blocks", self.temporal_blocks), ("build_3D_decoder", self.build_3D_decoder),
        ("flicker_augmentation", self.flicker_augmentation), ("add_conv", self.add_conv)) if on]
    if unsupported:
      raise ValueError(f"MoVQ options not supported (no released checkpoint uses them): {', '.join(unsupported)}")
    if tuple(self.temporal_kernel_size) != (3, 3, 3) or tuple(self.temporal_conv_padding) != (1, 1, 1):
      raise ValueError("MoVQ temporal convolutions must be 3x3x3 with padding 1 (as released)")
    widths = [self.ch * m for m in self.ch_mult]
    if any(w % self.num_groups for w in widths):
      raise ValueError(f"every MoVQ width {widths} must be a multiple of num_groups={self.num_groups}")

  @property
  def num_levels(self) -> int:
    return len(self.ch_mult)

  @property
  def downsampling_factor(self) -> int:
    return 2 ** (self.num_levels - 1)


@dataclasses.dataclass(frozen=True)
class T5EncoderConfig(ConfigBase):
  """A T5 v1.1-style encoder stack (spec §6.2). Field names are Hugging Face `T5Config`'s."""

  kind: ClassVar[str] = "t5_encoder"

  vocab_size: int = 32128
  d_model: int = 4096
  d_kv: int = 256
  d_ff: int = 16384
  num_layers: int = 32
  num_heads: int = 16
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  feed_forward_proj: str = "gated-silu"

  # T5 v1.1 feed-forward variants (Hugging Face's "gated-gelu" is the tanh approximation of GELU).
  FEED_FORWARD_VARIANTS: ClassVar[tuple[str, ...]] = ("gated-silu", "gated-gelu")
  # Hugging Face model types with exactly this encoder (umT5 has a position bias per layer, T5 v1.0 no gate).
  HF_MODEL_TYPES: ClassVar[tuple[str, ...]] = ("t5", "mt5")

  def __post_init__(self):
    if self.feed_forward_proj not in self.FEED_FORWARD_VARIANTS:
      raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} not supported; the T5 v1.1 encoder "
                       f"needs one of {', '.join(self.FEED_FORWARD_VARIANTS)}")

  @classmethod
  def from_hf_config(cls, hf: dict[str, Any]) -> "T5EncoderConfig":
    """The encoder of a Hugging Face T5 `config.json`, refusing variants this encoder does not compute."""
    model_type = hf.get("model_type")
    if model_type not in cls.HF_MODEL_TYPES:
      raise ValueError(f"Hugging Face model_type {model_type!r} is not a T5 v1.1 encoder "
                       f"(supported: {', '.join(cls.HF_MODEL_TYPES)})")
    # Hugging Face's default is the ungated ReLU of the original T5, which is not T5 v1.1.
    feed_forward_proj = hf.get("feed_forward_proj", "relu")
    if feed_forward_proj not in cls.FEED_FORWARD_VARIANTS or hf.get("is_gated_act", True) is False:
      raise ValueError(f"feed_forward_proj {feed_forward_proj!r} (is_gated_act {hf.get('is_gated_act')}) not "
                       f"supported; the T5 v1.1 encoder needs one of {', '.join(cls.FEED_FORWARD_VARIANTS)}")
    required = ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
    missing = [name for name in required if name not in hf]
    if missing:
      raise ValueError(f"Hugging Face T5 config lacks {', '.join(missing)}")
    # Absent from older config files; these are Hugging Face's defaults.
    optional = dict(relative_attention_num_buckets=32, relative_attention_max_distance=128,
                    layer_norm_epsilon=1e-6)
    values = {name: hf[name] for name in required}
    values.update({name: hf.get(name, default) for name, default in optional.items()})
    return cls(feed_forward_proj=feed_forward_proj, **values)


@dataclasses.dataclass(frozen=True)
class TextProjectionConfig(ConfigBase):
  """The two projection heads of `t5_projections.pt` (spec §6.3): Linear (no bias) then LayerNorm."""

  kind: ClassVar[str] = "t5_projections"

  in_dim: int = 4096
  context_dim: int = 4096
  layer_norm_epsilon: float = 1e-5

  @classmethod
  def from_text_encoder_section(cls, section: dict[str, Any],
                                in_dim: int | None = None) -> "TextProjectionConfig":
    """From the official configs.json `text_encoder` section, which gives only `context_dim`.

    The input width is the T5 encoder's d_model, which the section does not give (it names the encoder by
    its hub id); Flan-UL2's unless `in_dim` says otherwise.
    """
    if "context_dim" not in section:
      raise ValueError("the text_encoder section has no context_dim")
    return cls(in_dim=in_dim or cls.in_dim, context_dim=int(section["context_dim"]))


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig(ConfigBase):
  """A MoVQ-GAN discriminator (pix2pix / taming-transformers NLayerDiscriminator layout).

  `architecture` selects the module: "patch" judges single frames (N, H, W, C), "video" judges clips
  (B, T, H, W, C) with (temporal_kernel, 4, 4) convolutions, so that it sees motion. `channels` is the
  width of the first layer; each of the `num_layers - 1` further strided layers doubles it, up to 8x.

  `norm` is "group" (GroupNorm with min(32, channels) groups, over every position of a sample and a group
  of channels) or "none". BatchNorm, the pix2pix default, is deliberately not offered: its batch statistics
  couple the shards of a data-parallel batch (the result depends on how the batch is split, or needs a
  cross-device reduction in every layer) and it needs mutable running statistics.
  """

  kind: ClassVar[str] = "discriminator"

  architecture: str = "patch"
  in_channels: int = 3
  channels: int = 64
  num_layers: int = 3
  norm: str = "group"
  temporal_kernel: int = 3

  ARCHITECTURES: ClassVar[tuple[str, ...]] = ("patch", "video")
  NORMS: ClassVar[tuple[str, ...]] = ("group", "none")
  MAX_GROUPS: ClassVar[int] = 32

  def __post_init__(self):
    if self.architecture not in self.ARCHITECTURES:
      raise ValueError(f"discriminator architecture {self.architecture!r} not supported; "
                       f"one of {', '.join(self.ARCHITECTURES)}")
    if self.norm not in self.NORMS:
      raise ValueError(f"discriminator norm {self.norm!r} not supported; one of {', '.join(self.NORMS)} "
                       f"(BatchNorm is not offered: it couples data-parallel shards)")
    for name in ("in_channels", "channels", "num_layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"discriminator {name} must be >= 1, got {getattr(self, name)}")
    if self.temporal_kernel < 3 or self.temporal_kernel % 2 == 0:
      raise ValueError(f"discriminator temporal_kernel must be odd and >= 3 (padded symmetrically in time), "
                       f"got {self.temporal_kernel}")
    if self.norm == "group":
      bad = [w for w in self.widths[1:] if w % self.norm_groups]
      if bad:
        raise ValueError(f"discriminator widths {list(bad)} do not split into {self.norm_groups} groups")

  @property
  def widths(self) -> tuple[int, ...]:
    """Output channels of the layers before the logits: the strided ones, then the stride-1 one."""
    return tuple(self.channels * min(2 ** n, 8) for n in range(self.num_layers + 1))

  @property
  def norm_groups(self) -> int:
    return min(self.MAX_GROUPS, self.channels)

  @property
  def min_spatial_size(self) -> int:
    """The smallest height and width with a non-empty logit map (4x4 kernels, padding 1: each strided
    layer halves the size rounding down, each of the two stride-1 layers takes one off)."""
    return 3 * 2 ** self.num_layers


@dataclasses.dataclass(frozen=True)
class LPIPSConfig(ConfigBase):
  """LPIPS (Zhang et al. 2018, the `lpips` package's net='vgg', v0.1): VGG16 `features` up to relu5_3 with a
  tap at the end of each stage and a 1x1 linear head per tap. `widths`/`convs_per_stage` are VGG16's in
  production; smaller ones make a CPU-sized stand-in (no pretrained weights exist for it)."""

  kind: ClassVar[str] = "lpips"

  widths: tuple[int, ...] = (64, 128, 256, 512, 512)
  convs_per_stage: tuple[int, ...] = (2, 2, 3, 3, 3)

  def __post_init__(self):
    for name in ("widths", "convs_per_stage"):
      object.__setattr__(self, name, tuple(getattr(self, name)))
    if len(self.widths) != len(self.convs_per_stage) or not self.widths or min(self.widths + self.convs_per_stage) < 1:
      raise ValueError(f"LPIPS widths {self.widths} and convs_per_stage {self.convs_per_stage} must be positive, "
                       "one per stage")


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

IMAGE_MOVQ_1_1 = MoVQConfig()
VIDEO_MOVQ_1_1 = MoVQConfig(temporal=True, temporal_attention_block=True)

# Three levels of widths 32, 64, 64 (the reference's 32-group norms need multiples of 32), attention at the
# lower level: the configuration of the parity fixtures in tests/fixtures/{image,video}_movq.
IMAGE_MOVQ_TINY = MoVQConfig(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(4,), resolution=16)
VIDEO_MOVQ_TINY = dataclasses.replace(IMAGE_MOVQ_TINY, temporal=True, temporal_attention_block=True)

FLAN_UL2_ENCODER = T5EncoderConfig()
T5_ENCODER_TINY = T5EncoderConfig(vocab_size=128, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
                                  relative_attention_num_buckets=8, relative_attention_max_distance=20)

TEXT_PROJECTIONS_1_1 = TextProjectionConfig()
TEXT_PROJECTIONS_TINY = TextProjectionConfig(in_dim=32, context_dim=48)

# MoVQ-GAN discriminators: pix2pix's default (64 channels, 3 layers), per frame or over clips.
PATCH_DISCRIMINATOR = DiscriminatorConfig(architecture="patch", channels=64, num_layers=3)
VIDEO_DISCRIMINATOR = DiscriminatorConfig(architecture="video", channels=64, num_layers=3)
PATCH_DISCRIMINATOR_TINY = DiscriminatorConfig(architecture="patch", channels=8, num_layers=2)
VIDEO_DISCRIMINATOR_TINY = DiscriminatorConfig(architecture="video", channels=8, num_layers=2)

LPIPS_VGG = LPIPSConfig()
LPIPS_TINY = LPIPSConfig(widths=(8, 16, 16, 32, 32), convs_per_stage=(1, 1, 1, 1, 1))

# The embedded demo (kvjax/demo, made by `python -m train.demo`): small models that kvjax trains from scratch
# on the moving-shapes world, 64x64 videos with key frames at 128x128. The MoVQs have 4 latent channels; the
# UNets have three levels (latent sizes divisible by 4).
DEMO_KEYFRAME = KeyframeUNetConfig(
    model_channels=32, init_channels=32, num_channels=9, out_channels=4, time_embed_dim=128,
    context_dim=64, groups=8, head_dim=32, expansion_ratio=2, compression_ratio=2,
    dim_mult=(1, 2, 3), num_blocks=(2, 2, 2),
    add_cross_attention=(False, True, True), add_self_attention=(False, True, True),
    noise_augmentation=True, motion_score=True, text_pooling="padded")
# The interpolation UNet is 64 wide at every level: its v prediction must carry the noisy input's noise
# through to the output, which a 32-wide one never learned (docs/demo.md).
DEMO_INTERPOLATION = InterpolationUNetConfig(
    model_channels=64, init_channels=64, num_channels=20, out_channels=12, time_embed_dim=128,
    context_dim=64, groups=8, head_dim=32, expansion_ratio=2, compression_ratio=2,
    dim_mult=(1, 1, 1), num_blocks=(2, 2, 2), time_downsample=(False, False, False),
    add_cross_attention=(False, True, True), add_self_attention=(False, True, True), text_pooling="padded")
# Frozen random weights: the captions are a few dozen words, which any fixed encoder keeps apart. The
# vocabulary holds the caption words (kvjax.text.tokenizer_training) and T5Tokenizer's 100 sentinels.
DEMO_T5_ENCODER = T5EncoderConfig(vocab_size=160, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                  relative_attention_num_buckets=8, relative_attention_max_distance=20)
DEMO_TEXT_PROJECTIONS = TextProjectionConfig(in_dim=64, context_dim=64)
# Downsampling by 8 as in production: a 64x64 video is 8x8 latents and its 128x128 key frame 16x16, which
# keeps the UNets' training on two CPU cores to minutes per thousand steps.
DEMO_IMAGE_MOVQ = MoVQConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1, attn_resolutions=(), resolution=64)
DEMO_VIDEO_MOVQ = dataclasses.replace(DEMO_IMAGE_MOVQ, temporal=True, temporal_attention_block=True)

PRODUCTION_PRESETS = {
    "keyframe-1.1": KEYFRAME_1_1,
    "interpolation-1.1": INTERPOLATION_1_1,
    "image-movq-1.1": IMAGE_MOVQ_1_1,
    "video-movq-1.1": VIDEO_MOVQ_1_1,
    "flan-ul2-encoder": FLAN_UL2_ENCODER,
    "t5-projections-1.1": TEXT_PROJECTIONS_1_1,
    "patch-discriminator": PATCH_DISCRIMINATOR,
    "video-discriminator": VIDEO_DISCRIMINATOR,
    "lpips-vgg": LPIPS_VGG,
}

TINY_PRESETS = {
    "keyframe-tiny": KEYFRAME_TINY,
    "interpolation-tiny": INTERPOLATION_TINY,
    "image-movq-tiny": IMAGE_MOVQ_TINY,
    "video-movq-tiny": VIDEO_MOVQ_TINY,
    "t5-encoder-tiny": T5_ENCODER_TINY,
    "t5-projections-tiny": TEXT_PROJECTIONS_TINY,
    "patch-discriminator-tiny": PATCH_DISCRIMINATOR_TINY,
    "video-discriminator-tiny": VIDEO_DISCRIMINATOR_TINY,
    "lpips-tiny": LPIPS_TINY,
}

DEMO_PRESETS = {
    "keyframe-demo": DEMO_KEYFRAME,
    "interpolation-demo": DEMO_INTERPOLATION,
    "t5-encoder-demo": DEMO_T5_ENCODER,
    "t5-projections-demo": DEMO_TEXT_PROJECTIONS,
    "image-movq-demo": DEMO_IMAGE_MOVQ,
    "video-movq-demo": DEMO_VIDEO_MOVQ,
}

PRESETS = {**PRODUCTION_PRESETS, **TINY_PRESETS, **DEMO_PRESETS}

# Published parameter counts of the released checkpoints (spec §10).
PUBLISHED_PARAMETER_COUNTS = {
    "keyframe-1.1": 4_149_077_956,
    "interpolation-1.1": 3_979_941_530,
    "image-movq-1.1": 270_603_567,
    "video-movq-1.1": 666_131_275,  # the whole file; its temporal decoder alone is 556,645,919
    "flan-ul2-encoder": 8_721_797_632,  # 8,590,201,344 in the stack plus the 32128 x 4096 token embedding
    "t5-projections-1.1": 2 * 16_785_408,
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
    MoVQConfig.kind: MoVQConfig,
    T5EncoderConfig.kind: T5EncoderConfig,
    TextProjectionConfig.kind: TextProjectionConfig,
    DiscriminatorConfig.kind: DiscriminatorConfig,
    LPIPSConfig.kind: LPIPSConfig,
}
