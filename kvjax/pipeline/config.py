"""Which models make up a pipeline, and the options of one generation (spec §8.1)."""

from __future__ import annotations

import dataclasses

from kvjax import configs
from kvjax.diffusion.loop import SAMPLERS

MOTION_SCORES = {"low": 1, "medium": 10, "high": 50, "extreme": 100}
FPS_PASSES = {"low": (), "medium": (3,), "high": (3, 1)}  # skip-frame index of each interpolation pass


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  keyframe: configs.KeyframeUNetConfig
  interpolation: configs.InterpolationUNetConfig
  image_movq: configs.MoVQConfig
  video_movq: configs.MoVQConfig
  text_encoder: configs.T5EncoderConfig
  projections: configs.TextProjectionConfig
  tokens_length: int = 128

  def __post_init__(self):
    widths = {"projections.in_dim": self.projections.in_dim, "text_encoder.d_model": self.text_encoder.d_model}
    if len(set(widths.values())) != 1:
      raise ValueError(f"the projections must read the T5 states: {widths}")
    contexts = {"projections.context_dim": self.projections.context_dim,
                "keyframe.context_dim": self.keyframe.context_dim,
                "interpolation.context_dim": self.interpolation.context_dim}
    if len(set(contexts.values())) != 1:
      raise ValueError(f"every model must share one context width: {contexts}")
    if self.image_movq.downsampling_factor != self.video_movq.downsampling_factor:
      raise ValueError("the image and video MoVQ must share one latent resolution")

  @property
  def size_multiple(self) -> int:
    """Frame sizes must divide by this: the MoVQ's down-sampling times the UNet's (64 in production)."""
    return self.image_movq.downsampling_factor * 2 ** (self.keyframe.num_levels - 1)


PIPELINE_PRESETS = {
    "kandinsky-video-1.1": PipelineConfig(
        configs.KEYFRAME_1_1, configs.INTERPOLATION_1_1, configs.IMAGE_MOVQ_1_1, configs.VIDEO_MOVQ_1_1,
        configs.FLAN_UL2_ENCODER, configs.TEXT_PROJECTIONS_1_1),
    # Runs end to end on a CPU in seconds with random weights (the interpolation UNet's context widened to
    # the keyframe UNet's).
    "tiny": PipelineConfig(
        configs.KEYFRAME_TINY, dataclasses.replace(configs.INTERPOLATION_TINY, context_dim=48),
        configs.IMAGE_MOVQ_TINY, configs.VIDEO_MOVQ_TINY, configs.T5_ENCODER_TINY,
        configs.TEXT_PROJECTIONS_TINY, tokens_length=16),
    # The embedded demo's models (kvjax/demo; `python -m train.demo` trains them): 64x64 videos.
    "demo": PipelineConfig(
        configs.DEMO_KEYFRAME, configs.DEMO_INTERPOLATION, configs.IMAGE_MOVQ_TINY, configs.VIDEO_MOVQ_TINY,
        configs.DEMO_T5_ENCODER, configs.DEMO_TEXT_PROJECTIONS, tokens_length=16),
}


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
  """One generation's settings; the defaults are the reference's (spec §8.1)."""

  width: int = 512
  height: int = 512
  fps: str = "low"  # low: 12 frames, medium: 45, high: 177
  motion: str = "medium"
  key_frame_guidance_scale: float = 5.0
  guidance_weight_prompt: float = 5.0
  guidance_weight_image: float = 2.0
  interpolation_guidance_scale: float = 0.5
  noise_augmentation: int = 20
  key_frame_steps: int = 50
  base_frame_steps: int = 50
  interpolation_steps: int = 10
  sampler: str = "ddpm"  # the reference; "ddim" and "dpm_solver_pp" are faster and not the reference
  seed: int = 0

  def __post_init__(self):
    if self.fps not in FPS_PASSES:
      raise ValueError(f"fps must be one of {', '.join(FPS_PASSES)}, got {self.fps!r}")
    if self.motion not in MOTION_SCORES:
      raise ValueError(f"motion must be one of {', '.join(MOTION_SCORES)}, got {self.motion!r}")
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
    if not 0 <= self.noise_augmentation < 1000:
      raise ValueError(f"noise_augmentation is a timestep in [0, 1000), got {self.noise_augmentation}")

  @property
  def motion_score(self) -> int:
    return MOTION_SCORES[self.motion]

  def check_size(self, config: PipelineConfig) -> None:
    m = config.size_multiple
    if self.width <= 0 or self.height <= 0 or self.width % m or self.height % m:
      raise ValueError(f"width and height must be positive multiples of {m} for this pipeline, got "
                       f"{self.width}x{self.height}")
