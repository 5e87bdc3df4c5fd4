"""Which models make up a pipeline, and the options of one generation (spec §8.1)."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os

from kvjax import model_configs
from kvjax.demo import SAMPLING_DEFAULTS
from kvjax.diffusion import feature_cache
from kvjax.diffusion.loop import SAMPLERS
from kvjax.pipeline.samplers import NUM_BASE_FRAMES

MOTION_SCORES = {"low": 1, "medium": 10, "high": 50, "extreme": 100}
FPS_PASSES = {"low": (), "medium": (3,), "high": (3, 1)}  # skip-frame index of each interpolation pass

# Bounds of one generation, checked before any work (GenerationOptions.check_size and __post_init__).
# The key frame is drawn at twice each side of the video: at 2048x2048 that is 4096x4096 pixels, a 512x512
# latent whose first self-attention level (256x256 = 65536 tokens) needs 16 GiB per head and image for its
# attention scores alone in fp32, past one accelerator's memory; so 16x the reference's 512x512 is the
# most pixels a frame, and 4096 px the longest side (wide or tall videos of that area).
MAX_FRAME_PIXELS = 2048 * 2048
MAX_SIDE = 4096
MAX_STEPS = 1000  # the schedulers' training timesteps
# A long video (GenerationOptions.windows) is held whole in host memory as uint8 frames: at the reference's
# 512x512 and fps high, 20 windows are 3521 frames, 2.6 GiB a video (16 times that at 2048x2048).
MAX_WINDOWS = 20
MAX_WINDOW_OVERLAP = 6  # at least half of each next window's base frames are new
# One window is shown over the reference's 5.5 s at every fps; a longer video keeps that frame rate.
WINDOW_SECONDS = 5.5


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  keyframe: model_configs.KeyframeUNetConfig
  interpolation: model_configs.InterpolationUNetConfig
  image_movq: model_configs.MoVQConfig
  video_movq: model_configs.MoVQConfig
  text_encoder: model_configs.T5EncoderConfig
  projections: model_configs.TextProjectionConfig
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
        model_configs.KEYFRAME_1_1, model_configs.INTERPOLATION_1_1, model_configs.IMAGE_MOVQ_1_1, model_configs.VIDEO_MOVQ_1_1,
        model_configs.FLAN_UL2_ENCODER, model_configs.TEXT_PROJECTIONS_1_1),
    # Runs end to end on a CPU in seconds with random weights (the interpolation UNet's context widened to
    # the keyframe UNet's).
    "tiny": PipelineConfig(
        model_configs.KEYFRAME_TINY, dataclasses.replace(model_configs.INTERPOLATION_TINY, context_dim=48),
        model_configs.IMAGE_MOVQ_TINY, model_configs.VIDEO_MOVQ_TINY, model_configs.T5_ENCODER_TINY,
        model_configs.TEXT_PROJECTIONS_TINY, tokens_length=16),
    # The embedded demo's models (kvjax/demo; `python -m train.demo` trains them): 64x64 videos.
    "demo": PipelineConfig(
        model_configs.DEMO_KEYFRAME, model_configs.DEMO_INTERPOLATION, model_configs.DEMO_IMAGE_MOVQ, model_configs.DEMO_VIDEO_MOVQ,
        model_configs.DEMO_T5_ENCODER, model_configs.DEMO_TEXT_PROJECTIONS, tokens_length=16),
}
# "tiny" with two-level UNets (every kind of layer, half the levels): XLA on a CPU compiles a UNet train
# step in minutes per level, so the tests that compile sharded steps and whole training runs use this.
_TWO_LEVELS = dict(dim_mult=(1, 2), num_blocks=(2, 2), add_cross_attention=(False, True),
                   add_self_attention=(False, True))
PIPELINE_PRESETS["tiny-two-level"] = dataclasses.replace(
    PIPELINE_PRESETS["tiny"], keyframe=dataclasses.replace(PIPELINE_PRESETS["tiny"].keyframe, **_TWO_LEVELS),
    interpolation=dataclasses.replace(PIPELINE_PRESETS["tiny"].interpolation, time_downsample=(False, False),
                                      **_TWO_LEVELS))


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
  # Image-to-video: the video starts with the given picture itself (its latent held as base frame 0, the
  # other frames denoised around it). The reference (False) generates frame 0 anew, conditioned on it.
  keep_image: bool = False
  # Feature caching (kvjax.diffusion.feature_cache; not the reference): the UNet runs whole every N-th step
  # of each stage and only its shallowest levels in between; 1 (the default) runs it whole at every step.
  key_frame_cache_interval: int = 1
  base_frame_cache_interval: int = 1
  interpolation_cache_interval: int = 1
  cache_schedule: str = "uniform"  # where the full steps fall: feature_cache.SCHEDULES
  cache_full_ends: int = 0  # the first and last this many steps of each stage always run whole
  # Long videos: windows chained in latent space (TextToVideo). Window 1 is the video above; each next
  # window's first frame is the last base frame of the one before, and adds 11 base frames.
  windows: int = 1
  # Base frames each next window shares with the one before (--window-overlap): 1, the seam frame alone, or
  # up to MAX_WINDOW_OVERLAP, held as they were so the new frames go on from the motion, not one still frame.
  window_overlap: int = 1

  def __post_init__(self):
    for name, kind in (("width", numbers.Integral), ("height", numbers.Integral),
                       ("key_frame_steps", numbers.Integral), ("base_frame_steps", numbers.Integral),
                       ("interpolation_steps", numbers.Integral), ("noise_augmentation", numbers.Integral),
                       ("key_frame_cache_interval", numbers.Integral), ("base_frame_cache_interval", numbers.Integral),
                       ("interpolation_cache_interval", numbers.Integral), ("cache_full_ends", numbers.Integral),
                       ("seed", numbers.Integral), ("windows", numbers.Integral),
                       ("window_overlap", numbers.Integral),
                       ("key_frame_guidance_scale", numbers.Real),
                       ("guidance_weight_prompt", numbers.Real), ("guidance_weight_image", numbers.Real),
                       ("interpolation_guidance_scale", numbers.Real)):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"{name} must be {'a number' if kind is numbers.Real else 'an integer'}, got {value!r}")
    if not isinstance(self.keep_image, bool):
      raise ValueError(f"keep_image (--keep-image) must be true or false, got {self.keep_image!r}")
    if self.fps not in FPS_PASSES:
      raise ValueError(f"fps must be one of {', '.join(FPS_PASSES)}, got {self.fps!r}")
    if self.motion not in MOTION_SCORES:
      raise ValueError(f"motion must be one of {', '.join(MOTION_SCORES)}, got {self.motion!r}")
    if self.sampler not in SAMPLERS:
      raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
    if not 0 <= self.noise_augmentation < 1000:
      raise ValueError(f"noise_augmentation (--noise-augmentation) is a timestep in [0, 1000), got {self.noise_augmentation}")
    steps = {"key_frame_steps": self.key_frame_steps, "base_frame_steps": self.base_frame_steps,
             "interpolation_steps": self.interpolation_steps}
    bad = {name: value for name, value in steps.items() if not 1 <= value <= MAX_STEPS}
    if bad:
      raise ValueError(f"denoising steps (--steps KEY BASE INTERP) must be in [1, {MAX_STEPS}], got "
                       + ", ".join(f"{name} {value}" for name, value in bad.items()))
    intervals = {"key_frame_cache_interval": self.key_frame_steps, "base_frame_cache_interval": self.base_frame_steps,
                 "interpolation_cache_interval": self.interpolation_steps}
    bad = [f"{name} {getattr(self, name)} (of {steps} steps)" for name, steps in intervals.items()
           if not 1 <= getattr(self, name) <= steps]
    if bad:
      raise ValueError(f"cache intervals (--cache-interval) must be in [1, the stage's step count], got "
                       + ", ".join(bad))
    if self.cache_schedule not in feature_cache.SCHEDULES:
      raise ValueError(f"cache_schedule (--cache-schedule) must be one of {', '.join(feature_cache.SCHEDULES)}, "
                       f"got {self.cache_schedule!r}")
    if self.cache_full_ends < 0:
      raise ValueError(f"cache_full_ends (--cache-full-ends) must be at least 0, got {self.cache_full_ends}")
    if not 1 <= self.windows <= MAX_WINDOWS:
      raise ValueError(f"windows (--windows) must be in [1, {MAX_WINDOWS}] (the frames are held in host memory), "
                       f"got {self.windows}")
    if not 1 <= self.window_overlap <= MAX_WINDOW_OVERLAP:
      raise ValueError(f"window_overlap (--window-overlap) must be in [1, {MAX_WINDOW_OVERLAP}] base frames, "
                       f"got {self.window_overlap}")
    if not 0 <= self.seed < 2 ** 32:  # jax.random.key keeps 32 bits: larger seeds would repeat smaller ones
      raise ValueError(f"seed (--seed) must be in [0, 2**32), got {self.seed}")
    guidance = {"key_frame_guidance_scale": "--key-frame-guidance", "guidance_weight_prompt": "--text-guidance",
                "guidance_weight_image": "--image-guidance", "interpolation_guidance_scale": "--interpolation-guidance"}
    bad = [f"{name} ({flag}) {getattr(self, name)}" for name, flag in guidance.items()
           if not math.isfinite(getattr(self, name))]
    if bad:
      raise ValueError(f"guidance weights must be finite numbers, got {', '.join(bad)}")

  @property
  def motion_score(self) -> int:
    return MOTION_SCORES[self.motion]

  def full_steps(self, interval_field: str | None, steps: int) -> tuple[bool, ...] | None:
    """The feature-cache schedule of a stage of `steps` steps whose interval is the field `interval_field`
    (kvjax.pipeline.stages): per step, True where the UNet runs whole; None without caching."""
    interval = 1 if interval_field is None else getattr(self, interval_field)
    return feature_cache.full_steps(steps, min(interval, steps), self.cache_schedule, self.cache_full_ends)

  @property
  def num_frames(self) -> int:
    """The video's frames: 12 base frames, 12 - window_overlap more a window after the first, and 3 more
    between each pair per interpolation pass (fps low: 12 a window; medium: 45, then 44 a window; high: 177,
    then 176; each base frame of overlap beyond the first takes 1, 4 or 16 frames off every next window)."""
    frames = NUM_BASE_FRAMES + (NUM_BASE_FRAMES - self.window_overlap) * (self.windows - 1)
    for _ in FPS_PASSES[self.fps]:
      frames = 4 * (frames - 1) + 1
    return frames

  @property
  def seconds(self) -> float:
    """The video's length: WINDOW_SECONDS a window, at one window's frame rate (its 11 or 44 or 176 frames
    after the first window a little under WINDOW_SECONDS each)."""
    return WINDOW_SECONDS * self.num_frames / dataclasses.replace(self, windows=1).num_frames

  def with_seconds(self, seconds: float) -> "GenerationOptions":
    """These options with the fewest windows whose video lasts at least `seconds` at this fps (`--seconds`);
    refuses a length past MAX_WINDOWS windows."""
    longest = dataclasses.replace(self, windows=MAX_WINDOWS).seconds
    if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real) or not 0 < seconds <= longest:
      raise ValueError(f"seconds (--seconds) must be in (0, {longest:g}] at fps {self.fps} ({MAX_WINDOWS} windows; "
                       f"the frames are held in host memory), got {seconds!r}")
    windows = next(k for k in range(1, MAX_WINDOWS + 1)
                   if dataclasses.replace(self, windows=k).seconds >= seconds * (1 - 1e-9))
    return dataclasses.replace(self, windows=windows)

  def check_size(self, config: PipelineConfig | None = None) -> None:
    """Refuses a video size the pipeline cannot make, before any work: sides must be positive, at most
    MAX_SIDE, the frame at most MAX_FRAME_PIXELS (the key frame is drawn at twice each side), and, given the
    pipeline's config, multiples of its size_multiple."""
    size = f"{self.width}x{self.height}"
    if self.width <= 0 or self.height <= 0:
      m = f" multiples of {config.size_multiple}" if config is not None else ""
      raise ValueError(f"width and height (--width, --height) must be positive{m}, got {size}")
    if max(self.width, self.height) > MAX_SIDE or self.width * self.height > MAX_FRAME_PIXELS:
      raise ValueError(f"width and height (--width, --height) {size} are too large: at most {MAX_SIDE} px a side "
                       f"and {MAX_FRAME_PIXELS} pixels a frame (2048x2048); the reference size is 512x512")
    if config is None:
      return
    m = config.size_multiple
    if self.width % m or self.height % m:
      raise ValueError(f"width and height (--width, --height) must be positive multiples of {m} for this "
                       f"pipeline, got {size}")


# Random weights (`python -m sample --weights random`, training without --weights): a smoke test's size and steps.
RANDOM_WEIGHTS_OPTIONS = dict(width=64, height=64, key_frame_steps=4, base_frame_steps=4, interpolation_steps=2)


def read_sampling_defaults(weights_dir: str) -> dict:
  """WEIGHTS/sampling.json (train.demo writes one): the generation options a weights folder recommends ({}
  where it has none). Read bounded; ValueError naming the file where it is too large, not JSON, or not an
  object of GenerationOptions fields."""
  path = os.path.join(weights_dir, SAMPLING_DEFAULTS)
  if not os.path.isfile(path):
    return {}
  if os.path.getsize(path) > 1 << 16:
    raise ValueError(f"{path}: larger than 64 KiB; not a sampling defaults file")
  try:
    with open(path) as f:
      values = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not JSON ({e})") from None
  fields = {f.name for f in dataclasses.fields(GenerationOptions)}
  if not isinstance(values, dict) or set(values) - fields:
    raise ValueError(f"{path}: expected an object of generation options ({', '.join(sorted(fields))})")
  return values
