"""Training runs as frozen dataclasses, with named presets (production and tiny)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from kvjax.pipeline.config import PIPELINE_PRESETS, PipelineConfig
from kvjax.training.interpolation_loss import InterpolationTrainingConfig, clip_frames
from kvjax.training.keyframe_loss import KeyframeTrainingConfig
from kvjax.training.optimizer import OptimizerConfig

MODELS = ("keyframe", "interpolation")
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
REMAT_POLICIES = ("none", "levels", "levels_save_dots")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training run. `pipeline` names the models (`PIPELINE_PRESETS`): the UNet that trains and the
  frozen encoders (MoVQ, T5, projections) that turn videos and captions into its inputs."""

  model: str = "keyframe"  # which UNet trains: keyframe | interpolation
  pipeline: str = "tiny"
  global_batch_size: int = 8  # clips per step over all hosts
  num_frames: int = 12  # keyframe clips: latent frames per clip
  num_groups: int = 2  # interpolation clips: groups per clip (4G + 1 frames)
  # Keyframe clips: source frames from one key frame to the next (the dataset is at 24 fps). Interpolation
  # clips take every (s + 1)-th frame for the skip value s drawn per clip.
  frame_stride: int = 1
  resolution: tuple[int, int] = (64, 64)  # (height, width) of the frames in pixels
  compute_dtype: str = "float32"  # bfloat16: bf16 activations and matmuls over float32 master weights
  remat: str = "none"  # none | levels (recompute each UNet level in the backward pass) | levels_save_dots
  keyframe: KeyframeTrainingConfig = KeyframeTrainingConfig()
  interpolation: InterpolationTrainingConfig = InterpolationTrainingConfig()
  optimizer: OptimizerConfig = OptimizerConfig()
  total_steps: int = 100_000
  seed: int = 0
  log_every: int = 10
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3

  def __post_init__(self):
    checks = {"model": (self.model, MODELS), "pipeline": (self.pipeline, tuple(PIPELINE_PRESETS)),
              "compute_dtype": (self.compute_dtype, tuple(COMPUTE_DTYPES)), "remat": (self.remat, REMAT_POLICIES)}
    for name, (value, allowed) in checks.items():
      if value not in allowed:
        raise ValueError(f"TrainConfig.{name} must be one of {', '.join(allowed)}, got {value!r}")
    multiple = self.pipeline_config.size_multiple
    if any(side % multiple for side in self.resolution):
      raise ValueError(f"TrainConfig.resolution {self.resolution} must be multiples of {multiple}")
    if self.global_batch_size < 1 or self.num_frames < 1 or self.num_groups < 1:
      raise ValueError("TrainConfig: global_batch_size, num_frames and num_groups must be positive")

  @property
  def pipeline_config(self) -> PipelineConfig:
    return PIPELINE_PRESETS[self.pipeline]

  @property
  def unet_config(self):
    return getattr(self.pipeline_config, self.model)

  @property
  def clip_frames(self) -> int:
    """Latent (= video) frames per training clip."""
    return self.num_frames if self.model == "keyframe" else clip_frames(self.num_groups)

  @property
  def latent_size(self) -> tuple[int, int]:
    factor = self.pipeline_config.image_movq.downsampling_factor
    return self.resolution[0] // factor, self.resolution[1] // factor


TRAIN_PRESETS = {
    # The paper's setting: 12 key frames at 512 px, bf16 compute, each UNet level recomputed backwards.
    "keyframe-1.1": TrainConfig(model="keyframe", pipeline="kandinsky-video-1.1", global_batch_size=64,
                                num_frames=12, resolution=(512, 512), compute_dtype="bfloat16", remat="levels"),
    "interpolation-1.1": TrainConfig(model="interpolation", pipeline="kandinsky-video-1.1", global_batch_size=64,
                                     num_groups=2, resolution=(512, 512), compute_dtype="bfloat16", remat="levels"),
    # Seconds per step on a CPU.
    "keyframe-tiny": TrainConfig(model="keyframe", global_batch_size=8, num_frames=4, resolution=(64, 64),
                                 optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=2, decay_steps=100),
                                 total_steps=20, log_every=1, checkpoint_every=5),
    "interpolation-tiny": TrainConfig(model="interpolation", global_batch_size=8, num_groups=1, resolution=(64, 64),
                                      optimizer=OptimizerConfig(learning_rate=1e-3, warmup_steps=2, decay_steps=100),
                                      total_steps=20, log_every=1, checkpoint_every=5),
}
